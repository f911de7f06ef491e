"""Failover between two hosted providers through the real scheduler and generator.

Replicate (cheaper in the catalogue, so first in every chain) answers 503 to every
prediction; fal.ai works. Both are the real adapters talking HTTP to the local stand-ins.
The scheduler retries Replicate `max_attempts` times, then moves the image to fal, whose
price is what gets booked; with the provider-health threshold reached, Replicate sits out
its cool-down and the next job goes to fal directly.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from schemas.characters import CharacterSpec
from schemas.events import GenerationFailed, ImageStored, JobStatus, PackCompleted
from schemas.requests import GenerateImages, UserTier
from services.generator.backends import fal_backend, replicate_backend
from services.generator.providers import Providers
from tests.fixtures.provider_servers import ProviderState, Script, serve_provider
from tests.unit.pipeline.harness import Pipeline, running_pipeline

REPLICATE_MODEL = "black-forest-labs/flux-schnell"
FAL_MODEL = "fal-ai/flux/dev"
CATALOGUE = json.dumps(
    [
        {
            "provider": "replicate",
            "model": REPLICATE_MODEL,
            "quality": "standard",
            "price_per_image_usd": "0.003",
        },
        {"provider": "fal", "model": FAL_MODEL, "quality": "high", "price_per_image_usd": "0.025"},
    ]
)
FAST: dict[str, Any] = {"poll_interval_s": 0.01, "poll_interval_max_s": 0.03, "timeout_s": 20}


@pytest.fixture
def servers() -> Iterator[tuple[tuple[str, ProviderState], tuple[str, ProviderState]]]:
    with serve_provider("replicate") as replicate, serve_provider("fal") as fal:
        yield replicate, fal


def providers(replicate_url: str, fal_url: str) -> Providers:
    return Providers(
        {
            "replicate": replicate_backend.build(
                replicate_backend.ReplicateSettings(
                    api_key="test-key", base_url=replicate_url, **FAST
                )
            ),
            "fal": fal_backend.build(
                fal_backend.FalSettings(api_key="test-key", base_url=fal_url, **FAST)
            ),
        },
        default="replicate",
    )


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
    (stored,) = [e for e in p.events() if isinstance(e, ImageStored) and e.job_id == request.job_id]
    failures = [
        e for e in p.events() if isinstance(e, GenerationFailed) and e.job_id == request.job_id
    ]
    return done, stored, failures


async def test_replicate_outage_fails_over_to_fal_then_replicate_cools_down(
    database_url: str,
    servers: tuple[tuple[str, ProviderState], tuple[str, ProviderState]],
) -> None:
    (replicate_url, replicate), (fal_url, fal) = servers
    replicate.reset(Script(submit_errors=[(503, {})] * 100))
    fal.reset(Script(queued_polls=1, running_polls=1))
    async with running_pipeline(
        database_url,
        providers=providers(replicate_url, fal_url),
        catalogue=CATALOGUE,
        scheduler_overrides={"provider_failure_threshold": 3, "provider_cooldown_s": 300},
    ) as p:
        done, stored, failures = await run_one(p)

        assert done.data.status is JobStatus.COMPLETED
        assert (stored.data.provider, stored.data.model) == ("fal", FAL_MODEL)
        assert stored.data.cost_usd == pytest.approx(0.025)  # fal's own price, not an estimate
        assert [(f.data.provider, f.data.retryable, f.data.final) for f in failures] == [
            ("replicate", True, False)
        ] * 3
        assert all("replicate: HTTP 503" in f.data.error for f in failures)
        assert len(replicate.submits()) == 3 and len(fal.submits()) == 1
        # The prompt and size reached fal's queue in fal's input shape.
        sent = fal.submits()[0].body
        assert sent["image_size"] == {"width": 64, "height": 64} and "Mira" in sent["prompt"]
        async with p.scheduler_pool.acquire() as conn:
            row = await conn.fetchrow("SELECT provider, model, actual_usd FROM generations")
        assert row is not None
        assert (row["provider"], row["model"], row["actual_usd"]) == (
            "fal",
            FAL_MODEL,
            Decimal("0.025"),
        )

        # Three retryable failures in a row: Replicate is cooling down, so the next image's
        # cheapest choice skips it.
        done, stored, failures = await run_one(p)
        assert stored.data.provider == "fal" and failures == []
        assert len(replicate.submits()) == 3 and len(fal.submits()) == 2
