"""`imagegen up` as people use it: restarts keep the data; a taken port is reported at once."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.stack import imagegen_up, wait_for_job

pytestmark = pytest.mark.e2e


async def test_jobs_images_and_tokens_survive_a_restart(tmp_path: Path) -> None:
    database = f"e2e_{uuid.uuid4().hex[:8]}"
    with imagegen_up(tmp_path, ["--backend", "demo"], database=database) as stack:
        with stack.client() as client:
            character = client.post("/api/v1/characters", json={"name": "Kept"}).json()
            job_id = client.post(
                "/api/generate", json={"character_id": character["id"], "image_count": 2}
            ).json()["job_id"]
            assert wait_for_job(stack, client, job_id)["status"] == "completed"
        token = stack.token

    # Fresh ports, same data dir: a new broker, S3 and gateway process on the same data.
    with imagegen_up(tmp_path, ["--backend", "demo"], database=database) as again:
        with again.client(token) as client:
            job = client.get(f"/api/generate/{job_id}").json()
            assert job["status"] == "completed" and len(job["images"]) == 2
            async with httpx.AsyncClient(timeout=30) as plain:  # signed URLs need no token
                for image in job["images"]:
                    assert (await plain.get(image["url"])).status_code == 200
            more = client.post(
                "/api/generate", json={"character_id": character["id"], "image_count": 1}
            ).json()["job_id"]
            assert wait_for_job(again, client, more)["status"] == "completed"
        conn = await asyncpg.connect(again.database)
        try:
            rows = await conn.fetchval(
                "SELECT count(*) FROM storage.images WHERE job_id = $1", job_id
            )
        finally:
            await conn.close()
        assert rows == 2, "nothing was reprocessed into duplicates after the restart"


def test_a_taken_port_gives_a_clear_message_not_a_hang(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "imagegen.cli",
                "up",
                "--data-dir",
                str(tmp_path),
                "--gateway-port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"port {port} is already in use (gateway); pass --gateway-port" in result.stderr


def test_the_stack_says_which_broker_and_the_tansu_fallback_runs_a_pack(tmp_path: Path) -> None:
    """`--broker tansu`, the no-JVM fallback, still runs the whole system; the printed line says
    which broker it is (the default, Apache Kafka, runs every other end-to-end test)."""
    with imagegen_up(
        tmp_path, ["--backend", "demo", "--broker", "tansu", "--broker-storage", "memory"]
    ) as stack:
        assert any(line.startswith("broker: Tansu (--broker tansu)") for line in stack.output)
        with stack.client() as client:
            character = client.post("/api/v1/characters", json={"name": "Fallback"}).json()
            job_id = client.post(
                "/api/generate", json={"character_id": character["id"], "image_count": 2}
            ).json()["job_id"]
            assert wait_for_job(stack, client, job_id)["status"] == "completed"
