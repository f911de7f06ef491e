"""What the local Apache Kafka broker costs at rest and per image at a low rate, per thread.

Starts the stack as `imagegen up` does (Apache Kafka, the `instant` backend, 768² images),
with one user's event stream open, posts a few warm-up images, then:

- idle: `--idle` seconds with nothing posted: CPU of each process, in cores, and of each
  of the broker's threads (grouped by role, from /proc/<pid>/task/*/stat);
- paced: one-image jobs at `--rate` per second for `--duration` seconds, each waited for
  until its `image_stored` arrives: CPU per stored image of each process and of the
  broker's threads, with and without the idle rate subtracted.

JVM flags for a profile go through JAVA_TOOL_OPTIONS, e.g.
`JAVA_TOOL_OPTIONS=-XX:StartFlightRecording=filename=/tmp/k-%p.jfr,settings=profile`.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/broker_cpu.py --idle 30 --rate 1 --duration 60 \
        --label before
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import (
    CpuMeter,
    OurStack,
    SseEvent,
    character_and_stream,
    our_stack,
    paced,
    uptime,
    write_result,
)
from idle_threads import _kind, _threads

IMAGE_SIZE = 768


def _broker_pid() -> int:
    """The broker's JVM among this process's descendants."""
    import psutil  # type: ignore[import-untyped]

    for child in psutil.Process().children(recursive=True):
        try:
            if "kafka.Kafka" in " ".join(child.cmdline()):
                return int(child.pid)
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError("no Apache Kafka broker among the stack's processes")


class ThreadMeter:
    """CPU seconds of each of a process's threads (by role) between two readings."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.restart()

    def restart(self) -> None:
        self._start = _threads(self.pid)

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for thread, spent in _threads(self.pid).items():
            used = spent - self._start.get(thread, 0.0)
            if used > 0:
                out[_kind(thread)] = out.get(_kind(thread), 0.0) + used
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _scaled(table: dict[str, float], by: float, digits: int = 4) -> dict[str, float]:
    return {name: round(value / by, digits) for name, value in table.items()}


async def measure(stack: OurStack, args: argparse.Namespace) -> dict[str, Any]:
    token = stack.token("broker-cpu-0")
    auth = {"Authorization": f"Bearer {token}"}
    stored: dict[str, float] = {}

    def on_event(event: SseEvent) -> None:
        job_id = event.data.get("job_id")
        if event.type == "image_stored" and isinstance(job_id, str):
            stored.setdefault(job_id, time.monotonic())

    threads = ThreadMeter(_broker_pid())
    async with httpx.AsyncClient(base_url=stack.gateway, timeout=60) as client:
        character, stream = await character_and_stream(client, stack.gateway, token, on_event)
        posted: dict[str, float] = {}

        async def fire(_: int) -> None:
            body = {
                "character_id": character,
                "image_count": 1,
                "width": IMAGE_SIZE,
                "height": IMAGE_SIZE,
            }
            reply = await client.post("/api/generate", json=body, headers=auth)
            reply.raise_for_status()
            posted[reply.json()["job_id"]] = time.monotonic()

        async def drain(deadline_s: float = 120.0) -> None:
            deadline = time.monotonic() + deadline_s
            while any(job not in stored for job in posted):
                if time.monotonic() > deadline:
                    raise RuntimeError("images not stored in time")
                await asyncio.sleep(0.05)

        try:
            for i in range(args.warmup):
                await fire(i)
                await drain()
                await asyncio.sleep(1.0)
            await asyncio.sleep(args.settle)

            cpu = CpuMeter()
            threads.restart()
            started = time.monotonic()
            await asyncio.sleep(args.idle)
            idle_s = time.monotonic() - started
            idle_cpu = _scaled(cpu.seconds(), idle_s)
            idle_threads = _scaled(threads.seconds(), idle_s)
            idle_machine = cpu.others()
            idle_load = await asyncio.to_thread(uptime)

            posted.clear()
            cpu.restart()
            threads.restart()
            started = time.monotonic()
            count = await paced(args.rate, args.duration, fire)
            await drain()
            busy_s = time.monotonic() - started
            busy_cpu = cpu.seconds()
            busy_threads = threads.seconds()
            busy_machine = cpu.others()
            busy_load = await asyncio.to_thread(uptime)
            paced_posted = dict(posted)

            burst: dict[str, Any] | None = None
            if args.burst:
                await asyncio.sleep(args.settle)
                posted.clear()
                cpu.restart()
                threads.restart()
                started = time.monotonic()
                await asyncio.gather(*(fire(i) for i in range(args.burst)))
                await drain()
                burst_s = time.monotonic() - started
                burst = {
                    "images": args.burst,
                    "seconds": round(burst_s, 1),
                    "images_per_s": round(args.burst / burst_s, 2),
                    "cpu": cpu.seconds(),
                    "threads": threads.seconds(),
                    "machine": cpu.others(),
                    "uptime": await asyncio.to_thread(uptime),
                }
        finally:
            stream.cancel()
            await asyncio.gather(stream, return_exceptions=True)
    hops = sorted(stored[j] - t for j, t in paced_posted.items())

    def per_image(
        table: dict[str, float], idle: dict[str, float], count: int = count, span: float = busy_s
    ) -> dict[str, Any]:
        gross = {name: round(s * 1000 / count, 1) for name, s in table.items()}
        net = {
            name: round((s - idle.get(name, 0.0) * span) * 1000 / count, 1)
            for name, s in table.items()
        }
        return {
            "gross_ms": gross,
            "gross_ms_total": round(sum(table.values()) * 1000 / count, 1),
            "above_idle_ms": net,
        }

    if burst is not None:
        n, span = burst["images"], burst["seconds"]
        burst["per_image"] = per_image(burst.pop("cpu"), idle_cpu, n, span)
        burst["broker_threads"] = per_image(burst.pop("threads"), idle_threads, n, span)
    return {
        "label": args.label,
        "java_tool_options": os.environ.get("JAVA_TOOL_OPTIONS", ""),
        "idle": {
            "seconds": round(idle_s, 1),
            "cores": idle_cpu,
            "cores_total": round(sum(idle_cpu.values()), 4),
            "broker_threads_cores": idle_threads,
            "machine": idle_machine,
            "uptime": idle_load,
        },
        "paced": {
            "rate": args.rate,
            "images": count,
            "seconds": round(busy_s, 1),
            "post_to_stored_ms_p50": round(hops[len(hops) // 2] * 1000, 1),
            "post_to_stored_ms_max": round(hops[-1] * 1000, 1),
            "per_image": per_image(busy_cpu, idle_cpu),
            "broker_threads": per_image(busy_threads, idle_threads),
            "machine": busy_machine,
            "uptime": busy_load,
        },
        "burst": burst,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=30.0, help="idle measurement, s")
    parser.add_argument("--rate", type=float, default=1.0, help="images/s in the paced step")
    parser.add_argument("--duration", type=float, default=60.0, help="paced step, s")
    parser.add_argument("--burst", type=int, default=0, help="images posted at once after")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up images, one by one")
    parser.add_argument("--settle", type=float, default=10.0, help="rest before idle, s")
    parser.add_argument("--label", default="run", help="a name for this run in the output")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="broker-cpu-") as tmp,
        our_stack(Path(tmp) / "stack", backend="instant") as stack,
    ):
        result = asyncio.run(measure(stack, args))
    idle, busy = result["idle"], result["paced"]
    print(f"idle {idle['cores_total']} cores: {idle['cores']}")
    print(f"idle broker threads: {idle['broker_threads_cores']}")
    print(f"idle load: {idle['uptime']}")
    print(
        f"paced {busy['rate']}/s x {busy['images']}: "
        f"{busy['per_image']['gross_ms_total']} ms/image total"
    )
    print(f"  per image gross: {busy['per_image']['gross_ms']}")
    print(f"  per image above idle: {busy['per_image']['above_idle_ms']}")
    print(f"  broker threads above idle: {busy['broker_threads']['above_idle_ms']}")
    print(f"  hop p50 {busy['post_to_stored_ms_p50']} ms, load: {busy['uptime']}")
    if (burst := result["burst"]) is not None:
        print(
            f"burst {burst['images']}: {burst['images_per_s']}/s,"
            f" {burst['per_image']['gross_ms_total']} ms/image"
        )
        print(f"  per image gross: {burst['per_image']['gross_ms']}")
        print(f"  broker threads gross: {burst['broker_threads']['gross_ms']}")
    write_result(f"broker_cpu-{args.label}", result)


if __name__ == "__main__":
    main()
