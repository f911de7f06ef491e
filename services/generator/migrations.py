"""The generator's own schema `generator`: what it must remember across pods and restarts."""

from __future__ import annotations

SCHEMA = "generator"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE cancelled_jobs (
            job_id text PRIMARY KEY,
            cancelled_at timestamptz NOT NULL DEFAULT now()
        );
        """,
    ),
    (
        2,
        """
        -- Pruned by age (imagegen.retention): a job's messages cannot come back after
        -- REPLAY_WINDOW, so neither can a reason to remember its cancel.
        CREATE INDEX cancelled_jobs_cancelled_at ON cancelled_jobs (cancelled_at);
        """,
    ),
]
