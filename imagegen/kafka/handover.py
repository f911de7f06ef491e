"""A consumer group taking a topic over from another group, neither redoing nor skipping.

When two consumers of a process merge into one (the scheduler's `requests` and `events`
consumers, storage's `images.processed` and `requests` consumers), the merged consumer keeps
one group's name, and the topics the other group read arrive in a group that has no
committed offset there: it would start at `auto.offset.reset` (earliest: redo a week of
retained records; latest: skip what arrived during the upgrade).

So, when a partition of such a topic is assigned and this group has no committed offset
for it, the consumer starts where the previous group committed, and commits that position
under its own group at once (so it holds after the previous group's offsets expire). A
partition this group has committed before keeps its own position: the handover happens
once per partition. During a rolling upgrade the old processes still read the topic under
the previous group, so records they handle after the new member's start may be handled
twice (handlers are idempotent); none is skipped.

The previous group's offsets are read as any member reads its group's: an OffsetFetch, which
needs only Describe on that group (the service's ACLs keep it).
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

log = logging.getLogger(__name__)

_TIMEOUT_S = 10.0
_OWN_GROUP_ONLY = ("group.instance.id", "error_cb", "on_commit", "stats_cb")


class Handover:
    """The `on_assign` callback of a consumer that inherits `previous` (topic -> group id)."""

    def __init__(self, config: dict[str, Any], previous: dict[str, str]) -> None:
        # The consumer's own client settings (bootstrap, security), to ask as another group.
        self._config = {k: v for k, v in config.items() if k not in _OWN_GROUP_ONLY}
        self._previous = previous
        self.handed_over: list[TopicPartition] = []
        """Every position taken over so far (for tests and logs)."""

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        inherited = [tp for tp in partitions if tp.topic in self._previous]
        seeded: list[TopicPartition] = []
        if inherited:
            try:
                seeded = self._positions(consumer, inherited)
            except KafkaException as exc:
                # Unknown either way: the group's usual start (its own offset, else the
                # earliest) may redo records, never skip one.
                log.warning("event=handover_unknown error=%s", exc.args[0])
        where = {(tp.topic, tp.partition): tp for tp in seeded}
        consumer.assign([where.get((tp.topic, tp.partition), tp) for tp in partitions])
        if not seeded:
            return
        try:
            consumer.commit(offsets=seeded, asynchronous=False)
        except KafkaException as exc:  # positioned anyway: the next assignment asks again
            log.warning("event=handover_commit_failed error=%s", exc.args[0])
        self.handed_over.extend(seeded)
        for tp in seeded:
            log.info(
                "event=handover topic=%s partition=%d offset=%d from_group=%s",
                tp.topic,
                tp.partition,
                tp.offset,
                self._previous[tp.topic],
            )

    def _positions(
        self, consumer: Consumer, inherited: list[TopicPartition]
    ) -> list[TopicPartition]:
        """Where the previous groups stand on the partitions this group has no offset for."""
        own = consumer.committed(
            [TopicPartition(tp.topic, tp.partition) for tp in inherited], timeout=_TIMEOUT_S
        )
        missing = [tp for tp in own if tp.offset < 0]
        by_group: dict[str, list[TopicPartition]] = {}
        for tp in missing:
            by_group.setdefault(self._previous[tp.topic], []).append(tp)
        found: list[TopicPartition] = []
        for group, wanted in by_group.items():
            found.extend(tp for tp in self._committed_by(group, wanted) if tp.offset >= 0)
        return found

    def _committed_by(self, group: str, wanted: list[TopicPartition]) -> list[TopicPartition]:
        # Never subscribes, so it never joins `group`; it only asks its committed offsets.
        asker = Consumer({**self._config, "group.id": group, "enable.auto.commit": False})
        try:
            result: list[TopicPartition] = asker.committed(
                [TopicPartition(tp.topic, tp.partition) for tp in wanted], timeout=_TIMEOUT_S
            )
            return result
        finally:
            asker.close()
