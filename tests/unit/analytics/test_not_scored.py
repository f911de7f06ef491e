"""Images stored without a consistency score are counted, by reason: never a silent pass."""

from __future__ import annotations

from prometheus_client.core import Metric

from services.analytics.kpis import reason_code
from services.analytics.memory import MemoryStore
from services.analytics.pipeline import apply
from services.analytics.prom import KpiCollector
from services.analytics.queries import kpis
from tests.unit.analytics.events_factory import BASE, encoded, job_events

NO_FACE = "no face found in the image"
NO_IDENTITY = "no face found in the character's reference images"


def _store() -> MemoryStore:
    store = MemoryStore()
    jobs = [
        job_events("j1", "alice", "realtime", images=4, unscored={1: NO_FACE, 3: NO_FACE}),
        job_events("j2", "bob", "economy", images=2, unscored={0: NO_IDENTITY}, fail={1}),
        job_events("j3", "carol", "realtime", images=2),
    ]
    for job in jobs:
        for raw in encoded(job):
            apply(store, raw, BASE.timestamp())
    return store


def test_not_scored_images_are_counted_by_reason_beside_the_scored() -> None:
    consistency = kpis(_store().totals)["consistency"]
    assert (consistency["scored"], consistency["not_scored"]) == (4, 3)
    assert consistency["not_scored_by_reason"] == {
        "no_face_found_in_the_image": 2,
        "no_face_found_in_the_character_s_reference_images": 1,
    }


def test_not_scored_is_a_prometheus_counter_by_reason() -> None:
    metrics: dict[str, Metric] = {m.name: m for m in KpiCollector(_store(), 10.0).collect()}
    family = metrics["imagegen_analytics_consistency_not_scored"]
    assert family.type == "counter"
    values = {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert values == {
        "no_face_found_in_the_image": 2,
        "no_face_found_in_the_character_s_reference_images": 1,
    }


def test_reason_codes_are_label_safe() -> None:
    assert reason_code("No face, found = {here}") == "no_face_found_here"
    assert reason_code("") == "unknown"
