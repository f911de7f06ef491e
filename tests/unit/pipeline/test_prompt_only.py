"""A prompt-only job through scheduler, generator, postprocess and storage (issue 18)."""

from __future__ import annotations

import uuid

from schemas.characters import CharacterSpec
from schemas.events import ImageStored, JobStatus, PackCompleted
from schemas.requests import PROMPT_CHARACTER_PREFIX, GenerateImages, JobKind, UserTier
from tests.unit.pipeline.harness import running_pipeline


async def test_a_prompt_alone_is_generated_and_stored(database_url: str) -> None:
    job_id = str(uuid.uuid4())
    stand_in = f"{PROMPT_CHARACTER_PREFIX}{job_id}"
    request = GenerateImages(
        job_id=job_id,
        user_id="alice",
        tier=UserTier.PAID,
        kind=JobKind.PROMPT,
        character=CharacterSpec(id=stand_in, name="prompt", seed=77),
        image_count=1,
        style="anime",
        width=64,
        height=64,
        prompt="A phoenix rising",
    )
    async with running_pipeline(database_url) as p:
        await p.broker.publisher().publish(p.topics.requests, "alice", request)
        done = await p.wait_for("pack_completed", job_id)
        assert isinstance(done, PackCompleted)
        assert (done.data.status, done.data.completed_count) == (JobStatus.COMPLETED, 1)
        (stored,) = [e for e in p.events() if isinstance(e, ImageStored)]
        assert stored.data.kind == "prompt"
        assert "A phoenix rising" in stored.data.prompt
        assert all(f"/characters/{stand_in}/" in r.key for r in stored.data.renditions)
