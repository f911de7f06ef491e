"""The final object layout in S3, organised by owner.

    users/{user}/characters/{character}/images/{image}/v{version}/{rendition}.{ext}
    users/{user}/stories/{story}/pages/{page}/images/{image}/v{version}/{rendition}.{ext}

Story scenes live under their page; portraits, reference sets and packs under their
character. Keys are a pure function of the message, so finalising again writes the same
objects (idempotent).
"""

from __future__ import annotations

from schemas.jobs import ImageIdentity

# Final objects never change (a new version is a new key), so caches (CloudFront, browsers)
# may keep them for 30 days without revalidating.
CACHE_CONTROL = "public, max-age=2592000, immutable"

_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def owner_of(image: ImageIdentity) -> tuple[str, str]:
    """("story", id) for a story page's images, else ("character", id): whose prefix holds
    the image, and whose deletion deletes it."""
    if image.story_id is not None and image.page_number is not None:
        return "story", image.story_id
    return "character", image.character_id


def owner_prefix(user_id: str, owner_kind: str, owner_id: str) -> str:
    return f"users/{user_id}/{'stories' if owner_kind == 'story' else 'characters'}/{owner_id}/"


def image_prefix(image: ImageIdentity) -> str:
    if image.story_id is not None and image.page_number is not None:
        owner = f"stories/{image.story_id}/pages/{image.page_number}"
    else:
        owner = f"characters/{image.character_id}"
    return f"users/{image.user_id}/{owner}/images/{image.image_id}/v{image.version}/"


def rendition_key(image: ImageIdentity, name: str, fmt: str) -> str:
    return f"{image_prefix(image)}{name}.{_EXT.get(fmt, fmt)}"
