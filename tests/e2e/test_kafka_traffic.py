"""What one image costs on the broker, counted on the real stack (Apache Kafka): messages per
topic and deliveries per consumer group, from end and committed offsets (issue 16).

A one-image pack with the `instant` backend (one progress event: its one step is also its
last, which is always sent). Each group reads only what it acts on: nobody reads the
events topic to mirror job state (storage does not consume it), generators read only
cancels (the control topic, empty here), so the events reach the gateway and the
scheduler only. A change that adds a delivery per image must change this count on purpose.

The analytics service that `imagegen up` also runs is left out: it is the analysts' own
consumer of the events topic (ARCHITECTURE, "Analytics"), not a hop of the pipeline; it
reads each event once more and writes its journal's changelog.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imagegen.kafka.traffic import traffic, wait_settled
from schemas.topics import Tier, TopicNames
from tests.e2e.stack import RunningStack, imagegen_up, wait_for_job

pytestmark = pytest.mark.e2e

NS = "imagegen"
T = TopicNames(NS)
# The events of one image of a one-image pack, in order of production.
EVENTS = (
    "generation_queued",
    "generation_started",
    "generation_progress",
    "generation_completed",
    "image_stored",
    "pack_completed",
)
PRODUCED = {
    T.requests: 1,  # the pack
    T.jobs(Tier.REALTIME): 1,  # the stack token is a paid user's: realtime
    T.images_raw: 1,
    T.images_processed: 1,
    T.events: len(EVENTS),
}
DELIVERED = {
    # One consumer per process: the scheduler's on requests and events, storage's on
    # images and requests (deletes and reviews are among the requests).
    f"{NS}.scheduler": {T.requests: 1, T.events: len(EVENTS)},
    f"{NS}.generator": {T.jobs(Tier.REALTIME): 1},
    f"{NS}.postprocess": {T.images_raw: 1},
    f"{NS}.storage": {T.images_processed: 1, T.requests: 1},
    f"{NS}.gateway": {T.events: len(EVENTS)},
}
DELIVERIES_PER_IMAGE = 17  # issue 16's ceiling; 29 before (events to four groups)
ANALYTICS = (f"{NS}.analytics",)  # its group and its `imagegen.analytics-*` changelog topics


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with imagegen_up(tmp_path_factory.mktemp("traffic-stack"), ["--backend", "instant"]) as up:
        yield up


def _one_image_pack(stack: RunningStack, character_id: str) -> None:
    with stack.client() as client:
        accepted = client.post(
            "/api/generate", json={"character_id": character_id, "image_count": 1}
        )
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(stack, client, accepted.json()["job_id"])
    assert job["status"] == "completed", job


def test_one_image_costs_ten_messages_and_seventeen_deliveries(stack: RunningStack) -> None:
    with stack.client() as client:
        character = client.post("/api/v1/characters", json={"name": "Una"}).json()
    # A first pack so that every group has joined and committed, then the one counted.
    _one_image_pack(stack, character["id"])
    before = wait_settled(stack.bootstrap, f"{NS}.", ignore=ANALYTICS)
    _one_image_pack(stack, character["id"])
    after = wait_settled(stack.bootstrap, f"{NS}.", ignore=ANALYTICS)

    counted = traffic(before, after)
    print("kafka traffic per image:", counted.as_dict())
    assert {t: n for t, n in counted.produced.items() if n} == PRODUCED
    assert counted.as_dict()["deliveries_per_group_topic"] == DELIVERED
    assert counted.messages == sum(PRODUCED.values()) == 10
    assert counted.deliveries == DELIVERIES_PER_IMAGE
    # Nobody but these groups reads anything: generator-control idles on the empty control
    # topic, and no group of storage or the generators is on the events topic.
    on_events = {g for g, per in counted.delivered.items() if per.get(T.events)}
    assert on_events == {f"{NS}.gateway", f"{NS}.scheduler"}
    assert counted.produced.get(T.control, 0) == 0
