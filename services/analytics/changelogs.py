"""The journal's changelog topic, declared before faust starts.

faust creates a missing changelog topic itself, but on a busy broker the group can form
before the new topic is in the metadata: the assignor then leaves it out and the table
has no partitions (faust's PartitionsMismatch). Creating them first, and waiting until the
metadata lists every partition, makes the first start as sound as a restart. The same
list feeds the Strimzi `KafkaTopic` resources (a production service may not create topics).
"""

from __future__ import annotations

import time

from imagegen.kafka.security import watched_config
from imagegen.stack import StackError
from imagegen.stack.topics import create_topics
from schemas.topics import TopicSpec
from services.analytics.settings import AnalyticsSettings

JOURNAL = "journal"


def app_id(namespace: str) -> str:
    """faust's app id: the consumer group and the prefix of its internal topics."""
    return f"{namespace}.analytics"


def changelog_specs(settings: AnalyticsSettings, partitions: int) -> list[TopicSpec]:
    """The journal's changelog: compacted (one message per batch of records of one
    partition, keyed by its first record's position, never rewritten) and deleted after
    the retention, like the windows it rebuilds."""
    prefix = app_id(settings.kafka.namespace)
    retention_ms = str(settings.analytics_retention_s * 1000)
    return [
        TopicSpec(
            role=f"analytics.{JOURNAL}",
            name=f"{prefix}-{JOURNAL}-changelog",
            partitions=partitions,
            configs={"cleanup.policy": "compact,delete", "retention.ms": retention_ms},
            key="<partition>:<offset> of the first events record of a batch",
            description="What each record of the events topic added to the analytics KPIs.",
        )
    ]


def ensure_changelogs(
    settings: AnalyticsSettings, specs: list[TopicSpec], timeout: float = 60.0
) -> None:
    """Create the changelog topics (existing ones are kept) and wait for their metadata."""
    from confluent_kafka.admin import AdminClient

    config = watched_config(settings.kafka)
    create_topics(settings.kafka.bootstrap, specs=specs, config=config, timeout=timeout)
    admin = AdminClient({**config, "bootstrap.servers": settings.kafka.bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=10).topics
        missing = [
            s.name
            for s in specs
            if s.name not in topics or len(topics[s.name].partitions) != s.partitions
        ]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise StackError(f"changelog topics not in the broker's metadata: {missing}")
        time.sleep(0.2)
