"""The worker hands a backend each character's own references and LoRA, and passes the
scene's layout on to postprocess."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from imagegen.blobstore import InMemoryBlobStore
from imagegen.kafka.memory import InMemoryBroker
from schemas.characters import CharacterLora, CharacterSpec
from schemas.images import RawImage
from schemas.jobs import CharacterRegion
from schemas.topics import TopicNames
from services.generator.providers import Providers
from services.generator.settings import GeneratorSettings
from services.generator.worker import Generator
from tests.unit.generator.support import ScriptedBackend, make_job, record_of

LORA_BYTES = b"tom's lora"


async def test_a_scene_reaches_the_backend_region_by_region(tmp_path: Path) -> None:
    broker, blobs, topics = InMemoryBroker(), InMemoryBlobStore(), TopicNames("unit")
    backend = ScriptedBackend("diffusers")
    generator = Generator(
        GeneratorSettings(progress_interval_s=0, lora_dir=tmp_path),
        Providers.single(backend),
        blobs,
        broker.publisher(),
        topics,
    )
    for key in ("ref/mira.png", "ref/tom.png", "portraits/tom.png"):
        await blobs.put(key, key.encode(), "image/png")
    await blobs.put("loras/tom", LORA_BYTES, "application/octet-stream")
    lora = CharacterLora(
        key="loras/tom",
        sha256=hashlib.sha256(LORA_BYTES).hexdigest(),
        size=len(LORA_BYTES),
        trigger_word="ohwx",
        weight=0.6,
    )
    mira = CharacterSpec(id="mira", name="Mira", seed=1)
    tom = CharacterSpec(id="tom", name="Tom", seed=2, lora=lora)
    layout = [
        CharacterRegion(
            character_id="mira", x0=0, y0=0, x1=0.5, y1=1, reference_keys=["ref/mira.png"]
        ),
        CharacterRegion(
            character_id="tom",
            x0=0.5,
            y0=0,
            x1=1,
            y1=1,
            reference_keys=["ref/tom.png", "portraits/tom.png"],
        ),
    ]
    job = make_job(
        character=mira,
        characters=[tom],
        reference_keys=["ref/mira.png", "ref/tom.png", "portraits/tom.png"],
        scene_description="a garden",
        layout=layout,
    )
    await generator.on_job(record_of(job, topics))

    (request,) = backend.calls
    assert [(r.character_id, r.name, r.box) for r in request.regions] == [
        ("mira", "Mira", (0, 0, 0.5, 1)),
        ("tom", "Tom", (0.5, 0, 1, 1)),
    ]
    assert [r.reference_images for r in request.regions] == [
        (b"ref/mira.png",),
        (b"ref/tom.png", b"portraits/tom.png"),
    ]
    (weights,) = request.loras
    assert (weights.name, weights.weight) == (lora.adapter_name, 0.6)
    assert await asyncio.to_thread(Path(weights.path).read_bytes) == LORA_BYTES
    assert "(ohwx, Tom) on the right" in request.prompt
    (raw,) = [RawImage.model_validate_json(r.value) for r in broker.records(topics.images_raw)]
    assert raw.layout == layout
