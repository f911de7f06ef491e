"""What each service may do on the broker: the topics it reads and writes, its consumer groups.

One table, read by the Strimzi `KafkaUser` generator (deploy/k8s) and by the secured-broker
test, which creates the same ACLs on a real Kafka and runs a pack through all five services
with them. tests/unit/kafka/test_acls.py checks it against the services' code (the groups
and topics of their `consumer_loop` calls and publishes), so a new consumer or publish
without its ACL fails there, not in production.

Least privilege, by exact name: a consumer gets Read and Describe on its topics and Read on
its groups; a producer Write and Describe on its topics (the idempotent producer needs no
cluster permission since Kafka 3.0). Every service writes the dead-letter topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.topics import DEFAULT_NAMESPACE, TopicNames

CONSUME = ("Read", "Describe")
PRODUCE = ("Write", "Describe")
GROUP = ("Read",)


@dataclass(frozen=True)
class ServiceAccess:
    """One service's Kafka principal: what it consumes (and as which groups), what it produces."""

    service: str
    consumes: tuple[str, ...]
    produces: tuple[str, ...]
    groups: tuple[str, ...]
    """Full group ids (`<namespace>.<group>`), as services name them (imagegen/runtime.py)."""

    def topic_operations(self) -> dict[str, tuple[str, ...]]:
        """Operations per topic, in registry order of first mention (sorted, no repeats)."""
        ops: dict[str, set[str]] = {}
        for topic in self.consumes:
            ops.setdefault(topic, set()).update(CONSUME)
        for topic in self.produces:
            ops.setdefault(topic, set()).update(PRODUCE)
        return {topic: tuple(sorted(found)) for topic, found in ops.items()}


def service_access(namespace: str = DEFAULT_NAMESPACE) -> dict[str, ServiceAccess]:
    """Each service's access, by service name."""
    t = TopicNames(namespace)

    def groups(*names: str) -> tuple[str, ...]:
        return tuple(f"{namespace}.{name}" for name in names)

    table = [
        # services/gateway/app.py: CONSUMER_GROUP on events; publishing.py, characters.py.
        ServiceAccess("gateway", (t.events,), (t.requests,), groups("gateway")),
        # services/scheduler/__main__.py; dispatch.py stages jobs.<tier> and events,
        # jobs.py a copy of job_cancelled on control and discard_image on requests.
        # One consumer, group `scheduler`; `scheduler-outcomes` (events, before the merge)
        # stays readable for the handover of its offsets (imagegen/kafka/handover.py).
        ServiceAccess(
            "scheduler",
            (t.requests, t.events),
            (*t.all_jobs(), t.events, t.control, t.requests),
            groups("scheduler", "scheduler-outcomes"),
        ),
        # services/generator/loops.py: JOBS_GROUP on every tier, CONTROL_GROUP on control.
        ServiceAccess(
            "generator",
            (*t.all_jobs(), t.control),
            (t.images_raw, t.events),
            groups("generator", "generator-control"),
        ),
        ServiceAccess(
            "postprocess", (t.images_raw,), (t.images_processed, t.events), groups("postprocess")
        ),
        # services/storage/__main__.py: one consumer, group `storage`; `storage-requests`
        # (requests, before the merge) stays readable for the handover of its offsets.
        ServiceAccess(
            "storage",
            (t.images_processed, t.requests),
            (t.events,),
            groups("storage", "storage-requests"),
        ),
    ]
    return {
        a.service: ServiceAccess(a.service, a.consumes, (*a.produces, t.dead_letter), a.groups)
        for a in table
    }
