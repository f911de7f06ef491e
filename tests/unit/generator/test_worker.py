"""The job handler: provider routing, outcome events, actual cost, fields for postprocess."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from imagegen.blobstore import InMemoryBlobStore
from imagegen.errors import ConfigurationError, RetryableError
from imagegen.kafka.memory import InMemoryBroker
from schemas.characters import CharacterSpec
from schemas.events import GenerationCompleted, GenerationFailed
from schemas.images import RawImage
from schemas.topics import TopicNames
from services.generator.backends import InvalidGenerationRequest
from services.generator.providers import Providers, build_providers
from services.generator.settings import BackendSettings, GeneratorSettings
from services.generator.worker import Generator, RecentAttempts
from tests.unit.generator.support import ScriptedBackend, make_job, of_type, record_of


@dataclass
class Rig:
    broker: InMemoryBroker
    blobs: InMemoryBlobStore
    topics: TopicNames
    generator: Generator

    def raw_images(self) -> list[RawImage]:
        return [
            RawImage.model_validate_json(r.value)
            for r in self.broker.records(self.topics.images_raw)
        ]

    def failures(self) -> list[GenerationFailed]:
        found = of_type(self.broker, self.topics, "generation_failed")
        return [e for e in found if isinstance(e, GenerationFailed)]


def rig(providers: Providers) -> Rig:
    broker, blobs, topics = InMemoryBroker(), InMemoryBlobStore(), TopicNames("unit")
    generator = Generator(
        GeneratorSettings(progress_interval_s=0), providers, blobs, broker.publisher(), topics
    )
    return Rig(broker, blobs, topics, generator)


async def test_job_runs_on_the_provider_it_names_and_default_when_none() -> None:
    demo, diffusers = ScriptedBackend("demo"), ScriptedBackend("diffusers")
    r = rig(Providers({"demo": demo, "diffusers": diffusers}, "demo"))
    pinned, default = make_job(provider="diffusers"), make_job(provider=None)
    await r.generator.on_job(record_of(pinned, r.topics))
    await r.generator.on_job(record_of(default, r.topics))
    assert (len(demo.calls), len(diffusers.calls)) == (1, 1)
    # Records of different jobs may sit on different partitions: compare by job.
    expected = {pinned.image.job_id: "diffusers", default.image.job_id: "demo"}
    assert {raw.image.job_id: raw.provider for raw in r.raw_images()} == expected
    completed = of_type(r.broker, r.topics, "generation_completed")
    assert {e.job_id: e.data.provider for e in completed} == expected  # type: ignore[attr-defined]


async def test_unknown_provider_fails_the_attempt_permanently_without_starting() -> None:
    demo = ScriptedBackend("demo")
    r = rig(Providers.single(demo))
    job = make_job(provider="openai")
    await r.generator.on_job(record_of(job, r.topics))
    assert demo.calls == [] and r.raw_images() == []
    assert of_type(r.broker, r.topics, "generation_started") == []
    (failed,) = r.failures()
    assert failed.data.error_type == "ProviderUnavailable"
    assert (failed.data.retryable, failed.data.final, failed.data.provider) == (
        False,
        False,
        "openai",
    )
    assert "openai" in failed.data.error and failed.job_id == job.image.job_id


@pytest.mark.parametrize(
    ("error", "error_type", "retryable"),
    [
        (RuntimeError("driver exploded"), "RuntimeError", True),
        (RetryableError("out of accelerator memory"), "RetryableError", True),
        (InvalidGenerationRequest("size too small"), "InvalidGenerationRequest", False),
    ],
)
async def test_every_failed_attempt_is_reported_not_final_with_its_provider(
    error: Exception, error_type: str, retryable: bool
) -> None:
    r = rig(Providers.single(ScriptedBackend("demo", error=error)))
    # Even a last attempt is not final here: the scheduler decides (DECISIONS.md #2).
    job = make_job()
    job = job.model_copy(update={"image": job.image.model_copy(update={"attempt": 3})})
    await r.generator.on_job(record_of(job, r.topics))
    (failed,) = r.failures()
    assert failed.data.error_type == error_type
    assert (failed.data.retryable, failed.data.final) == (retryable, False)
    assert (failed.data.provider, failed.data.attempt) == ("demo", 3)
    assert r.raw_images() == []


async def test_missing_reference_image_fails_the_attempt_instead_of_dead_lettering() -> None:
    r = rig(Providers.single(ScriptedBackend("demo")))
    await r.generator.on_job(record_of(make_job(reference_keys=["gone.png"]), r.topics))
    (failed,) = r.failures()
    assert (failed.data.error_type, failed.data.retryable) == ("NotFoundError", False)


async def test_actual_cost_is_gpu_price_times_generation_seconds() -> None:
    backend = ScriptedBackend("diffusers", seconds=1.8, price_per_hour=2.0)
    r = rig(Providers.single(backend))
    await r.generator.on_job(record_of(make_job(), r.topics))
    (done,) = of_type(r.broker, r.topics, "generation_completed")
    assert isinstance(done, GenerationCompleted)
    assert done.data.gpu_seconds == pytest.approx(1.8)
    assert done.data.cost_usd == pytest.approx(2.0 * 1.8 / 3600)
    assert done.data.duration_ms == 1800
    (raw,) = r.raw_images()
    assert raw.cost_usd == done.data.cost_usd and raw.provider == "diffusers"


async def test_raw_image_carries_what_postprocess_needs() -> None:
    r = rig(Providers.single(ScriptedBackend("demo")))
    for key in ("ref/job.png", "ref/char-a.png", "ref/char-b.png"):
        await r.blobs.put(key, b"\x89PNG fake", "image/png")
    character = CharacterSpec(
        id="char-1", name="Mira", seed=1, reference_keys=["ref/char-a.png", "ref/job.png"]
    )
    job = make_job(
        character=character,
        reference_keys=["ref/job.png", "ref/char-b.png"],
        style="watercolor",
        overlay_text="Once upon a time",
        max_variations=2,
    )
    await r.generator.on_job(record_of(job, r.topics))
    (raw,) = r.raw_images()
    assert raw.style == "watercolor"
    assert raw.overlay_text == "Once upon a time"
    assert raw.max_variations == 2
    # The job's references first, then the character's, each once.
    assert raw.identity_keys == ["ref/job.png", "ref/char-b.png", "ref/char-a.png"]
    assert raw.record.reference_keys == ["ref/job.png", "ref/char-b.png"]


async def test_demo_provider_prices_its_seconds_from_the_gpu_price_setting() -> None:
    providers = build_providers(BackendSettings(gpu_price_per_hour=3600.0, providers="demo"))
    r = rig(providers)
    await r.generator.on_job(record_of(make_job(), r.topics))
    (done,) = of_type(r.broker, r.topics, "generation_completed")
    assert isinstance(done, GenerationCompleted)
    assert done.data.gpu_seconds is not None and done.data.gpu_seconds > 0
    # $3600/hour is $1 per second: the cost is the measured seconds.
    assert done.data.cost_usd == pytest.approx(done.data.gpu_seconds)
    assert done.data.provider == "demo"


def test_providers_setting_holds_the_default_first_and_each_name_once() -> None:
    config = BackendSettings(backend="demo", providers=" diffusers, demo ,diffusers", model="m")
    assert config.provider_names() == ["demo", "diffusers"]
    assert BackendSettings(backend="demo").provider_names() == ["demo"]
    with pytest.raises(ConfigurationError, match="unknown backend"):
        build_providers(BackendSettings(providers="demo,dalle"))


async def test_a_copy_of_a_finished_attempt_is_not_generated_again() -> None:
    backend = ScriptedBackend("demo")
    r = rig(Providers.single(backend))
    job = make_job()
    await r.generator.on_job(record_of(job, r.topics))
    await r.generator.on_job(record_of(job, r.topics))  # the relay's re-send after a crash
    assert len(backend.calls) == 1 and len(r.raw_images()) == 1
    assert len(of_type(r.broker, r.topics, "generation_completed")) == 1
    # The next attempt of the same image is new work.
    retry = job.model_copy(update={"image": job.image.model_copy(update={"attempt": 2})})
    await r.generator.on_job(record_of(retry, r.topics))
    assert len(backend.calls) == 2


async def test_an_attempt_whose_handling_raised_runs_again_on_redelivery() -> None:
    backend = ScriptedBackend("demo")
    r = rig(Providers.single(backend))
    job = make_job()
    put = r.blobs.put

    async def outage(
        key: str, data: bytes, content_type: str, *, cache_control: str | None = None
    ) -> None:
        raise RetryableError("object store unreachable")

    r.blobs.put = outage  # type: ignore[method-assign]
    with pytest.raises(RetryableError):
        await r.generator.on_job(record_of(job, r.topics))
    r.blobs.put = put  # type: ignore[method-assign]
    await r.generator.on_job(record_of(job, r.topics))
    assert len(backend.calls) == 2 and len(r.raw_images()) == 1


def test_recent_attempts_forget_the_oldest_beyond_capacity() -> None:
    recent = RecentAttempts(capacity=2)
    for key in ("a", "b", "a", "c"):
        recent.add(key)
    assert ("a" in recent, "b" in recent, "c" in recent) == (True, False, True)


async def test_a_copy_read_while_the_original_runs_waits_for_it_and_is_skipped() -> None:
    backend = ScriptedBackend("demo", seconds=0.0)
    gate = threading.Event()
    generate = backend.generate

    def slow(request, on_progress, cancel):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return generate(request, on_progress, cancel)

    backend.generate = slow  # type: ignore[method-assign]
    r = rig(Providers.single(backend))
    job = make_job()
    original = asyncio.create_task(r.generator.on_job(record_of(job, r.topics)))
    await asyncio.sleep(0.05)
    copy = asyncio.create_task(r.generator.on_job(record_of(job, r.topics)))  # another lane
    await asyncio.sleep(0.05)
    assert not copy.done()
    gate.set()
    await asyncio.gather(original, copy)
    assert len(backend.calls) == 1 and len(r.raw_images()) == 1
