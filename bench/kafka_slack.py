"""The Apache Kafka broker's timer slack: what it saves at rest, and what it costs a record.

The local stack starts its broker with a timer slack (imagegen/stack/kafka.py): each of the
broker's threads lets the kernel fire its timers up to that late. At rest that is most of
the broker's work - a dozen purgatory reapers and the request threads wake on 200-300 ms
ticks whether there is work or not - while a record's path (produce, the delayed fetch it
completes, the fetch's reply) is woken by I/O, never by a timer. This measures, per slack:

- start: seconds from launch until the broker answers (a fresh data folder);
- join: a new consumer's subscribe -> its first record (the group's JoinGroup/SyncGroup
  round, which the group coordinator writes to its log);
- hop: `--messages` records, one at a time after a random pause: publish (our
  KafkaPublisher: acks=all, until the delivery report) and publish -> consumed (our
  KafkaConsumer's poll returns it), p50/p99;
- commit: a synchronous offset commit, p50/p99;
- idle: the broker's CPU (ms a second) and wake-ups over `--idle` s with 12 consumers
  joined and fetching, read from each thread's schedstat.

Slacks alternate, each on a broker of its own, `--rounds` times:

    .venv/bin/python bench/kafka_slack.py [--slacks 20,200] [--rounds 2]

Writes bench/results/kafka_slack.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import machine, uptime, write_result
from broker_hop import next_with_key, quantiles
from idle_wakes import Snapshot, _snapshot

from imagegen.kafka.confluent import KafkaConsumer, KafkaPublisher
from imagegen.stack.kafka import ApacheKafka
from imagegen.stack.ports import free_port
from imagegen.stack.topics import create_topics
from schemas.topics import TopicNames


def _broker_cpu(before: Snapshot, after: Snapshot, s: float) -> dict[str, float]:
    shared = [t for t in after if t in before]
    ns = sum(after[t][1] - before[t][1] for t in shared)
    wakes = sum(after[t][2] - before[t][2] for t in shared)
    return {"ms_per_s": round(ns / 1e6 / s, 2), "wakes_per_s": round(wakes / s, 1)}


async def _hops(bootstrap: str, namespace: str, n: int) -> dict[str, Any]:
    topic = TopicNames(namespace).requests
    publisher = KafkaPublisher(bootstrap, "bench-slack")
    consumer = KafkaConsumer(bootstrap, f"{namespace}.slack", [topic], commit_interval_ms=0)
    publish, consumed, commit = [], [], []
    try:
        started = time.perf_counter()
        await publisher.publish(topic, "join", b"join")
        await next_with_key(consumer, "join", 60)
        join_s = time.perf_counter() - started
        for _ in range(n):
            await asyncio.sleep(random.uniform(0, 0.2))
            key = uuid.uuid4().hex
            sent = time.perf_counter()
            await publisher.publish(topic, key, b"x" * 1024)
            delivered = time.perf_counter()
            record = await next_with_key(consumer, key, 10)
            received = time.perf_counter()
            await consumer.commit(record)
            publish.append(delivered - sent)
            consumed.append(received - sent)
            commit.append(time.perf_counter() - received)
    finally:
        await consumer.close()
        await publisher.close()
    return {
        "join_s": round(join_s, 2),
        "publish_ms": quantiles(publish),
        "publish_to_consumed_ms": quantiles(consumed),
        "commit_ms": quantiles(commit),
    }


async def _idle(bootstrap: str, namespace: str, pid: int, seconds: float) -> dict[str, float]:
    topics = TopicNames(namespace)
    consumers = [
        KafkaConsumer(bootstrap, f"{namespace}.idle{i}", [topics.requests]) for i in range(12)
    ]
    try:
        polls = [asyncio.create_task(c.poll(seconds + 30)) for c in consumers]
        await asyncio.sleep(10)  # joined, fetching
        before = _snapshot(pid)
        await asyncio.sleep(seconds)
        after = _snapshot(pid)
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    finally:
        for c in consumers:
            await c.close()
    return _broker_cpu(before, after, seconds)


def one(slack_ms: int, args: argparse.Namespace) -> dict[str, Any]:
    os.environ["IMAGEGEN_KAFKA_TIMER_SLACK_MS"] = str(slack_ms)
    with tempfile.TemporaryDirectory(prefix="bench-slack-") as tmp:
        broker = ApacheKafka(free_port(), Path(tmp) / "kafka")
        started = time.monotonic()
        with broker:
            start_s = time.monotonic() - started
            namespace = f"s{uuid.uuid4().hex[:8]}"
            create_topics(broker.bootstrap, namespace)
            pid = broker.pid
            assert pid is not None
            hops = asyncio.run(_hops(broker.bootstrap, namespace, args.messages))
            idle = asyncio.run(_idle(broker.bootstrap, namespace, pid, args.idle))
    result = {"slack_ms": slack_ms, "start_s": round(start_s, 2), **hops, "idle": idle}
    print(result, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slacks", default="20,200", help="broker timer slacks, ms")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0, help="idle window, s")
    args = parser.parse_args()
    slacks = [int(s) for s in args.slacks.split(",")]
    runs = [one(slack, args) for _ in range(args.rounds) for slack in slacks]
    write_result(
        "kafka_slack",
        {
            "benchmark": "kafka_slack",
            "machine": machine(),
            "uptime_end": uptime(),
            "settings": vars(args),
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
