"""Turning a request into self-contained per-image jobs (pure: no I/O)."""

from __future__ import annotations

from schemas.characters import MAX_SEED
from schemas.jobs import GenerateImage, ImageIdentity, image_id_for
from schemas.requests import GenerateImages, UserTier
from schemas.topics import Tier
from services.scheduler.poses import pose_for

# A prime stride keeps per-image seeds of one character far apart yet reproducible.
_SEED_STRIDE = 7919


def tier_for(request: GenerateImages) -> Tier:
    return Tier.REALTIME if request.tier is UserTier.PAID else Tier.ECONOMY


def expand(request: GenerateImages, *, steps: int, guidance: float) -> list[GenerateImage]:
    tier = tier_for(request)
    jobs = []
    for index in range(request.image_count):
        jobs.append(
            GenerateImage(
                image=ImageIdentity(
                    job_id=request.job_id,
                    image_id=image_id_for(request.job_id, index),
                    image_index=index,
                    image_count=request.image_count,
                    user_id=request.user_id,
                    character_id=request.character.id,
                    kind=request.kind,
                ),
                tier=tier,
                character=request.character,
                prompt="",
                pose=pose_for(index),
                seed=(request.character.seed + index * _SEED_STRIDE) % (MAX_SEED + 1),
                style=request.style,
                width=request.width,
                height=request.height,
                steps=steps,
                guidance=guidance,
                reference_keys=list(request.character.reference_keys),
            )
        )
    return jobs
