"""Micro-batching: the diffusers batch path, the batcher, in-order commits, and the worker."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/huggingface_hub read it

import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.lanes import SharedConsumer, laned_loop
from imagegen.kafka.memory import InMemoryBroker
from imagegen.kafka.ports import Record
from imagegen.telemetry import configure_tracing, consume_span
from schemas.images import RawImage
from schemas.topics import Tier, TopicNames
from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationCancelled,
    GenerationRequest,
    ProgressCallback,
    build_backend,
)
from services.generator.backends.diffusers_backend import DiffusersBackend
from services.generator.batching import MicroBatcher
from services.generator.settings import BackendSettings, GeneratorSettings
from services.generator.tiers import TierPicker, WeightedTierConsumer
from services.generator.worker import Generator
from tests.unit.generator.support import ScriptedBackend, make_job, of_type, record_of


def _request(**overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "prompt": "a portrait of Mira",
        "negative_prompt": "blurry",
        "seed": 7,
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance": 5.0,
        "identity_seed": 1,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


def _alone(backend: DiffusersBackend, request: GenerationRequest) -> GeneratedImage:
    return backend.generate(request, lambda s, t: None, CancelToken())


@pytest.fixture(scope="module")
def sd(tiny_sd_path: Path) -> DiffusersBackend:
    backend = DiffusersBackend(str(tiny_sd_path), device="cpu")
    backend.load()
    return backend


# --- the diffusers batch path ---------------------------------------------------------


def test_a_batch_makes_the_same_bytes_as_one_by_one(sd: DiffusersBackend) -> None:
    requests = [
        _request(seed=1, prompt="a red fox"),
        _request(seed=2, prompt="a blue bird", negative_prompt="dark"),
        _request(seed=3),
    ]
    progress: list[list[int]] = [[], [], []]
    made = sd.generate_batch(
        requests,
        [lambda s, t, i=i: progress[i].append(s) for i in range(3)],  # type: ignore[misc]
        [CancelToken() for _ in requests],
    )
    singles = [_alone(sd, r) for r in requests]
    for batched, single in zip(made, singles, strict=True):
        assert isinstance(batched, GeneratedImage)
        assert_same_picture(batched.png, single.png)
    assert _mean_difference(singles[0].png, singles[1].png) > 10  # different seeds differ
    assert all(isinstance(m, GeneratedImage) and m.batch_size == 3 for m in made)
    assert progress == [[1, 2, 3, 4]] * 3  # per-image progress, one call per step


def test_an_img2img_batch_matches_one_by_one(sd: DiffusersBackend) -> None:
    reference = _alone(sd, _request(seed=9)).png
    requests = [
        _request(seed=s, reference_images=(reference,), img2img_strength=0.5) for s in (1, 2)
    ]
    made = sd.generate_batch(requests, [lambda s, t: None] * 2, [CancelToken(), CancelToken()])
    singles = [_alone(sd, r) for r in requests]
    for batched, single in zip(made, singles, strict=True):
        assert isinstance(batched, GeneratedImage)
        assert_same_picture(batched.png, single.png)
    assert {s.conditioning for s in singles} == {"img2img"}


def test_sdxl_batch_is_within_one_level_of_one_by_one(tiny_sdxl_path: Path) -> None:
    backend = build_backend("diffusers", str(tiny_sdxl_path), device="cpu")
    assert isinstance(backend, DiffusersBackend)
    requests = [_request(seed=s) for s in (1, 2, 3)]
    made = backend.generate_batch(requests, [lambda s, t: None] * 3, [CancelToken()] * 3)
    singles = [_alone(backend, r) for r in requests]
    for batched, single in zip(made, singles, strict=True):
        assert isinstance(batched, GeneratedImage)
        assert_same_picture(batched.png, single.png)


def test_mixed_shapes_are_never_one_batch(sd: DiffusersBackend) -> None:
    base = _request()
    for other in (
        _request(width=72),
        _request(steps=5),
        _request(guidance=6.0),
        _request(model="elsewhere"),
        _request(reference_images=(b"png",), img2img_strength=0.5),
        _request(negative_prompt=""),
    ):
        assert sd.batch_key(base) != sd.batch_key(other)
    assert sd.batch_key(base) == sd.batch_key(_request(seed=99, prompt="another prompt"))
    with pytest.raises(ValueError, match="batch key"):
        sd.generate_batch([base, _request(width=72)], [lambda s, t: None] * 2, [CancelToken()] * 2)


def test_a_cancel_drops_one_image_and_the_others_finish(sd: DiffusersBackend) -> None:
    requests = [_request(seed=s, steps=6) for s in (1, 2, 3)]
    cancels = [CancelToken() for _ in requests]
    steps: list[list[int]] = [[], [], []]

    def progress(i: int) -> ProgressCallback:
        def report(step: int, total: int) -> None:
            steps[i].append(step)
            if i == 1 and step == 2:
                cancels[1].set()

        return report

    made = sd.generate_batch(requests, [progress(i) for i in range(3)], cancels)
    assert isinstance(made[1], GenerationCancelled)
    assert steps[1] == [1, 2] and steps[0] == steps[2] == [1, 2, 3, 4, 5, 6]
    for i in (0, 2):
        image = made[i]
        assert isinstance(image, GeneratedImage)
        assert_same_picture(image.png, _alone(sd, requests[i]).png)


def test_when_every_image_is_cancelled_the_run_stops_within_one_step(
    sd: DiffusersBackend,
) -> None:
    cancels = [CancelToken(), CancelToken()]
    seen: list[int] = []

    def report(step: int, total: int) -> None:
        seen.append(step)
        if step == 2:
            for cancel in cancels:
                cancel.set()

    made = sd.generate_batch([_request(steps=20, seed=s) for s in (1, 2)], [report] * 2, cancels)
    assert all(isinstance(m, GenerationCancelled) for m in made)
    assert max(seen) == 2 and "of 20 steps" in str(made[0])


def assert_same_picture(batched: bytes, alone: bytes) -> None:
    """A batched image is its one-by-one twin, to within the CPU's last-bit noise.

    Measured here: usually identical bytes, but not always - the CPU matmul kernels
    (oneDNN) pick their blocking, hence the order of their float sums, by batch size, so
    a latent can differ in its last bit, and after the VAE an odd pixel by 1 level of
    255 (mean difference ~0.0). Different images differ by ~40 levels on average. The
    bound below is that noise and nothing more.
    """
    assert _max_difference(batched, alone) <= 2
    assert _mean_difference(batched, alone) < 0.05


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _max_difference(a: bytes, b: bytes) -> int:
    return int(np.abs(_pixels(a) - _pixels(b)).max())


def _mean_difference(a: bytes, b: bytes) -> float:
    return float(np.abs(_pixels(a) - _pixels(b)).mean())


# --- the batcher ----------------------------------------------------------------------


@dataclass
class RecordingBatcher(ScriptedBackend):
    """A scripted backend that batches by size and records each call's seeds."""

    batches: list[list[int]] = field(default_factory=list)

    def batch_key(self, request: GenerationRequest) -> Hashable:
        return (request.width, request.height)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress_list: Sequence[ProgressCallback],
        cancels: Sequence[CancelToken],
    ) -> list[GeneratedImage | Exception]:
        self.batches.append([r.seed for r in requests])
        made: list[GeneratedImage | Exception] = []
        for request, report, cancel in zip(requests, on_progress_list, cancels, strict=True):
            image = self.generate(request, report, cancel)
            made.append(GeneratedImage(**{**image.__dict__, "batch_size": len(requests)}))
        return made


async def _generate_all(
    batcher: MicroBatcher, backend: ScriptedBackend, requests: list[GenerationRequest]
) -> list[GeneratedImage]:
    calls = (batcher.generate("p", backend, r, lambda s, t: None, CancelToken()) for r in requests)
    return await asyncio.wait_for(asyncio.gather(*calls), 10)


async def test_waiting_images_of_one_shape_share_a_call_up_to_the_size_limit() -> None:
    backend = RecordingBatcher("diffusers")
    batcher = MicroBatcher(max_size=3, max_wait_s=0.05)
    requests = [_request(seed=s) for s in range(4)] + [_request(seed=9, width=72)]
    made = await _generate_all(batcher, backend, requests)
    # Oldest first: the full group, then what is left of it, then the other shape.
    assert backend.batches == [[0, 1, 2], [3], [9]]
    assert [m.batch_size for m in made] == [3, 3, 3, 1, 1]


async def test_no_waiting_when_every_lane_is_already_here() -> None:
    backend = RecordingBatcher("diffusers")
    # capacity=2 and two waiting: nothing more can arrive, so nobody waits the 30 s.
    batcher = MicroBatcher(max_size=4, max_wait_s=30, capacity=2)
    made = await _generate_all(batcher, backend, [_request(seed=1), _request(seed=2)])
    assert backend.batches == [[1, 2]] and [m.batch_size for m in made] == [2, 2]


async def test_a_lone_image_waits_at_most_the_max_wait() -> None:
    backend = RecordingBatcher("diffusers")
    batcher = MicroBatcher(max_size=4, max_wait_s=0.02)
    made = await asyncio.wait_for(
        batcher.generate("p", backend, _request(), lambda s, t: None, CancelToken()), 10
    )
    assert made.batch_size == 1 and backend.batches == [[7]]


async def test_backends_without_batching_run_one_by_one() -> None:
    backend = ScriptedBackend("demo")
    batcher = MicroBatcher(max_size=4, max_wait_s=30)
    made = await asyncio.wait_for(
        asyncio.gather(
            *(
                batcher.generate(
                    "demo", backend, _request(seed=s), lambda s, t: None, CancelToken()
                )
                for s in range(3)
            )
        ),
        10,
    )
    assert [m.batch_size for m in made] == [1, 1, 1] and len(backend.calls) == 3


# --- in-order commits -----------------------------------------------------------------


@dataclass
class ListConsumer:
    records: list[Record]
    committed: list[int] = field(default_factory=list)
    closed: bool = False

    async def poll(self, timeout: float) -> Record | None:
        return self.records.pop(0) if self.records else None

    async def commit(self, record: Record) -> None:
        self.committed.append(record.offset)

    async def close(self) -> None:
        self.closed = True


async def test_commits_never_pass_a_record_still_in_flight() -> None:
    inner = ListConsumer([Record("t", 0, offset, None, b"") for offset in range(4)])
    shared = SharedConsumer(inner, lanes=2)
    a, b = shared.lane(), shared.lane()
    polled = [await a.poll(0), await b.poll(0), await a.poll(0), await b.poll(0)]
    records = [r for r in polled if r is not None]
    await b.commit(records[1])  # offset 1 done before 0: nothing may be committed yet
    await b.commit(records[3])
    assert inner.committed == []
    await a.commit(records[0])  # 0 done: 0 and 1 are safe; 2 is still in flight
    assert inner.committed == [1]
    await a.commit(records[2])
    assert inner.committed == [1, 3]
    await a.close()
    assert not inner.closed
    await b.close()
    assert inner.closed


# --- the worker on the in-memory broker -----------------------------------------------


async def test_the_worker_batches_records_that_arrive_together(sd: DiffusersBackend) -> None:
    broker, topics = InMemoryBroker(), TopicNames("unit")
    settings = GeneratorSettings(
        progress_interval_s=0, generator=BackendSettings(batch_max_size=3, batch_max_wait_ms=200)
    )
    generator = Generator(settings, sd, InMemoryBlobStore(), broker.publisher(), topics)
    publisher = broker.publisher()
    same = [make_job(Tier.STANDARD, seed=s) for s in (1, 2, 3)]
    cancelled = make_job(Tier.STANDARD, seed=4)
    other = make_job(Tier.ECONOMY, seed=5, width=72)
    for job in [*same, cancelled, other]:
        await publisher.publish(topics.jobs(job.tier), job.image.job_id, job)
    await generator.cancels.store.cancel(cancelled.image.job_id)
    consumers = {tier: broker.consumer("generator", [topics.jobs(tier)]) for tier in Tier}
    weighted = WeightedTierConsumer(
        consumers,
        {tier: topics.jobs(tier) for tier in Tier},
        TierPicker({Tier.REALTIME: 6, Tier.STANDARD: 3, Tier.ECONOMY: 1}),
        tier_poll_s=0.01,
    )
    lanes = 6
    generator.batcher.capacity = lanes
    loop = laned_loop(
        "generator",
        weighted,
        {topics.jobs(tier): generator.on_job for tier in Tier},
        lanes,
        dead_letters=publisher,
        dead_letter_topic=topics.dead_letter,
        poll_timeout=0.02,
    )
    running = asyncio.create_task(loop.run())
    try:
        while len(_outcomes(broker, topics)) < 5:
            await broker.wait_for_change(1.0)
    finally:
        loop.stop()
        await asyncio.wait_for(running, 30)
    raws = {
        raw.image.job_id: raw
        for raw in (
            RawImage.model_validate_json(r.value) for r in broker.records(topics.images_raw)
        )
    }
    assert {raws[j.image.job_id].record.batch_size for j in same} == {3}
    assert raws[other.image.job_id].record.batch_size == 1
    assert cancelled.image.job_id not in raws
    # Each image of the batch is the one it would have been alone.
    for job in same:
        record = raws[job.image.job_id].record
        alone = _alone(
            sd,
            _request(
                prompt=record.prompt,
                negative_prompt=record.negative_prompt,
                seed=record.seed,
                steps=record.steps,
                guidance=record.guidance,
            ),
        )
        assert_same_picture(await generator_blob(generator, raws[job.image.job_id]), alone.png)
    # Exactly one outcome per attempt, and every offset committed once handled.
    outcomes = _outcomes(broker, topics)
    assert sorted(e.job_id for e in outcomes) == sorted(  # type: ignore[attr-defined]
        j.image.job_id for j in [*same, cancelled, other]
    )
    committed = sum(
        offset for (group, topic, _), offset in broker.committed.items() if group == "generator"
    )
    assert committed == 5


def _outcomes(broker: InMemoryBroker, topics: TopicNames) -> list[object]:
    return [
        *of_type(broker, topics, "generation_completed"),
        *of_type(broker, topics, "generation_failed"),
    ]


async def generator_blob(generator: Generator, raw: RawImage) -> bytes:
    return await generator._blobs.get(raw.blob.key)


# --- tracing --------------------------------------------------------------------------


EXPECTED = ("job_id", "image_index", "provider", "model", "steps", "batch_size")


async def test_generate_span_is_a_child_of_the_consumer_span() -> None:
    provider = configure_tracing("tests")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        broker, topics = InMemoryBroker(), TopicNames("unit")
        backend = RecordingBatcher("diffusers")
        settings = GeneratorSettings(progress_interval_s=0)
        generator = Generator(settings, backend, InMemoryBlobStore(), broker.publisher(), topics)
        job = make_job(steps=3)
        with consume_span("jobs process", {}) as parent:
            await generator.on_job(record_of(job, topics))
        (span,) = [s for s in exporter.get_finished_spans() if s.name == "generate"]
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        attributes = dict(span.attributes or {})
        assert {key: attributes.get(key) for key in EXPECTED} == {
            "job_id": job.image.job_id,
            "image_index": 0,
            "provider": "diffusers",
            "model": "scripted",
            "steps": 3,
            "batch_size": 1,
        }
    finally:
        exporter.shutdown()
