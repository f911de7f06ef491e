"""Real local servers (broker, S3, PostgreSQL) for `imagegen up` and the tests."""

from __future__ import annotations

from imagegen.errors import ImagegenError


class StackError(ImagegenError):
    """A local server could not be found, started or reached."""


__all__ = ["StackError"]
