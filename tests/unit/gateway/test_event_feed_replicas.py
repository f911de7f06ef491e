"""Two gateway replicas on one real PostgreSQL, each projecting its own share of the events:
every stream on either replica gets every event of its user once, in log order, with its
own replica's commits taken from memory and the other's read (services/gateway/tails.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import asyncpg
import pytest

from schemas.events import EventBase
from services.gateway.migrations import SCHEMA
from services.gateway.notify import EVENT_LOG_LOCK, PgEventSignal
from services.gateway.routes.streams import follow
from services.gateway.sse import SseMessage
from tests.unit.gateway import factories as ev
from tests.unit.gateway.conftest import running_gateway
from tests.unit.gateway.listen_support import drop_listeners

# No safety-net re-read within a test (sse_poll_s): only the commits' notes can deliver.
QUIET_S = 3600.0


async def _connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn, server_settings={"search_path": SCHEMA})


async def _collect(stream: AsyncGenerator[SseMessage, None], into: list[SseMessage]) -> None:
    async for message in stream:
        into.append(message)


async def _until(got: list[Any], count: int) -> None:
    for _ in range(2000):
        if len(got) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{len(got)} of {count} messages")


async def _rolled_back_append(dsn: str, job: str, user: str) -> None:
    """An append that takes a log id under the log lock, then rolls back: a gap in the ids."""
    conn = await _connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", EVENT_LOG_LOCK)
            await conn.execute(
                "INSERT INTO events (event_id, job_id, user_id, type, payload)"
                " VALUES ($1, $2, $3, 'job_progress', '{}')",
                f"rolled-back-{uuid.uuid4().hex}",
                job,
                user,
            )
            raise _RollBack
    except _RollBack:
        pass
    finally:
        await conn.close()


class _RollBack(Exception):
    pass


async def _logged(dsn: str, user: str, after: int) -> list[tuple[int, str]]:
    conn = await _connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, type FROM events WHERE user_id = $1 AND id > $2 ORDER BY id", user, after
        )
    finally:
        await conn.close()
    return [(r["id"], r["type"]) for r in rows]


def _seen(messages: list[SseMessage]) -> list[tuple[int, str]]:
    return [(int(str(m.id)), str(m.event)) for m in messages]


async def test_streams_on_two_replicas_get_every_commit_once_in_order(
    gateway_db_url: str, user: str
) -> None:
    async with (
        running_gateway(gateway_db_url, sse_poll_s=QUIET_S, sse_ping_s=QUIET_S) as a,
        running_gateway(gateway_db_url, sse_poll_s=QUIET_S, sse_ping_s=QUIET_S) as b,
    ):
        jobs = [await a.generate(user, 2), await b.generate(user, 2)]
        start = await a.state.feed.newest_id(user)
        streams = {
            "a-user": follow(a.state, user, None, start),
            "b-user": follow(b.state, user, None, start),
            "b-user-2": follow(b.state, user, None, start),  # shares b's tail
            "a-job": follow(a.state, user, jobs[1], 0),  # replays from the log, then live
        }
        got: dict[str, list[SseMessage]] = {name: [] for name in streams}
        tasks = [
            asyncio.create_task(_collect(stream, got[name])) for name, stream in streams.items()
        ]
        try:
            await asyncio.sleep(0.2)  # every stream has read its start and waits
            reads = {"a": a.state.feed.reads, "b": b.state.feed.reads}
            packs: list[EventBase] = [e for job in jobs for e in ev.pack(job, user, 2)]
            # Two commits on a, two on b, ...
            plan = [((a, b)[(n // 2) % 2], [event]) for n, event in enumerate(packs)]
            # A redelivery in a batch: the batch's first attempt appends, fails on the
            # duplicate and rolls back (a gap in the ids), then applies the rest.
            extra = ev.progress(jobs[1], user, 0, 3)
            plan.insert(7, (plan[7][0], [packs[0], extra]))
            events = [*packs[:7], extra, *packs[7:]]
            for n, (replica, batch) in enumerate(plan):
                await replica.feed(*batch)
                if n == 3:
                    await _rolled_back_append(gateway_db_url, jobs[0], user)  # another gap
            logged = await _logged(gateway_db_url, user, start)
            assert [kind for _, kind in logged] == [e.model_dump()["type"] for e in events]
            ids = [event_id for event_id, _ in logged]
            assert ids != list(range(ids[0], ids[0] + len(ids)))  # the gaps are there
            for name in ("a-user", "b-user", "b-user-2"):
                await _until(got[name], len(logged))
            job_events = [row for row, e in zip(logged, events, strict=True) if e.job_id == jobs[1]]
            await _until(got["a-job"], len(job_events))
            for name in ("a-user", "b-user", "b-user-2"):
                assert _seen(got[name]) == logged, name
            assert _seen(got["a-job"]) == job_events
            # A last event from each replica, once every feed has taken in all before: what
            # arrives next is it, nothing twice, and each came from its replica's memory.
            pushed = {"a": a.state.feed.pushed, "b": b.state.feed.pushed}
            for n, replica in enumerate((a, b), start=1):
                closing = ev.progress(jobs[0], user, 1, 10 + n)
                await replica.feed(closing)
                for name in ("a-user", "b-user", "b-user-2"):
                    await _until(got[name], len(logged) + n)
                    assert len(got[name]) == len(logged) + n
                    assert _seen(got[name])[-1][1] == "generation_progress"
            assert a.state.feed.pushed == pushed["a"] + 1
            assert b.state.feed.pushed == pushed["b"] + 1
            # Each replica read only the other's commits (at most once per commit, shared
            # by its streams).
            own = {
                "a": sum(1 for replica, _ in plan if replica is a) + 1,
                "b": sum(1 for replica, _ in plan if replica is b) + 1,
            }
            # Slack: a's job stream reads the log once when it finds its job over, and on a
            # loaded machine the streams' first reads may fall after the count began.
            assert a.state.feed.reads - reads["a"] <= own["b"] + 3
            assert b.state.feed.reads - reads["b"] <= own["a"] + 3
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in streams.values():
                await stream.aclose()


async def test_a_replica_whose_listener_was_lost_still_gets_what_it_missed(
    gateway_db_url: str, user: str
) -> None:
    async with (
        running_gateway(gateway_db_url, sse_poll_s=QUIET_S, sse_ping_s=QUIET_S) as a,
        running_gateway(gateway_db_url, sse_poll_s=QUIET_S, sse_ping_s=QUIET_S) as b,
    ):
        job = await a.generate(user, 1)
        start = await b.state.feed.newest_id(user)
        got: list[SseMessage] = []
        stream = follow(b.state, user, None, start)
        task = asyncio.create_task(_collect(stream, got))
        try:
            await asyncio.sleep(0.2)
            events = ev.pack(job, user, 1)
            await a.feed(events[0])
            await _until(got, 1)
            # b's listening connection goes; what a commits meanwhile sends notes b
            # never hears. b's reconnect wakes its streams, and the feed reads the gap.
            await drop_listeners(gateway_db_url)
            await a.feed(*events[1:])
            await _until(got, len(events))
            logged = await _logged(gateway_db_url, user, start)
            assert _seen(got) == logged
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stream.aclose()


async def test_a_job_found_over_ends_its_stream_with_every_event_even_before_the_note(
    gateway_db_url: str, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's stream asks the job's status, then reads: its closing event committed with
    the status, so the read must be the log's, not a tail still waiting for the note."""
    async with running_gateway(gateway_db_url, sse_ping_s=0.05) as gateway:
        feed = gateway.state.feed
        held: list[object] = []
        monkeypatch.setattr(feed.tails, "on_note", held.append)  # the notes never arrive
        job = await gateway.generate(user, 1)
        got: list[SseMessage] = []
        stream = follow(gateway.state, user, job, 0)
        task = asyncio.create_task(_collect(stream, got))
        try:
            await asyncio.sleep(0.2)
            events = ev.pack(job, user, 1)
            await gateway.feed(*events)
            await asyncio.wait_for(task, 10)  # the stream ends after pack_completed
            sent = [m.event for m in got if m.event is not None]  # not the heartbeats
            assert sent == [e.model_dump()["type"] for e in events]
            assert held  # the notes were sent, and held back
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await stream.aclose()


async def test_a_replica_alone_sends_no_notify_until_another_one_listens(
    gateway_db_url: str, user: str
) -> None:
    """Alone, a replica's commits reach its own streams from memory and send no NOTIFY
    (each would cost every listening connection a transaction); once a second replica
    listens, its streams get every commit of the first."""
    async with running_gateway(gateway_db_url, sse_poll_s=QUIET_S, sse_ping_s=QUIET_S) as a:
        signal = a.state.signal
        assert isinstance(signal, PgEventSignal)
        job = await a.generate(user, 2)
        start = await a.state.feed.newest_id(user)
        got: dict[str, list[SseMessage]] = {"a": [], "b": []}
        streams = [follow(a.state, user, None, start)]
        tasks = [asyncio.create_task(_collect(streams[0], got["a"]))]
        try:
            await asyncio.sleep(0.2)
            events = ev.pack(job, user, 2)
            reads, heard = a.state.feed.reads, signal.notifications
            await a.feed(*events[:3])
            await _until(got["a"], 3)
            assert signal.notifications == heard  # no NOTIFY, not even to itself
            assert a.state.feed.reads == reads  # its own rows came from memory
            async with running_gateway(gateway_db_url, sse_poll_s=QUIET_S, sse_ping_s=QUIET_S) as b:
                streams.append(follow(b.state, user, None, start))
                tasks.append(asyncio.create_task(_collect(streams[1], got["b"])))
                await _until(got["b"], 3)  # the log up to now, read
                await a.feed(*events[3:])
                logged = await _logged(gateway_db_url, user, start)
                await _until(got["a"], len(logged))
                await _until(got["b"], len(logged))
                assert _seen(got["a"]) == _seen(got["b"]) == logged
                assert signal.notifications > heard  # a's own, now that b listens
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in streams:
                await stream.aclose()


async def test_a_new_listener_waits_out_an_append_in_progress(gateway_db_url: str) -> None:
    """An append that looked for listeners before this one connected sends it no note: the
    listener counts as live only once that append has committed (the log lock)."""
    holder = await _connect(gateway_db_url)
    committed = asyncio.Event()

    async def append_commits_later() -> None:
        await asyncio.sleep(1.0)
        await holder.execute("COMMIT")
        committed.set()

    try:
        await holder.execute("BEGIN")
        await holder.execute("SELECT pg_advisory_xact_lock($1)", EVENT_LOG_LOCK)
        later = asyncio.create_task(append_commits_later())
        async with PgEventSignal(gateway_db_url) as signal:  # waits up to 5 s to be live
            assert signal.connected
            assert committed.is_set()  # not live before the append was over
        await later
    finally:
        await holder.close()
