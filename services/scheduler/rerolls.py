"""After the plan: new versions of a stored image and consistency variations (pure).

Both derive seeds from the image's own so that the same request always gives the same
picture: a regeneration moves with the version, a variation with its number.
"""

from __future__ import annotations

from imagegen.errors import NotFoundError, PermanentError
from schemas.characters import MAX_SEED
from schemas.jobs import GenerateImage
from schemas.requests import RegenerateImage
from services.scheduler.expansion import (
    REGENERATION_SEEDS,
    VARIATION_STRIDE,
    seed_for,
    tier_for,
)


def regenerate(
    original: GenerateImage, request: RegenerateImage, job_id: str | None = None
) -> GenerateImage:
    """A new version of `original`'s image: same image id, modifications applied.

    It is image 0 of one-image job `job_id` (default: the request's); the image keeps its
    kind (a regenerated portrait is still a portrait). Without a seed modification the seed
    moves deterministically with the version, so a plain regeneration gives a new picture.
    """
    if request.user_id != original.image.user_id or request.image_id != original.image.image_id:
        raise NotFoundError(f"image_id: no image {request.image_id!r} of this user")
    if request.version <= original.image.version:
        raise PermanentError(
            f"version: {request.version} does not follow the image's version "
            f"{original.image.version}"
        )
    mods = request.modifications
    extra = original.extra_prompt
    if mods.prompt and mods.prompt.strip():
        extra = ", ".join(p for p in (extra.strip(), mods.prompt.strip()) if p)
        if len(extra) > 1000:
            raise PermanentError(
                "modifications.prompt: with the earlier additions the prompt exceeds "
                "1000 characters"
            )
    base = _base_seed(original)
    seed = (
        mods.seed if mods.seed is not None else seed_for(base, REGENERATION_SEEDS + request.version)
    )
    return original.model_copy(
        update={
            "image": original.image.model_copy(
                update={
                    "job_id": job_id or request.job_id,
                    "image_index": 0,
                    "image_count": 1,
                    "version": request.version,
                    "attempt": 1,
                    "variation": 0,
                }
            ),
            "tier": tier_for(request),
            "style": mods.style or original.style,
            "extra_prompt": extra,
            "seed": seed,
            "provider": None,
            "estimated_cost_usd": 0.0,
            "enqueued_at": request.requested_at,
        }
    )


def _base_seed(job: GenerateImage) -> int:
    return (job.seed - job.image.variation * VARIATION_STRIDE) % (MAX_SEED + 1)


def vary(job: GenerateImage, variation: int) -> GenerateImage:
    """`job` re-rolled as consistency variation `variation`: a new, deterministic seed
    (the same for the same variation however often asked), attempt 1."""
    if variation < 1 or variation > job.max_variations:
        raise PermanentError(
            f"variation: {variation} outside 1..{job.max_variations} for image {job.image.image_id}"
        )
    seed = (_base_seed(job) + variation * VARIATION_STRIDE) % (MAX_SEED + 1)
    return job.model_copy(
        update={
            "image": job.image.model_copy(update={"variation": variation, "attempt": 1}),
            "seed": seed,
        }
    )
