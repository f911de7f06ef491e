"""The final object layout in S3, organised by owner."""

from __future__ import annotations

from schemas.jobs import ImageIdentity

_EXT = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def image_prefix(image: ImageIdentity) -> str:
    return (
        f"users/{image.user_id}/characters/{image.character_id}/images/{image.image_id}"
        f"/v{image.version}/"
    )


def rendition_key(image: ImageIdentity, name: str, fmt: str) -> str:
    return f"{image_prefix(image)}{name}.{_EXT.get(fmt, fmt)}"
