"""The weighted tier picker and the one-head-per-tier consumer."""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import pairwise

import pytest

from imagegen.blobstore import InMemoryBlobStore
from imagegen.errors import ConfigurationError, FatalClientError
from imagegen.kafka.memory import InMemoryBroker
from imagegen.kafka.ports import Consumer, Record
from imagegen.settings import KafkaSettings
from schemas.topics import Tier, TopicNames
from services.generator.loops import jobs_loop
from services.generator.settings import BackendSettings, GeneratorSettings
from services.generator.tiers import (
    TierPicker,
    WeightedTierConsumer,
    parse_tiers,
    parse_weights,
    with_min_share,
)
from services.generator.worker import Generator
from tests.unit.generator.support import ScriptedBackend, make_job, of_type

R, S, E = Tier.REALTIME, Tier.STANDARD, Tier.ECONOMY
ALL = {R, S, E}


def test_default_weights_give_6_3_1_shares_over_1000_picks() -> None:
    picker = TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05)
    counts = Counter(picker.pick(ALL) for _ in range(1000))
    assert counts == {R: 600, S: 300, E: 100}


def test_picks_are_interleaved_not_bursts() -> None:
    picker = TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05)
    picks = [picker.pick(ALL) for _ in range(1000)]
    # Economy's 1-in-10 share comes as one pick in every window of 10, never later.
    economy_at = [i for i, t in enumerate(picks) if t is E]
    gaps = [b - a for a, b in pairwise(economy_at)]
    assert set(gaps) == {10}
    longest_realtime_run = max(len(run) for run in "".join(t.value[0] for t in picks).split("e"))
    assert longest_realtime_run < 10


def test_tier_without_work_gives_its_share_to_the_others() -> None:
    picker = TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05)
    counts = Counter(picker.pick({R, E}) for _ in range(700))
    assert counts == {R: 600, E: 100}
    assert {picker.pick({S}) for _ in range(5)} == {S}


def test_economy_never_starves_even_with_weight_zero() -> None:
    weights = with_min_share(parse_weights("realtime=10,standard=5,economy=0"), 0.05)
    picker = TierPicker(weights)
    counts = Counter(picker.pick(ALL) for _ in range(1000))
    assert 45 <= counts[E] <= 55  # the 5% floor
    assert counts[R] > counts[S] > counts[E]
    assert picker.shares()[E] == pytest.approx(0.05)


def test_min_share_lifts_every_low_tier_and_keeps_the_rest_proportional() -> None:
    weights = with_min_share(parse_weights("realtime=100,standard=1,economy=1"), 0.1)
    total = sum(weights.values())
    assert weights[S] / total == pytest.approx(0.1)
    assert weights[E] / total == pytest.approx(0.1)
    assert weights[R] == 100


def test_unchanged_when_every_tier_is_above_the_floor() -> None:
    weights = parse_weights("realtime=6,standard=3,economy=1")
    assert with_min_share(weights, 0.05) == weights


@pytest.mark.parametrize(
    "text",
    ["realtime=x", "gold=3", "realtime", "realtime=-1", "realtime=0,standard=0,economy=0"],
)
def test_bad_weights_are_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(ConfigurationError, match="IMAGEGEN_GENERATOR_TIER_WEIGHTS"):
        parse_weights(text)


def test_settings_refuse_bad_weights_and_impossible_min_share(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGEGEN_GENERATOR_TIER_WEIGHTS", "vip=1")
    with pytest.raises(ConfigurationError, match="TIER_WEIGHTS"):
        BackendSettings()
    monkeypatch.setenv("IMAGEGEN_GENERATOR_TIER_WEIGHTS", "realtime=1")
    monkeypatch.setenv("IMAGEGEN_GENERATOR_TIER_MIN_SHARE", "0.5")
    with pytest.raises(ConfigurationError, match="TIER_MIN_SHARE"):
        BackendSettings()


async def _image_runs() -> None:
    """Time passes, as while a GPU makes an image: the tier polls in flight see what was
    published meanwhile (an in-memory poll wakes within a few turns of the event loop)."""
    for _ in range(20):
        await asyncio.sleep(0)


def _consumer(broker: InMemoryBroker, topics: TopicNames) -> WeightedTierConsumer:
    return WeightedTierConsumer(
        {t: broker.consumer(f"g-{t.value}", [topics.jobs(t)]) for t in Tier},
        {t: topics.jobs(t) for t in Tier},
        TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05),
        tier_poll_s=0.01,
    )


async def test_realtime_overtakes_an_economy_backlog_and_economy_still_moves() -> None:
    broker, topics = InMemoryBroker(partitions=1), TopicNames("u")
    publisher = broker.publisher()
    for i in range(30):
        await publisher.publish(topics.jobs(E), f"e{i}", b"{}")
    consumer = _consumer(broker, topics)
    first = await consumer.poll(0.1)
    assert first is not None and first.topic == topics.jobs(E)
    await consumer.commit(first)
    for i in range(12):
        await publisher.publish(topics.jobs(R), f"r{i}", b"{}")
    await _image_runs()
    order = []
    while (record := await consumer.poll(0.01)) is not None:
        order.append(record.topic)
        await consumer.commit(record)
    assert order[0] == topics.jobs(R)
    assert order.count(topics.jobs(R)) == 12 and order.count(topics.jobs(E)) == 29
    # While realtime work waited, economy still got picks (not only after the backlog).
    last_realtime = max(i for i, t in enumerate(order) if t == topics.jobs(R))
    assert order[:last_realtime].count(topics.jobs(E)) >= 1
    # Offsets were committed through each tier's own consumer group.
    assert broker.committed[("g-economy", topics.jobs(E), 0)] == 30
    assert broker.committed[("g-realtime", topics.jobs(R), 0)] == 12


async def test_unpicked_heads_are_not_committed_and_come_back_after_close() -> None:
    broker, topics = InMemoryBroker(partitions=1), TopicNames("u")
    publisher = broker.publisher()
    await publisher.publish(topics.jobs(E), "e", b"{}")
    await publisher.publish(topics.jobs(R), "r", b"{}")
    consumer = _consumer(broker, topics)
    record = await consumer.poll(0.1)
    assert record is not None and record.topic == topics.jobs(R)
    await consumer.commit(record)
    await consumer.close()  # the economy head was held, never handled
    again = _consumer(broker, topics)
    redelivered = await again.poll(0.1)
    assert redelivered is not None and redelivered.key == "e"
    assert await again.poll(0.01) is None


class _HeldPoll:
    """A tier consumer whose poll waits until the test hands it a record (or None)."""

    def __init__(self) -> None:
        self.polls = 0
        self.closed = False
        self.committed: list[Record] = []
        self._answers: asyncio.Queue[Record | None] = asyncio.Queue()

    def answer(self, record: Record | None) -> None:
        self._answers.put_nowait(record)

    async def poll(self, timeout: float) -> Record | None:
        self.polls += 1
        return await self._answers.get()

    async def commit(self, record: Record) -> None:
        self.committed.append(record)

    async def close(self) -> None:
        self.closed = True


def _held(tier_poll_s: float = 30.0) -> tuple[WeightedTierConsumer, dict[Tier, _HeldPoll]]:
    topics = TopicNames("held")
    tiers = {t: _HeldPoll() for t in Tier}
    consumer = WeightedTierConsumer(
        tiers,
        {t: topics.jobs(t) for t in Tier},
        TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05),
        tier_poll_s=tier_poll_s,
    )
    return consumer, tiers


def _job_record(tier: Tier, offset: int = 0) -> Record:
    return Record(TopicNames("held").jobs(tier), 0, offset, "k", b"{}")


async def test_a_record_on_one_tier_is_picked_while_the_other_tiers_still_wait() -> None:
    consumer, tiers = _held()
    first = asyncio.create_task(consumer.poll(60.0))
    await asyncio.sleep(0)
    tiers[E].answer(_job_record(E))
    # Standard and realtime never answer: the economy record is not held back for them.
    record = await asyncio.wait_for(first, 10)
    assert record is not None and record.topic == TopicNames("held").jobs(E)
    closing = asyncio.create_task(consumer.close())
    tiers[R].answer(None)
    tiers[S].answer(None)
    await asyncio.wait_for(closing, 10)
    assert all(t.closed for t in tiers.values())


async def test_an_idle_tier_is_polled_once_not_again_on_every_call() -> None:
    consumer, tiers = _held()
    for _ in range(5):
        assert await consumer.poll(0.001) is None
    assert [t.polls for t in tiers.values()] == [1, 1, 1]
    # A poll that answers after its caller gave up is kept: its record is the next head.
    tiers[S].answer(_job_record(S, offset=7))
    record = await consumer.poll(10.0)
    assert record is not None and record.offset == 7
    assert tiers[S].polls == 1  # not polled again until its head was picked
    await consumer.commit(record)
    assert tiers[S].committed == [record]
    tiers[R].answer(None)
    assert await consumer.poll(0.001) is None
    assert [t.polls for t in tiers.values()] == [2, 2, 1]


async def test_close_waits_for_the_polls_in_flight_and_commits_nothing_they_return() -> None:
    consumer, tiers = _held()
    assert await consumer.poll(0.001) is None
    closing = asyncio.create_task(consumer.close())
    await asyncio.sleep(0)
    assert not closing.done()  # a consumer is not closed under its own poll
    for tier in Tier:
        tiers[tier].answer(_job_record(tier))
    await asyncio.wait_for(closing, 10)
    assert all(t.closed and not t.committed for t in tiers.values())


async def test_an_interrupt_ends_every_tier_poll_so_a_stop_waits_for_none() -> None:
    broker = InMemoryBroker()
    topics = TopicNames("interrupted")
    consumer = WeightedTierConsumer(
        {t: broker.consumer(f"g-{t.value}", [topics.jobs(t)]) for t in Tier},
        {t: topics.jobs(t) for t in Tier},
        TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05),
        tier_poll_s=60.0,
    )
    polling = asyncio.create_task(consumer.poll(60.0))
    await asyncio.sleep(0.05)
    consumer.interrupt()
    assert await asyncio.wait_for(polling, 10) is None
    await asyncio.wait_for(consumer.close(), 10)  # no tier poll left to wait out


async def test_a_tier_poll_error_is_raised_by_poll() -> None:
    class Broken(_HeldPoll):
        async def poll(self, timeout: float) -> Record | None:
            raise FatalClientError("kafka: _FATAL: fenced")

    topics = TopicNames("held")
    tiers: dict[Tier, Consumer] = {R: Broken(), S: _HeldPoll(), E: _HeldPoll()}
    consumer = WeightedTierConsumer(
        tiers, {t: topics.jobs(t) for t in Tier}, TierPicker({R: 6, S: 3, E: 1})
    )
    with pytest.raises(FatalClientError, match="fenced"):
        await consumer.poll(10.0)
    closing = asyncio.create_task(consumer.close())
    for tier in (S, E):
        held = tiers[tier]
        assert isinstance(held, _HeldPoll)
        held.answer(None)
    await asyncio.wait_for(closing, 10)


# --- IMAGEGEN_GENERATOR_TIERS: a pod that serves some tiers only -------------------------


def test_tiers_setting_defaults_to_every_tier_and_keeps_registry_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert BackendSettings().tier_list() == [R, S, E]
    monkeypatch.setenv("IMAGEGEN_GENERATOR_TIERS", " economy , realtime ")
    assert BackendSettings().tier_list() == [R, E]
    monkeypatch.setenv("IMAGEGEN_GENERATOR_TIERS", "")
    assert BackendSettings().tier_list() == [R, S, E]


@pytest.mark.parametrize("text", ["gold", "realtime,vip", "realtime;economy"])
def test_unknown_tiers_are_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("IMAGEGEN_GENERATOR_TIERS", text)
    with pytest.raises(ConfigurationError, match="IMAGEGEN_GENERATOR_TIERS"):
        BackendSettings()
    with pytest.raises(ConfigurationError, match="IMAGEGEN_GENERATOR_TIERS: unknown tier"):
        parse_tiers(text)


def test_weights_apply_among_the_chosen_tiers_only() -> None:
    picker = TierPicker.from_settings("realtime=6,standard=3,economy=1", 0.05, [S, E])
    assert set(picker.weights) == {S, E}
    assert Counter(picker.pick({S, E}) for _ in range(400)) == {S: 300, E: 100}
    # A pod of a tier weighted 0 still serves it (nothing to share against).
    alone = TierPicker.from_settings("realtime=1,economy=0", 0.05, [E])
    assert alone.pick({E}) is E


async def test_a_realtime_only_generator_never_consumes_economy_records() -> None:
    broker, topics = InMemoryBroker(partitions=2), TopicNames("tiers-only")
    publisher = broker.publisher()
    realtime = [make_job(R, seed=s) for s in range(3)]
    economy = [make_job(E, seed=10 + s) for s in range(3)]
    for job in [*economy, *realtime]:
        await publisher.publish(topics.jobs(job.tier), job.image.job_id, job)
    settings = GeneratorSettings(progress_interval_s=0, generator=BackendSettings(tiers="realtime"))
    backend = ScriptedBackend("demo")
    generator = Generator(settings, backend, InMemoryBlobStore(), publisher, topics)
    subscribed: list[list[str]] = []

    def consumer_for(tier: Tier) -> Consumer:
        subscribed.append([topics.jobs(tier)])
        return broker.consumer("unit.generator", [topics.jobs(tier)])

    loop = jobs_loop(
        KafkaSettings(namespace="tiers-only"),
        settings.generator,
        generator,
        publisher,
        consumer_for=consumer_for,
        poll_timeout=0.02,
    )
    running = asyncio.create_task(loop.run())
    try:
        while len(of_type(broker, topics, "generation_completed")) < len(realtime):
            await broker.wait_for_change(1.0)
    finally:
        loop.stop()
        await asyncio.wait_for(running, 10)
    assert subscribed == [[topics.jobs(R)]]
    assert sorted(r.seed for r in backend.calls) == [0, 1, 2]
    done = {e.job_id for e in of_type(broker, topics, "generation_completed")}
    assert done == {j.image.job_id for j in realtime}
    # Economy's records stay in its topic for the economy pods, uncommitted by this group.
    assert not any(topic == topics.jobs(E) for (_, topic, _) in broker.committed)
    assert sum(o for (_, t, _), o in broker.committed.items() if t == topics.jobs(R)) == 3
