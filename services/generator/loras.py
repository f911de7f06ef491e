"""Characters' LoRA files on this pod's disk, fetched from the object store once per file.

A job names each character's LoRA by object key and sha256; the file is fetched the first
time, checked against the sha256, and kept under its hash so later jobs (and the backend,
which loads it once per adapter name) read it from local disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path

from imagegen.blobstore import BlobIntegrityError, BlobStore
from schemas.characters import CharacterLora, CharacterSpec
from schemas.jobs import GenerateImage
from schemas.requests import JobKind
from services.generator.backends.base import LoraWeights


class LoraFiles:
    """Local copies of LoRA files, keyed by sha256."""

    def __init__(self, blobs: BlobStore, directory: Path | None = None) -> None:
        self._blobs = blobs
        self._directory = directory or Path(tempfile.gettempdir()) / "imagegen-loras"
        self._fetching: dict[str, asyncio.Task[Path]] = {}

    async def for_job(self, job: GenerateImage) -> tuple[LoraWeights, ...]:
        """The LoRAs of everyone in the picture, main character first, each file once
        (none for a prompt-only image: it draws no one)."""
        weights: dict[str, LoraWeights] = {}
        if job.image.kind is JobKind.PROMPT:
            return ()
        for character in _cast(job):
            lora = character.lora
            if lora is None or lora.adapter_name in weights:
                continue
            path = await self.path(lora)
            weights[lora.adapter_name] = LoraWeights(lora.adapter_name, str(path), lora.weight)
        return tuple(weights.values())

    async def path(self, lora: CharacterLora) -> Path:
        """The local file of `lora`, fetched and checked the first time."""
        target = self._directory / f"{lora.sha256}.safetensors"
        if target.exists():
            return target
        task = self._fetching.get(lora.sha256)
        if task is None:  # two lanes wanting one new file fetch it once
            task = asyncio.create_task(self._fetch(lora, target))
            self._fetching[lora.sha256] = task
            task.add_done_callback(lambda _: self._fetching.pop(lora.sha256, None))
        return await asyncio.shield(task)

    async def _fetch(self, lora: CharacterLora, target: Path) -> Path:
        data = await self._blobs.get(lora.key)
        if len(data) != lora.size or hashlib.sha256(data).hexdigest() != lora.sha256:
            raise BlobIntegrityError(f"LoRA {lora.key} does not match its sha256/size")
        await asyncio.to_thread(_write_atomically, target, data)
        return target


def _cast(job: GenerateImage) -> list[CharacterSpec]:
    return [job.character, *job.characters]


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
