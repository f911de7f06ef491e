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
  and streams that failed or closed.

The client side is one asyncio process on the same 2 cores as the stack: at high levels
its own CPU use is part of the lag.

    .venv/bin/python bench/sse_fanout.py [--clients 100,500,1000,2000] [--rate 1] [--users 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
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

    async def grow_to(self, clients: int) -> float:
        """Open streams until `clients` are open; seconds it took."""
        started = time.monotonic()
        target = self.opened + self.open_failures + (clients - len(self.streams))
        while len(self.streams) < clients:
            user = self.users[len(self.streams) % len(self.users)]
            self.per_user[user] += 1
            self.streams.append(asyncio.create_task(self._stream(user)))
            if len(self.streams) % 50 == 0:
                await asyncio.sleep(0)  # let the connections start in batches
        deadline = time.monotonic() + 120
        while self.opened + self.open_failures < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return time.monotonic() - started

    def alive(self) -> int:
        return sum(1 for t in self.streams if not t.done())

    async def close(self) -> None:
        for task in self.streams:
            task.cancel()
        await asyncio.gather(*self.streams, return_exceptions=True)


async def run(stack: OurStack, args: argparse.Namespace) -> dict[str, Any]:
    fan = Fanout(stack, args.users)
    gateway_pid = stack.service_pids()["gateway"]
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        for user in fan.users:
            response = await client.post(
                "/api/v1/characters",
                json={"name": "Mira", "attributes": {"hairColour": "red"}, "artStyle": "realistic"},
                headers={"Authorization": f"Bearer {fan.tokens[user]}"},
            )
            response.raise_for_status()
            fan.characters[user] = response.json()["id"]

        async def fire(i: int) -> None:
            user = fan.users[i % len(fan.users)]
            await client.post(
                "/api/generate",
                json={"character_id": fan.characters[user], "image_count": 1},
                headers={"Authorization": f"Bearer {fan.tokens[user]}"},
            )

        await paced(2, 3, fire)  # warm the pipeline before any measurement
        await asyncio.sleep(3)
        rss_before = rss_bytes(gateway_pid)
        levels = []
        try:
            for clients in args.clients:
                open_s = await fan.grow_to(clients)
                await asyncio.sleep(2)  # let the gateway settle after the connection storm
                rss = rss_bytes(gateway_pid)
                level = fan.level = Level()
                await paced(args.rate, args.duration, fire)
                await asyncio.sleep(args.settle)
                fan.level = None
                result = summarise(fan, level, clients, open_s, rss, rss_before)
                levels.append(result)
                print(
                    f"{clients:5d} streams ({result['open_streams']} open, "
                    f"{result['open_failures']} failed): "
                    f"{result['rss_per_stream_kib']} KiB/stream, "
                    f"lag p50 {result['lag_ms']['p50']} p99 {result['lag_ms']['p99']} ms, "
                    f"spread p99 {result['spread_ms']['p99']} ms, "
                    f"{result['deliveries']} deliveries, {result['missing_deliveries']} missing"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="100,500,1000,2000", help="stream counts to ramp")
    parser.add_argument("--users", type=int, default=10, help="users the streams belong to")
    parser.add_argument("--rate", type=float, default=1.0, help="jobs/s while measuring")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of events a level")
    parser.add_argument("--settle", type=float, default=5.0, help="wait for late deliveries, s")
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    results: dict[str, Any] = {
        "benchmark": "sse_fanout",
        "machine": machine(),
        "settings": vars(args),
    }
    with tempfile.TemporaryDirectory(prefix="bench-sse-") as tmp, our_stack(Path(tmp)) as stack:
        results.update(asyncio.run(run(stack, args)))
    write_result("sse_fanout", results)


if __name__ == "__main__":
    main()
