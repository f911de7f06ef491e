"""From a request to what the scheduler stores: images, their failover chains and their estimates.

Pure: `expansion.plan` decides the images, the catalogue their offers; this module only
joins the two into rows the dispatcher keeps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from schemas.characters import CharacterSpec
from schemas.jobs import GenerateImage
from schemas.requests import GenerateImages, GenerateScene, GenerateStory, JobKind, UserTier
from schemas.topics import Tier
from services.scheduler.catalogue import Catalogue, estimate
from services.scheduler.expansion import PlannableRequest, SceneReadings, plan
from services.scheduler.provider_health import reorder
from services.scheduler.settings import SchedulerSettings


@dataclass(frozen=True)
class OfferChoice:
    provider: str
    model: str
    estimate: Decimal

    def to_json(self) -> dict[str, str]:
        return {"provider": self.provider, "model": self.model, "estimate": str(self.estimate)}

    @classmethod
    def from_json(cls, raw: Mapping[str, str]) -> OfferChoice:
        return cls(raw["provider"], raw["model"], Decimal(raw["estimate"]))


@dataclass(frozen=True)
class ImagePlan:
    """One image to keep: its job on the first offer, the whole chain, what it waits for."""

    job: GenerateImage
    chain: tuple[OfferChoice, ...]
    depends_on: tuple[int, ...] = ()
    phase: str = "images"

    @property
    def index(self) -> int:
        return self.job.image.image_index

    @property
    def estimate(self) -> Decimal:
        return self.chain[0].estimate


@dataclass(frozen=True)
class JobPlan:
    job_id: str
    user_id: str
    user_tier: UserTier
    kind: JobKind
    story_id: str | None
    images: tuple[ImagePlan, ...]

    @property
    def estimate(self) -> Decimal:
        return sum((i.estimate for i in self.images), Decimal(0))

    @property
    def topic_tier(self) -> Tier:
        return self.images[0].job.tier


def kind_of(request: PlannableRequest) -> JobKind:
    if isinstance(request, GenerateImages):
        return request.kind
    return JobKind.SCENE if isinstance(request, GenerateScene) else JobKind.STORY


def story_of(request: PlannableRequest) -> str | None:
    if isinstance(request, GenerateStory):
        return request.story.id
    return request.story_id


def characters_of(request: PlannableRequest) -> Sequence[CharacterSpec]:
    if isinstance(request, GenerateImages):
        return [request.character]
    if isinstance(request, GenerateScene):
        return request.characters
    return request.story.characters


def with_chain(
    job: GenerateImage,
    catalogue: Catalogue,
    model: str | None,
    avoid: frozenset[str] = frozenset(),
) -> ImagePlan:
    """`job` on the first offer of its chain, with the chain kept for failover.

    Offers of the `avoid`ed providers (cooling down, see `provider_health`) go last.
    """
    offers = reorder(
        catalogue.chain(job.quality, model, width=job.width, height=job.height, steps=job.steps),
        lambda o: o.provider,
        avoid,
    )
    chain = tuple(
        OfferChoice(o.provider, o.model, estimate(o, job.width, job.height, job.steps))
        for o in offers
    )
    return ImagePlan(job=on_offer(job, chain[0]), chain=chain)


def on_offer(job: GenerateImage, offer: OfferChoice) -> GenerateImage:
    return job.model_copy(
        update={
            "provider": offer.provider,
            "model": offer.model,
            "estimated_cost_usd": float(offer.estimate),
        }
    )


def plan_request(
    request: PlannableRequest,
    settings: SchedulerSettings,
    catalogue: Catalogue,
    reference_sets: Mapping[str, Sequence[str]],
    scenes: SceneReadings | None = None,
    avoid: frozenset[str] = frozenset(),
) -> JobPlan:
    """Raises PermanentError (NoOfferError included) for a request that cannot work.

    `scenes`: an LLM's readings of pages without a scene description (see `scenes_llm`).
    """
    planned = plan(
        request,
        steps=settings.default_steps,
        guidance=settings.default_guidance,
        max_variations=settings.max_variations,
        reference_keys_of=lambda c: reference_sets.get(c.appearance_fingerprint()),
        scenes=scenes,
    )
    model = request.model
    images = []
    for p in planned:
        chosen = with_chain(p.job, catalogue, model, avoid)
        images.append(
            ImagePlan(
                job=chosen.job,
                chain=chosen.chain,
                depends_on=tuple(sorted(p.depends_on)),
                phase=p.phase,
            )
        )
    return JobPlan(
        job_id=request.job_id,
        user_id=request.user_id,
        user_tier=request.tier,
        kind=kind_of(request),
        story_id=story_of(request),
        images=tuple(images),
    )
