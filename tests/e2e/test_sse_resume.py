"""SSE resume on the real stack: a client leaves mid-pack and comes back elsewhere.

`imagegen up` runs one gateway; the test adds a second replica on the same database and
broker (same consumer group, so each projects part of the events topic). The streams'
safety-net re-read is set to an hour: a stream on the replica that did not project an
event can only learn of it through the projection's NOTIFY.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from imagegen.stack.ports import LOOPBACK, free_port
from tests.e2e.stack import RunningStack, imagegen_up, read_sse, wait_for_job

pytestmark = pytest.mark.e2e

PACK = 23
NO_POLL = {"IMAGEGEN_SSE_POLL_S": "3600", "IMAGEGEN_SSE_PING_S": "1"}
# A stream with no event for this long fails with a diagnosis: events of a pack come
# seconds apart even on two busy cores, so only a stuck pipeline or stream gets here.
STALL_S = 90.0
# The first test also starts the stack (module fixture) and starts a replica twice: on a
# loaded 2-core machine each Python start-up costs 15-45 s, so 300 s is too little; the
# stall checks above are what fails a stuck run, and early.
TEST_TIMEOUT_S = 600


class Replica:
    """Another `python -m services.gateway` with the stack gateway's settings, its own port."""

    def __init__(self, stack: RunningStack, log_file: Path) -> None:
        pid = stack.service_pids()["gateway"]
        env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in item
        )
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.env = {**env, **NO_POLL, "IMAGEGEN_PORT": str(self.port)}
        self.env["IMAGEGEN_PUBLIC_BASE_URL"] = self.url
        # A static group member of its own: the stack's gateway is `gateway-0`, and two live
        # processes with one name fence each other (as two pods never share a name).
        self.env["IMAGEGEN_KAFKA_INSTANCE_ID"] = "gateway-1"
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.gateway"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_file.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("replica not ready:\n" + self.log_file.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    if not Path("/proc/self/environ").exists():
        pytest.skip("needs /proc to copy the gateway's environment into a second replica")
    with imagegen_up(
        tmp_path_factory.mktemp("sse-stack"), ["--backend", "demo"], env=NO_POLL
    ) as stack:
        yield stack


@pytest.fixture
def replica(stack: RunningStack, tmp_path: Path) -> Iterator[Replica]:
    replica = Replica(stack, tmp_path / "replica.log")
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()


def _key(message: dict[str, Any]) -> tuple[int, str, str, int]:
    return (int(message["id"]), message["event"], message["data"]["id"], message["data"]["seq"])


async def _logged_ids(database: str, column: str, value: str) -> list[int]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            f"SELECT id FROM gateway.events WHERE {column} = $1 ORDER BY id",
            value,
        )
    finally:
        await conn.close()
    return [row["id"] for row in rows]


async def _events_logged(database: str, column: str, value: str, after: int) -> list[str]:
    conn = await asyncpg.connect(database)
    try:
        rows = await conn.fetch(
            f"SELECT id, type, created_at FROM gateway.events WHERE {column} = $1 AND id > $2"
            " ORDER BY id",
            value,
            after,
        )
    finally:
        await conn.close()
    return [f"{r['id']}:{r['type']}@{r['created_at']:%H:%M:%S.%f}" for r in rows]


def _diagnosis(
    stack: RunningStack, replica: Replica, column: str, value: str
) -> Callable[[list[dict[str, Any]]], str]:
    """What a stalled stream shows: whether the log holds events the stream did not send
    (a lost wake-up) or none either (the pipeline is stuck), and the end of every log."""

    def diagnose(messages: list[dict[str, Any]]) -> str:
        after = int(messages[-1]["id"]) if messages else 0
        logged = asyncio.run(_events_logged(stack.database, column, value, after))
        listeners = asyncio.run(_listening_connections(stack.database))
        return (
            f"logged for {column}={value} after id {after}, not streamed: {len(logged)}"
            f" {logged[:10]}; LISTEN connections: {listeners}\n"
            + stack.log_tails(extra=(replica.log_file,))
        )

    return diagnose


async def _listening_connections(database: str) -> int:
    conn = await asyncpg.connect(database)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'imagegen-gateway-listen'"
        )
    finally:
        await conn.close()
    return count


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_resume_on_another_replica_and_after_a_restart_misses_nothing(
    stack: RunningStack, replica: Replica
) -> None:
    user = f"sse-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    token = stack.token_for(user, "paid")
    path_of = "/api/v1/jobs/{}/events".format
    with stack.client(token) as first, replica.client(token) as second:
        character = first.post(
            "/api/v1/characters",
            json={"name": "Resume", "attributes": {"hairColour": "black"}, "artStyle": "realistic"},
        )
        assert character.status_code == 201, character.text
        accepted = first.post(
            "/api/generate", json={"character_id": character.json()["id"], "image_count": PACK}
        )
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        path = path_of(job_id)
        # Every read below fails with a diagnosis if its stream stalls.
        read = functools.partial(
            read_sse, stall_s=STALL_S, diagnose=_diagnosis(stack, replica, "job_id", job_id)
        )

        # 1. The stack's gateway; the client drops after 15 events (a pack has 5+ per image).
        part1 = read(first, path, stop_after=15)
        assert len(part1) == 15 and part1[-1]["event"] != "pack_completed"

        # 2. Back on the other replica with Last-Event-ID; drops again 30 events later.
        part2 = read(second, path, {"Last-Event-ID": part1[-1]["id"]}, stop_after=30)
        assert len(part2) == 30

        # 3. That replica restarts; the client comes back as a browser whose stream token
        #    and last id travel in the query (EventSource cannot set headers).
        replica.stop()
        running_at_restart = first.get(f"/api/generate/{job_id}").json()["status"]
        replica.start()
        stream_token = second.post("/api/v1/stream-tokens").json()["token"]
        with httpx.Client(base_url=replica.url, timeout=30) as browser:
            part3 = read(
                browser, f"{path}?stream_token={stream_token}&lastEventId={part2[-1]['id']}"
            )
        assert part3 and part3[-1]["event"] == "pack_completed"

        # The whole job, read in one go at the end, is exactly the three parts joined.
        full = read(first, path)
        # One LISTEN connection per gateway process, however many streams it serves.
        assert asyncio.run(_listening_connections(stack.database)) == 2
        job = wait_for_job(stack, first, job_id)

    resumed = [_key(m) for m in part1 + part2 + part3]
    assert resumed == [_key(m) for m in full], "every event exactly once, in order"
    assert [m["data"] for m in part1 + part2 + part3] == [m["data"] for m in full]
    assert [int(m["id"]) for m in full] == asyncio.run(
        _logged_ids(stack.database, "job_id", job_id)
    )
    seqs = [m["data"]["seq"] for m in full]
    assert seqs == list(range(1, len(full) + 1)), "per-job seq has no gaps"
    types = [m["event"] for m in full]
    assert types.count("image_stored") == PACK and types[-1] == "pack_completed"
    assert job["status"] == "completed" and len(job["images"]) == PACK
    print(
        f"events={len(full)} part1={len(part1)} part2={len(part2)} part3={len(part3)}"
        f" job_status_at_restart={running_at_restart}"
    )


def test_user_stream_resumes_across_replicas(stack: RunningStack, replica: Replica) -> None:
    user = f"sse-user-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    token = stack.token_for(user, "paid")
    with stack.client(token) as first, replica.client(token) as second:
        character = first.post("/api/v1/characters", json={"name": "Everyone"}).json()
        jobs = [
            first.post(
                "/api/generate", json={"character_id": character["id"], "image_count": 3}
            ).json()["job_id"]
            for _ in range(2)
        ]
        read = functools.partial(
            read_sse, stall_s=STALL_S, diagnose=_diagnosis(stack, replica, "user_id", user)
        )
        # Live on one replica until some events of both jobs have arrived.
        # From the start of the user's log (without Last-Event-ID the stream is live only,
        # and both jobs may have begun before it connects).
        part1 = read(first, "/api/v1/events", {"Last-Event-ID": "0"}, stop_after=8)
        for job_id in jobs:
            wait_for_job(stack, first, job_id)
        logged = asyncio.run(_logged_ids(stack.database, "user_id", user))
        rest = len(logged) - len(part1)
        part2 = read(second, "/api/v1/events", {"Last-Event-ID": part1[-1]["id"]}, stop_after=rest)
    ids = [int(m["id"]) for m in part1 + part2]
    assert ids == logged
    assert set(jobs) <= {m["data"]["job_id"] for m in part1 + part2}
    assert all(m["data"]["user_id"] == user for m in part1 + part2)
