"""Faults in the services, on the whole stack as processes (Apache Kafka, PostgreSQL,
SeaweedFS).

- SIGKILL of every service in turn, at seeded random moments, under a workload of 100+
  images from paid and free users: every job ends, every image is stored once, no budget
  is left reserved and the money spent is the money the stored images cost. Each kill's
  time to resume (kill -> its stage's next committed offset) is reported: with static
  group membership (the supervisor names each process `<service>-0`) a restarted worker
  takes its partitions back without waiting out the session timeout and a rebalance.
  CHAOS_STATIC_MEMBERSHIP=0 runs the stack without it, for comparison.
- Poison on every topic: undecodable bytes and schema-invalid JSON land in the dead-letter
  topic with the error in headers, and every consumer goes on to the next message.

Set CHAOS_SEED to replay a run: the seed is printed with each summary line.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from imagegen.kafka.redrive import load as load_dead_letters
from imagegen.stack.services import SERVICES
from schemas.deadletter import HEADER_ERROR_MESSAGE, HEADER_ERROR_TYPE, HEADER_FAILED_BY
from schemas.topics import Tier, TopicNames
from tests.e2e.chaos_support import (
    Killer,
    assert_consistent,
    count_images,
    describe_kills,
    keep_busy,
    kill_moments,
    make_tenants,
    pack_sizes,
    say,
    stored_rows,
    submit_pack,
    submit_workload,
    wait_terminal,
)
from tests.e2e.stack import RunningStack, imagegen_up

pytestmark = pytest.mark.e2e

SEED = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(2**31))
WORKLOAD_IMAGES = 100
# Each portrait of a new character is its reference set (5) plus the portrait itself.
PORTRAIT_IMAGES = 6


STATIC = os.environ.get("CHAOS_STATIC_MEMBERSHIP", "1") not in ("0", "false")


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # An empty instance id tells the supervisor to leave membership dynamic.
    env = {} if STATIC else {"IMAGEGEN_KAFKA_INSTANCE_ID": ""}
    with imagegen_up(tmp_path_factory.mktemp("chaos-stack"), ["--backend", "demo"], env) as stack:
        yield stack


@pytest.mark.timeout(720)
def test_sigkill_each_service_in_turn_loses_nothing(
    chaos_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    victims = list(SERVICES)
    rng.shuffle(victims)
    say(f"kill seed={SEED} order={','.join(victims)} (CHAOS_SEED={SEED} replays it)")
    tenants = make_tenants(chaos_stack, ["paid", "paid", "free", "free"], f"k{SEED % 10_000}")
    paid = sum(t.tier == "paid" for t in tenants)
    sizes = pack_sizes(rng, WORKLOAD_IMAGES - paid * PORTRAIT_IMAGES)
    moments = kill_moments(rng, sum(sizes) + paid * PORTRAIT_IMAGES, len(victims))
    before = stored_rows(chaos_stack)
    started = time.monotonic()

    def progress() -> int:
        return stored_rows(chaos_stack) - before

    killer = Killer(chaos_stack, victims, moments, progress, rng)
    killer.start()
    jobs = submit_workload(chaos_stack, tenants, sizes)
    workload = sum(j.images for j in jobs) + paid * (PORTRAIT_IMAGES - 1)
    jobs += keep_busy(chaos_stack, tenants, killer.running, progress, workload)
    kills = killer.join()
    final = wait_terminal(chaos_stack, tenants, jobs, timeout=240)
    duration = time.monotonic() - started

    # Every service was killed mid-run and came back as a new process.
    assert [k.service for k in kills] == victims
    assert all(k.restarted_pid not in (0, k.pid) for k in kills)
    # Every job ended, and with nothing lost: a crash delays an image, it never fails it.
    not_completed = {
        j: (b["kind"], b["status"]) for j, b in final.items() if b["status"] != "completed"
    }
    assert not not_completed, not_completed
    completed, failed = count_images(final)
    assert completed >= WORKLOAD_IMAGES and failed == 0
    assert all(k.stored_before < completed for k in kills), kills
    store, ledger = assert_consistent(chaos_stack, jobs, final)
    assert sum(store.stored_per_job.get(j, 0) for j in final) == completed
    assert {j.job_id for j in jobs} <= set(final)
    resumed = [k.resumed_after_s for k in kills if k.resumed_after_s is not None]
    rejoined = [
        k.resumed_after_s - k.booted_after_s
        for k in kills
        if k.resumed_after_s is not None and k.booted_after_s is not None
    ]
    say(
        f"kill seed={SEED} static_membership={STATIC} images={completed} jobs={len(final)}"
        f" users={len(tenants)} kills={len(kills)} [{describe_kills(kills)}]"
        f" resume_mean={sum(resumed) / max(len(resumed), 1):.1f}s"
        f" resume_max={max(resumed, default=0):.1f}s"
        f" kafka_part_mean={sum(rejoined) / max(len(rejoined), 1):.1f}s"
        f" duration={duration:.1f}s stored_rows={store.rows} objects={store.objects}"
        f" spent_usd={ledger.spent_usd} open_reservations={ledger.open_reservations}",
        capsys,
    )


# --- poison -------------------------------------------------------------------------------

UNDECODABLE = b"\xff\xfe\x00poison: not JSON \x80"
# Well-formed JSON naming a type every consumer tracks, with fields of the wrong shape:
# consumers that skip event types they do not track must still not skip this one.
SCHEMA_INVALID = json.dumps(
    {"schema_version": 1, "type": "generation_completed", "id": 42, "job_id": ["poison"]}
).encode()
POISON = (UNDECODABLE, SCHEMA_INVALID)


def consumers_of(names: TopicNames) -> dict[str, set[str]]:
    """The consumer groups reading each topic (as `x-failed-by` names them)."""
    return {
        names.requests: {"scheduler", "storage"},
        **{names.jobs(t): {"generator"} for t in Tier},
        names.images_raw: {"postprocess"},
        names.images_processed: {"storage"},
        names.events: {"gateway", "scheduler"},
        # generator-control reads only cancels there and passes over anything else.
        names.control: set(),
    }


def _poison_every_partition(bootstrap: str, topics: list[str]) -> dict[str, list[int]]:
    """Both kinds of poison on every partition of every topic, so that whatever a consumer
    reads next sits behind one; returns each topic's partitions."""
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    partitions: dict[str, list[int]] = {}
    for topic in topics:
        partitions[topic] = sorted(metadata.topics[topic].partitions)
        assert partitions[topic], topic
        for partition in partitions[topic]:
            for value in POISON:
                producer.produce(topic, value=value, key=b"poison", partition=partition)
    assert producer.flush(30) == 0, "poison not delivered"
    return partitions


def test_poison_on_every_topic_is_dead_lettered_and_consumers_go_on(
    chaos_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    names = TopicNames("imagegen")
    readers = consumers_of(names)
    bootstrap = f"127.0.0.1:{chaos_stack.kafka_port}"
    partitions = _poison_every_partition(bootstrap, list(readers))
    produced = sum(len(p) for p in partitions.values()) * len(POISON)

    # Good work after the poison, through every topic: a paid pack and a free one (the
    # economy tier's topic).
    tenants = make_tenants(chaos_stack, ["paid", "free"], f"p{uuid.uuid4().hex[:6]}")
    jobs = [submit_pack(chaos_stack, t, 5, f"{t.user}-after-poison") for t in tenants]
    final = wait_terminal(chaos_stack, tenants, jobs, timeout=120)
    assert all(b["status"] == "completed" for b in final.values()), final

    # Every poison message was dead-lettered by every consumer group that read it, with the
    # error in headers, at the first attempt (poison is permanent: no retries).
    expected = {
        (topic, partition, value, group)
        for topic, groups in readers.items()
        for partition in partitions[topic]
        for value in POISON
        for group in groups
    }
    deadline = time.monotonic() + 30
    while True:
        letters = load_dead_letters(bootstrap, names.dead_letter, idle_timeout=2.0)
        poison = [d for d in letters if d.record.key == "poison" and d.info is not None]
        found = {
            (d.info.original_topic, d.info.original_partition, d.record.value, d.info.failed_by)
            for d in poison
            if d.info is not None
        }
        if expected <= found or time.monotonic() > deadline:
            break
        time.sleep(1)
    missing = sorted({(t, g, v[:12]) for t, _, v, g in expected - found})
    assert not missing, f"not dead-lettered (topic, consumer, value): {missing}"
    for letter in poison:
        assert letter.info is not None
        headers = letter.record.headers
        assert headers[HEADER_ERROR_TYPE] and headers[HEADER_ERROR_MESSAGE], headers
        assert letter.info.attempts == 1, headers
    by_consumer = sorted({letter.record.headers[HEADER_FAILED_BY] for letter in poison})
    say(
        f"poison topics={len(readers)} messages={produced} dead_letters={len(poison)}"
        f" consumers={','.join(by_consumer)} jobs_after={len(final)} (completed)"
        f" duration={time.monotonic() - started:.1f}s",
        capsys,
    )
