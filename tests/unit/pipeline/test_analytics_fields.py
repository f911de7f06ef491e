"""What analysts read: every analytics event of a job, as the real handlers emit it, carries
the properties the product spec names for it, plus its user, tier, provider, model and cost.

The contract test (tests/contract/test_asyncapi.py) checks the schemas declare them; this
checks the producers fill them in.
"""

from __future__ import annotations

import uuid

from schemas.characters import CharacterSpec
from schemas.requests import GenerateImages, UserTier
from services.scheduler.expansion import expand
from tests.contract.test_asyncapi import ANALYST_FIELDS, SPEC_EVENTS
from tests.unit.pipeline.harness import FakeBackend, running_pipeline


async def test_every_analytics_event_of_a_pack_carries_its_properties(database_url: str) -> None:
    request = GenerateImages(
        job_id=str(uuid.uuid4()),
        user_id="ana",
        tier=UserTier.FREE,
        character=CharacterSpec(id="char-ana", name="Mira", seed=1234),
        image_count=3,
        width=64,
        height=64,
    )
    # One image fails every attempt, so generation_failed (attempts and final) shows up too.
    failing_seed = expand(request, steps=1, guidance=1)[1].seed
    async with running_pipeline(database_url, FakeBackend(fail_seeds={failing_seed})) as p:
        await p.broker.publisher().publish(p.topics.requests, request.user_id, request)
        await p.wait_for("pack_completed", request.job_id)
        events = [e for e in p.events() if e.job_id == request.job_id]

    seen = {e.type for e in events}  # type: ignore[attr-defined]
    assert set(SPEC_EVENTS) <= seen, set(SPEC_EVENTS) - seen
    for event in events:
        kind: str = event.type  # type: ignore[attr-defined]
        if kind not in SPEC_EVENTS:
            continue
        data = event.data.model_dump()  # type: ignore[attr-defined]
        assert event.user_id == "ana", kind
        for field in (*SPEC_EVENTS[kind], *ANALYST_FIELDS[kind]):
            assert data[field] not in (None, ""), (kind, field, data)
        assert data["character_id"] == "char-ana", kind
        assert data["tier"] == "economy", kind  # free work runs on the economy topic
        if "provider" in data and kind != "generation_queued":
            assert data["provider"] == "fake", kind
        if "model" in data and kind != "generation_queued":
            assert data["model"] == "solid-colour", kind
    [done] = [e for e in events if e.type == "pack_completed"]  # type: ignore[attr-defined]
    assert done.data.image_count == 3  # type: ignore[attr-defined]
    assert done.data.cost_usd > 0  # type: ignore[attr-defined]
