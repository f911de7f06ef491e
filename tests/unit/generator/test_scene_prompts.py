"""What a multi-character scene and a character's LoRA put into prompts and API edits."""

from __future__ import annotations

from schemas.characters import CharacterLora, CharacterSpec
from schemas.jobs import CharacterRegion
from schemas.requests import JobKind
from services.generator.backends import GenerationRequest
from services.generator.backends.base import Region
from services.generator.backends.openai_backend import character_references
from services.generator.prompts import identity_block, prompt_for_job
from tests.unit.generator.support import make_job

LORA = CharacterLora(key="loras/u/mira.safetensors", sha256="a" * 64, size=10, trigger_word="ohwx")
MIRA = CharacterSpec(id="mira", name="Mira", seed=1, lora=LORA)
TOM = CharacterSpec(id="tom", name="Tom", seed=2)


def test_the_trigger_word_leads_the_identity_block() -> None:
    assert identity_block(MIRA).startswith("ohwx, Mira")
    assert identity_block(TOM).startswith("Tom")


def test_a_scene_prompt_says_where_each_character_stands() -> None:
    job = make_job(
        character=MIRA,
        characters=[TOM],
        scene_description="a garden",
        layout=[
            CharacterRegion(character_id="mira", x0=0, y0=0, x1=0.5, y1=1),
            CharacterRegion(character_id="tom", x0=0.5, y0=0, x1=1, y1=1),
        ],
    )
    job = job.model_copy(update={"image": job.image.model_copy(update={"kind": JobKind.SCENE})})
    prompt, _ = prompt_for_job(job)
    assert "(ohwx, Mira) on the left and (Tom) on the right" in prompt


def _request(regions: tuple[Region, ...]) -> GenerationRequest:
    return GenerationRequest(
        prompt="p",
        negative_prompt="",
        seed=1,
        width=64,
        height=64,
        steps=1,
        guidance=1.0,
        identity_seed=1,
        reference_images=tuple(i for r in regions for i in r.reference_images),
        regions=regions,
    )


def test_openai_edits_get_each_characters_own_references_named() -> None:
    request = _request(
        (
            Region("mira", "Mira", (0, 0, 0.5, 1), (b"m1", b"m2")),
            Region("ann", "Ann", (0.5, 0, 1, 0.5), ()),
            Region("tom", "Tom", (0.5, 0.5, 1, 1), (b"t1",)),
        )
    )
    images, note = character_references(request)
    assert images == (b"m1", b"m2", b"t1")
    assert note == (
        "Reference images 1-2 show Mira (on the left); image 3 shows Tom (at the bottom "
        "right): keep each person's own face."
    )
    many = _request(tuple(Region(f"c{i}", f"C{i}", (0, 0, 1, 1), (b"x",) * 9) for i in range(2)))
    assert len(character_references(many)[0]) == 16  # 8 each: both faces get their share
