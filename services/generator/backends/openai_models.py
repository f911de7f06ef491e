"""What the OpenAI image models accept (sizes, qualities) and what each image costs.

Pure data and arithmetic: no SDK, no I/O. The backend asks here which provider size and
quality a request maps to and what the resulting image is priced at.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from imagegen.errors import ConfigurationError
from services.generator.backends.base import InvalidGenerationRequest


@dataclass(frozen=True)
class ModelSpec:
    """One OpenAI image model: its sizes, our quality tiers mapped to its own, its limits."""

    name: str
    sizes: tuple[str, ...]
    qualities: Mapping[str, str]
    """Our tier (draft / standard / high) -> the API's `quality` value."""
    max_prompt_chars: int
    edits: bool
    """Whether `images.edit` takes reference images for this model."""

    def provider_quality(self, tier: str) -> str:
        try:
            return self.qualities[tier]
        except KeyError:
            raise InvalidGenerationRequest(
                f"quality {tier!r} is not one of {sorted(self.qualities)} (model {self.name})"
            ) from None

    def closest_size(self, width: int, height: int) -> str:
        """The supported size nearest in aspect ratio to `width` x `height` (first on a tie)."""
        if width <= 0 or height <= 0:
            raise InvalidGenerationRequest(f"width and height must be > 0, got {width}x{height}")
        wanted = math.log(width / height)

        def distance(size: str) -> float:
            w, h = parse_size(size)
            return abs(math.log(w / h) - wanted)

        return min(self.sizes, key=distance)


def parse_size(size: str) -> tuple[int, int]:
    w, _, h = size.partition("x")
    return int(w), int(h)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="gpt-image-1",
            sizes=("1024x1024", "1536x1024", "1024x1536"),
            qualities={"draft": "low", "standard": "medium", "high": "high"},
            max_prompt_chars=32000,
            edits=True,
        ),
        ModelSpec(
            name="dall-e-3",
            sizes=("1024x1024", "1792x1024", "1024x1792"),
            qualities={"draft": "standard", "standard": "standard", "high": "hd"},
            max_prompt_chars=4000,
            edits=False,
        ),
    )
}

# OpenAI's list prices per image in USD (model -> quality -> size), as published for
# gpt-image-1 (output tokens at $40/1M: 272 / 1056 / 4160 tokens for a square) and
# dall-e-3. Input tokens of prompts and edit references are not priced here.
DEFAULT_PRICES: dict[str, dict[str, dict[str, Decimal]]] = {
    "gpt-image-1": {
        "low": {"1024x1024": Decimal("0.011"), "1536x1024": Decimal("0.016"),
                "1024x1536": Decimal("0.016")},
        "medium": {"1024x1024": Decimal("0.042"), "1536x1024": Decimal("0.063"),
                   "1024x1536": Decimal("0.063")},
        "high": {"1024x1024": Decimal("0.167"), "1536x1024": Decimal("0.25"),
                 "1024x1536": Decimal("0.25")},
    },
    "dall-e-3": {
        "standard": {"1024x1024": Decimal("0.040"), "1792x1024": Decimal("0.080"),
                     "1024x1792": Decimal("0.080")},
        "hd": {"1024x1024": Decimal("0.080"), "1792x1024": Decimal("0.120"),
               "1024x1792": Decimal("0.120")},
    },
}  # fmt: skip


class PriceTable:
    """Per-image prices by model, quality and size; every combination a model offers has one."""

    def __init__(self, prices: Mapping[str, Mapping[str, Mapping[str, Decimal]]]) -> None:
        self._prices = {m: {q: dict(s) for q, s in by_q.items()} for m, by_q in prices.items()}

    @classmethod
    def with_overrides(cls, text: str, setting: str = "IMAGEGEN_OPENAI_PRICES") -> PriceTable:
        """The default table with a JSON value's entries replacing or adding prices.

        `{"gpt-image-1": {"high": {"1024x1024": "0.19"}}}` changes one price; the rest stay.
        """
        merged = {m: {q: dict(s) for q, s in by_q.items()} for m, by_q in DEFAULT_PRICES.items()}
        if not text.strip():
            return cls(merged)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{setting} is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigurationError(
                f"{setting} must be an object: model -> quality -> size -> USD"
            )
        for model, by_quality in raw.items():
            if not isinstance(by_quality, dict):
                raise ConfigurationError(f"{setting}[{model!r}] must be an object quality -> size")
            for quality, by_size in by_quality.items():
                if not isinstance(by_size, dict):
                    raise ConfigurationError(
                        f"{setting}[{model!r}][{quality!r}] must be an object size -> USD"
                    )
                for size, price in by_size.items():
                    where = f"{setting}[{model!r}][{quality!r}][{size!r}]"
                    merged.setdefault(model, {}).setdefault(quality, {})[size] = _price(
                        price, where
                    )
        return cls(merged)

    def check_covers(self, spec: ModelSpec) -> None:
        """Refuse a table with no price for one of `spec`'s quality x size combinations."""
        for quality in sorted(set(spec.qualities.values())):
            for size in spec.sizes:
                if size not in self._prices.get(spec.name, {}).get(quality, {}):
                    raise ConfigurationError(
                        f"IMAGEGEN_OPENAI_PRICES has no price for {spec.name} {quality} {size}"
                    )

    def price(self, model: str, quality: str, size: str) -> Decimal:
        return self._prices[model][quality][size]


def _price(value: object, where: str) -> Decimal:
    # Strings keep prices exact; bools are ints in Python but never a price.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigurationError(f"{where} must be a number (a string keeps it exact)")
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise ConfigurationError(f"{where} is not a number: {value!r}") from None
    if not price.is_finite() or price < 0:
        raise ConfigurationError(f"{where} must be a finite price >= 0, got {value!r}")
    return price
