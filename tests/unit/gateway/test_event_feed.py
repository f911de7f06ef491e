"""The SSE streams' shared read of the event log (services/gateway/eventfeed.py): one read
per wake for all of a user's streams, one encoding per event, exact positions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any

from services.gateway.routes.streams import follow
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import Gateway

STREAMS = 10


def _job(message: Any) -> str:
    job: str = json.loads(message.data)["job_id"]
    return job


async def _close(streams: list[AsyncGenerator[Any, None]]) -> None:
    for stream in streams:
        await stream.aclose()


async def test_one_read_per_wake_serves_every_stream_of_the_user(
    gateway: Gateway, user: str
) -> None:
    job = await gateway.generate(user, 1)
    state = gateway.state
    # Fresh until a wake-up (no re-read at the streams' 0.5 s polls): reads are counted.
    gateway.use_feed(max_age_s=3600)
    newest = await state.feed.newest_id(user)
    streams = [follow(state, user, None, newest) for _ in range(STREAMS)]
    pending = [asyncio.ensure_future(anext(s)) for s in streams]
    try:
        await asyncio.sleep(0.2)  # every stream is waiting for its first event
        assert not any(p.done() for p in pending)
        events = ev.pack(job, user, 1)
        reads = state.feed.reads
        for i, event in enumerate(events):
            await gateway.feed(event)
            got = await asyncio.wait_for(asyncio.gather(*pending), 10)
            assert len({str(m.id) for m in got}) == 1
            # The same message object for every stream: encoded once. (The first message
            # of each connection carries the reconnection hint, so it is its own.)
            if i > 0:
                assert len({id(m) for m in got}) == 1
            pending = [asyncio.ensure_future(anext(s)) for s in streams]
        # Each event wakes the streams once (the projection hands its commit's note to the
        # feed), and a wake-up costs at most one read for all ten streams; a read per
        # stream would be ten per wake-up.
        assert state.feed.reads - reads <= len(events)
    finally:
        for p in pending:
            p.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await _close(streams)
    assert state.feed.users == 0  # the last stream of a user drops the user's tail


async def test_streams_take_only_what_is_theirs_from_the_shared_read(
    gateway: Gateway, user: str
) -> None:
    mine, other_job = await gateway.generate(user, 1), await gateway.generate(user, 1)
    stranger_job = await gateway.generate("someone-else", 1)
    state = gateway.state
    newest = await state.feed.newest_id(user)
    everything = follow(state, user, None, newest)
    one_job = follow(state, user, mine, 0)
    stranger = follow(state, "someone-else", None, await state.feed.newest_id("someone-else"))
    first = [asyncio.ensure_future(anext(s)) for s in (everything, one_job, stranger)]
    try:
        await asyncio.sleep(0.2)
        await gateway.feed(
            ev.queued(other_job, user, 0, 1),
            ev.queued(stranger_job, "someone-else", 0, 1),
            ev.queued(mine, user, 0, 1),
        )
        a, b, c = await asyncio.wait_for(asyncio.gather(*first), 10)
        a2 = await asyncio.wait_for(anext(everything), 10)
        # Each event once, in id order; across jobs the log's order is the projection's.
        assert int(str(a.id)) < int(str(a2.id))
        assert {_job(a), _job(a2)} == {mine, other_job}
        assert _job(b) == mine and b.event == "generation_queued"
        assert b.id == (a if _job(a) == mine else a2).id
        assert _job(c) == stranger_job
    finally:
        for task in first:
            task.cancel()
        await _close([everything, one_job, stranger])


async def test_a_stream_behind_the_shared_tail_catches_up_exactly(
    gateway: Gateway, user: str
) -> None:
    """A tiny tail and page: resuming from the log's start reads page by page, in order,
    every event once, then joins the live tail."""
    state = gateway.state
    gateway.use_feed(max_age_s=2.0, keep=2, page=3)
    jobs = [await gateway.generate(user, 2) for _ in range(2)]
    for job in jobs:
        await gateway.feed(*ev.pack(job, user, 2))
    live = follow(state, user, None, await state.feed.newest_id(user))
    resumed = follow(state, user, None, 0)
    waiting = asyncio.ensure_future(anext(live))
    try:
        seen = [await asyncio.wait_for(anext(resumed), 10) for _ in range(14)]
        ids = [int(str(m.id)) for m in seen]
        assert ids == sorted(set(ids)) and len(ids) == 14
        assert [m.event for m in seen].count("pack_completed") == 2
        third = await gateway.generate(user, 1)
        await gateway.feed(ev.queued(third, user, 0, 1))
        after_live = await asyncio.wait_for(waiting, 10)
        after_resume = await asyncio.wait_for(anext(resumed), 10)
        assert after_live.id == after_resume.id and int(str(after_live.id)) > ids[-1]
    finally:
        waiting.cancel()
        await _close([live, resumed])
