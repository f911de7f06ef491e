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
]
