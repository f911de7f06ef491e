"""Server-Sent Events from the event log, resumable with `Last-Event-ID`.

Each message's id is the event's row id in the log (appended in id order, see the
projection), so a client that reconnects with the last id it saw gets exactly what
follows, in order, from any replica and after any restart. Streams wake on the
projection's NOTIFY (see notify.py); they read the log through the gateway's `EventFeed`
(eventfeed.py), which keeps each user's newest events in memory from the commits' notes
(this replica's own rows without a query, another replica's with one read shared by every
stream) and re-reads every `sse_poll_s` only while it has no listening connection; each
event is encoded once for all streams. A job's stream replays
the job from its start (or resumes), adds `queue_status` messages while the job waits in
its tier's queue, and ends after the job's closing
`pack_completed`; the user-wide stream is live from the moment of connecting (or resumes
after `Last-Event-ID`) and runs until the client leaves. Heartbeats are SSE comments
after `sse_ping_s` without a message. A stream has no timer of its own: the feed's ticker
wakes every stream for its re-read and heartbeat, and ends them all at server shutdown;
the response (sse.py) is a plain send loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, status
from starlette.types import Scope

from imagegen.metrics import instruments
from schemas.events import JobStatus
from services.gateway import queueing, readmodel, sse
from services.gateway.auth import StreamUser
from services.gateway.deps import StateDep
from services.gateway.problems import responses
from services.gateway.sse import SseMessage, SseResponse
from services.gateway.state import GatewayState

router = APIRouter(tags=["events"])

# Every job kind ends with one pack_completed (cancelled jobs too, after job_cancelled).
JOB_END_EVENT = "pack_completed"

_LAST_EVENT_ID_DOC = "The id of the last event received; the stream resumes after it."


def _resume_from(
    header: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, description=_LAST_EVENT_ID_DOC)
    ] = None,
    query: Annotated[
        int | None,
        Query(
            alias="lastEventId",
            ge=0,
            description=_LAST_EVENT_ID_DOC + " For clients that cannot set the header.",
        ),
    ] = None,
) -> int | None:
    """The last id the client saw (header first: a browser's EventSource sends it on
    reconnect); None when the client gives none."""
    if header is not None:
        return header
    return query


ResumeFrom = Annotated[int | None, Depends(_resume_from)]
QUEUE_EVENT = "queue_status"
"""An SSE message without an id (so resuming is unaffected): the job's place in its tier's
queue, sent when it changes, and `{"queue": null}` once no image of it waits."""


async def _job_is_over(state: GatewayState, user_id: str, job_id: str) -> bool:
    """True when nothing more will be logged for the job's stream.

    A finished job's closing event is logged in the transaction that sets its status,
    so a terminal status followed by a read with nothing left means the client has it.
    A cancelled job still gets its running images' outcomes, then pack_completed (which
    sets finished_at); should that never come, its stream ends once the job has been
    quiet for `sse_cancel_grace_s`.
    """
    row = await state.pool.fetchrow(
        "SELECT status, finished_at IS NOT NULL AS finished,"
        " now() - updated_at > make_interval(secs => $3) AS quiet"
        " FROM jobs WHERE id = $1 AND user_id = $2",
        job_id,
        user_id,
        state.settings.sse_cancel_grace_s,
    )
    if row is None:
        return True
    job_status = JobStatus(row["status"])
    if job_status is JobStatus.CANCELLED:
        return bool(row["finished"] or row["quiet"])
    return job_status.terminal


def follow(
    state: GatewayState, user_id: str, job_id: str | None, after: int, *, queue: bool = False
) -> AsyncGenerator[SseMessage, None]:
    """The user's events (one job's, or all) after id `after`, then live as they arrive;
    with `queue`, a job's stream also says where the job waits (queue_status)."""
    # One generator, not one wrapping another: closing it runs every cleanup at once.
    return _follow(state, user_id, job_id, after, queue)


async def _queue_message(
    state: GatewayState, job_id: str, last: str | None
) -> tuple[SseMessage | None, str | None]:
    """A queue_status message if the job's queue status differs from `last` (its JSON)."""
    found = await queueing.queue_status(state.pool, job_id)
    queue = None if found is None else found.model_dump(mode="json", by_alias=True)
    # The estimate's start time moves with the clock: compare what the client acts on.
    key = None if queue is None else f"{queue['tier']}:{queue['position']}"
    if key == last:
        return None, last
    body = json.dumps({"jobId": job_id, "queue": queue})
    return sse.message(body, event=QUEUE_EVENT), key


async def _follow(
    state: GatewayState, user_id: str, job_id: str | None, after: int, queue: bool
) -> AsyncGenerator[SseMessage, None]:
    settings = state.settings
    feed = state.feed
    retry: int | None = settings.sse_retry_ms
    queued: str | None = None  # nothing to say until an image of it waits in a queue
    position = after  # every event of the stream's with an id up to here has been sent
    check_over = True
    ping_s = settings.sse_ping_s
    sent_at = time.monotonic()  # heartbeats go out after this long without a message
    connections = instruments().sse_connections
    connections.add(1)
    feed.attach(user_id, tick_s=min(settings.sse_poll_s, ping_s))
    try:
        while not feed.closing:
            # Listen before reading: an event committed after the read still wakes us.
            woken = state.signal.listen(user_id)
            # Ask whether the job is over BEFORE reading: its closing event commits together
            # with its status, so a job found over here has all its events in the read below
            # (an exact one: the feed may not have the commit's note yet).
            # A job's status changes with an event of its own, or with time (a cancelled
            # job's grace): so only on the first pass, after its own events, and at ticks.
            over = job_id is not None and check_over and await _job_is_over(state, user_id, job_id)
            batch, position = await feed.after(user_id, job_id, position, exact=over)
            for event in batch:
                if retry is not None:
                    yield event.with_retry(retry)  # said once per connection
                    retry = None
                else:
                    yield event.message  # encoded once for every stream that sends it
                if job_id is not None and event.type == JOB_END_EVENT:
                    return
            if batch:
                sent_at = time.monotonic()
                check_over = True
                continue
            if over:
                return
            if queue and job_id is not None:
                message, queued = await _queue_message(state, job_id, queued)
                if message is not None:
                    yield message
                    sent_at = time.monotonic()
            if time.monotonic() - sent_at >= ping_s:
                yield sse.comment(f"ping - {datetime.now(UTC)}")
                sent_at = time.monotonic()
            # Rest until new events or the feed's next tick (its re-read and heartbeat).
            tick = feed.ticks
            await woken.wait()
            check_over = feed.ticks != tick
    finally:
        feed.detach(user_id)
        connections.add(-1)


def _response(state: GatewayState, user_id: str, job_id: str | None, after: int) -> SseResponse:
    return SseResponse(follow(state, user_id, job_id, after, queue=job_id is not None))


def is_event_stream(scope: Scope) -> bool:
    """Whether a request asks for one of the streams below (telemetry gives them a span
    that ends when the stream is answered, not when it closes hours later)."""
    path: str = scope.get("path", "")
    return scope.get("method") == "GET" and path.startswith("/api/v1/") and path.endswith("/events")


_SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: one message per event, `id:` = the log id,"
        " `event:` = its type, `data:` = the event envelope (JSON); `: ping` comments"
        " as heartbeats.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get(
    "/api/v1/jobs/{job_id}/events",
    summary="Follow one job's events (SSE)",
    responses={**_SSE_RESPONSE, **responses(401, 404, 422)},
    response_class=SseResponse,
)
async def job_events(
    job_id: str, user: StreamUser, state: StateDep, after: ResumeFrom
) -> SseResponse:
    """The job's events so far, then live; ends after the job's `pack_completed`.

    Authenticate with a bearer token or `?stream_token=` (from `POST /api/v1/stream-tokens`).
    """
    if await readmodel.job_status(state.pool, user.user_id, job_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return _response(state, user.user_id, job_id, after or 0)


@router.get(
    "/api/v1/events",
    summary="Follow all of the caller's events (SSE)",
    responses={**_SSE_RESPONSE, **responses(401, 422)},
    response_class=SseResponse,
)
async def user_events(user: StreamUser, state: StateDep, after: ResumeFrom) -> SseResponse:
    """Every event of every job of the caller from now on (live: no replay of history),
    or after `Last-Event-ID` when resuming; runs until the client disconnects."""
    if after is None:
        after = await state.feed.newest_id(user.user_id)
    return _response(state, user.user_id, None, after)
