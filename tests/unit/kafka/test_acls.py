"""The ACL table (imagegen/kafka/acls.py) says what the services' code does: every topic a
service touches and every consumer group it joins is granted, and nothing else is."""

from __future__ import annotations

import re
from pathlib import Path

from imagegen.kafka.acls import service_access
from schemas.topics import TopicNames

ROOT = Path(__file__).resolve().parents[3]
_TOUCH = re.compile(
    r"\b_?topics\.(jobs|all_jobs|events|control|requests|images_raw|images_processed|dead_letter)\b"
)
_LOOP_GROUP = re.compile(r"consumer_loop\(\s*settings\.kafka,\s*\"([\w-]+)\"")
# Groups whose offsets a merged consumer takes over (imagegen/kafka/handover.py): read, so
# granted, though never joined.
_PREVIOUS_GROUP = re.compile(r"previous_groups=\{[^}]*:\s*\"([\w-]+)\"")


def _source(service: str) -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "services" / service).rglob("*.py")))


def _topics_touched(service: str, names: TopicNames) -> set[str]:
    found: set[str] = set()
    for attr in _TOUCH.findall(_source(service)):
        if attr in ("jobs", "all_jobs"):
            found.update(names.all_jobs())
        else:
            found.add(getattr(names, attr))
    return found


def _groups_in_code(service: str) -> set[str]:
    text = _source(service)
    groups = set(_LOOP_GROUP.findall(text)) | set(_PREVIOUS_GROUP.findall(text))
    if service == "gateway":
        from services.gateway.app import CONSUMER_GROUP

        groups.add(CONSUMER_GROUP)
    if service == "generator":
        from services.generator.loops import CONTROL_GROUP, JOBS_GROUP

        groups.update({JOBS_GROUP, CONTROL_GROUP})
    return groups


def test_every_topic_a_service_touches_is_granted_and_nothing_more() -> None:
    names = TopicNames("ns")
    for service, access in service_access("ns").items():
        granted = set(access.consumes) | set(access.produces)
        # Every service runs consumer loops, and a loop dead-letters (imagegen/runtime.py).
        touched = _topics_touched(service, names) | {names.dead_letter}
        assert touched == granted, service


def test_the_groups_are_the_ones_the_code_joins() -> None:
    for service, access in service_access("ns").items():
        assert set(access.groups) == {f"ns.{g}" for g in _groups_in_code(service)}, service


def test_operations_are_least_privilege() -> None:
    names = TopicNames()
    gateway = service_access()["gateway"].topic_operations()
    assert gateway == {
        names.events: ("Describe", "Read"),
        names.requests: ("Describe", "Write"),
        names.dead_letter: ("Describe", "Write"),
    }
    # The scheduler both reads and writes events; nobody may Create, Delete or Alter.
    scheduler = service_access()["scheduler"].topic_operations()
    assert scheduler[names.events] == ("Describe", "Read", "Write")
    every = {
        op for a in service_access().values() for ops in a.topic_operations().values() for op in ops
    }
    assert every == {"Describe", "Read", "Write"}
