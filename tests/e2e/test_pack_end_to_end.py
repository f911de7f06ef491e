"""The whole system as separate processes on real Tansu, PostgreSQL and SeaweedFS."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from PIL import Image

from tests.e2e.stack import RunningStack, imagegen_up, read_sse, wait_for_job

pytestmark = pytest.mark.e2e


# `demo_stack` is the plain demo stack shared with other modules (tests/e2e/conftest.py,
# which also checks that Ctrl-C stops it cleanly); these tests run as a user of their own.
USER = "pack-e2e"


def create_character(client: httpx.Client, name: str = "Mira") -> dict[str, object]:
    response = client.post(
        "/api/v1/characters",
        json={
            "name": name,
            "attributes": {"hairColour": "red", "eyeColour": "green"},
            "artStyle": "realistic",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def test_five_image_pack_completes_streams_progress_and_downloads(demo_stack: RunningStack) -> None:
    with demo_stack.client(demo_stack.token_for(USER, "paid")) as client:
        character = create_character(client)
        accepted = client.post(
            "/api/generate", json={"character_id": character["id"], "image_count": 5}
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]

        messages = read_sse(client, f"/api/v1/jobs/{job_id}/events")
        types = [m["event"] for m in messages]
        assert types[-1] == "pack_completed"
        assert types.count("image_stored") == 5
        assert "generation_progress" in types and "generation_started" in types
        # Queue updates (`queue_status`) carry no id: they are not events to resume from.
        assert {m["event"] for m in messages if "id" not in m} <= {"queue_status"}
        ids = [int(m["id"]) for m in messages if "id" in m]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)

        job = wait_for_job(demo_stack, client, job_id)
        assert job["status"] == "completed" and job["progress"] == 1.0
        assert len(job["images"]) == 5
        seen_pixels = set()
        for image in job["images"]:
            assert image["demo"] is True
            for url in (image["url"], image["thumbnailUrl"]):
                body = httpx.get(url, timeout=30)  # signed: no credentials needed
                assert body.status_code == 200
                with Image.open(io.BytesIO(body.content)) as pic:
                    assert pic.width > 0
                    if url == image["url"]:  # the whole picture: demo faces of one
                        # character can share their first rows (background)
                        seen_pixels.add(hashlib.sha256(pic.tobytes()).hexdigest())
            tampered = image["url"].replace("X-Amz-Signature=", "X-Amz-Signature=0")
            assert httpx.get(tampered, timeout=30).status_code == 403
        assert len(seen_pixels) == 5, "each image of the pack differs"


def test_another_user_cannot_see_the_job(demo_stack: RunningStack) -> None:
    with demo_stack.client(demo_stack.token_for(USER, "paid")) as client:
        character = create_character(client, "Owner's")
        job_id = client.post(
            "/api/generate", json={"character_id": character["id"], "image_count": 1}
        ).json()["job_id"]
        wait_for_job(demo_stack, client, job_id)
    other = demo_stack.token_for("mallory")
    with demo_stack.client(other) as client:
        assert client.get(f"/api/generate/{job_id}").status_code == 404
        assert client.get(f"/api/v1/jobs/{job_id}/events").status_code == 404
        assert client.get(f"/api/v1/characters/{character['id']}").status_code == 404
        # Nor can it generate with someone else's character.
        assert (
            client.post(
                "/api/generate", json={"character_id": character["id"], "image_count": 1}
            ).status_code
            == 404
        )
    with httpx.Client(base_url=demo_stack.gateway) as anonymous:
        assert anonymous.get(f"/api/generate/{job_id}").status_code == 401


def test_web_page_is_served(demo_stack: RunningStack) -> None:
    page = httpx.get(demo_stack.gateway + "/", timeout=30)
    assert page.status_code == 200 and "EventSource" in page.text


async def _stored_rows(stack: RunningStack, job_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(stack.database)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT image_id, image_index FROM storage.images WHERE job_id = $1", job_id
        )
        return rows
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def slow_stack(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_sd_path: Path,
) -> Iterator[RunningStack]:
    """The real diffusers path (tiny random pipeline, 512², 12 steps): slow enough to kill."""
    with imagegen_up(
        tmp_path_factory.mktemp("slow-stack"),
        ["--backend", "diffusers", "--model", str(tiny_sd_path)],
        env={"IMAGEGEN_DEFAULT_STEPS": "12"},
    ) as stack:
        yield stack


@pytest.mark.parametrize("victim", ["generator", "scheduler", "postprocess", "storage"])
async def test_killing_a_worker_mid_pack_still_stores_every_image_once(
    slow_stack: RunningStack,
    victim: str,
) -> None:
    with slow_stack.client() as client:
        character = create_character(client, f"victim-{victim}")
        # 512x512 (a draft size): the tiny pipeline on the CPU takes ~4x as long at the
        # 1024 px default, and the point here is the kill, not the pixels.
        job_id = client.post(
            "/api/generate",
            json={"character_id": character["id"], "image_count": 5, "size": "512x512"},
        ).json()["job_id"]
        deadline = time.monotonic() + 120
        while client.get(f"/api/generate/{job_id}").json()["status"] in ("accepted", "queued"):
            assert time.monotonic() < deadline, "pack never started"
            await asyncio.sleep(0.2)
        pid = slow_stack.service_pids()[victim]
        os.kill(pid, signal.SIGKILL)

        job = wait_for_job(slow_stack, client, job_id, timeout=240)
        assert job["status"] == "completed", job
        assert sorted(i["index"] for i in job["images"]) == [0, 1, 2, 3, 4]
    assert slow_stack.service_pids()[victim] != pid, "the supervisor restarted it"
    rows = await _stored_rows(slow_stack, job_id)
    assert sorted(r["image_index"] for r in rows) == [0, 1, 2, 3, 4], "stored exactly once each"
