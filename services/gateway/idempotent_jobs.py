"""A job-creating route and the request's `Idempotency-Key`: one transaction, one job id.

The idempotency middleware claims the key, runs the route, then stores its response. Had
the route's transaction committed a job and the replica died before that store, a retry
with the key, once the claim went stale, ran the route again: a second job. So a route that
creates a job, inside its own transaction:

- takes its job id from the claim (`NewJob.job_id`): the claim keeps one id for its key
  and request across retries, so a command that reached the broker from a transaction
  that then never committed is the same job when the retry sends it again (the scheduler
  ignores a job id it has), not a second one;
- records its response as the key's answer (`NewJob.record`) before it publishes: the
  job, its command and the answer commit together or not at all. A retry after a crash
  then replays that answer. The middleware still stores the response as sent, over it.

Without a key, or on the claim's replay, `NewJob` is a fresh job id and `record` does
nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, HTTPException, Request, status
from pydantic import BaseModel

SCOPE_KEY = "idempotency_claim"
"""Where the middleware leaves the claim in the request's scope state."""


@dataclass(frozen=True)
class ClaimedKey:
    """The key this request holds: whose, which, the claim token and the job id it keeps."""

    user_id: str
    key: str
    token: str
    job_id: str


def render(response: BaseModel) -> bytes:
    """The JSON body FastAPI sends for a `response_model` (by alias, compact)."""
    content = response.model_dump(mode="json", by_alias=True)
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()


@dataclass(frozen=True)
class NewJob:
    """The id of the job (or character) a route is about to create, and its key's claim,
    if any."""

    job_id: str
    claim: ClaimedKey | None = None

    async def record(
        self, conn: asyncpg.Connection, response: BaseModel, status_code: int = 202
    ) -> None:
        """Store `response` as the key's answer in the caller's (open) transaction. A claim
        lost meanwhile (another replica took it over as stale) rolls the caller back with
        a 409: that replica makes the job, under the same id."""
        if self.claim is None:
            return
        done = await conn.fetchval(
            "UPDATE idempotency_keys SET state = 'done', status_code = $4, headers = $5::jsonb,"
            " body = $6 WHERE user_id = $1 AND key = $2 AND claim = $3 RETURNING true",
            self.claim.user_id,
            self.claim.key,
            self.claim.token,
            status_code,
            json.dumps([["content-type", "application/json"]]),
            render(response),
        )
        if not done:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                "a request with this Idempotency-Key is being handled elsewhere; retry shortly",
                headers={"Retry-After": "1"},
            )


def new_job(request: Request) -> NewJob:
    claim = request.scope.get("state", {}).get(SCOPE_KEY)
    if isinstance(claim, ClaimedKey):
        return NewJob(claim.job_id, claim)
    return NewJob(str(uuid.uuid4()))


NewJobDep = Annotated[NewJob, Depends(new_job)]
