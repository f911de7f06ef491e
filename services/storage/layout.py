"""The final object layout in S3, organised by owner (the keys themselves are in
`imagegen.object_layout`, shared with postprocess, which writes the renditions there).

Deleting an owner deletes everything under its prefix.
"""

from __future__ import annotations

from imagegen.object_layout import CACHE_CONTROL, image_prefix, rendition_key
from schemas.jobs import ImageIdentity

__all__ = ["CACHE_CONTROL", "image_prefix", "owner_of", "owner_prefix", "rendition_key"]


def owner_of(image: ImageIdentity) -> tuple[str, str]:
    """("story", id) for a story page's images, else ("character", id): whose prefix holds
    the image, and whose deletion deletes it."""
    if image.story_id is not None and image.page_number is not None:
        return "story", image.story_id
    return "character", image.character_id


def owner_prefix(user_id: str, owner_kind: str, owner_id: str) -> str:
    return f"users/{user_id}/{'stories' if owner_kind == 'story' else 'characters'}/{owner_id}/"
