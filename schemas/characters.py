"""The character snapshot that travels with every request and job.

Jobs are self-contained: a generator never looks a character up, it gets everything here.
"""

from __future__ import annotations

import hashlib

from pydantic import Field

from schemas.base import Contract

MAX_SEED = 2**32 - 1


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

    def appearance_fingerprint(self) -> str:
        """Identifies how the character looks: a changed appearance needs a new reference set.

        Uploaded reference photos and the name do not change the look the prompt asks for,
        so they are left out.
        """
        look = self.model_dump_json(
            include={"description", "attributes", "style_modifiers", "art_style", "seed"}
        )
        return hashlib.sha256(look.encode()).hexdigest()[:16]
