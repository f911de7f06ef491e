"""Shared parts of the fault tests: a mixed workload, a killer, and the checks run afterwards.

The checks read what each service owns directly (storage's and the scheduler's PostgreSQL
schemas, the image bucket) rather than trusting the API alone: "stored exactly once" and
"no budget leaked" are claims about those rows and objects.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from imagegen.stack.s3 import s3_client
from tests.e2e.stack import RunningStack

TERMINAL = frozenset({"completed", "partially_completed", "failed", "cancelled"})
IMAGE_BUCKET = "imagegen"
FINAL_PREFIX = "users/"


def say(line: str, capsys: pytest.CaptureFixture[str] | None = None) -> None:
    """A summary line for the CI log: with `capsys`, written past pytest's capture, so it
    shows on a passing run too."""
    if capsys is None:
        print(f"[chaos] {line}", flush=True)
        return
    with capsys.disabled():
        print(f"\n[chaos] {line}", flush=True)


# --- talking to a gateway that may be down for a moment ------------------------------------


def call(
    client: httpx.Client,
    method: str,
    path: str,
    *,
    timeout: float = 60,
    **kwargs: Any,
) -> httpx.Response:
    """One API call, retried while the gateway is down or restarting (connection refused,
    502/503); any other answer is returned as it is."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            response = client.request(method, path, **kwargs)
            if response.status_code not in (502, 503):
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {path}: gateway unreachable for {timeout:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


@dataclass
class Tenant:
    user: str
    tier: str
    token: str
    character_id: str = ""


@dataclass(frozen=True)
class Submitted:
    job_id: str
    user: str
    kind: str
    images: int


def make_tenants(stack: RunningStack, tiers: Iterable[str], tag: str) -> list[Tenant]:
    tenants = []
    for n, tier in enumerate(tiers):
        user = f"{tag}-{tier}-{n}"
        tenant = Tenant(user, tier, stack.token_for(user, tier))
        with stack.client(tenant.token) as client:
            response = call(
                client,
                "POST",
                "/api/v1/characters",
                json={
                    "name": f"{tag} {n}",
                    "attributes": {"hairColour": "red", "eyeColour": "green"},
                    "artStyle": "realistic",
                },
                headers={"Idempotency-Key": f"{user}-character"},
            )
            assert response.status_code == 201, response.text
            tenant.character_id = response.json()["id"]
        tenants.append(tenant)
    return tenants


def pack_sizes(rng: random.Random, images: int) -> list[int]:
    """Pack sizes of 5-23 adding up to at least `images`."""
    sizes: list[int] = []
    while sum(sizes) < images:
        sizes.append(rng.randint(5, 23))
    return sizes


def submit_pack(
    stack: RunningStack, tenant: Tenant, count: int, key: str, size: str | None = None
) -> Submitted:
    """A pack of `count`; `size` ("512x512") or the API's default (1024 px)."""
    body: dict[str, Any] = {"character_id": tenant.character_id, "image_count": count}
    if size is not None:
        body["size"] = size
    with stack.client(tenant.token) as client:
        response = call(
            client,
            "POST",
            "/api/generate",
            json=body,
            headers={"Idempotency-Key": key},
        )
    assert response.status_code == 202, response.text
    return Submitted(response.json()["job_id"], tenant.user, "pack", count)


def submit_portrait(stack: RunningStack, tenant: Tenant, key: str) -> Submitted:
    """A portrait: on a character's first one, the scheduler builds its reference set too."""
    with stack.client(tenant.token) as client:
        response = call(
            client,
            "POST",
            "/api/v1/images/characters",
            json={
                "characterId": tenant.character_id,
                "style": "watercolor",
                "options": {"size": "512x512"},
            },
            headers={"Idempotency-Key": key},
        )
    assert response.status_code == 202, response.text
    return Submitted(response.json()["jobId"], tenant.user, "portrait", 1)


def submit_workload(
    stack: RunningStack,
    tenants: list[Tenant],
    sizes: list[int],
    *,
    portraits: bool = True,
    image_size: str | None = None,
) -> list[Submitted]:
    """Packs of `sizes` dealt round the tenants (their images `image_size`, default the
    API's), plus a portrait for each paid tenant; every POST carries an Idempotency-Key, so
    a retry after a gateway crash makes no second job."""
    run = uuid.uuid4().hex[:8]
    jobs: list[Submitted] = []
    for n, size in enumerate(sizes):
        tenant = tenants[n % len(tenants)]
        jobs.append(submit_pack(stack, tenant, size, f"{run}-pack-{n}", image_size))
    if portraits:
        for tenant in tenants:
            if tenant.tier == "paid":
                jobs.append(submit_portrait(stack, tenant, f"{run}-portrait-{tenant.user}"))
    return jobs


def list_jobs(stack: RunningStack, tenant: Tenant) -> dict[str, dict[str, Any]]:
    """Every job of `tenant` as the API lists it (reference-set jobs included)."""
    jobs: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    with stack.client(tenant.token) as client:
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            response = call(client, "GET", "/api/v1/jobs", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            jobs.update({item["jobId"]: item for item in page["items"]})
            cursor = page.get("nextCursor")
            if not cursor:
                return jobs


def wait_terminal(
    stack: RunningStack,
    tenants: list[Tenant],
    jobs: list[Submitted],
    timeout: float,
    *,
    stall_s: float | None = None,
) -> dict[str, dict[str, Any]]:
    """Every job of the tenants in a terminal state, as the API tells it (the submitted ones
    and any the system started for them).

    Fails at `timeout` whatever happens; with `stall_s`, also as soon as nothing moved (no
    job listed, no image finished or failed, no job ended) for that long, so a loaded
    machine gets the time its progress earns and a stuck system fails early. Either way
    the failure names the open jobs, the progress so far and the end of every log.
    """
    started = time.monotonic()
    deadline = started + timeout
    progress: tuple[int, int, int] | None = None
    moved_at = started
    history: list[str] = []
    while True:
        listed: dict[str, dict[str, Any]] = {}
        for tenant in tenants:
            listed.update(list_jobs(stack, tenant))
        unlisted = [j.job_id for j in jobs if j.job_id not in listed]
        open_jobs = {
            job_id: body for job_id, body in listed.items() if body["status"] not in TERMINAL
        }
        if not unlisted and not open_jobs:
            return listed
        now = time.monotonic()
        done = sum(int(b["completed"]) + int(b["failed"]) for b in listed.values())
        current = (len(listed), done, len(listed) - len(open_jobs))
        if current != progress:
            progress, moved_at = current, now
            history.append(f"{now - started:.0f}s:{done}")
        stalled = stall_s is not None and now - moved_at > stall_s
        if stalled or now > deadline:
            why = (
                f"no progress for {now - moved_at:.0f}s"
                if stalled
                else f"not terminal after {timeout:.0f}s"
            )
            described = [
                f"{job_id} ({b['kind']} {b['status']} {b['completed']}+{b['failed']} failed"
                f"/{b['total']})"
                for job_id, b in open_jobs.items()
            ]
            raise AssertionError(
                f"{why}: open {described}; never listed: {unlisted}; images done over"
                f" time {' '.join(history)}\n{stack.log_tails()}"
            )
        time.sleep(1.0)


# --- killing services ----------------------------------------------------------------------


@dataclass
class Kill:
    service: str
    pid: int
    at_s: float
    stored_before: int
    """Images stored when it was killed: proof that the kill fell mid-run."""
    restarted_pid: int = 0
    restarted_after_s: float = 0.0
    resumed_after_s: float | None = None
    """From the kill to the stage's next progress (its group committed a further offset);
    None if it did not within the killer's wait."""
    booted_after_s: float | None = None
    """From the kill to the new process's stage consumer starting (its log says so): the
    restart and the Python start-up, before Kafka has any say. Resume minus boot is what
    the group took to hand the partitions back (static membership's part)."""


STAGE_GROUPS = {
    "gateway": "gateway",
    "scheduler": "scheduler",
    "generator": "generator",
    "postprocess": "postprocess",
    "storage": "storage",
}
"""The consumer group whose progress is each service's stage: each service runs one
(the scheduler's reads events too, so it moves on after every request is submitted)."""


def committed(bootstrap: str, group: str, timeout: float = 5.0) -> int:
    """The sum of `group`'s committed offsets over its partitions (0 before any commit)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    found = future.result(timeout=timeout)
    return sum(tp.offset for tp in found.topic_partitions or [] if tp.offset >= 0)


def _log_time(line: str) -> float | None:
    """The epoch time of a service log line (`ts=YYYY-MM-DD HH:MM:SS,mmm`, local time)."""
    if not line.startswith("ts="):
        return None
    stamp = line[3:26]
    try:
        parsed = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
    except ValueError:
        return None
    return parsed.timestamp()


def consumer_started_at(log: Path, offset: int, group: str) -> float | None:
    """When the first process to log after `offset` started its `group` loop (epoch s)."""
    needle = f"event=consumer_started name={group}"
    with log.open("rb") as handle:
        handle.seek(offset)
        for raw in handle:
            line = raw.decode(errors="replace")
            if needle in line and (line.rstrip().endswith(needle) or f"{needle} " in line):
                return _log_time(line)
    return None


def wait_resumed(
    bootstrap: str, group: str, before: int, since: float, timeout: float = 90
) -> float | None:
    """Seconds from `since` (monotonic) until `group` commits past `before`; None on timeout.

    Commits are what a stage does once its handler's effects are durable, so this is the
    first record handled after the kill, to within the commit interval
    (`IMAGEGEN_KAFKA_COMMIT_INTERVAL_MS`, 5 s)."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        try:
            if committed(bootstrap, group) > before:
                return time.monotonic() - since
        except Exception:  # a slow or failed answer: ask again
            pass
        time.sleep(0.1)
    return None


def keep_busy(
    stack: RunningStack,
    tenants: list[Tenant],
    busy: Callable[[], bool],
    progress: Callable[[], int],
    submitted: int,
    pending: int = 12,
) -> list[Submitted]:
    """While `busy()`, tops the work up with 5-image packs of the paid tenants whenever
    fewer than `pending` images are left to store: a kill made after a stage's resume wait
    then still falls mid-run, however quickly the machine drains the first workload."""
    payers = [t for t in tenants if t.tier == "paid"] or tenants
    run = uuid.uuid4().hex[:8]
    extra: list[Submitted] = []
    while busy():
        if submitted - progress() < pending:
            tenant = payers[len(extra) % len(payers)]
            extra.append(submit_pack(stack, tenant, 5, f"{run}-top-up-{len(extra)}"))
            submitted += 5
        time.sleep(0.2)
    return extra


def kill_moments(rng: random.Random, images: int, count: int) -> list[int]:
    """When to kill, as numbers of images stored: random, distinct, within the first 80 %."""
    return sorted(rng.sample(range(1, max(int(images * 0.8), count + 1)), count))


@dataclass
class Killer:
    """SIGKILLs each service in turn once the workload has stored a random number of images
    (so every kill falls mid-run however fast the machine is), a random fraction of a
    second later; waits for the supervisor's restart and for the stage to make progress
    again (its time to resume) before the next. Runs in a thread."""

    stack: RunningStack
    services: list[str]
    moments: list[int]
    progress: Callable[[], int]
    rng: random.Random
    stall_s: float = 180
    namespace: str = "imagegen"
    kills: list[Kill] = field(default_factory=list)
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="killer", daemon=True)
        self._thread.start()

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float = 600) -> list[Kill]:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the killer did not finish"
        if self.error is not None:
            raise self.error
        return self.kills

    def _run(self) -> None:
        started = time.monotonic()
        try:
            for service, moment in zip(self.services, self.moments, strict=True):
                while (stored := self.progress()) < moment:
                    if time.monotonic() - started > self.stall_s:
                        raise AssertionError(
                            f"workload stalled at {stored} images, waiting to kill {service}"
                        )
                    time.sleep(0.1)
                time.sleep(self.rng.uniform(0, 0.5))
                stored = self.progress()
                pid = self.stack.service_pids()[service]
                log = self.stack.data_dir / "logs" / f"{service}.log"
                log_offset = log.stat().st_size
                os.kill(pid, signal.SIGKILL)
                killed_at, killed_wall = time.monotonic(), time.time()
                kill = Kill(service, pid, killed_at - started, stored)
                self.kills.append(kill)
                # Read after the kill: a dead process commits nothing more.
                group = f"{self.namespace}.{STAGE_GROUPS[service]}"
                before = committed(self.stack.bootstrap, group)
                kill.restarted_pid = wait_restarted(self.stack, service, pid)
                kill.restarted_after_s = time.monotonic() - killed_at
                kill.resumed_after_s = wait_resumed(self.stack.bootstrap, group, before, killed_at)
                booted = consumer_started_at(log, log_offset, STAGE_GROUPS[service])
                kill.booted_after_s = None if booted is None else booted - killed_wall
        except BaseException as exc:  # reported by join()
            self.error = exc


def wait_restarted(stack: RunningStack, service: str, old_pid: int, timeout: float = 60) -> int:
    """The PID the supervisor started in place of `old_pid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = stack.service_pids().get(service, old_pid)
        if pid != old_pid:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"the supervisor did not restart {service} within {timeout:.0f}s")


# --- what the stores say afterwards --------------------------------------------------------


@dataclass(frozen=True)
class StoreReport:
    rows: int
    renditions: int
    objects: int
    duplicate_images: list[tuple[str, int]]
    missing_objects: list[str]
    orphan_objects: list[str]
    stored_per_job: dict[str, int]


@dataclass(frozen=True)
class LedgerReport:
    open_reservations: int
    reserved_usd: Decimal
    user_reserved_usd: Decimal
    spent_usd: Decimal
    user_spent_usd: Decimal
    entries_spent_usd: Decimal
    generations_actual_usd: Decimal
    stored_cost_usd: Decimal
    settled_not_stored: int


def run_sync(coro: Any) -> Any:
    """Run a coroutine from a sync test (the e2e tests drive the stack from threads)."""
    return asyncio.run(coro)


async def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(query, *args)
        return rows
    finally:
        await conn.close()


def stored_rows(stack: RunningStack) -> int:
    """How many images storage has recorded so far."""
    rows = run_sync(_fetch(stack.database, "SELECT count(*) AS n FROM storage.images"))
    return int(rows[0]["n"])


def final_objects(stack: RunningStack) -> list[str]:
    """Every key under the final layout's prefix (staging is the claim-check area)."""
    creds = stack.secrets()
    client = s3_client(
        f"http://127.0.0.1:{stack.s3_port}",
        creds["s3_access_key"],
        creds["s3_secret_key"],
        "us-east-1",
    )
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=IMAGE_BUCKET, Prefix=FINAL_PREFIX
    ):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys


def store_report(stack: RunningStack) -> StoreReport:
    """Storage's rows against the objects under the final prefix."""
    rows = run_sync(
        _fetch(
            stack.database,
            "SELECT image_id, version, job_id, image_index, renditions FROM storage.images",
        )
    )
    per_image: dict[tuple[str, int], int] = {}
    stored_per_job: dict[str, int] = {}
    expected: list[str] = []
    for row in rows:
        slot = (row["job_id"], row["image_index"])
        per_image[slot] = per_image.get(slot, 0) + 1
        stored_per_job[row["job_id"]] = stored_per_job.get(row["job_id"], 0) + 1
        renditions = row["renditions"]
        if isinstance(renditions, str):  # jsonb comes back as text without a codec
            renditions = json.loads(renditions)
        expected.extend(r["key"] for r in renditions)
    objects = final_objects(stack)
    return StoreReport(
        rows=len(rows),
        renditions=len(expected),
        objects=len(objects),
        duplicate_images=sorted(slot for slot, n in per_image.items() if n > 1),
        missing_objects=sorted(set(expected) - set(objects)),
        orphan_objects=sorted(set(objects) - set(expected)),
        stored_per_job=stored_per_job,
    )


def ledger_report(stack: RunningStack) -> LedgerReport:
    """The scheduler's ledger once everything is terminal (whole database: one stack's)."""

    async def read() -> LedgerReport:
        conn = await asyncpg.connect(stack.database)
        try:
            one = conn.fetchval
            settled_not_stored = await one(
                "SELECT count(*) FROM scheduler.generations g WHERE g.status = 'settled'"
                " AND NOT EXISTS (SELECT 1 FROM storage.images i"
                "   WHERE i.job_id = g.job_id AND i.image_index = g.image_index)"
            )
            return LedgerReport(
                open_reservations=await one(
                    "SELECT count(*) FROM scheduler.generations WHERE status = 'reserved'"
                    " OR reserved_usd <> 0"
                ),
                reserved_usd=await one(
                    "SELECT coalesce(sum(reserved_usd), 0) FROM scheduler.budget_days"
                ),
                user_reserved_usd=await one(
                    "SELECT coalesce(sum(reserved_usd), 0) FROM scheduler.user_budget_days"
                ),
                spent_usd=await one(
                    "SELECT coalesce(sum(spent_usd), 0) FROM scheduler.budget_days"
                ),
                user_spent_usd=await one(
                    "SELECT coalesce(sum(spent_usd), 0) FROM scheduler.user_budget_days"
                ),
                entries_spent_usd=await one(
                    "SELECT coalesce(sum(spent_delta), 0) FROM scheduler.ledger_entries"
                ),
                generations_actual_usd=await one(
                    "SELECT coalesce(sum(actual_usd), 0) FROM scheduler.generations"
                ),
                stored_cost_usd=await one("SELECT coalesce(sum(cost_usd), 0) FROM storage.images"),
                settled_not_stored=settled_not_stored,
            )
        finally:
            await conn.close()

    report: LedgerReport = run_sync(read())
    return report


def assert_consistent(
    stack: RunningStack,
    jobs: list[Submitted],
    final: dict[str, dict[str, Any]],
) -> tuple[StoreReport, LedgerReport]:
    """Stored exactly once, every object accounted for, no budget leaked."""
    store = store_report(stack)
    assert not store.duplicate_images, f"stored more than once: {store.duplicate_images[:10]}"
    assert not store.missing_objects, f"rows without objects: {store.missing_objects[:10]}"
    assert not store.orphan_objects, f"objects without rows: {store.orphan_objects[:10]}"
    assert store.objects == store.renditions
    for job in jobs:
        body = final[job.job_id]
        assert store.stored_per_job.get(job.job_id, 0) >= body["completed"], (job, body)
    ledger = ledger_report(stack)
    assert ledger.open_reservations == 0, ledger
    assert ledger.reserved_usd == 0 and ledger.user_reserved_usd == 0, ledger
    assert ledger.spent_usd == ledger.user_spent_usd == ledger.entries_spent_usd, ledger
    assert ledger.spent_usd == ledger.generations_actual_usd, ledger
    assert ledger.settled_not_stored == 0, ledger
    assert ledger.spent_usd == ledger.stored_cost_usd, ledger
    return store, ledger


def describe_kills(kills: list[Kill]) -> str:
    """`service@kill time/images stored then restart=… resume=…` per kill, for a summary."""

    def seconds(value: float | None) -> str:
        return "none" if value is None else f"{value:.1f}s"

    def rejoin(kill: Kill) -> float | None:
        if kill.resumed_after_s is None or kill.booted_after_s is None:
            return None
        return kill.resumed_after_s - kill.booted_after_s

    return ", ".join(
        f"{k.service}@{k.at_s:.1f}s/{k.stored_before}img boot={seconds(k.booted_after_s)}"
        f" resume={seconds(k.resumed_after_s)} (kafka {seconds(rejoin(k))})"
        for k in kills
    )


def count_images(final: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(images completed, images failed) over the jobs' final states."""
    return (
        sum(int(j["completed"]) for j in final.values()),
        sum(int(j["failed"]) for j in final.values()),
    )
