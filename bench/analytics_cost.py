"""What the analytics consumer costs per image on Apache Kafka, and at rest.

Starts one Apache Kafka (KRaft, the benchmark JIT settings), the events topic and the
journal's changelog, and the real analytics service (`python -m services.analytics`) as a
process. Then:
- idle: the service's CPU over `--idle-s` seconds once it is ready (cores);
- load: the events of `--images` one-image jobs (5 events each: queued, started,
  completed, stored, pack_completed, as `tests/unit/analytics/events_factory.py` makes
  them) produced at `--rate` images/s, with a traceparent header like the services'; the
  service's and the broker's CPU from the first event until the group's committed offsets
  reach the end, per image, and the journal changelog's messages per image;
- check: the service's totals equal a recount of the same records through the pipeline.

`--service-tree DIR` runs the service from another checkout (a before/after pair on the
same machine: `git archive COMMIT | tar -x -C DIR`). `--profile FILE` runs the service
under cProfile (the stats land in FILE at its exit).
Writes bench/results/analytics_cost[-LABEL].json. CPU is read from /proc (utime+stime);
record `uptime` with the numbers: the machine is shared.

    .venv/bin/python bench/analytics_cost.py --images 300 --rate 10 --label before
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from _common import uptime

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from imagegen.stack.kafka import ApacheKafka  # noqa: E402
from imagegen.stack.ports import free_port  # noqa: E402
from imagegen.stack.topics import create_topics  # noqa: E402
from schemas.topics import TopicNames  # noqa: E402
from services.analytics.changelogs import app_id  # noqa: E402
from services.analytics.memory import MemoryStore  # noqa: E402
from services.analytics.pipeline import apply  # noqa: E402
from tests.unit.analytics.events_factory import BASE, job_events  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
EVENTS_PER_IMAGE = 5


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def records(images: int) -> list[tuple[str, bytes]]:
    out = []
    for j in range(images):
        job = f"bench-{j:06d}"
        start = BASE + timedelta(seconds=j)
        for event in job_events(job, f"user-{j % 13}", "standard", images=1, start=start):
            out.append((job, json.dumps(event).encode()))
    return out


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{os.getpid()}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
    finally:
        consumer.close()


def committed(bootstrap: str, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"analytics exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("analytics not ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0, help="images per second")
    parser.add_argument("--idle-s", type=float, default=30.0)
    parser.add_argument("--label", default="")
    parser.add_argument("--profile", default="")
    parser.add_argument(
        "--service-tree",
        default=str(REPO),
        help="run the service from this checkout (e.g. an older commit's `git archive`)",
    )
    args = parser.parse_args()

    namespace = f"bench{secrets.token_hex(3)}"
    topics = TopicNames(namespace)
    work = Path(tempfile.mkdtemp(prefix="analytics-cost-"))
    port = free_port()
    with ApacheKafka(free_port(), work / "kafka", log_dir=work / "logs") as broker:
        bootstrap = broker.bootstrap
        create_topics(bootstrap, namespace)
        env = {
            **os.environ,
            "IMAGEGEN_KAFKA_BOOTSTRAP": bootstrap,
            "IMAGEGEN_KAFKA_NAMESPACE": namespace,
            "IMAGEGEN_ANALYTICS_HOST": "127.0.0.1",
            "IMAGEGEN_ANALYTICS_PORT": str(port),
            "IMAGEGEN_LOG_LEVEL": "WARNING",
        }
        command = [sys.executable]
        if args.profile:
            command += ["-m", "cProfile", "-o", args.profile]
        command += ["-m", "services.analytics"]
        log = (work / "analytics.log").open("wb")
        proc = subprocess.Popen(command, cwd=args.service_tree, env=env, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        broker_pid = broker._proc.pid  # type: ignore[union-attr]
        try:
            wait_ready(url, proc)
            time.sleep(5)  # group settled, first commits done
            idle0, t0 = cpu_s(proc.pid), time.monotonic()
            bidle0 = cpu_s(broker_pid)
            time.sleep(args.idle_s)
            idle_cores = (cpu_s(proc.pid) - idle0) / (time.monotonic() - t0)
            broker_idle = (cpu_s(broker_pid) - bidle0) / (time.monotonic() - t0)

            changelog = f"{app_id(namespace)}-journal-changelog"
            changelog_before = sum(end_offsets(bootstrap, changelog).values())
            data = records(args.images)
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
            traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            c0, b0, started = cpu_s(proc.pid), cpu_s(broker_pid), time.monotonic()
            gap = 1.0 / (args.rate * EVENTS_PER_IMAGE)
            for i, (key, value) in enumerate(data):
                producer.produce(
                    topics.events, value, key.encode(), headers={"traceparent": traceparent}
                )
                producer.poll(0)
                delay = started + (i + 1) * gap - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            producer.flush(30)
            produced_s = time.monotonic() - started
            ends = end_offsets(bootstrap, topics.events)
            deadline = time.monotonic() + 300
            while True:
                done = committed(bootstrap, app_id(namespace), topics.events, list(ends))
                if all(end == 0 or done.get(p, -1) >= end for p, end in ends.items()):
                    break
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"not all counted: {done} of {ends}")
                time.sleep(0.2)
            drained_s = time.monotonic() - started
            service_cpu = cpu_s(proc.pid) - c0
            broker_cpu = cpu_s(broker_pid) - b0
            changelog_msgs = sum(end_offsets(bootstrap, changelog).values()) - changelog_before

            totals = httpx.get(f"{url}/api/v1/totals", timeout=10).raise_for_status().json()
            recount = MemoryStore()
            for _, value in data:
                apply(recount, value, BASE.timestamp())
            expected = sum(v for k, v in recount.totals.items() if k.startswith("events{"))
            counted = sum(totals["events"].values())
            if counted != expected:
                raise RuntimeError(f"counted {counted} events, recount {expected}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {
        "label": args.label,
        "service_tree": args.service_tree,
        "load": {
            "images": args.images,
            "events": len(data),
            "rate_images_per_s": args.rate,
            "produced_s": round(produced_s, 2),
            "drained_s": round(drained_s, 2),
        },
        "analytics_cpu_ms_per_image": round(service_cpu * 1000 / args.images, 2),
        "analytics_cpu_ms_per_event": round(service_cpu * 1000 / len(data), 3),
        "broker_cpu_ms_per_image": round(broker_cpu * 1000 / args.images, 2),
        "changelog_messages_per_image": round(changelog_msgs / args.images, 3),
        "changelog_messages": changelog_msgs,
        "analytics_idle_cores": round(idle_cores, 4),
        "broker_idle_cores": round(broker_idle, 4),
        "idle_s": args.idle_s,
        "events_counted": counted,
        "uptime_after": uptime(),
    }
    print(json.dumps(result, indent=2))
    name = "analytics_cost" + (f"-{args.label}" if args.label else "") + ".json"
    out = REPO / "bench" / "results" / name
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
