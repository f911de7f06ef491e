"""SSE fan-out: how many concurrent event streams one gateway holds with events flowing.

Starts the whole stack (`imagegen up` with the instant backend), then ramps the number of
open `GET /api/v1/events` streams (spread over `--users` users, as browser tabs are) up
through `--clients`. At each level, after the new streams are open:

- memory: the gateway process's RSS (VmRSS) against its RSS before any stream, per stream;
- events: one-image packs POSTed at `--rate` jobs/s for `--duration` s, round-robin over the
  users (each job gives ~6 events to every stream of its user); per delivery, the lag from
  the event's own timestamp (the service that emitted it) to its arrival at the client,
  and the fan-out spread (arrival minus the first arrival of the same event at any
  stream); deliveries missing (an event one stream of the user got and another did not)
  and streams that failed or closed;
- the gateway's garbage-collector pauses while events flowed (count, total and longest per
  generation: each one stops every stream), from a sitecustomize hook this script writes.

Delivery lag is measured two ways: from the event's append to the log (its row's
`created_at`, read back from the database after each level: the projection's transaction
start, so a hair early) and from its emission by the service (the event's own `time`).

Then, unless `--tracemalloc 0`, a second stack whose gateway traces its allocations
(tracemalloc, started by a sitecustomize hook this script writes, which also makes the
gateway dump its traced memory on SIGUSR2): the traced memory that `--tracemalloc` open
streams add, per stream, and the allocation sites that grew most. Tracing slows the
gateway, so no lag is taken from that stack.

The client side is one asyncio process on the same 2 cores as the stack: at high levels
its own CPU use is part of the lag. The previous results file is the "before" of the
comparison printed at the end (`--before` names another).

    .venv/bin/python bench/sse_fanout.py [--clients 100,500,1000,2000] [--rate 1] [--users 10]
        [--tracemalloc 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    RESULTS,
    OurStack,
    SseEvent,
    event_time,
    machine,
    ms,
    our_stack,
    paced,
    percentile,
    sse_follow,
    write_result,
)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Level:
    """Deliveries seen while one level's events flowed."""

    arrivals: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    lags: list[float] = field(default_factory=list)
    user_of: dict[str, str] = field(default_factory=dict)

    async def append_lags(self, database: str) -> list[float]:
        """Receipt minus the event's append to the log, for every delivery."""
        import asyncpg

        ids = [int(i) for i in self.arrivals if i.isdigit()]
        conn = await asyncpg.connect(database)
        try:
            rows = await conn.fetch(
                "SELECT id, extract(epoch FROM created_at)::float8 AS at FROM gateway.events"
                " WHERE id = ANY($1::bigint[])",
                ids,
            )
        finally:
            await conn.close()
        appended = {str(r["id"]): r["at"] for r in rows}
        return [
            wall - appended[i]
            for i, walls in self.arrivals.items()
            if i in appended
            for wall in walls
        ]


class Fanout:
    def __init__(self, stack: OurStack, users: int) -> None:
        self.stack = stack
        self.users = [f"fan-{i}" for i in range(users)]
        self.tokens = {u: stack.token(u) for u in self.users}
        self.characters: dict[str, str] = {}
        self.streams: list[asyncio.Task[None]] = []
        self.per_user: dict[str, int] = defaultdict(int)
        self.opened = 0
        self.open_failures = 0
        self.dropped = 0
        self.level: Level | None = None

    def on_event(self, user: str, event: SseEvent) -> None:
        level = self.level
        if level is None:
            return
        level.arrivals[event.id].append(event.wall)
        level.user_of[event.id] = user
        emitted = event_time(event.data)
        if emitted is not None:
            level.lags.append(event.wall - emitted)

    async def _stream(self, user: str) -> None:
        was_open = False

        def opened() -> None:
            nonlocal was_open
            was_open = True
            self.opened += 1

        url = f"{self.stack.gateway}/api/v1/events"
        try:
            token = self.tokens[user]
            await sse_follow(url, token, lambda e: self.on_event(user, e), on_open=opened)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError):
            if not was_open:
                self.open_failures += 1
        if was_open:
            self.dropped += 1  # the server ended or broke a stream that should run on

    async def grow_to(self, clients: int, wait_s: float = 120.0) -> float:
        """Open streams until `clients` are open (or `wait_s` passed); seconds it took."""
        started = time.monotonic()
        target = self.opened + self.open_failures + (clients - len(self.streams))
        while len(self.streams) < clients:
            user = self.users[len(self.streams) % len(self.users)]
            self.per_user[user] += 1
            self.streams.append(asyncio.create_task(self._stream(user)))
            if len(self.streams) % 50 == 0:
                await asyncio.sleep(0)  # let the connections start in batches
        deadline = time.monotonic() + wait_s
        while self.opened + self.open_failures < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    def alive(self) -> int:
        return sum(1 for t in self.streams if not t.done())

    async def prepare(
        self, client: httpx.AsyncClient
    ) -> Callable[[int], Coroutine[Any, Any, None]]:
        """A character per user; returns `fire(i)`, which POSTs a one-image pack for the
        i-th user (round-robin)."""
        for user in self.users:
            response = await client.post(
                "/api/v1/characters",
                json={"name": "Mira", "attributes": {"hairColour": "red"}, "artStyle": "realistic"},
                headers={"Authorization": f"Bearer {self.tokens[user]}"},
            )
            response.raise_for_status()
            self.characters[user] = response.json()["id"]

        async def fire(i: int) -> None:
            user = self.users[i % len(self.users)]
            await client.post(
                "/api/generate",
                json={"character_id": self.characters[user], "image_count": 1},
                headers={"Authorization": f"Bearer {self.tokens[user]}"},
            )

        return fire

    async def close(self) -> None:
        for task in self.streams:
            task.cancel()
        await asyncio.gather(*self.streams, return_exceptions=True)


async def gc_pauses(pid: int, folder: Path, timeout: float = 30.0) -> dict[str, Any] | None:
    """The gateway's garbage-collector pauses since the previous call (None if it did not
    answer in time): count, total and longest per generation."""
    path = folder / f"{pid}.gc.json"
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.1)
    found: dict[str, Any] = json.loads(path.read_text())
    return {k: [round(v, 1) for v in values] for k, values in found.items()}


async def run(stack: OurStack, args: argparse.Namespace, gc_dir: Path) -> dict[str, Any]:
    fan = Fanout(stack, args.users)
    gateway_pid = stack.service_pids()["gateway"]
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        fire = await fan.prepare(client)

        await paced(2, 3, fire)  # warm the pipeline before any measurement
        await asyncio.sleep(3)
        rss_before = rss_bytes(gateway_pid)
        levels = []
        try:
            for clients in args.clients:
                open_s = await fan.grow_to(clients)
                await asyncio.sleep(2)  # let the gateway settle after the connection storm
                rss = rss_bytes(gateway_pid)
                await gc_pauses(gateway_pid, gc_dir)  # count from here
                level = fan.level = Level()
                await paced(args.rate, args.duration, fire)
                await asyncio.sleep(args.settle)
                fan.level = None
                result = summarise(fan, level, clients, open_s, rss, rss_before)
                result["gateway_gc_while_events"] = await gc_pauses(gateway_pid, gc_dir)
                appended = await level.append_lags(stack.database)
                result["lag_from_append_ms"] = {
                    q: ms(percentile(appended, int(q[1:]))) for q in ("p50", "p95", "p99")
                }
                levels.append(result)
                print(
                    f"{clients:5d} streams ({result['open_streams']} open, "
                    f"{result['open_failures']} failed): "
                    f"{result['rss_per_stream_kib']} KiB/stream, "
                    f"lag from append p50 {result['lag_from_append_ms']['p50']} "
                    f"p99 {result['lag_from_append_ms']['p99']} ms "
                    f"(from emission p99 {result['lag_ms']['p99']}), "
                    f"spread p99 {result['spread_ms']['p99']} ms, "
                    f"{result['deliveries']} deliveries, {result['missing_deliveries']} missing; "
                    f"gateway GC pauses while events flowed: {result['gateway_gc_while_events']}"
                )
        finally:
            await fan.close()
    return {"gateway_rss_mib_before": round(rss_before / 2**20, 1), "levels": levels}


def summarise(
    fan: Fanout, level: Level, clients: int, open_s: float, rss: int, rss_before: int
) -> dict[str, Any]:
    spreads: list[float] = []
    missing = 0
    for event_id, arrivals in level.arrivals.items():
        first = min(arrivals)
        spreads.extend(a - first for a in arrivals)
        missing += max(0, fan.per_user[level.user_of[event_id]] - len(arrivals))
    return {
        "clients": clients,
        "open_streams": fan.alive(),
        "open_failures": fan.open_failures,
        "dropped_streams": fan.dropped,
        "seconds_to_open": round(open_s, 2),
        "gateway_rss_mib": round(rss / 2**20, 1),
        "rss_per_stream_kib": round((rss - rss_before) / clients / 1024, 1),
        "events": len(level.arrivals),
        "deliveries": sum(len(a) for a in level.arrivals.values()),
        "missing_deliveries": missing,
        "lag_ms": {
            "p50": ms(percentile(level.lags, 50)),
            "p95": ms(percentile(level.lags, 95)),
            "p99": ms(percentile(level.lags, 99)),
        },
        "spread_ms": {
            "p50": ms(percentile(spreads, 50)),
            "p99": ms(percentile(spreads, 99)),
        },
    }


_HOOK = """
import gc, json, os, signal, time, tracemalloc

# Only the gateway is watched (the other services run at full speed).
with open("/proc/self/cmdline", "rb") as _own:
    _gateway = b"services.gateway" in _own.read()


def _write(name, payload):
    path = os.path.join(os.environ.get("BENCH_TRACEMALLOC_DIR") or os.environ["BENCH_GC_DIR"], name)
    with open(path + ".tmp", "w") as out:
        json.dump(payload, out)
    os.replace(path + ".tmp", path)


if _gateway and os.environ.get("BENCH_GC_DIR"):
    # The cyclic garbage collector's pauses (each stops the event loop), per generation;
    # SIGUSR2 writes them and starts counting afresh.
    _gc = {}
    _started = [0.0]

    def _reset():
        _gc.update(count=[0, 0, 0], total_ms=[0.0, 0.0, 0.0], max_ms=[0.0, 0.0, 0.0])

    def _on_gc(phase, info):
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        took, gen = (time.perf_counter() - _started[0]) * 1000, info["generation"]
        _gc["count"][gen] += 1
        _gc["total_ms"][gen] += took
        _gc["max_ms"][gen] = max(_gc["max_ms"][gen], took)

    def _dump_gc(signum, frame):
        _write(f"{os.getpid()}.gc.json", {k: list(v) for k, v in _gc.items()})
        _reset()

    _reset()
    gc.callbacks.append(_on_gc)
    signal.signal(signal.SIGUSR2, _dump_gc)

if _gateway and os.environ.get("BENCH_TRACEMALLOC_DIR"):
    tracemalloc.start()
    _last = []

    def _dump(signum, frame):
        # The total first (instant), then the sites that grew (a snapshot of every
        # allocation: slow with thousands of streams on a busy machine).
        current, peak = tracemalloc.get_traced_memory()
        _write(f"{os.getpid()}.json", {"current": current, "peak": peak})
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        grew = []
        if _last:
            for stat in snapshot.compare_to(_last[0], "lineno")[:15]:
                frame_ = stat.traceback[0]
                grew.append([f"{frame_.filename}:{frame_.lineno}", stat.size_diff, stat.count_diff])
        _last[:] = [snapshot]
        _write(f"{os.getpid()}.sites.json", grew)

    signal.signal(signal.SIGUSR2, _dump)
"""


async def _traced(pid: int, folder: Path, timeout: float = 120.0) -> dict[str, Any]:
    """Ask the gateway for its traced memory (SIGUSR2) and read its answer."""
    path = folder / f"{pid}.json"
    path.unlink(missing_ok=True)
    (folder / f"{pid}.sites.json").unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the gateway (pid {pid}) wrote no tracemalloc dump")
        await asyncio.sleep(0.2)
    found: dict[str, Any] = json.loads(path.read_text())
    return found


async def _sites(pid: int, folder: Path, timeout: float) -> list[Any]:
    """The allocation sites that grew since the previous dump, if the gateway gets them
    written within `timeout` s (empty otherwise)."""
    path = folder / f"{pid}.sites.json"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    if not path.exists():
        return []
    sites: list[Any] = json.loads(path.read_text())
    return sites


async def traced_per_stream(
    stack: OurStack, folder: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Traced memory the gateway holds per open stream (streams with events delivered)."""
    fan = Fanout(stack, args.users)
    pid = stack.service_pids()["gateway"]
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        fire = await fan.prepare(client)

        await paced(2, 3, fire)
        await asyncio.sleep(5)
        await _traced(pid, folder)
        await _sites(pid, folder, 120)  # the reference snapshot, before any stream
        before = await _traced(pid, folder)
        try:
            await fan.grow_to(args.tracemalloc, wait_s=600)
            await asyncio.sleep(2)
            await paced(1, len(fan.users), fire)  # every user's streams deliver an event
            await asyncio.sleep(args.settle)
            after = await _traced(pid, folder)
            grew = await _sites(pid, folder, 300)
        finally:
            await fan.close()
    # Per stream that actually opened (on a busy machine some may still be connecting).
    streams = max(fan.opened, 1)
    result = {
        "streams": args.tracemalloc,
        "open_streams": fan.opened,
        "traced_kib_per_stream": round((after["current"] - before["current"]) / streams / 1024, 1),
        "grew_most": [
            {"where": where, "kib_per_stream": round(size / streams / 1024, 2), "blocks": count}
            for where, size, count in grew
        ],
    }
    print(
        f"tracemalloc: {result['traced_kib_per_stream']} KiB/stream traced over {streams} "
        "streams; grew most: "
        + ", ".join(f"{g['where']} {g['kib_per_stream']}" for g in result["grew_most"][:6])
    )
    return result


def compare(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """Before -> after at each stream count both runs measured."""
    if not before:
        return "(no earlier results to compare with)"
    old = {level["clients"]: level for level in before.get("levels", [])}
    lines = [
        f"before: commit {before.get('machine', {}).get('commit')}, "
        f"after: commit {after['machine'].get('commit')}"
    ]
    for level in after["levels"]:
        was = old.get(level["clients"])
        if was is None:
            continue

        def lag(entry: dict[str, Any]) -> Any:
            return (entry.get("lag_from_append_ms") or entry["lag_ms"])["p99"]

        lines.append(
            f"{level['clients']:5d} streams: RSS/stream {was['rss_per_stream_kib']} -> "
            f"{level['rss_per_stream_kib']} KiB, lag p99 {lag(was)} -> {lag(level)} ms, "
            f"missing {was['missing_deliveries']} -> {level['missing_deliveries']}"
        )
    tb, ta = before.get("tracemalloc"), after.get("tracemalloc")
    if tb and ta:
        lines.append(
            f"traced KiB/stream {tb['traced_kib_per_stream']} -> {ta['traced_kib_per_stream']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--clients", default="100,500,1000,2000", help="stream counts to ramp (0: none)"
    )
    parser.add_argument("--users", type=int, default=10, help="users the streams belong to")
    parser.add_argument("--rate", type=float, default=1.0, help="jobs/s while measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of events a level")
    parser.add_argument("--settle", type=float, default=5.0, help="wait for late deliveries, s")
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=2000,
        help="streams to open on a second, allocation-tracing stack (0: skip it)",
    )
    parser.add_argument(
        "--before", type=Path, default=RESULTS / "sse_fanout.json", help="results to compare with"
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",") if c.strip() and c.strip() != "0"]
    before = json.loads(args.before.read_text()) if args.before.exists() else None
    results: dict[str, Any] = {
        "benchmark": "sse_fanout",
        "machine": machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    if args.clients:
        with tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp:
            hook, gc_dir = Path(tmp) / "hook", Path(tmp) / "gc"
            hook.mkdir()
            gc_dir.mkdir()
            (hook / "sitecustomize.py").write_text(_HOOK)
            env = {"PYTHONPATH": str(hook), "BENCH_GC_DIR": str(gc_dir)}
            with our_stack(Path(tmp) / "stack", env=env) as stack:
                results.update(asyncio.run(run(stack, args, gc_dir)))
    else:
        results["levels"] = []
    if args.tracemalloc:
        with tempfile.TemporaryDirectory(prefix="bench-sse-traced-") as tmp:
            hook = Path(tmp) / "hook"
            hook.mkdir()
            (hook / "sitecustomize.py").write_text(_HOOK)
            dumps = Path(tmp) / "dumps"
            dumps.mkdir()
            env = {"PYTHONPATH": str(hook), "BENCH_TRACEMALLOC_DIR": str(dumps)}
            try:
                # A tracing gateway starts slowly (every import traced): give it time.
                with our_stack(Path(tmp) / "stack", env=env, startup_s=600) as stack:
                    results["tracemalloc"] = asyncio.run(traced_per_stream(stack, dumps, args))
            except (RuntimeError, OSError) as exc:
                print(f"note: no tracemalloc figure: {exc}")
                results["tracemalloc_error"] = str(exc)[:2000]
    write_result("sse_fanout", results)
    print(compare(before, results))


if __name__ == "__main__":
    main()
