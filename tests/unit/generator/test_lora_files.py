"""LoRA files reach the generator's disk once per file, checked against their sha256."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest

from imagegen.blobstore import BlobIntegrityError, InMemoryBlobStore
from schemas.characters import CharacterLora, CharacterSpec
from schemas.requests import JobKind
from services.generator.loras import LoraFiles
from tests.unit.generator.support import make_job

DATA = b"safetensors bytes of a LoRA"


def _lora(key: str, data: bytes = DATA, weight: float = 0.8) -> CharacterLora:
    return CharacterLora(
        key=key, sha256=hashlib.sha256(data).hexdigest(), size=len(data), weight=weight
    )


class CountingBlobs(InMemoryBlobStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    async def get(self, key: str) -> bytes:
        self.gets.append(key)
        await asyncio.sleep(0)  # let a second lane ask meanwhile
        return await super().get(key)


async def test_a_scene_gets_each_characters_lora_once(tmp_path: Path) -> None:
    blobs = CountingBlobs()
    await blobs.put("loras/mira", DATA, "application/octet-stream")
    files = LoraFiles(blobs, tmp_path)
    mira = CharacterSpec(id="mira", name="Mira", seed=1, lora=_lora("loras/mira"))
    twin = CharacterSpec(id="twin", name="Twin", seed=2, lora=_lora("loras/mira"))
    tom = CharacterSpec(id="tom", name="Tom", seed=3)
    job = make_job(character=mira, characters=[tom, twin])
    first, second = await asyncio.gather(files.for_job(job), files.for_job(job))
    (weights,) = first
    assert first == second
    assert (weights.name, weights.weight) == (mira.lora.adapter_name, 0.8)  # type: ignore[union-attr]
    assert await asyncio.to_thread(Path(weights.path).read_bytes) == DATA
    await files.for_job(job)
    assert blobs.gets == ["loras/mira"]  # fetched once, by two lanes and a later job
    prompt_only = job.model_copy(
        update={"image": job.image.model_copy(update={"kind": JobKind.PROMPT})}
    )
    assert await files.for_job(prompt_only) == ()


async def test_a_lora_that_is_not_the_promised_file_is_refused(tmp_path: Path) -> None:
    blobs = InMemoryBlobStore()
    await blobs.put("loras/x", b"other bytes", "application/octet-stream")
    files = LoraFiles(blobs, tmp_path)
    job = make_job(character=CharacterSpec(id="c", name="C", seed=1, lora=_lora("loras/x")))
    with pytest.raises(BlobIntegrityError, match="does not match"):
        await files.for_job(job)
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []
