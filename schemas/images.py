"""Claim-check references on `images.raw` and `images.processed` (key: job id)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import Contract, Message
from schemas.jobs import CharacterRegion, ImageIdentity


class BlobRef(Contract):
    """Where the bytes are: the message carries the key, size and sha256, never the bytes."""

    key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    content_type: str


class GenerationRecord(Contract):
    """Everything needed to reproduce an image."""

    backend: str
    model: str
    seed: int
    steps: int
    guidance: float
    prompt: str
    negative_prompt: str = ""
    width: int
    height: int
    reference_keys: list[str] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    device: str = "cpu"
    demo: bool = Field(default=False, description="True when produced by the offline demo model.")
    conditioning: str = Field(
        default="", description='How references steered it: "", "ip_adapter", "img2img", "edit".'
    )
    conditioning_strength: float | None = None
    """IP-Adapter scale or img2img strength, when `conditioning` is set."""
    quality: str = ""
    """The provider's own quality/size setting where it has one (API backends)."""
    batch_size: int = Field(default=1, ge=1)
    """How many images shared the batch this one was generated in."""
    scene_description: str = ""
    scene_source: str = Field(
        default="", description='Where the scene came from: "request", "llm" or "extractor".'
    )
    loras: dict[str, float] = Field(default_factory=dict)
    """LoRA adapters the image was drawn with (adapter name, from the file's sha256 -> weight)."""


class Timings(Contract):
    queue_wait_ms: int = Field(default=0, ge=0)
    generation_ms: int = Field(default=0, ge=0)
    postprocess_ms: int = Field(default=0, ge=0)


class RawImage(Message):
    """A generated image, staged in object storage."""

    type: Literal["raw_image"] = "raw_image"
    image: ImageIdentity
    blob: BlobRef
    width: int
    height: int
    record: GenerationRecord
    provider: str
    cost_usd: float = Field(ge=0)
    timings: Timings = Field(default_factory=Timings)
    style: str = ""
    overlay_text: str | None = None
    identity_keys: list[str] = Field(default_factory=list)
    """Images of the character to score consistency against (uploads, reference set)."""
    max_variations: int = Field(default=0, ge=0)
    """New-seed variations allowed in all (the job's); `image.variation` is this one's number."""
    layout: list[CharacterRegion] = Field(default_factory=list)
    """The job's per-character regions (multi-character scenes; empty otherwise)."""


class Rendition(Contract):
    name: Literal["original", "display", "thumbnail", "print", "cutout"]
    """"cutout": the portrait on a transparent background (PNG), when a background model
    is configured."""
    blob: BlobRef
    width: int
    height: int
    format: str


class CharacterScore(Contract):
    """One character's face consistency in an image."""

    score: float | None = Field(default=None, ge=0.0, le=1.0)
    """Its assigned face against its identity images (None: not scored, or missing)."""
    status: Literal["recognised", "drifted", "missing", "not_scored"]
    """recognised: at or above the threshold; drifted: below it; missing: no face was left
    for it; not_scored: nothing to compare (`reason` says why)."""
    reason: str = ""


class ProcessedImage(Message):
    """An image with its renditions, staged in object storage."""

    type: Literal["processed_image"] = "processed_image"
    image: ImageIdentity
    renditions: list[Rendition]
    record: GenerationRecord
    provider: str
    cost_usd: float = Field(ge=0)
    consistency_score: float | None = None
    """The worst of `character_scores` (a missing character counts 0); None: not scored."""
    character_scores: dict[str, CharacterScore] = Field(default_factory=dict)
    """Per character (id) of the image: faces are assigned to characters by best total match."""
    not_scored_reason: str | None = None
    """Why `consistency_score` is None where scoring applied (no face found, no identity
    face); None when scored or when no check applies."""
    quality_score: float | None = Field(default=None, ge=0.0, le=1.0)
    """Technical quality from the pixels alone (sharpness, exposure, contrast, colour),
    0..1, higher is better; None from producers that predate it."""
    quality_components: dict[str, float] = Field(default_factory=dict)
    """The 0..1 components `quality_score` was combined from, by name."""
    flagged: bool = False
    """Held for review: no variation reached the consistency threshold, or the quality
    score is below postprocess's review threshold (when one is set)."""
    timings: Timings = Field(default_factory=Timings)
    style: str = ""
    face_embedding: list[float] | None = None
    """The face embedding the consistency scorer computed (None: no face, or not scored)."""
    face_encoder: str = ""
    """Which encoder made `face_embedding` (embeddings of different encoders don't compare)."""
