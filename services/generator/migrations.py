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
]
