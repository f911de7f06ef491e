"""Where an image's final objects live in S3, organised by owner.

    users/{user}/characters/{character}/images/{image}/v{version}/{rendition}.{ext}
    users/{user}/stories/{story}/pages/{page}/images/{image}/v{version}/{rendition}.{ext}

Story scenes live under their page; portraits, reference sets and packs under their
character. Keys are a pure function of the image's identity, so postprocess (which writes
the renditions there) and storage (which records them) agree on them without talking,
and writing again writes the same objects (idempotent).
"""

from __future__ import annotations

from schemas.jobs import ImageIdentity

FINAL_PREFIX = "users/"

# Final objects never change (a new version is a new key), so caches (CloudFront, browsers)
# may keep them for 30 days without revalidating.
CACHE_CONTROL = "public, max-age=2592000, immutable"

_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def image_prefix(image: ImageIdentity) -> str:
    if image.story_id is not None and image.page_number is not None:
        owner = f"stories/{image.story_id}/pages/{image.page_number}"
    else:
        owner = f"characters/{image.character_id}"
    return f"{FINAL_PREFIX}{image.user_id}/{owner}/images/{image.image_id}/v{image.version}/"


def rendition_key(image: ImageIdentity, name: str, fmt: str) -> str:
    return f"{image_prefix(image)}{name}.{_EXT.get(fmt, fmt)}"
