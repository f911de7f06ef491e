"""Server-Sent Events from the event log, resumable with `Last-Event-ID`.

Each message's id is the event's row id in the log, so a client that reconnects with
the last id it saw gets exactly what follows, in order. A job's stream ends after its
terminal event; the user-wide stream runs until the client leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from services.gateway import readmodel
from services.gateway.auth import StreamUser
from services.gateway.deps import StateDep
from services.gateway.state import GatewayState

router = APIRouter(tags=["events"])


def _resume_from(
    header: Annotated[int | None, Header(alias="Last-Event-ID", ge=0)] = None,
    query: Annotated[int | None, Query(alias="lastEventId", ge=0)] = None,
) -> int:
    """The last id the client saw (header first, as browsers send it on reconnect)."""
    if header is not None:
        return header
    return query or 0


ResumeFrom = Annotated[int, Depends(_resume_from)]


async def follow(
    state: GatewayState, user_id: str, job_id: str | None, after: int
) -> AsyncGenerator[ServerSentEvent, None]:
    """The user's events (one job's, or all) after id `after`, then live as they arrive."""
    pool = state.pool
    while True:
        # Listen before reading: an event committed after the read still wakes us.
        woken = state.signal.listen(user_id)
        batch = await readmodel.events_after(pool, user_id, job_id, after)
        for event in batch:
            yield ServerSentEvent(data=event.payload, event=event.type, id=str(event.id))
            after = event.id
            if job_id is not None and event.type in readmodel.TERMINAL_EVENT_TYPES:
                return
        if batch:
            continue
        if job_id is not None:
            job_status = await readmodel.job_status(pool, user_id, job_id)
            # Terminal with nothing left to read: the client already has the last event.
            if job_status is None or job_status.terminal:
                return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), state.settings.sse_poll_s)


def _response(
    state: GatewayState, user_id: str, job_id: str | None, after: int
) -> EventSourceResponse:
    return EventSourceResponse(
        follow(state, user_id, job_id, after),
        ping=state.settings.sse_ping_s,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/api/v1/jobs/{job_id}/events")
async def job_events(
    job_id: str, user: StreamUser, state: StateDep, after: ResumeFrom
) -> EventSourceResponse:
    if await readmodel.job_status(state.pool, user.user_id, job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return _response(state, user.user_id, job_id, after)


@router.get("/api/v1/events")
async def user_events(user: StreamUser, state: StateDep, after: ResumeFrom) -> EventSourceResponse:
    return _response(state, user.user_id, None, after)
