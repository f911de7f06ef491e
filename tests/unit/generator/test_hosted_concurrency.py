"""Hosted (API) backends run several images at once; GPU work stays one call at a time."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.memory import InMemoryBroker
from imagegen.kafka.ports import Consumer
from imagegen.settings import KafkaSettings
from schemas.jobs import GenerateImage
from schemas.topics import Tier, TopicNames
from services.generator.backends import (
    CancelToken,
    GeneratedImage,
    GenerationRequest,
    ProgressCallback,
)
from services.generator.loops import jobs_loop, lanes_for
from services.generator.providers import Providers
from services.generator.settings import BackendSettings, GeneratorSettings
from services.generator.worker import Generator
from tests.unit.generator.support import ScriptedBackend, make_job, of_type

NS = "hosted"
WAIT_S = 5.0  # only reached when the behaviour under test is broken


@dataclass
class InFlight:
    """How many calls are inside a backend at once, and the most there ever were."""

    now: int = 0
    peak: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


@dataclass
class SlowHosted(ScriptedBackend):
    """A hosted API: blocks in `generate` until `release` says so (an HTTP wait)."""

    self_hosted = False
    in_flight: InFlight = field(default_factory=InFlight)
    release: threading.Barrier | threading.Event | None = None

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        self.in_flight.enter()
        try:
            if isinstance(self.release, threading.Barrier):
                self.release.wait()  # BrokenBarrierError after WAIT_S: calls never overlapped
            elif self.release is not None and not self.release.wait(WAIT_S):
                raise AssertionError("the GPU work never ran while hosted images waited")
            return super().generate(request, on_progress, cancel)
        finally:
            self.in_flight.leave()


@dataclass
class GpuBackend(ScriptedBackend):
    """A self-hosted backend sharing one GPU counter with the others of the pod."""

    gpu: InFlight = field(default_factory=InFlight)
    expected: int = 0
    all_done: threading.Event = field(default_factory=threading.Event)

    def generate(
        self, request: GenerationRequest, on_progress: object, cancel: CancelToken
    ) -> GeneratedImage:
        self.gpu.enter()
        try:
            # Long enough for another call to slip in if the GPU lock were not held.
            threading.Event().wait(0.01)
            return super().generate(request, on_progress, cancel)
        finally:
            self.gpu.leave()
            if len(self.calls) >= self.expected:
                self.all_done.set()


@dataclass
class BatchingGpu(GpuBackend):
    """A diffusers-like backend: batches images of one size in one call."""

    def batch_key(self, request: GenerationRequest) -> Hashable:
        return (request.width, request.height)

    def generate_batch(
        self,
        requests: Sequence[GenerationRequest],
        on_progress_list: Sequence[ProgressCallback],
        cancels: Sequence[CancelToken],
    ) -> list[GeneratedImage | Exception]:
        return [
            self.generate(r, p, c)
            for r, p, c in zip(requests, on_progress_list, cancels, strict=True)
        ]


async def _run(
    providers: Providers, config: BackendSettings, jobs: list[GenerateImage], partitions: int = 2
) -> InMemoryBroker:
    """Publish `jobs`, run the generator's jobs loop until each has an outcome, stop it."""
    broker, topics = InMemoryBroker(partitions=partitions), TopicNames(NS)
    publisher = broker.publisher()
    for job in jobs:
        await publisher.publish(topics.jobs(job.tier), job.image.job_id, job)
    settings = GeneratorSettings(progress_interval_s=0, generator=config)
    generator = Generator(settings, providers, InMemoryBlobStore(), publisher, topics)

    def consumer_for(tier: Tier) -> Consumer:
        return broker.consumer(f"{NS}.generator", [topics.jobs(tier)])

    loop = jobs_loop(
        KafkaSettings(namespace=NS),
        config,
        generator,
        publisher,
        consumer_for=consumer_for,
        poll_timeout=0.02,
        backoff_initial=0.01,
    )
    running = asyncio.create_task(loop.run())
    try:
        while len(_outcomes(broker)) < len(jobs):
            await broker.wait_for_change(1.0)
    finally:
        loop.stop()
        await asyncio.wait_for(running, 30)
    return broker


def _outcomes(broker: InMemoryBroker) -> list[object]:
    topics = TopicNames(NS)
    return [
        *of_type(broker, topics, "generation_completed"),
        *of_type(broker, topics, "generation_failed"),
    ]


def _committed(broker: InMemoryBroker) -> int:
    return sum(offset for (group, _, _), offset in broker.committed.items() if group.startswith(NS))


def test_lanes_add_hosted_concurrency_to_the_gpu_lanes() -> None:
    config = BackendSettings(batch_max_size=4, hosted_concurrency=8)
    assert lanes_for(config, batches=True, hosted=False) == 8
    assert lanes_for(config, batches=True, hosted=True) == 16
    assert lanes_for(config, batches=False, hosted=True) == 9  # demo + hosted
    assert lanes_for(config, batches=False, self_hosted=False, hosted=True) == 8
    assert lanes_for(config, batches=False) == 1


async def test_hosted_images_overlap_up_to_the_limit_and_every_offset_is_committed() -> None:
    limit = 4
    # Each call waits for `limit` calls to be inside at once: run one by one, they never are.
    hosted = SlowHosted("replicate", release=threading.Barrier(limit, timeout=WAIT_S))
    jobs = [make_job(Tier.STANDARD, seed=s) for s in range(2 * limit)]
    broker = await _run(
        Providers.single(hosted),
        BackendSettings(backend="replicate", hosted_concurrency=limit),
        jobs,
    )
    completed = of_type(broker, TopicNames(NS), "generation_completed")
    assert len(completed) == len(jobs), _outcomes(broker)
    assert hosted.in_flight.peak == limit  # overlapped, and never past the limit
    assert sorted(r.seed for r in hosted.calls) == list(range(2 * limit))
    assert _committed(broker) == len(jobs)


async def test_gpu_images_never_overlap_while_hosted_ones_wait_beside_them() -> None:
    gpu = InFlight()
    demo = GpuBackend("demo", gpu=gpu, expected=3)
    diffusers = BatchingGpu("diffusers", gpu=gpu, expected=3)
    both_done = threading.Event()
    # The hosted images finish only once the GPU has made all its images: the GPU must not
    # wait for them, nor they for the GPU lock.
    hosted = SlowHosted("fal", release=both_done)

    def release_when_the_gpu_is_done() -> None:
        if demo.all_done.wait(WAIT_S) and diffusers.all_done.wait(WAIT_S):
            both_done.set()

    watcher = threading.Thread(target=release_when_the_gpu_is_done, daemon=True)
    watcher.start()
    jobs = [
        *(make_job(Tier.REALTIME, seed=s, provider="demo") for s in range(3)),
        *(make_job(Tier.REALTIME, seed=10 + s, provider="fal") for s in range(3)),
        *(make_job(Tier.REALTIME, seed=20 + s, provider="diffusers") for s in range(3)),
    ]
    providers = Providers({"demo": demo, "diffusers": diffusers, "fal": hosted}, "demo")
    broker = await _run(
        providers,
        BackendSettings(batch_max_size=2, batch_max_wait_ms=5, hosted_concurrency=3),
        jobs,
    )
    completed = of_type(broker, TopicNames(NS), "generation_completed")
    assert len(completed) == len(jobs), _outcomes(broker)
    assert gpu.peak == 1, "two GPU calls overlapped"
    assert hosted.in_flight.peak == 3
    assert len(demo.calls) == len(diffusers.calls) == len(hosted.calls) == 3
    assert _committed(broker) == len(jobs)
