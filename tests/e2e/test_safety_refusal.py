"""Our own safety check refusing an image, on a real stack (Apache Kafka, PostgreSQL,
SeaweedFS, every service a process): the classifier (a stand-in named by the setting, the
only thing not real) calls every image explicit. The attempt fails with
ContentPolicyViolation, the image is re-drawn once with a new seed, the second refusal is
final, nothing is stored, and the job says so."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.chaos_support import final_objects, stored_rows
from tests.e2e.safety_probe import FACTORY
from tests.e2e.stack import RunningStack, imagegen_up, read_sse

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    env = {
        "IMAGEGEN_SAFETY_CLASSIFIER_FACTORY": FACTORY,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with imagegen_up(tmp_path_factory.mktemp("refusal"), ["--backend", "demo"], env) as up:
        yield up


def test_an_unsafe_image_is_redrawn_once_then_fails_and_nothing_is_stored(
    stack: RunningStack,
) -> None:
    with stack.client() as client:
        character = client.post(
            "/api/v1/characters", json={"name": "Pip", "audience": "children"}
        ).json()
        accepted = client.post(
            "/api/generate",
            json={"character_id": character["id"], "image_count": 1, "size": "512x512"},
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        events = read_sse(
            client,
            f"/api/v1/jobs/{job_id}/events",
            stall_s=120,
            diagnose=lambda _: stack.log_tails(),
        )
        job = client.get(f"/api/v1/jobs/{job_id}").json()

    kinds = [m["event"] for m in events]
    assert kinds[-1] == "pack_completed", kinds
    assert "image_stored" not in kinds
    drawn = [m["data"]["data"] for m in events if m["event"] == "generation_completed"]
    failed = [m["data"]["data"] for m in events if m["event"] == "generation_failed"]
    assert len(drawn) == 2, "drawn once, re-drawn once"
    assert drawn[0]["seed"] != drawn[1]["seed"], "the re-draw has a new seed"
    # Postprocess fails each attempt (retryable); the scheduler's give-up is the final word.
    assert {(f["attempt"], f["error_type"]) for f in failed} == {
        (1, "ContentPolicyViolation"),
        (2, "ContentPolicyViolation"),
    }
    assert [(f["attempt"], f["final"]) for f in failed if f["final"]] == [(2, True)]
    assert failed[-1]["final"]
    assert "refused by the image-safety classifier (e2e-always-unsafe)" in failed[-1]["error"]
    assert "> 0.40" in failed[-1]["error"], "a children's character: the stricter threshold"
    closing = events[-1]["data"]["data"]
    assert (closing["status"], closing["reason_code"]) == ("failed", "content_policy_violation")
    assert (closing["completed_count"], closing["failed_count"]) == (0, 1)

    assert (job["status"], job["reasonCode"], job["audience"]) == (
        "failed",
        "content_policy_violation",
        "children",
    )
    assert (job["completed"], job["failed"]) == (0, 1)
    assert [image["status"] for image in job["images"]] == ["failed"]
    assert stored_rows(stack) == 0
    assert final_objects(stack) == []
