"""A scheduler process SIGKILLed mid-stream and restarted loses no job, and re-sends only
what its relay had in flight, byte for byte.

The outbox relay (outbox.py) publishes a batch, then deletes it: a kill between the
broker's acknowledgement and the delete re-sends those rows after the restart. That is the
at-least-once contract (ARCHITECTURE.md, Guarantees): the copies carry the same
deterministic ids, so consumers drop them (the generator skips an attempt it has finished,
storage keys on the image id).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from schemas.events import EVENT_ADAPTER, JobStatus
from schemas.jobs import GenerateImage
from tests.integration.scheduler.kafka_rig import KafkaRig, kafka_rig
from tests.unit.scheduler.fakes import catalogue_json, fast_settings
from tests.unit.scheduler.memrig import pack


def start_scheduler(
    bootstrap: str, namespace: str, database_url: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "IMAGEGEN_ENV": "test",
        "IMAGEGEN_DATABASE_URL": database_url,
        "IMAGEGEN_KAFKA_BOOTSTRAP": bootstrap,
        "IMAGEGEN_KAFKA_NAMESPACE": namespace,
        "IMAGEGEN_CATALOGUE": catalogue_json(("cheap", "0.01", "high")),
        "IMAGEGEN_RELAY_INTERVAL_S": "0.05",
        "IMAGEGEN_TICK_INTERVAL_S": "0.05",
        "IMAGEGEN_RETRY_BACKOFF_S": "0.05",
        "IMAGEGEN_MAX_JOBS_IN_FLIGHT_PAID": "2",
    }
    handle = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "services.scheduler"], env=env, stdout=handle, stderr=handle
    )


@pytest.mark.timeout(240)
async def test_sigkill_and_restart_loses_nothing_and_resends_only_identical_copies(
    kafka_bootstrap: str, topic_namespace: str, database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "scheduler.log"

    # Image 1 of every job fails once, so retries are in flight when the process dies too.
    def policy(job: GenerateImage) -> str:
        return "fail" if job.image.image_index == 1 and job.image.attempt == 1 else "ok"

    async with kafka_rig(
        kafka_bootstrap,
        topic_namespace,
        None,
        fast_settings(),
        policy,  # type: ignore[arg-type]
    ) as k:
        proc = start_scheduler(kafka_bootstrap, topic_namespace, database_url, log)
        users = [f"user-{n}" for n in range(5)]
        requests = [pack(3, user=users[n % 5]) for n in range(40)]
        try:
            for r in requests[:20]:
                await k.publisher.publish(k.topics.requests, r.user_id, r)

            await asyncio.wait_for(_count_jobs(k, 12), 60)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for r in requests[20:]:
                await k.publisher.publish(k.topics.requests, r.user_id, r)
            proc = start_scheduler(kafka_bootstrap, topic_namespace, database_url, log)

            async def all_ended() -> bool:
                events = [e for e in await _events(k) if e.type == "pack_completed"]
                return {e.job_id for e in events} >= {r.job_id for r in requests}

            deadline = asyncio.get_running_loop().time() + 150
            while not await all_ended():
                assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
                assert proc.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=20)

        # A copy the relay re-sends is the staged row itself; a second dispatch of an attempt
        # (the bug this test is for) would differ, in enqueued_at at least.
        copies: dict[tuple[str, int, int], set[bytes]] = defaultdict(set)
        for value in await _job_values(k):
            job = GenerateImage.model_validate_json(value)
            copies[(job.image.job_id, job.image.image_index, job.image.attempt)].add(value)
        differing = {key: len(values) for key, values in copies.items() if len(values) > 1}
        assert differing == {}, f"an attempt published with different contents: {differing}"
        per_attempt = Counter(
            (j.image.job_id, j.image.image_index, j.image.attempt) for j in await _jobs(k)
        )
        resent = sum(n - 1 for n in per_attempt.values())
        print(f"[kill] {resent} job message(s) re-sent after the restart (relay crash window)")
        expected = {(r.job_id, i, 1) for r in requests for i in range(3)} | {
            (r.job_id, 1, 2) for r in requests
        }
        assert set(per_attempt) == expected, "every image attempt published, and no other"
        ends = {e.job_id: e for e in await _events(k) if e.type == "pack_completed"}
        end_ids = Counter(
            e.job_id
            for e in {e.id: e for e in await _events(k)}.values()
            if e.type == "pack_completed"
        )
        assert set(end_ids.values()) == {1}, "one terminal event per job (copies share its id)"
        assert {e.data.status for e in ends.values()} == {JobStatus.COMPLETED}
        assert "event=image_dispatched" in log.read_text()


async def _job_values(k: KafkaRig) -> list[bytes]:
    out: list[bytes] = []
    for topic in k.topics.all_jobs():
        out += [r.value for r in await k.collector.get(topic)]
    return out


async def _jobs(k: KafkaRig) -> list[GenerateImage]:
    return [GenerateImage.model_validate_json(v) for v in await _job_values(k)]


async def _events(k: KafkaRig) -> list[Any]:
    return [EVENT_ADAPTER.validate_json(r.value) for r in await k.collector.get(k.topics.events)]


async def _count_jobs(k: KafkaRig, n: int) -> None:
    while len(await _jobs(k)) < n:
        await asyncio.sleep(0.02)
