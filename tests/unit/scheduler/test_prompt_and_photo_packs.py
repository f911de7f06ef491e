"""Planning prompt-only jobs and photo packs (issue 18), and OpenAI's offers."""

from __future__ import annotations

from pydantic import SecretStr

from schemas.characters import CharacterSpec
from schemas.requests import GenerateImages, JobKind, PhotoGroup, Quality, UserTier
from services.generator.prompts import prompt_for_job
from services.scheduler.catalogue import Catalogue, offered
from services.scheduler.expansion import plan
from services.scheduler.poses import PHOTO_GROUPS, PHOTO_PROMPTS
from services.scheduler.settings import SchedulerSettings

ANN = CharacterSpec(id="ann", name="Ann", seed=42, reference_keys=[f"u/{i}.jpg" for i in range(5)])


def _request(**fields: object) -> GenerateImages:
    values: dict[str, object] = {
        "job_id": "j1",
        "user_id": "u1",
        "tier": UserTier.PAID,
        "character": ANN,
        "image_count": 3,
        **fields,
    }
    return GenerateImages.model_validate(values)


def test_prompt_only_plans_the_prompt_as_the_scene_without_references() -> None:
    stand_in = CharacterSpec(id="prompt-j1", name="prompt", seed=9)
    request = _request(
        kind=JobKind.PROMPT, character=stand_in, image_count=1, prompt="A phoenix rising"
    )
    (only,) = plan(request, steps=20, guidance=7.0)
    job = only.job
    assert job.image.kind is JobKind.PROMPT and job.image.character_id == "prompt-j1"
    assert (job.scene_description, job.reference_keys, job.width) == ("A phoenix rising", [], 1024)
    prompt, _ = prompt_for_job(job.model_copy(update={"style": "anime"}))
    assert "A phoenix rising" in prompt and "featuring" not in prompt


def test_photo_pack_uses_its_groups_prompts_in_order() -> None:
    planned = plan(
        _request(image_count=9, photo_group=PhotoGroup.PROFESSIONAL), steps=20, guidance=7.0
    )
    poses = [p.job.pose for p in planned]
    assert poses == [PHOTO_PROMPTS[i] for i in PHOTO_GROUPS["professional"]]
    assert all(p.job.reference_keys == ANN.reference_keys for p in planned)
    assert len(PHOTO_PROMPTS) == 23 and len(PHOTO_GROUPS["all"]) == 23


def test_pack_defaults_to_1024_square() -> None:
    planned = plan(_request(), steps=20, guidance=7.0)
    assert {(p.job.width, p.job.height) for p in planned} == {(1024, 1024)}


def test_an_openai_key_adds_dall_e_3_and_gpt_image_1() -> None:
    without = offered(SchedulerSettings())
    assert "dall-e-3" not in {o.model for o in without.offers}
    keyed = offered(SchedulerSettings(openai_api_key=SecretStr("sk-test")))
    models = [o.model for o in keyed.offers]
    assert models.count("gpt-image-1") == 1 and "dall-e-3" in models
    chain = keyed.chain(Quality.HIGH, "dall-e-3")
    assert [o.provider for o in chain] == ["openai"]
    assert Catalogue.default().with_openai().with_openai().offers == keyed.offers
