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
