"""What a piece of work cost on the broker: messages produced per topic, deliveries per group.

Read from Kafka's own bookkeeping through the AdminClient, so nothing in the services is
instrumented: a topic's end offsets say how many records were appended to it, a consumer
group's committed offsets how many of them the group consumed (every record a group
commits past was delivered to one of its members once; a redelivery after a crash would
not show, which is fine for counting a design's cost). Take a `snapshot` before and one
after, with the stack idle at both (`wait_settled`), and `traffic` gives the difference.

Producers here are idempotent but not transactional, so an offset is a record (no
transaction markers inflate the end offsets).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # not in its __all__
    AdminClient,
    OffsetSpec,
)

_Partition = tuple[str, int]


@dataclass(frozen=True)
class Snapshot:
    """End offsets of the topics, committed offsets and subscriptions of the groups."""

    ends: dict[_Partition, int]
    committed: dict[str, dict[_Partition, int]]
    subscribed: dict[str, set[str]] = field(default_factory=dict)
    """Each group's topics, from its members' assignments (empty for a group without members)."""

    def lag(self) -> dict[str, int]:
        """Records each group has yet to commit on the topics it is assigned."""
        lags: dict[str, int] = {}
        for group, topics in self.subscribed.items():
            done = self.committed.get(group, {})
            lags[group] = sum(
                end - done.get(where, 0) for where, end in self.ends.items() if where[0] in topics
            )
        return lags


@dataclass(frozen=True)
class Traffic:
    """Between two snapshots: records appended per topic, records consumed per group."""

    produced: dict[str, int]
    delivered: dict[str, dict[str, int]]
    """Per group, per topic."""

    @property
    def messages(self) -> int:
        return sum(self.produced.values())

    @property
    def deliveries(self) -> int:
        return sum(sum(per_topic.values()) for per_topic in self.delivered.values())

    def per_group(self) -> dict[str, int]:
        return {g: sum(t.values()) for g, t in sorted(self.delivered.items()) if sum(t.values())}

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "deliveries": self.deliveries,
            "produced_per_topic": {t: n for t, n in sorted(self.produced.items()) if n},
            "deliveries_per_group": self.per_group(),
            "deliveries_per_group_topic": {
                g: {t: n for t, n in sorted(per.items()) if n}
                for g, per in sorted(self.delivered.items())
                if sum(per.values())
            },
        }


def _resolve(futures: dict[Any, Any], timeout: float) -> dict[Any, Any]:
    return {key: future.result(timeout=timeout) for key, future in futures.items()}


def _ours(name: str, prefix: str, ignore: tuple[str, ...]) -> bool:
    return name.startswith(prefix) and not name.startswith(ignore)


def snapshot(
    bootstrap: str, prefix: str, timeout: float = 15.0, ignore: tuple[str, ...] = ()
) -> Snapshot:
    """Offsets of every topic and consumer group whose name starts with `prefix` (the
    namespace and a dot, `imagegen.`) and with none of `ignore`."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    metadata = admin.list_topics(timeout=timeout)
    partitions = [
        TopicPartition(name, p)
        for name, topic in metadata.topics.items()
        if _ours(name, prefix, ignore)
        for p in topic.partitions
    ]
    ends: dict[_Partition, int] = {}
    if partitions:
        listed = _resolve(
            admin.list_offsets(
                {tp: OffsetSpec.latest() for tp in partitions}  # type: ignore[no-untyped-call]
            ),
            timeout,
        )
        ends = {(tp.topic, tp.partition): info.offset for tp, info in listed.items()}
    groups = sorted(
        g.group_id
        for g in admin.list_consumer_groups().result(timeout=timeout).valid
        if _ours(g.group_id, prefix, ignore)
    )
    committed: dict[str, dict[_Partition, int]] = {}
    subscribed: dict[str, set[str]] = {}
    if groups:
        described = _resolve(admin.describe_consumer_groups(groups), timeout)
        for group, description in described.items():
            subscribed[group] = {
                tp.topic
                for m in description.members
                for tp in m.assignment.topic_partitions
                if _ours(tp.topic, prefix, ignore)
            }
    for group in groups:
        # One group per request: the AdminClient asks for the offsets of one group at a time.
        futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
        result = _resolve(futures, timeout)[group]
        committed[group] = {
            (tp.topic, tp.partition): tp.offset
            for tp in result.topic_partitions
            if tp.offset >= 0 and _ours(tp.topic, prefix, ignore)
        }
    return Snapshot(ends, committed, subscribed)


def traffic(before: Snapshot, after: Snapshot) -> Traffic:
    """What happened between `before` and `after` (both taken with every group caught up)."""
    produced: dict[str, int] = {}
    for where, end in after.ends.items():
        produced[where[0]] = produced.get(where[0], 0) + end - before.ends.get(where, 0)
    delivered: dict[str, dict[str, int]] = {}
    for group, offsets in after.committed.items():
        earlier = before.committed.get(group, {})
        per_topic = delivered.setdefault(group, {})
        for where, offset in offsets.items():
            # A partition the group had not committed on yet started where its end was.
            start = earlier.get(where, before.ends.get(where, 0))
            per_topic[where[0]] = per_topic.get(where[0], 0) + offset - start
    return Traffic(produced, delivered)


def wait_settled(
    bootstrap: str,
    prefix: str,
    *,
    timeout: float = 60.0,
    quiet_s: float = 3.0,
    ignore: tuple[str, ...] = (),
) -> Snapshot:
    """A snapshot once every group has committed all it is assigned and nothing moved for
    `quiet_s` (commits are periodic, and a last event may still be on its way)."""
    deadline = time.monotonic() + timeout
    last: Snapshot | None = None
    still_since = time.monotonic()
    while True:
        now = snapshot(bootstrap, prefix, ignore=ignore)
        caught_up = not any(now.lag().values())
        if last is None or (now.ends, now.committed) != (last.ends, last.committed):
            still_since = time.monotonic()
        if caught_up and time.monotonic() - still_since >= quiet_s:
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer groups still behind after {timeout:.0f} s: {now.lag()}")
        last = now
        time.sleep(0.5)
