"""Cancelling a running 23-image pack on the real stack: the job's terminal event is its
last word, and its counts and cost equal the job's final record (issue 18, bug 1)."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from tests.e2e.stack import RunningStack, read_sse

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(demo_stack: RunningStack) -> RunningStack:
    """The plain demo stack this module shares with others (tests/e2e/conftest.py)."""
    return demo_stack


def test_cancel_mid_pack_ends_with_a_truthful_last_word(stack: RunningStack) -> None:
    # A user of its own: the stack is shared (the printed token is test_browser.py's).
    with stack.client(stack.token_for("cancel-truthful", "paid")) as client:
        character = client.post("/api/v1/characters", json={"name": "Cora"}).json()
        accepted = client.post(
            "/api/generate", json={"character_id": character["id"], "image_count": 23}
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        # Cancel once the pack is under way (its first image stored).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if client.get(f"/api/v1/jobs/{job_id}").json()["completed"] >= 1:
                break
            time.sleep(0.1)
        cancel = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert cancel.status_code in (202, 409), cancel.text
        messages = read_sse(client, f"/api/v1/jobs/{job_id}/events", stall_s=120)
        events = [m for m in messages if m["event"] != "queue_status"]
        assert events[-1]["event"] == "pack_completed", [m["event"] for m in events]
        closing = events[-1]["data"]["data"]
        time.sleep(5)  # anything late would have arrived by now
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        again = [
            m
            for m in read_sse(client, f"/api/v1/jobs/{job_id}/events", stall_s=60)
            if m["event"] != "queue_status"
        ]
    assert [m["id"] for m in again] == [m["id"] for m in events], "events after the end"
    stored = sum(1 for m in events if m["event"] == "image_stored")
    assert closing["completed_count"] == job["completed"] == stored
    assert closing["failed_count"] == job["failed"]
    assert Decimal(str(closing["cost_usd"])).quantize(Decimal("0.000001")) == Decimal(
        job["costUsd"]
    ).quantize(Decimal("0.000001"))
    if cancel.status_code == 202:
        assert job["status"] == "cancelled" and job["reasonCode"] == "cancelled_by_user"
        ready = [i for i in job["images"] if i["status"] == "completed"]
        assert len(ready) == stored
