"""The price catalogue: which provider and model may draw an image, and what it will cost.

Pure: parsing and arithmetic only, no I/O. The scheduler reads the catalogue once from its
settings (`IMAGEGEN_CATALOGUE`, a JSON value) and asks it, per image, for the failover
chain (`chain`) and the cost estimate it reserves (`estimate`).

Format of the setting: a JSON list of offers (or `{"offers": [...]}`), each

    {"provider": "diffusers", "model": "sdxl-base-1.0", "quality": "high",
     "gpu_price_per_hour_usd": "2.50", "seconds_per_megapixel_step": "0.05",
     "overhead_seconds": "2"}
    {"provider": "openai", "model": "gpt-image-1", "quality": "high",
     "price_per_image_usd": "0.167", "price_megapixels": "1.048576"}

An offer is priced either per image (API providers: `price_per_image_usd` for an image
of up to `price_megapixels`, larger ones pro rata by area, as API price lists scale) or by
GPU time (self-hosted: GPU $/hour x estimated seconds, where seconds =
`overhead_seconds` + `seconds_per_megapixel_step` x megapixels x steps). Money is
`Decimal` throughout (give prices as JSON strings to keep them exact); estimates are
rounded up to 0.000001 USD so a reservation never undershoots by a rounding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import ROUND_UP, Decimal
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from imagegen.errors import ConfigurationError, PermanentError
from schemas.jobs import GenerateImage
from schemas.requests import Quality

MICRO_USD = Decimal("0.000001")
_SECONDS_PER_HOUR = Decimal(3600)
_MEGAPIXEL = Decimal(1_000_000)

DEMO_MODEL = "dcgan-digiface-demo"
"""What the generator's demo backend reports as its model."""

QUALITY_RANK: dict[Quality, int] = {Quality.DRAFT: 0, Quality.STANDARD: 1, Quality.HIGH: 2}
"""draft < standard < high: an offer meets a request when its rank is at least the request's."""


def meets(offered: Quality, requested: Quality) -> bool:
    return QUALITY_RANK[offered] >= QUALITY_RANK[requested]


class NoOfferError(PermanentError):
    """No offer of the catalogue meets the request (quality, pinned model)."""

    def __init__(self, quality: Quality, model: str | None, known: Iterable[str]) -> None:
        self.quality = quality
        self.model = model
        pinned = f" with model {model!r}" if model else ""
        super().__init__(
            f"no provider offers quality {quality.value!r}{pinned}; "
            f"catalogue models: {', '.join(sorted(set(known))) or 'none'}"
        )


class Offer(BaseModel):
    """One provider+model and its price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str = Field(min_length=1)
    model: str = Field(min_length=1)
    quality: Quality
    price_per_image_usd: Decimal | None = Field(default=None, ge=0)
    """API pricing: what one image of up to `price_megapixels` costs."""
    price_megapixels: Decimal = Field(default=Decimal("1.048576"), gt=0)
    """The image area (in megapixels, 1024x1024 by default) `price_per_image_usd` covers."""
    gpu_price_per_hour_usd: Decimal | None = Field(default=None, ge=0)
    """Self-hosted pricing: what an hour of the GPU costs."""
    seconds_per_megapixel_step: Decimal = Field(default=Decimal(0), ge=0)
    overhead_seconds: Decimal = Field(default=Decimal(0), ge=0)
    """Per-image time that does not scale with size or steps (VAE decode, encoding, I/O)."""

    @model_validator(mode="after")
    def _one_price(self) -> Offer:
        if (self.price_per_image_usd is None) == (self.gpu_price_per_hour_usd is None):
            raise ValueError(
                f"offer {self.provider}/{self.model}: give exactly one of "
                "price_per_image_usd or gpu_price_per_hour_usd"
            )
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.model)


def megapixels(width: int, height: int) -> Decimal:
    return Decimal(width) * Decimal(height) / _MEGAPIXEL


def estimate(offer: Offer, width: int, height: int, steps: int) -> Decimal:
    """What one `width` x `height` image of `steps` steps will cost on `offer`, in USD."""
    area = megapixels(width, height)
    if offer.price_per_image_usd is not None:
        # Pro rata above the priced size, never below the per-image price.
        cost = offer.price_per_image_usd * max(Decimal(1), area / offer.price_megapixels)
    else:
        assert offer.gpu_price_per_hour_usd is not None  # the validator guarantees one price
        seconds = offer.overhead_seconds + offer.seconds_per_megapixel_step * area * steps
        cost = offer.gpu_price_per_hour_usd * seconds / _SECONDS_PER_HOUR
    return cost.quantize(MICRO_USD, rounding=ROUND_UP)


def assign(job: GenerateImage, offer: Offer) -> GenerateImage:
    """`job` to run on `offer`: provider, model and the estimate the scheduler reserves."""
    cost = estimate(offer, job.width, job.height, job.steps)
    return job.model_copy(
        update={
            "provider": offer.provider,
            "model": offer.model,
            "estimated_cost_usd": float(cost),
        }
    )


# Reference size for ordering offers when the caller gives none: SD-class 1024^2, 20 steps.
_REF_WIDTH = _REF_HEIGHT = 1024
_REF_STEPS = 20


class Catalogue:
    """The offers the scheduler may choose from."""

    def __init__(self, offers: Sequence[Offer]) -> None:
        if not offers:
            raise ConfigurationError("the catalogue has no offers")
        seen: set[tuple[str, str]] = set()
        for offer in offers:
            if offer.key in seen:
                raise ConfigurationError(f"offer {offer.provider}/{offer.model} listed twice")
            seen.add(offer.key)
        self.offers: tuple[Offer, ...] = tuple(offers)

    @classmethod
    def default(cls) -> Catalogue:
        return cls(DEFAULT_OFFERS)

    @classmethod
    def from_json(cls, text: str | None) -> Catalogue:
        """Parse the setting's value; empty or None gives the default catalogue."""
        if text is None or not text.strip():
            return cls.default()
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"IMAGEGEN_CATALOGUE is not JSON: {exc}") from exc
        if isinstance(raw, dict):
            raw = raw.get("offers")
        if not isinstance(raw, list):
            raise ConfigurationError("IMAGEGEN_CATALOGUE must be a list of offers or {offers: []}")
        try:
            return cls([Offer.model_validate(item) for item in raw])
        except ValidationError as exc:
            raise ConfigurationError(f"IMAGEGEN_CATALOGUE: {exc}") from exc

    def with_openai(self) -> Catalogue:
        """This catalogue plus OpenAI's image models (where an OpenAI key is set: the
        generator can then draw them), each added only if no offer names it yet."""
        have = {o.model for o in self.offers}
        extra = [o for o in OPENAI_OFFERS if o.model not in have]
        return Catalogue([*self.offers, *extra]) if extra else self

    def to_json(self) -> str:
        return json.dumps([o.model_dump(mode="json", exclude_defaults=True) for o in self.offers])

    def find(self, provider: str | None, model: str | None) -> Offer | None:
        """The offer a job names (None when the catalogue has none such)."""
        for offer in self.offers:
            if offer.provider == provider and offer.model == model:
                return offer
        return None

    def chain(
        self,
        quality: Quality,
        model: str | None = None,
        *,
        width: int = _REF_WIDTH,
        height: int = _REF_HEIGHT,
        steps: int = _REF_STEPS,
    ) -> list[Offer]:
        """Offers meeting `quality` (only `model`'s if pinned), cheapest first.

        The first is the choice; the rest, in order, the failover chain. Ties go to the
        lower quality (it meets the request, so more capable offers stay free), then by
        provider and model name so every scheduler instance picks the same.
        """
        fitting = [
            o
            for o in self.offers
            if meets(o.quality, quality) and (model is None or o.model == model)
        ]
        if not fitting:
            raise NoOfferError(quality, model, (o.model for o in self.offers))
        return sorted(
            fitting,
            key=lambda o: (
                estimate(o, width, height, steps),
                QUALITY_RANK[o.quality],
                o.provider,
                o.model,
            ),
        )

    def choose(self, job: GenerateImage, model: str | None = None) -> list[GenerateImage]:
        """`job` assigned to each offer of its chain, in failover order."""
        offers = self.chain(job.quality, model, width=job.width, height=job.height, steps=job.steps)
        return [assign(job, o) for o in offers]


DEFAULT_OFFERS: tuple[Offer, ...] = (
    # Offline DCGAN faces on CPU: milliseconds, whatever the size or steps.
    Offer(
        provider="demo",
        model=DEMO_MODEL,
        quality=Quality.DRAFT,
        gpu_price_per_hour_usd=Decimal("2.50"),
        overhead_seconds=Decimal("0.01"),
    ),
    # Self-hosted SD 1.5-class and SDXL-class models on one ~$2.50/h GPU; seconds per
    # megapixel-step measured roughly on an H100 class card (SDXL 1024^2, 20 steps ~ 3 s).
    Offer(
        provider="diffusers",
        model="stable-diffusion-v1-5",
        quality=Quality.STANDARD,
        gpu_price_per_hour_usd=Decimal("2.50"),
        seconds_per_megapixel_step=Decimal("0.08"),
        overhead_seconds=Decimal("0.5"),
    ),
    Offer(
        provider="diffusers",
        model="stable-diffusion-xl-base-1.0",
        quality=Quality.HIGH,
        gpu_price_per_hour_usd=Decimal("2.50"),
        seconds_per_megapixel_step=Decimal("0.15"),
        overhead_seconds=Decimal("1"),
    ),
    # API: gpt-image-1 high quality at 1024x1024; 1536x1024 is ~1.5x (pro rata by area).
    Offer(
        provider="openai",
        model="gpt-image-1",
        quality=Quality.HIGH,
        price_per_image_usd=Decimal("0.167"),
    ),
)


def _api(provider: str, model: str, quality: Quality, price: str) -> Offer:
    return Offer(
        provider=provider, model=model, quality=quality, price_per_image_usd=Decimal(price)
    )


HOSTED_OFFERS: tuple[Offer, ...] = (
    # Hosted providers at their list prices (late 2025) for a ~1 MP image; the generator's
    # IMAGEGEN_<PROVIDER>_PRICES hold the same figures and are what gets booked. Not in
    # DEFAULT_OFFERS: a default chain must name only providers a default generator runs.
    # Add them to IMAGEGEN_CATALOGUE where generators hold the keys (README, "Hosted
    # providers"): `Catalogue([*DEFAULT_OFFERS, *HOSTED_OFFERS]).to_json()`.
    _api("replicate", "black-forest-labs/flux-schnell", Quality.STANDARD, "0.003"),
    _api("replicate", "black-forest-labs/flux-dev", Quality.HIGH, "0.025"),
    _api("replicate", "black-forest-labs/flux-1.1-pro", Quality.HIGH, "0.04"),
    _api("fal", "fal-ai/flux/schnell", Quality.STANDARD, "0.003"),
    _api("fal", "fal-ai/flux/dev", Quality.HIGH, "0.025"),
    _api("fal", "fal-ai/flux-pro/v1.1", Quality.HIGH, "0.04"),
    # RunPod bills GPU seconds; per image: SDXL ~6 s on a 48 GB flex worker, FLUX.1-dev
    # ~8 s on an H100 flex worker, cold starts averaged in.
    _api("runpod", "sdxl", Quality.HIGH, "0.002"),
    _api("runpod", "flux-dev", Quality.HIGH, "0.01"),
)


OPENAI_OFFERS: tuple[Offer, ...] = (
    # List prices for 1024x1024: dall-e-3 hd $0.080, gpt-image-1 high $0.167.
    _api("openai", "dall-e-3", Quality.HIGH, "0.08"),
    _api("openai", "gpt-image-1", Quality.HIGH, "0.167"),
)
"""Offered whenever an OpenAI key is set (`Catalogue.with_openai`)."""


def single_backend_catalogue(
    provider: str, model: str, *, gpu_price_per_hour_usd: Decimal = Decimal("2.50")
) -> Catalogue:
    """A catalogue of the one backend a local stack's generator runs.

    Its offer claims every quality (high meets all): locally that backend is the only one
    there is, so a standard or high request must still get images rather than an error.
    """
    demo = provider == "demo"
    return Catalogue(
        [
            Offer(
                provider=provider,
                model=model,
                quality=Quality.HIGH,
                gpu_price_per_hour_usd=gpu_price_per_hour_usd,
                overhead_seconds=Decimal("0.01") if demo else Decimal("0.5"),
                seconds_per_megapixel_step=Decimal(0) if demo else Decimal("0.08"),
            )
        ]
    )


class _CatalogueSettings(Protocol):
    catalogue: str | None
    openai_api_key: SecretStr | None


def offered(settings: _CatalogueSettings) -> Catalogue:
    """The scheduler's catalogue: IMAGEGEN_CATALOGUE (or the default), plus OpenAI's models
    when IMAGEGEN_OPENAI_API_KEY is set."""
    catalogue = Catalogue.from_json(settings.catalogue)
    key = settings.openai_api_key
    if key is not None and key.get_secret_value().strip():
        return catalogue.with_openai()
    return catalogue
