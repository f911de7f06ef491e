"""The character snapshot that travels with every request and job.

Jobs are self-contained: a generator never looks a character up, it gets everything here.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field

from schemas.base import Contract

MAX_SEED = 2**32 - 1

Audience = Literal["general", "children"]
"""Who a character's or a job's images are for: "children" holds them to the image-safety
check's stricter threshold."""
_STRICTNESS: dict[str, int] = {"general": 0, "children": 1}


def strictest(*audiences: Audience | None) -> Audience:
    """The strictest of the given audiences (None: not set); "general" when none is set."""
    chosen: Audience = "general"
    for audience in audiences:
        if audience is not None and _STRICTNESS[audience] > _STRICTNESS[chosen]:
            chosen = audience
    return chosen


class CharacterAttributes(Contract):
    """Appearance attributes the products ask for; all optional."""

    age_range: str | None = Field(default=None, max_length=40)
    gender: str | None = Field(default=None, max_length=40)
    ethnicity: str | None = Field(default=None, max_length=60)
    hair_colour: str | None = Field(default=None, max_length=40)
    hair_style: str | None = Field(default=None, max_length=60)
    eye_colour: str | None = Field(default=None, max_length=40)
    body_type: str | None = Field(default=None, max_length=40)
    outfit: str | None = Field(default=None, max_length=200)
    distinctive_features: list[str] = Field(default_factory=list, max_length=10)
    personality_traits: list[str] = Field(default_factory=list, max_length=10)


LORA_MAX_BYTES = 512 * 1024 * 1024
"""The largest LoRA file accepted (SDXL LoRAs of rank 128 are ~400 MB)."""


class CharacterLora(Contract):
    """LoRA weights a character is drawn with: a safetensors file in the object store."""

    key: str = Field(min_length=1, max_length=500)
    """Object-store key of the safetensors file (uploaded, or fetched once from its URL)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=1, le=LORA_MAX_BYTES)
    trigger_word: str = Field(default="", max_length=100)
    """Words the LoRA was trained to answer to; put into the character's identity block."""
    weight: float = Field(default=1.0, ge=0.0, le=2.0)
    """How strongly the LoRA applies (diffusers' adapter weight)."""
    source_url: str | None = Field(default=None, max_length=2000)
    """The https URL it was fetched from, when it was not uploaded."""

    @property
    def adapter_name(self) -> str:
        """The name the weights are loaded under: equal files share one loaded adapter."""
        return f"lora_{self.sha256[:16]}"


class CharacterSpec(Contract):
    """Everything generation needs to know about one character."""

    id: str
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)
    attributes: CharacterAttributes = Field(default_factory=CharacterAttributes)
    style_modifiers: list[str] = Field(default_factory=list, max_length=10)
    art_style: str = "standard"
    seed: int = Field(ge=0, le=MAX_SEED)
    reference_keys: list[str] = Field(default_factory=list, max_length=8)
    lora: CharacterLora | None = None
    audience: Audience = "general"
    """The default audience of the character's jobs (a job may only make it stricter)."""

    def appearance_fingerprint(self) -> str:
        """Identifies how the character looks: a changed appearance needs a new reference set.

        Uploaded reference photos and the name do not change the look the prompt asks for,
        so they are left out.
        """
        fields: dict[str, Any] = dict.fromkeys(
            ("description", "attributes", "style_modifiers", "art_style", "seed"), True
        )
        if self.lora is not None:  # only when set: fingerprints without a LoRA stay as they were
            fields["lora"] = {"sha256", "trigger_word", "weight"}
        look = self.model_dump_json(include=fields)
        return hashlib.sha256(look.encode()).hexdigest()[:16]
