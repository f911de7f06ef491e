"""The scheduler's schema. Numbered, applied once each by `imagegen.db.migrate`."""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE jobs (
            job_id text PRIMARY KEY,
            user_id text NOT NULL,
            tier text NOT NULL,
            kind text NOT NULL,
            image_count integer NOT NULL,
            status text NOT NULL,
            expanded boolean NOT NULL DEFAULT false,
            request jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        );
        CREATE INDEX jobs_user_status ON jobs (user_id, status);
        CREATE TABLE job_images (
            job_id text NOT NULL REFERENCES jobs (job_id),
            image_index integer NOT NULL,
            image_id text NOT NULL UNIQUE,
            status text NOT NULL,
            attempt integer NOT NULL DEFAULT 1,
            message jsonb NOT NULL,
            error text,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, image_index)
        );
        """,
    ),
]

MIGRATIONS.append(
    (
        2,
        """
        -- Jobs: 'queued' waits for a slot of the user's in-flight cap, 'running' holds one.
        ALTER TABLE jobs
            ADD COLUMN topic_tier text,
            ADD COLUMN story_id text,
            ADD COLUMN budget_day date,
            ADD COLUMN reason_code text,
            ADD COLUMN reason text,
            ADD COLUMN activated_at timestamptz;
        CREATE INDEX jobs_user_queue ON jobs (user_id, tier, status, created_at);

        -- Images: waiting -> dispatched -> (retry_wait -> dispatched)* -> stored | failed,
        -- or cancelled. A regeneration reuses the image id with a higher version.
        ALTER TABLE job_images DROP CONSTRAINT job_images_image_id_key;
        ALTER TABLE job_images
            ADD COLUMN version integer NOT NULL DEFAULT 1,
            ADD COLUMN variation integer NOT NULL DEFAULT 0,
            ADD COLUMN provider_attempt integer NOT NULL DEFAULT 1,
            ADD COLUMN offer_index integer NOT NULL DEFAULT 0,
            ADD COLUMN offers jsonb NOT NULL DEFAULT '[]',
            ADD COLUMN depends_on integer[] NOT NULL DEFAULT '{}',
            ADD COLUMN phase text NOT NULL DEFAULT '',
            ADD COLUMN story_id text,
            ADD COLUMN due_at timestamptz,
            ADD COLUMN stored_keys jsonb;
        CREATE INDEX job_images_image_version ON job_images (image_id, version);
        CREATE INDEX job_images_due ON job_images (due_at) WHERE status = 'retry_wait';
        CREATE INDEX job_images_story ON job_images (story_id, status) WHERE story_id IS NOT NULL;

        -- One row per user: locked to serialise that user's slot decisions across instances.
        CREATE TABLE users (user_id text PRIMARY KEY);

        -- The ledger. Day rows carry running totals (locked for every change); entries are
        -- the audit trail they must always equal; generations hold each reservation.
        CREATE TABLE budget_days (
            day date PRIMARY KEY,
            budget_usd numeric(14, 6) NOT NULL,
            reserved_usd numeric(14, 6) NOT NULL DEFAULT 0,
            spent_usd numeric(14, 6) NOT NULL DEFAULT 0,
            alerted integer[] NOT NULL DEFAULT '{}'
        );
        CREATE TABLE user_budget_days (
            day date NOT NULL,
            user_id text NOT NULL,
            reserved_usd numeric(14, 6) NOT NULL DEFAULT 0,
            spent_usd numeric(14, 6) NOT NULL DEFAULT 0,
            PRIMARY KEY (day, user_id)
        );
        CREATE TABLE generations (
            job_id text NOT NULL,
            image_index integer NOT NULL,
            variation integer NOT NULL,
            seed bigint NOT NULL,
            day date NOT NULL,
            user_id text NOT NULL,
            provider text NOT NULL,
            model text NOT NULL,
            estimated_usd numeric(14, 6) NOT NULL,
            reserved_usd numeric(14, 6) NOT NULL,
            actual_usd numeric(14, 6),
            status text NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (job_id, image_index, variation)
        );
        CREATE TABLE ledger_entries (
            id bigserial PRIMARY KEY,
            day date NOT NULL,
            user_id text NOT NULL,
            job_id text NOT NULL,
            image_index integer NOT NULL,
            variation integer NOT NULL,
            entry text NOT NULL,
            reserved_delta numeric(14, 6) NOT NULL,
            spent_delta numeric(14, 6) NOT NULL,
            provider text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX ledger_entries_day ON ledger_entries (day);
        CREATE VIEW cost_by_provider AS
            SELECT provider, model, count(*) AS images, sum(actual_usd) AS total_usd,
                   avg(actual_usd) AS mean_usd
            FROM generations WHERE actual_usd IS NOT NULL
            GROUP BY provider, model;

        -- Built reference sets (DECISIONS.md #8): a portrait of this appearance reuses them.
        CREATE TABLE reference_sets (
            user_id text NOT NULL,
            fingerprint text NOT NULL,
            character_id text NOT NULL,
            keys text[] NOT NULL,
            job_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (user_id, fingerprint)
        );

        -- Transactional outbox: handlers write here in their transaction; the relay publishes.
        CREATE TABLE outbox (
            id bigserial PRIMARY KEY,
            topic text NOT NULL,
            key text,
            value bytea NOT NULL,
            headers jsonb NOT NULL DEFAULT '{}'
        );
        """,
    )
)

MIGRATIONS.append(
    (
        3,
        """
        -- The trace of the request that created the job: work for the job that starts
        -- outside that request (retries from the ticker, activation when another job ends)
        -- still joins the request's trace.
        ALTER TABLE jobs ADD COLUMN traceparent text;
        """,
    )
)

MIGRATIONS.append(
    (
        4,
        """
        -- A dispatched image's due_at is its attempt's deadline once the generator said it
        -- started (then completed); the ticker retries attempts that pass it.
        ALTER TABLE job_images ADD COLUMN awaiting text;
        CREATE INDEX job_images_overdue ON job_images (due_at) WHERE status = 'dispatched';
        """,
    )
)

MIGRATIONS.append(
    (
        5,
        """
        -- Output-safety refusals (postprocess's image classifier) an image has had: the
        -- first is re-drawn once with a new seed, the next is final.
        ALTER TABLE job_images ADD COLUMN safety_redraws integer NOT NULL DEFAULT 0;
        """,
    )
)
