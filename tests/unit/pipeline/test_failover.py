"""Provider failover through the real scheduler and generator: OpenAI first, then a fallback.

The generator holds two providers - the OpenAI backend talking HTTP to the local
OpenAI-compatible server, and the harness's fake - and the scheduler's catalogue makes
OpenAI the cheaper first offer. What happens on failure is the scheduler's policy
(`services/scheduler/retries.py`): a retryable error is retried on the same provider up
to `max_attempts`, then the image moves to the next offer; a permanent error skips the
remaining attempts on that provider and moves on at once - another provider may well
accept the same request. A content-policy refusal is the exception: the prompt is at
fault, so the image fails at once, on no other provider, and its job says why.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import asyncpg
import pytest
from pydantic import SecretStr

from schemas.characters import CharacterSpec
from schemas.events import (
    ErrorType,
    GenerationCompleted,
    GenerationFailed,
    ImageStored,
    JobStatus,
    PackCompleted,
)
from schemas.requests import GenerateImages, UserTier
from services.generator.backends.openai_backend import OpenAIImageBackend
from services.generator.backends.openai_settings import OpenAISettings
from services.generator.providers import Providers
from tests.fixtures.openai_server import OpenAIImagesServer, running_openai_server
from tests.unit.pipeline.harness import FakeBackend, Pipeline, running_pipeline

# OpenAI's gpt-image-1 at $0.042 (medium, 1024x1024) is cheaper than the fallback's
# estimate ($2.50/h x 72 s = $0.05), so it heads every standard-quality chain.
CATALOGUE = json.dumps(
    [
        {
            "provider": "openai",
            "model": "gpt-image-1",
            "quality": "standard",
            "price_per_image_usd": "0.042",
        },
        {
            "provider": "fake",
            "model": "solid-colour",
            "quality": "high",
            "gpu_price_per_hour_usd": "2.50",
            "overhead_seconds": "72",
        },
    ]
)
FAKE_COST = FakeBackend().cost_usd(0.01)  # what the fake reports for its 0.01 s


@pytest.fixture
def openai_server() -> Iterator[OpenAIImagesServer]:
    with running_openai_server() as server:
        yield server


def providers(server: OpenAIImagesServer, fake: FakeBackend) -> Providers:
    openai = OpenAIImageBackend(
        OpenAISettings(api_key=SecretStr(server.api_key), base_url=server.base_url, timeout_s=10)
    )
    return Providers({"openai": openai, "fake": fake}, default="fake")


def one_image() -> GenerateImages:
    return GenerateImages(
        job_id=str(uuid.uuid4()),
        user_id="alice",
        tier=UserTier.PAID,
        character=CharacterSpec(id="char-1", name="Mira", seed=1234),
        image_count=1,
        width=64,
        height=64,
    )


async def run_one(p: Pipeline) -> tuple[PackCompleted, ImageStored, list[GenerationFailed]]:
    request = one_image()
    await p.broker.publisher().publish(p.topics.requests, request.user_id, request)
    done = await p.wait_for("pack_completed", request.job_id)
    assert isinstance(done, PackCompleted)
    (stored,) = [e for e in p.events() if isinstance(e, ImageStored)]
    failures = [e for e in p.events() if isinstance(e, GenerationFailed)]
    return done, stored, failures


async def generation_row(p: Pipeline) -> tuple[str, str, Decimal]:
    """What the scheduler's ledger settled: provider, model, actual cost."""
    async with p.scheduler_pool.acquire() as conn:
        row = await conn.fetchrow("SELECT provider, model, actual_usd FROM generations")
    assert row is not None
    return row["provider"], row["model"], row["actual_usd"]


async def test_openai_server_errors_fail_over_to_the_fallback_provider(
    database_url: str, openai_server: OpenAIImagesServer
) -> None:
    openai_server.fail_next(100, status=500)
    fake = FakeBackend()
    async with running_pipeline(
        database_url, fake, providers=providers(openai_server, fake), catalogue=CATALOGUE
    ) as p:
        done, stored, failures = await run_one(p)

        assert done.data.completed_count == 1
        assert (stored.data.provider, stored.data.model, stored.data.backend) == (
            "fake",
            "solid-colour",
            "fake",
        )
        assert stored.data.cost_usd == pytest.approx(FAKE_COST)
        assert await generation_row(p) == ("fake", "solid-colour", Decimal(str(FAKE_COST)))
        # Three retryable attempts on OpenAI (max_attempts), each visible with its provider.
        assert [(f.data.provider, f.data.retryable, f.data.final) for f in failures] == [
            ("openai", True, False)
        ] * 3
        assert {f.data.error_type for f in failures} == {"ProviderRetryableError"}
        assert all("openai: HTTP 500" in f.data.error for f in failures)
        assert len(openai_server.calls) == 3
        assert len(fake.calls) == 1


async def budget_and_generations(p: Pipeline) -> tuple[asyncpg.Record, list[str]]:
    """The day's reserved/spent totals and each generation row's status, by image."""
    async with p.scheduler_pool.acquire() as conn:
        day = await conn.fetchrow("SELECT reserved_usd, spent_usd FROM budget_days")
        statuses = await conn.fetch("SELECT status FROM generations ORDER BY image_index")
    assert day is not None
    return day, [r["status"] for r in statuses]


async def test_content_policy_refusal_fails_the_image_at_once_on_no_other_provider(
    database_url: str, openai_server: OpenAIImagesServer
) -> None:
    openai_server.refuse_next(100, code="moderation_blocked")
    fake = FakeBackend()
    async with running_pipeline(
        database_url, fake, providers=providers(openai_server, fake), catalogue=CATALOGUE
    ) as p:
        request = one_image()
        await p.broker.publisher().publish(p.topics.requests, request.user_id, request)
        done = await p.wait_for("pack_completed", request.job_id)
        assert isinstance(done, PackCompleted)

        assert (done.data.status, done.data.failed_count) == (JobStatus.FAILED, 1)
        assert done.data.reason_code == "content_policy_violation"
        assert done.data.reason is not None
        assert done.data.reason.startswith("image 0 refused for content policy")
        assert "moderation_blocked" in done.data.reason
        attempt, final = [e for e in p.events() if isinstance(e, GenerationFailed)]
        # The generator's one attempt, then the scheduler's verdict: no retry, no failover.
        assert (attempt.data.provider, attempt.data.retryable, attempt.data.final) == (
            "openai",
            False,
            False,
        )
        assert (final.data.provider, final.data.final, final.source) == (
            "openai",
            True,
            "imagegen/scheduler",
        )
        for event in (attempt, final):
            assert event.data.error_type == ErrorType.CONTENT_POLICY_VIOLATION
            assert "HTTP 400 moderation_blocked: refused by its safety system" in event.data.error
        assert len(openai_server.calls) == 1
        assert fake.calls == []
        assert not [e for e in p.events() if isinstance(e, ImageStored)]
        # Its reservation is released, nothing was spent.
        day, statuses = await budget_and_generations(p)
        assert (day["reserved_usd"], day["spent_usd"]) == (Decimal(0), Decimal(0))
        assert statuses == ["released"]


async def test_a_refused_image_leaves_the_rest_of_the_pack_on_openai(
    database_url: str, openai_server: OpenAIImagesServer
) -> None:
    openai_server.refuse_next(1)
    fake = FakeBackend()
    async with running_pipeline(
        database_url, fake, providers=providers(openai_server, fake), catalogue=CATALOGUE
    ) as p:
        request = one_image().model_copy(update={"image_count": 3})
        await p.broker.publisher().publish(p.topics.requests, request.user_id, request)
        done = await p.wait_for("pack_completed", request.job_id)
        assert isinstance(done, PackCompleted)

        assert done.data.status is JobStatus.PARTIALLY_COMPLETED
        assert (done.data.completed_count, done.data.failed_count) == (2, 1)
        (final,) = [e for e in p.events() if isinstance(e, GenerationFailed) and e.data.final]
        assert final.data.error_type == "ContentPolicyViolation"
        assert done.data.reason_code == "content_policy_violation"
        assert done.data.reason is not None
        assert done.data.reason.startswith(f"image {final.data.image_index} refused")
        stored = [e for e in p.events() if isinstance(e, ImageStored)]
        assert sorted(e.data.image_index for e in stored) == sorted(
            {0, 1, 2} - {final.data.image_index}
        )
        assert {e.data.provider for e in stored} == {"openai"}
        assert len(openai_server.calls) == 3
        assert fake.calls == []
        day, statuses = await budget_and_generations(p)
        assert day["reserved_usd"] == 0 and day["spent_usd"] == Decimal("0.084")
        assert sorted(statuses) == ["released", "settled", "settled"]


async def test_a_transient_openai_error_is_retried_on_openai_and_priced_from_its_table(
    database_url: str, openai_server: OpenAIImagesServer
) -> None:
    openai_server.rate_limit_next(1, retry_after_s=1)
    fake = FakeBackend()
    async with running_pipeline(
        database_url, fake, providers=providers(openai_server, fake), catalogue=CATALOGUE
    ) as p:
        done, stored, failures = await run_one(p)

        assert done.data.completed_count == 1
        assert (stored.data.provider, stored.data.model, stored.data.backend) == (
            "openai",
            "gpt-image-1",
            "openai",
        )
        assert (stored.data.width, stored.data.height) == (64, 64)
        # Standard quality -> medium; 64x64 is square -> 1024x1024: $0.042 in the table.
        assert stored.data.cost_usd == pytest.approx(0.042)
        assert await generation_row(p) == ("openai", "gpt-image-1", Decimal("0.042"))
        (failure,) = failures
        assert (failure.data.provider, failure.data.retryable) == ("openai", True)
        assert "HTTP 429" in failure.data.error
        (completed,) = [e for e in p.events() if isinstance(e, GenerationCompleted)]
        assert completed.data.gpu_seconds is None  # an API image uses no GPU of ours
        assert [c.params["quality"] for c in openai_server.calls] == ["medium", "medium"]
        assert fake.calls == []
