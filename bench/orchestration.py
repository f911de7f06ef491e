"""Orchestration overhead: POST -> `image_stored` with a generator that takes no time.

Runs the five services as `imagegen up` does (Apache Kafka by default, PostgreSQL,
SeaweedFS) with the `instant` backend, then the same hops through a Celery + Redis baseline
(bench/baseline_celery.py), one after the other on the same machine, with the same image
size (1024 px), the same rendition code, S3 servers of the same kind and one PostgreSQL server that
the benchmark starts for both. `--broker` picks imagegen's broker: Apache Kafka, Tansu with
its log in SeaweedFS, or Tansu with its log in memory (comma-separated for several). For
each system:

- warm-up images (not counted);
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

Writes bench/results/orchestration.json and bench/results/latency.png.

    .venv/bin/python bench/orchestration.py [--broker kafka] [--rates 1,2,4,8]
        [--duration 15] [--burst 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    machine,
    ms,
    our_stack,
    paced,
    percentile,
    sse_follow,
    write_result,
)

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
    body = {"character_id": user["character"], "image_count": 1}
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
            "cpu_cores": {name: round(s / elapsed, 3) for name, s in cpu.items()},
            "cpu_cores_total": round(sum(cpu.values()) / elapsed, 3),
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
        "hops_p50_ms": hops(tracker, stored),
    }


# Where the time goes, from the events' own timestamps (one clock: one machine).
HOPS = (
    ("post_to_generation_queued", None, "generation_queued"),
    ("queued_to_generation_started", "generation_queued", "generation_started"),
    ("started_to_generation_completed", "generation_started", "generation_completed"),
    ("completed_to_image_stored", "generation_completed", STORED),
    ("image_stored_to_client", STORED, None),
)


def hops(tracker: Tracker, ids: list[str]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name, start, end in HOPS:
        gaps = []
        for job_id in ids:
            times = tracker.emitted.get(job_id, {})
            begin = tracker.jobs[job_id].posted_wall if start is None else times.get(start)
            finish = tracker.stored_wall.get(job_id) if end is None else times.get(end)
            if begin is not None and finish is not None:
                gaps.append(finish - begin)
        out[name] = ms(percentile(gaps, 50))
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
            await asyncio.sleep(2)  # let the warm-up's commits and flushes settle
            idle = await session.idle(args.idle)
            _print_idle(target.name, idle)
            steps = []
            for rate in args.rates:
                result = await session.step(rate, args.duration, args.drain)
                steps.append(result)
                _print_step(target.name, result)
            burst = await session.step(args.burst / 0.5, 0.5, args.drain)
            burst["note"] = f"{args.burst} images POSTed within 0.5 s; achieved = drain rate"
            _print_step(target.name + " burst", burst)
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
        "idle": idle,
        "steps": steps,
        "burst": burst,
        "max_sustained_offered_images_per_s": max(sustained, default=None),
        "burst_drain_images_per_s": burst["achieved_images_per_s"],
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


@contextmanager
def ours(workdir: Path, broker: str = "kafka", pg_port: int | None = None) -> Iterator[Target]:
    name, kind, storage = BROKERS[broker]
    with our_stack(
        workdir / name, backend="instant", broker=kind, broker_storage=storage, pg_port=pg_port
    ) as stack:
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
        )


# imagegen draws a pack's images at 1024 px on the long side, whatever the quality
# (services/scheduler/expansion.py); the baseline generates and renders the same size.
IMAGE_SIZE = 1024


@contextmanager
def baseline(workdir: Path, concurrency: int, pg_port: int | None = None) -> Iterator[Target]:
    from baseline_celery import baseline_stack

    pg = f"postgresql://postgres@127.0.0.1:{pg_port or 5432}/postgres"
    with baseline_stack(
        workdir / "celery", concurrency=concurrency, image_size=IMAGE_SIZE, pg_dsn_base=pg
    ) as stack:
        yield Target(
            name=BASELINE,
            base=stack.url,
            post_path="/generate",
            events_path="/events",
            character_path="/characters",
            character_body={},
            token=stack.token,
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
    parser.add_argument("--burst", type=int, default=60, help="images in the burst step")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up images per system")
    parser.add_argument("--idle", type=float, default=20.0, help="idle measurement, s")
    parser.add_argument("--users", type=int, default=4, help="users (one SSE stream each)")
    parser.add_argument("--drain", type=float, default=120.0, help="max wait per step, s")
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
    args.rates = [float(r) for r in args.rates.split(",")]
    brokers = [b.strip() for b in args.broker.split(",") if b.strip()]
    unknown = [b for b in brokers if b not in BROKERS]
    if unknown:
        parser.error(f"--broker: unknown {unknown}; choose from {sorted(BROKERS)}")
    results: dict[str, Any] = {
        "benchmark": "orchestration",
        "machine": machine(),
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("no_plot", "only")},
            "image_size": IMAGE_SIZE,
        },
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        work = Path(tmp)
        with bench_postgres(work) as pg_port:
            if args.only in (None, "imagegen"):
                for broker in brokers:
                    with ours(work, broker, pg_port) as target:
                        results["systems"][target.name] = asyncio.run(_run(target, args))
            if args.only in (None, BASELINE):
                with baseline(work, args.celery_concurrency, pg_port) as target:
                    results["systems"][BASELINE] = asyncio.run(_run(target, args))
    base = results["systems"].get(BASELINE)
    if base is not None:
        results["ratios"] = {
            name: ratios(system, base)
            for name, system in results["systems"].items()
            if name != BASELINE
        }
        print("ratios:", results["ratios"])
    write_result("orchestration", results)
    if not args.no_plot:
        with contextlib.suppress(ImportError):
            plot(results, RESULTS / "latency.png")


if __name__ == "__main__":
    main()
