"""The storage service's schema. Numbered, applied once each by `imagegen.db.migrate`."""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE images (
            image_id text NOT NULL,
            version integer NOT NULL,
            job_id text NOT NULL,
            image_index integer NOT NULL,
            user_id text NOT NULL,
            character_id text NOT NULL,
            kind text NOT NULL,
            status text NOT NULL DEFAULT 'stored',
            width integer NOT NULL,
            height integer NOT NULL,
            size_bytes bigint NOT NULL,
            renditions jsonb NOT NULL,
            generation jsonb NOT NULL,
            provider text NOT NULL,
            cost_usd numeric(12, 6) NOT NULL,
            consistency_score real,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (image_id, version)
        );
        CREATE INDEX images_owner ON images (user_id, character_id);
        CREATE INDEX images_job ON images (job_id);
        """,
    ),
    (
        2,
        """
        ALTER TABLE images
            ADD COLUMN flagged boolean NOT NULL DEFAULT false,
            ADD COLUMN story_id text,
            ADD COLUMN page_number integer,
            ADD COLUMN style text NOT NULL DEFAULT '',
            ADD COLUMN review_status text NOT NULL DEFAULT 'pending',
            ADD COLUMN reviewed_at timestamptz;
        -- A deleted image stays deleted: a late or redelivered processed image for it is not
        -- stored again (its objects would otherwise be orphans nobody can see).
        CREATE TABLE deleted_images (
            image_id text PRIMARY KEY,
            user_id text NOT NULL,
            versions integer[] NOT NULL,
            deleted_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        3,
        """
        -- Everything needed to find, reproduce and judge an image without parsing JSON; the
        -- full generation record stays in `generation`.
        ALTER TABLE images
            ADD COLUMN prompt text NOT NULL DEFAULT '',
            ADD COLUMN negative_prompt text NOT NULL DEFAULT '',
            ADD COLUMN model text NOT NULL DEFAULT '',
            ADD COLUMN backend text NOT NULL DEFAULT '',
            ADD COLUMN seed bigint,
            ADD COLUMN quality text NOT NULL DEFAULT '',
            ADD COLUMN conditioning text NOT NULL DEFAULT '',
            ADD COLUMN scene_description text NOT NULL DEFAULT '',
            ADD COLUMN scene_source text NOT NULL DEFAULT '',
            ADD COLUMN parent_version integer,
            ADD COLUMN timings jsonb NOT NULL DEFAULT '{}',
            ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
            ADD CONSTRAINT images_review_status
                CHECK (review_status IN ('pending', 'approved', 'rejected'));
        CREATE INDEX images_story ON images (user_id, story_id) WHERE story_id IS NOT NULL;

        -- A character's reference images (its reference set and portraits) with the face
        -- embedding postprocess computed, so identity checks need not decode them again.
        CREATE TABLE character_references (
            image_id text NOT NULL,
            version integer NOT NULL,
            user_id text NOT NULL,
            character_id text NOT NULL,
            job_id text NOT NULL,
            kind text NOT NULL,
            original_key text NOT NULL,
            keys jsonb NOT NULL,
            style text NOT NULL DEFAULT '',
            embedding double precision[],
            encoder text NOT NULL DEFAULT '',
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (image_id, version),
            FOREIGN KEY (image_id, version) REFERENCES images ON DELETE CASCADE
        );
        CREATE INDEX character_references_owner ON character_references (user_id, character_id);

        -- Deleted characters and stories: their late images are not stored.
        CREATE TABLE deleted_owners (
            user_id text NOT NULL,
            owner_kind text NOT NULL CHECK (owner_kind IN ('character', 'story')),
            owner_id text NOT NULL,
            image_count integer NOT NULL DEFAULT 0,
            deleted_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, owner_kind, owner_id)
        );

        -- Generation jobs as the events tell them (a projection, like the gateway's).
        CREATE TABLE generation_jobs (
            job_id text PRIMARY KEY,
            user_id text NOT NULL,
            kind text,
            tier text,
            status text NOT NULL,
            image_count integer,
            completed_count integer NOT NULL DEFAULT 0,
            failed_count integer NOT NULL DEFAULT 0,
            attempts integer NOT NULL DEFAULT 0,
            retries integer NOT NULL DEFAULT 0,
            queued_at timestamptz,
            started_at timestamptz,
            finished_at timestamptz,
            queue_wait_ms bigint,
            run_ms bigint,
            total_ms bigint,
            last_error text,
            last_error_type text,
            last_error_at timestamptz,
            reason_code text,
            estimated_cost_usd numeric(12, 6) NOT NULL DEFAULT 0,
            cost_usd numeric(12, 6) NOT NULL DEFAULT 0,
            -- pack_completed applied: its counts, duration and settled cost stand.
            settled boolean NOT NULL DEFAULT false,
            updated_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX generation_jobs_user ON generation_jobs (user_id, queued_at);
        CREATE TABLE generation_job_images (
            job_id text NOT NULL,
            image_index integer NOT NULL,
            image_id text,
            status text NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            -- (state_attempt, stage) orders this image's events so that a late one never
            -- moves it back; stage 4 (completed, finally failed) is terminal.
            state_attempt integer NOT NULL DEFAULT 0,
            stage smallint NOT NULL DEFAULT 0,
            provider text,
            model text,
            queued_at timestamptz,
            started_at timestamptz,
            finished_at timestamptz,
            queue_wait_ms bigint,
            duration_ms bigint,
            last_error text,
            last_error_type text,
            estimated_cost_usd numeric(12, 6) NOT NULL DEFAULT 0,
            cost_usd numeric(12, 6) NOT NULL DEFAULT 0,
            PRIMARY KEY (job_id, image_index)
        );
        ALTER TABLE deleted_images
            ADD COLUMN owner_kind text,
            ADD COLUMN owner_id text;
        CREATE INDEX deleted_images_owner ON deleted_images (user_id, owner_kind, owner_id);
        CREATE TABLE applied_events (
            event_id text PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        4,
        """
        -- Postprocess's technical quality score (0..1) and the components it combines.
        ALTER TABLE images
            ADD COLUMN quality_score real,
            ADD COLUMN quality_components jsonb NOT NULL DEFAULT '{}';
        """,
    ),
    (
        5,
        """
        -- applied_events is pruned by age (cleanup.applied_events_pruner): oldest first, in
        -- batches, without a scan of the whole table. Rows from before this migration
        -- already carry applied_at (NOT NULL DEFAULT now() since migration 3).
        CREATE INDEX applied_events_applied_at ON applied_events (applied_at);
        """,
    ),
    (
        6,
        """
        -- Storage no longer keeps a copy of every job's state from the events topic (the
        -- scheduler owns it, the gateway projects it for the API): its job tracker, its
        -- consumer group and these tables are gone.
        DROP TABLE IF EXISTS generation_job_images;
        DROP TABLE IF EXISTS generation_jobs;
        DROP TABLE IF EXISTS applied_events;
        """,
    ),
    (
        7,
        """
        -- Per-character face scores (a scene's faces assigned to its characters) and why an
        -- image that was due a consistency score has none.
        ALTER TABLE images
            ADD COLUMN character_scores jsonb NOT NULL DEFAULT '{}',
            ADD COLUMN not_scored_reason text;
        """,
    ),
    (
        8,
        """
        -- Image versions the scheduler ended unstored (discard_image): an attempt of one
        -- that still arrives is not stored after its job's last word. Pruned by age.
        CREATE TABLE discarded_images (
            image_id     text NOT NULL,
            version      integer NOT NULL,
            job_id       text NOT NULL,
            reason       text NOT NULL,
            discarded_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (image_id, version)
        );
        CREATE INDEX discarded_images_at ON discarded_images (discarded_at);
        """,
    ),
]
