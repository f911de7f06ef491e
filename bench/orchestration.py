"""Orchestration overhead: POST -> `image_stored` with a generator that takes no time.

Runs the five services as `imagegen up` does (Apache Kafka by default, PostgreSQL,
SeaweedFS) with the `instant` backend, then the same hops through a Celery + Redis baseline
(bench/baseline_celery.py), one after the other on the same machine, with the same image
size (768x768, `IMAGE_SIZE`: the size issue 16's targets and floor are measured at; imagegen
takes it as an explicit draft size), the same rendition code, S3 servers of the same kind and
one PostgreSQL server that the benchmark starts for both. `--broker` picks imagegen's broker:
Apache Kafka, Tansu with its log in SeaweedFS, or Tansu with its log in memory
(comma-separated for several). For each system:

- warm-up: `--warmup` images at 2/s (150 by default), not counted in the steps; their CPU
  per image is kept apart (`warmup`), since it holds start-up work: a broker started
  minutes ago still compiles its request paths (Kafka's JIT compiler thread took ~7 ms a
  second of a 1 image/s trickle after 8 s of warm-up, none after 150 s, and the broker's
  CPU at that trickle fell from 44-58 to 30 ms a second: bench/trickle_threads.py), and
  the first of the steps (1 image/s) would carry it;
- idle: `--idle` seconds with the users' streams open and nothing posted: CPU per process;
- open-loop steps: one-image packs POSTed at a steady offered rate (images/s) for
  `--duration` seconds, spread over `--users` users whose event streams (SSE) are open;
  per image, POST -> first event of the job and POST -> `image_stored` on the stream;
  achieved rate = images stored / (last stored - first POST);
- a burst: `--burst` images POSTed at once; images/s while the backlog drains is the
  most the system sustains here.

CPU per stored image is counted per process of the system: services, broker (the Kafka
JVM), SeaweedFS, PostgreSQL (postmaster and backends), Redis and Celery for the baseline.
Each step also records the machine's busy CPU and how much of it went to work outside the
benchmark, since the machine may be shared. The baseline needs Redis: Debian's
`redis-server`, installed with apt-get when missing.

What each system asks of its servers, per stored image over all its load steps (with the
idle rate over the same time subtracted; the raw figures are in the JSON too), read from
outside the system (bench/meters.py):

- Kafka: records produced and deliveries (end-offset and committed-offset deltas per topic
  and consumer group, through the AdminClient); Redis commands for the baseline;
- PostgreSQL: transactions (pg_stat_database xact_commit + xact_rollback of the system's
  database) and round trips (a loopback proxy in front of the server counts the clients'
  Sync, Flush and simple Query messages: the stack's DSN points at it);
- S3: requests by kind, through a counting proxy in front of each system's SeaweedFS.

The proxies run in this process (their CPU is the benchmark client's): `--no-proxies`
takes them out of the path for latency figures free of them (then no round trips or S3
requests are counted). The idle figure comes first, after the warm-up: a quiet `--idle`
seconds (a minute by default) with the users' streams open. A second one, "at rest", comes
last: `--rest-after` seconds after the burst has drained, the same `--idle` seconds again.
The first still holds start-up work that fades (the broker's JIT compiler is busy for
minutes after start: about 0.01 cores of Kafka's idle figure after a 10-image warm-up,
0.002 after 150); the second is what a stack that has served traffic costs while nobody
uses it (`--rest-after 0` skips it). SeaweedFS (`weed mini`) spends ~2 s of CPU once, 5-6
minutes after it starts (likely its admin server's maintenance; no flag turns that off): with the
default settings the at-rest window falls on it.

Writes bench/results/orchestration.json (orchestration_quick.json for --quick) and
bench/results/latency.png, and prints one table: the baseline, the previous run of
bench/results/orchestration.json (before) and this run (after).

    .venv/bin/python bench/orchestration.py --broker kafka       # the full run
    .venv/bin/python bench/orchestration.py --quick              # about two minutes
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    RESULTS,
    CpuMeter,
    SseEvent,
    bench_postgres,
    event_time,
    free_port,
    machine,
    ms,
    our_stack,
    paced,
    percentile,
    sse_follow,
    write_result,
)
from meters import Meters, PostgresProxy, S3Proxy, delta, per_image

STORED = "image_stored"


@dataclass
class Target:
    """One system under test: where to POST, where its users' event streams are."""

    name: str
    base: str
    post_path: str
    events_path: str
    character_path: str
    character_body: dict[str, Any]
    token: Callable[[str], str]
    meters: Meters | None = None
    sized: bool = False
    """Whether the POST names the image size (imagegen's default is 1024 px; the baseline is
    started at `IMAGE_SIZE` and takes no size in its body)."""


@dataclass
class Job:
    posted: float
    posted_wall: float = 0.0
    accepted: float | None = None
    status: int | None = None


@dataclass
class Tracker:
    """Per job: when it was POSTed, its first event and its `image_stored` arrived."""

    jobs: dict[str, Job] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    stored: dict[str, float] = field(default_factory=dict)
    emitted: dict[str, dict[str, float]] = field(default_factory=dict)
    """job id -> event type -> the event's own timestamp (when its service emitted it)."""
    stored_wall: dict[str, float] = field(default_factory=dict)
    failures: int = 0

    def on_event(self, event: SseEvent) -> None:
        job_id = event.data.get("job_id")
        if not isinstance(job_id, str):
            return
        self.first.setdefault(job_id, event.at)
        emitted = event_time(event.data)
        if emitted is not None:
            self.emitted.setdefault(job_id, {}).setdefault(event.type, emitted)
        if event.type == STORED:
            self.stored.setdefault(job_id, event.at)
            self.stored_wall.setdefault(job_id, event.wall)

    def done(self, ids: list[str]) -> bool:
        return all(i in self.stored for i in ids)


async def _post(client: httpx.AsyncClient, target: Target, user: dict[str, str]) -> str | None:
    body: dict[str, Any] = {"character_id": user["character"], "image_count": 1}
    if target.sized:
        body |= {"width": IMAGE_SIZE, "height": IMAGE_SIZE}
    headers = {"Authorization": f"Bearer {user['token']}"}
    response = await client.post(target.post_path, json=body, headers=headers)
    if response.status_code != 202:
        return None
    job_id: str = response.json()["job_id"]
    return job_id


class Session:
    """Users with open event streams on one target; runs load steps against it."""

    def __init__(self, target: Target, client: httpx.AsyncClient, users: int) -> None:
        self.target = target
        self.client = client
        self.count = users
        self.users: list[dict[str, str]] = []
        self.tracker = Tracker()
        self.streams: list[asyncio.Task[None]] = []
        self.cpu = CpuMeter()

    async def open(self) -> None:
        opened = 0
        all_open = asyncio.Event()

        def mark() -> None:
            nonlocal opened
            opened += 1
            if opened == self.count:
                all_open.set()

        for i in range(self.count):
            token = self.target.token(f"bench-{i}")
            response = await self.client.post(
                self.target.character_path,
                json=self.target.character_body,
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            self.users.append({"token": token, "character": response.json()["id"]})
            url = self.target.base + self.target.events_path
            self.streams.append(
                asyncio.create_task(sse_follow(url, token, self.tracker.on_event, on_open=mark))
            )
        await asyncio.wait_for(all_open.wait(), 60)

    async def close(self) -> None:
        for task in self.streams:
            task.cancel()
        await asyncio.gather(*self.streams, return_exceptions=True)

    async def step(self, rate: float, duration: float, drain_s: float) -> dict[str, Any]:
        ids: list[str] = []
        jobs: list[Job] = []

        async def fire(i: int) -> None:
            job = Job(posted=time.monotonic(), posted_wall=time.time())
            jobs.append(job)
            try:
                job_id = await _post(self.client, self.target, self.users[i % len(self.users)])
            except httpx.HTTPError:
                job_id = None
            job.accepted = time.monotonic()
            if job_id is None:
                self.tracker.failures += 1
                return
            self.tracker.jobs[job_id] = job
            ids.append(job_id)

        started = time.monotonic()
        self.cpu.restart()
        offered = await paced(rate, duration, fire)
        deadline = time.monotonic() + drain_s
        while not self.tracker.done(ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        result = summarise(self.tracker, ids, offered, rate, started, len(jobs) - len(ids))
        # Per stored image, over the step (its drain included): which process costs what.
        cpu = self.cpu.seconds()
        stored = max(result["stored"], 1)
        result["cpu_ms_per_image"] = {name: round(s * 1000 / stored, 1) for name, s in cpu.items()}
        result["cpu_ms_per_image_total"] = round(sum(cpu.values()) * 1000 / stored, 1)
        result["machine"] = self.cpu.others()
        return result

    async def idle(self, seconds: float) -> dict[str, Any]:
        """CPU of each process with the users' streams open and nothing posted, in cores."""
        self.cpu.restart()
        started = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - started
        cpu = self.cpu.seconds()
        return {
            "seconds": round(elapsed, 1),
            "cpu_cores": {name: round(s / elapsed, 4) for name, s in cpu.items()},
            "cpu_cores_total": round(sum(cpu.values()) / elapsed, 4),
            "machine": self.cpu.others(),
        }


def summarise(
    tracker: Tracker, ids: list[str], offered: int, rate: float, started: float, refused: int
) -> dict[str, Any]:
    stored = [i for i in ids if i in tracker.stored]
    latency = [tracker.stored[i] - tracker.jobs[i].posted for i in stored]
    first = [tracker.first[i] - tracker.jobs[i].posted for i in ids if i in tracker.first]
    accept = [
        tracker.jobs[i].accepted - tracker.jobs[i].posted  # type: ignore[operator]
        for i in ids
    ]
    span = (max(tracker.stored[i] for i in stored) - started) if stored else None
    return {
        "offered_images_per_s": rate,
        "images": offered,
        "stored": len(stored),
        "refused_or_failed_posts": refused,
        "missing_after_drain": len(ids) - len(stored),
        "achieved_images_per_s": round(len(stored) / span, 2) if span else None,
        "post_to_stored_ms": {
            "p50": ms(percentile(latency, 50)),
            "p95": ms(percentile(latency, 95)),
            "p99": ms(percentile(latency, 99)),
            "max": ms(max(latency)) if latency else None,
        },
        "post_to_first_event_ms": {
            "p50": ms(percentile(first, 50)),
            "p95": ms(percentile(first, 95)),
        },
        "post_response_ms": {"p50": ms(percentile(accept, 50)), "p99": ms(percentile(accept, 99))},
        "hops_p50_ms": hops(tracker, stored, 50),
        # Which hop a slow image lost its time in (p99 over the step's images).
        "hops_p99_ms": hops(tracker, stored, 99),
    }


# Where the time goes, from the events' own timestamps (one clock: one machine).
HOPS = (
    ("post_to_generation_queued", None, "generation_queued"),
    ("queued_to_generation_started", "generation_queued", "generation_started"),
    ("started_to_generation_completed", "generation_started", "generation_completed"),
    ("completed_to_image_stored", "generation_completed", STORED),
    ("image_stored_to_client", STORED, None),
)


def hops(tracker: Tracker, ids: list[str], q: float) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, start, end in HOPS:
        gaps = []
        for job_id in ids:
            times = tracker.emitted.get(job_id, {})
            begin = tracker.jobs[job_id].posted_wall if start is None else times.get(start)
            finish = tracker.stored_wall.get(job_id) if end is None else times.get(end)
            if begin is not None and finish is not None:
                gaps.append(finish - begin)
        out[name] = ms(percentile(gaps, q))
    return out


async def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=target.base, timeout=60, limits=limits) as client:
        session = Session(target, client, args.users)
        await session.open()
        try:
            print(f"[{target.name}] warming up ({args.warmup} images)")
            warm = await session.step(2.0, args.warmup / 2.0, args.drain)
            if warm["missing_after_drain"]:
                raise RuntimeError(f"{target.name}: warm-up images never stored: {warm}")
            _print_step(target.name + " warm-up", warm)
            await asyncio.sleep(2)  # let the warm-up's commits and flushes settle
            meters = target.meters
            if meters is not None:
                await meters.settle()
                quiet = await meters.read()
            idle = await session.idle(args.idle)
            if meters is not None:
                load_start = await meters.read()
                idle_counts = delta(quiet, load_start)
            _print_idle(target.name, idle)
            steps = []
            for rate in args.rates:
                result = await session.step(rate, args.duration, args.drain)
                steps.append(result)
                _print_step(target.name, result)
            burst = await session.step(args.burst / 0.5, 0.5, args.drain)
            burst["note"] = f"{args.burst} images POSTed within 0.5 s; achieved = drain rate"
            _print_step(target.name + " burst", burst)
            costs = None
            if meters is not None:
                await meters.settle()
                load = delta(load_start, await meters.read())
                stored = sum(s["stored"] for s in steps) + burst["stored"]
                costs = per_image(load, idle_counts, stored)
                costs["groups_behind_at_reading"] = meters.behind
                print(f"[{target.name}] per image: {costs['per_image']}")
            rest = None
            if args.rest_after > 0:
                await asyncio.sleep(args.rest_after)
                rest = await session.idle(args.idle)
                _print_idle(target.name + " at rest", rest)
        finally:
            await session.close()
    sustained = [
        s["offered_images_per_s"]
        for s in steps
        if s["missing_after_drain"] == 0
        and s["refused_or_failed_posts"] == 0
        and (s["achieved_images_per_s"] or 0) >= 0.95 * s["offered_images_per_s"]
    ]
    return {
        "warmup": warm,
        "idle": idle,
        "idle_at_rest": rest,
        "steps": steps,
        "burst": burst,
        "max_sustained_offered_images_per_s": max(sustained, default=None),
        "burst_drain_images_per_s": burst["achieved_images_per_s"],
        "costs": costs,
    }


def _print_step(name: str, s: dict[str, Any]) -> None:
    lat, first = s["post_to_stored_ms"], s["post_to_first_event_ms"]
    print(
        f"[{name}] offered {s['offered_images_per_s']:6.1f}/s achieved "
        f"{s['achieved_images_per_s']}/s  POST->stored p50 {lat['p50']} ms p99 {lat['p99']} ms"
        f"  first event p50 {first['p50']} p95 {first['p95']} ms"
        f"  stored {s['stored']}/{s['images']}"
    )
    top = list(s["cpu_ms_per_image"].items())[:8]
    print(
        f"    cpu per image {s['cpu_ms_per_image_total']} ms: "
        + ", ".join(f"{name} {value}" for name, value in top)
        + f"  | machine {s['machine']}"
    )


def _print_idle(name: str, idle: dict[str, Any]) -> None:
    top = list(idle["cpu_cores"].items())[:8]
    print(
        f"[{name}] idle {idle['cpu_cores_total']} cores over {idle['seconds']} s: "
        + ", ".join(f"{n} {v}" for n, v in top)
        + f"  | machine {idle['machine']}"
    )


BASELINE = "celery-baseline"
BROKERS = {
    "kafka": ("imagegen-kafka", "kafka", "s3"),
    "tansu": ("imagegen-tansu-s3", "tansu", "s3"),
    "memory": ("imagegen-tansu-memory", "tansu", "memory"),
}
"""--broker choice -> (system name, `imagegen up --broker`, Tansu's log storage)."""


@dataclass(frozen=True)
class Postgres:
    """The benchmark's PostgreSQL server: its port, and the counting proxy's in front of it
    (the one the systems are given) unless --no-proxies."""

    port: int | None
    proxy: PostgresProxy | None = None

    @property
    def client_port(self) -> int | None:
        return self.proxy.port if self.proxy is not None else self.port

    @property
    def stats_dsn(self) -> str | None:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres" if self.port else None


@contextmanager
def _s3_proxy(enabled: bool) -> Iterator[Callable[[int], S3Proxy | None]]:
    """A factory of S3 counting proxies (one per system), all stopped on exit."""
    with contextlib.ExitStack() as stack:

        def make(target_port: int) -> S3Proxy | None:
            return stack.enter_context(S3Proxy(target_port)) if enabled else None

        yield make


@contextmanager
def ours(workdir: Path, broker: str, pg: Postgres, proxies: bool = True) -> Iterator[Target]:
    name, kind, storage = BROKERS[broker]
    with _s3_proxy(proxies) as s3_proxy:
        s3_port = free_port()
        s3 = s3_proxy(s3_port)
        with our_stack(
            workdir / name,
            backend="instant",
            broker=kind,
            broker_storage=storage,
            pg_port=pg.client_port,
            s3_port=s3_port,
            s3_endpoint=f"http://127.0.0.1:{s3.port}" if s3 else None,
        ) as stack:
            meters = Meters(
                database=stack.database_name,
                pg_stats_dsn=pg.stats_dsn,
                pg=pg.proxy,
                s3=s3,
                bootstrap=stack.bootstrap or None,
                kafka_prefix=f"{stack.namespace}.",
            )
            yield Target(
                name=name,
                base=stack.gateway,
                post_path="/api/generate",
                events_path="/api/v1/events",
                character_path="/api/v1/characters",
                character_body={
                    "name": "Mira",
                    "attributes": {"hairColour": "red"},
                    "artStyle": "realistic",
                },
                token=stack.token,
                meters=meters,
                sized=True,
            )


# Issue 16 measures CPU per image at 768x768 with the full rendition set (its ~140 ms floor
# was measured at that size). imagegen's default is 1024 px; an explicit smaller size is a
# draft size it accepts, so every POST names it; the baseline generates and renders the same.
IMAGE_SIZE = 768


@contextmanager
def baseline(
    workdir: Path, concurrency: int, pg: Postgres, proxies: bool = True
) -> Iterator[Target]:
    from baseline_celery import baseline_stack

    dsn = f"postgresql://postgres@127.0.0.1:{pg.client_port or 5432}/postgres"
    with _s3_proxy(proxies) as s3_proxy:
        made: list[S3Proxy] = []

        def front(port: int) -> str:
            proxy = s3_proxy(port)
            if proxy is None:
                return f"http://127.0.0.1:{port}"
            made.append(proxy)
            return f"http://127.0.0.1:{proxy.port}"

        with baseline_stack(
            workdir / "celery",
            concurrency=concurrency,
            image_size=IMAGE_SIZE,
            pg_dsn_base=dsn,
            s3_front=front,
        ) as stack:
            meters = Meters(
                database=stack.database,
                pg_stats_dsn=pg.stats_dsn,
                pg=pg.proxy,
                s3=made[0] if made else None,
                redis_port=stack.redis_port or None,
            )
            yield Target(
                name=BASELINE,
                base=stack.url,
                post_path="/generate",
                events_path="/events",
                character_path="/characters",
                character_body={},
                token=stack.token,
                meters=meters,
            )


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    colours = iter(["tab:blue", "tab:green", "tab:red", "tab:purple"])
    for name in results["systems"]:
        colour = "tab:orange" if name == BASELINE else next(colours)
        steps = results["systems"][name]["steps"]
        x = [s["offered_images_per_s"] for s in steps]
        for q, line in (("p50", "-"), ("p99", "--")):
            y = [s["post_to_stored_ms"][q] for s in steps]
            ax.plot(x, y, line, marker="o", color=colour, label=f"{name} {q}")
    ax.set_xlabel("offered load (images/s, one-image packs)")
    ax.set_ylabel("POST -> image_stored (ms)")
    ax.set_yscale("log")
    ax.set_title("Latency under load, instant generator (2 cores, no GPU)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def ratios(ours_: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """One imagegen system / the baseline for each shared offered rate (>1 means more)."""
    out: dict[str, Any] = {}
    for a, b in zip(ours_["steps"], base["steps"], strict=True):
        la, lb = a["post_to_stored_ms"], b["post_to_stored_ms"]
        out[str(a["offered_images_per_s"])] = {
            q: round(la[q] / lb[q], 2) if la[q] and lb[q] else None for q in ("p50", "p99")
        }
    da, db = ours_["burst_drain_images_per_s"], base["burst_drain_images_per_s"]
    ca = [s["cpu_ms_per_image_total"] for s in ours_["steps"]]
    cb = [s["cpu_ms_per_image_total"] for s in base["steps"]]
    return {
        "latency_ours_over_baseline": out,
        "burst_throughput_ours_over_baseline": round(da / db, 2) if da and db else None,
        "cpu_per_image_ours_over_baseline": [round(x / y, 2) for x, y in zip(ca, cb, strict=True)],
    }


async def _run(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    return await measure(target, args)


def _rows(system: dict[str, Any]) -> dict[str, Any]:
    """One system's figures for the table, by row label."""
    rows: dict[str, Any] = {}
    for step in system.get("steps", []):
        rate = f"@{step['offered_images_per_s']:g}/s"
        lat = step["post_to_stored_ms"]
        rows[f"POST->stored p50 ms {rate}"] = lat["p50"]
        rows[f"POST->stored p99 ms {rate}"] = lat["p99"]
        rows[f"CPU ms/image {rate}"] = step.get("cpu_ms_per_image_total")
    burst = system.get("burst") or {}
    rows["burst drain images/s"] = system.get("burst_drain_images_per_s")
    rows["CPU ms/image burst"] = burst.get("cpu_ms_per_image_total")
    rows["CPU ms/image warm-up (2/s)"] = (system.get("warmup") or {}).get("cpu_ms_per_image_total")
    rows["idle CPU, cores"] = (system.get("idle") or {}).get("cpu_cores_total")
    rows["idle CPU at rest after the load, cores"] = (system.get("idle_at_rest") or {}).get(
        "cpu_cores_total"
    )
    per = ((system.get("costs") or {}).get("per_image")) or {}
    for key, label in (
        ("kafka_messages", "Kafka messages/image"),
        ("kafka_deliveries", "Kafka deliveries/image"),
        ("redis_commands", "Redis commands/image"),
        ("pg_transactions", "PG transactions/image"),
        ("pg_round_trips", "PG round trips/image"),
        ("s3_requests", "S3 requests/image"),
    ):
        rows[label] = per.get(key)
    kinds = {k[3:]: v for k, v in per.items() if k.startswith("s3_") and k != "s3_requests"}
    rows["S3 by kind/image"] = " ".join(f"{k}={v:g}" for k, v in sorted(kinds.items()) if v)
    costs = system.get("costs") or {}
    detail, images = costs.get("kafka_detail") or {}, costs.get("images") or 0
    if detail and images:
        # The analytics service's own reading and changelogs are the analysts' side, not a
        # pipeline hop (imagegen.kafka.traffic leaves them out the same way).
        def pipeline(counts: dict[str, int]) -> float:
            kept = [n for name, n in counts.items() if ".analytics" not in name]
            return round(sum(kept) / images, 2)

        rows["Kafka messages/image, pipeline only (raw)"] = pipeline(
            detail.get("produced_per_topic", {})
        )
        rows["Kafka deliveries/image, pipeline only (raw)"] = pipeline(
            detail.get("deliveries_per_group", {})
        )
        # Raw (idle not subtracted): where the messages and deliveries go.
        for key, label in (
            ("produced_per_topic", "Kafka produced/image by topic"),
            ("deliveries_per_group", "Kafka deliveries/image by group"),
        ):
            parts = sorted(detail.get(key, {}).items(), key=lambda item: -item[1])
            rows[label] = " ".join(
                f"{name.split('.', 1)[-1]}={count / images:.3g}" for name, count in parts
            )
    return rows


def table(results: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """The baseline, imagegen's previous run (before) and this run (after), side by side."""
    columns: list[tuple[str, dict[str, Any]]] = []
    systems = results["systems"]
    if BASELINE in systems:
        columns.append((BASELINE, _rows(systems[BASELINE])))
    for name, system in systems.items():
        if name == BASELINE:
            continue
        before = (previous or {}).get("systems", {}).get(name)
        if before is not None:
            commit = previous.get("machine", {}).get("commit", "?") if previous else "?"
            size = (previous or {}).get("settings", {}).get("image_size", 1024)
            columns.append((f"{name} before ({commit}, {size}px)", _rows(before)))
        columns.append((f"{name} after", _rows(system)))
    labels: list[str] = []
    for _, rows in columns:
        labels += [label for label in rows if label not in labels]
    width = max([len(label) for label in labels] + [10])
    widths = [max(len(title), 12) for title, _ in columns]

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "-"
        return f"{value:g}" if isinstance(value, float) else str(value)

    lines = [
        "".ljust(width)
        + "  "
        + "  ".join(t.rjust(w) for (t, _), w in zip(columns, widths, strict=True))
    ]
    for label in labels:
        values = [
            cell(rows.get(label)).rjust(w) for (_, rows), w in zip(columns, widths, strict=True)
        ]
        lines.append(label.ljust(width) + "  " + "  ".join(values))
    load = results["machine"]
    size = results.get("settings", {}).get("image_size")
    lines.append(
        f"images {size}x{size} px (both systems), full rendition set; "
        f"per image = over all load steps, idle rate subtracted; load average "
        f"{load.get('loadavg_start')} -> {load.get('loadavg_end')}, commit {load.get('commit')}"
    )
    return "\n".join(lines)


QUICK = {
    "rates": "2",
    "duration": 8.0,
    "burst": 20,
    "warmup": 4,
    "idle": 15.0,
    "users": 2,
    "rest_after": 0.0,
}
"""--quick: one rate, a small burst, a short idle: about two minutes for both systems."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--broker",
        default="kafka",
        help="imagegen's broker(s), comma-separated: kafka (Apache Kafka, the default), "
        "tansu (Tansu, log in SeaweedFS), memory (Tansu, log in memory)",
    )
    parser.add_argument("--rates", default="1,2,4,8", help="offered images/s, comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per rate")
    parser.add_argument("--burst", type=int, default=120, help="images in the burst step")
    parser.add_argument("--warmup", type=int, default=150, help="warm-up images per system, at 2/s")
    parser.add_argument("--idle", type=float, default=60.0, help="idle measurement, s")
    parser.add_argument(
        "--rest-after",
        type=float,
        default=60.0,
        help="seconds after the burst before the at-rest idle measurement (0: none)",
    )
    parser.add_argument("--users", type=int, default=4, help="users (one SSE stream each)")
    parser.add_argument("--drain", type=float, default=120.0, help="max wait per step, s")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short run (about two minutes): "
        + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    parser.add_argument(
        "--no-proxies",
        action="store_true",
        help="no counting proxies in front of PostgreSQL and S3 (latency free of them; no "
        "round trips or S3 requests counted)",
    )
    parser.add_argument(
        "--celery-concurrency",
        type=int,
        default=os.cpu_count() or 2,
        help="prefork processes (Celery's default: the CPU count)",
    )
    parser.add_argument(
        "--only", choices=["imagegen", BASELINE], help="measure imagegen or the baseline only"
    )
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    args.rates = [float(r) for r in str(args.rates).split(",")]
    brokers = [b.strip() for b in args.broker.split(",") if b.strip()]
    unknown = [b for b in brokers if b not in BROKERS]
    if unknown:
        parser.error(f"--broker: unknown {unknown}; choose from {sorted(BROKERS)}")
    previous = _previous(RESULTS / "orchestration.json")
    results: dict[str, Any] = {
        "benchmark": "orchestration",
        "machine": machine(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("no_plot", "only")},
            "image_size": IMAGE_SIZE,
        },
        "systems": {},
    }
    proxies = not args.no_proxies
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        work = Path(tmp)
        with bench_postgres(work) as pg_port, contextlib.ExitStack() as stack:
            pg_proxy = None
            if proxies and pg_port is not None:
                pg_proxy = stack.enter_context(PostgresProxy(pg_port))
            pg = Postgres(pg_port, pg_proxy)
            if args.only in (None, "imagegen"):
                for broker in brokers:
                    with ours(work, broker, pg, proxies) as target:
                        results["systems"][target.name] = asyncio.run(_run(target, args))
            if args.only in (None, BASELINE):
                with baseline(work, args.celery_concurrency, pg, proxies) as target:
                    results["systems"][BASELINE] = asyncio.run(_run(target, args))
    base = results["systems"].get(BASELINE)
    if base is not None:
        results["ratios"] = {
            name: ratios(system, base)
            for name, system in results["systems"].items()
            if name != BASELINE
        }
    # A quick run never replaces the full run's results (the next run's "before").
    write_result("orchestration_quick" if args.quick else "orchestration", results)
    print(table(results, previous))
    if not args.no_plot and not args.quick:
        with contextlib.suppress(ImportError):
            plot(results, RESULTS / "latency.png")


def _previous(path: Path) -> dict[str, Any] | None:
    """The last run's results (the 'before' column), if there is one."""
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded


if __name__ == "__main__":
    main()
