"""One image's attempts: the message of its next attempt and its chain of offers (pure).

`attempt` grows across providers, re-draws and variations, so every attempt of an image
has its own ids.
"""

from __future__ import annotations

import json

from schemas.jobs import GenerateImage
from services.scheduler.planning import OfferChoice


def next_attempt(job: GenerateImage) -> GenerateImage:
    """The same job as the image's next attempt."""
    return job.model_copy(
        update={"image": job.image.model_copy(update={"attempt": job.image.attempt + 1})}
    )


def offer_chain(raw: object) -> list[OfferChoice]:
    """The image's offers in failover order, from its `job_images.offers` column."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    assert isinstance(value, list)
    return [OfferChoice.from_json(o) for o in value]
