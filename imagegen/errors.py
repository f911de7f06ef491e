"""The project's one exception root; retryable and permanent failures are distinct types."""

from __future__ import annotations


class ImagegenError(Exception):
    """Root of every error this project raises on purpose."""


class RetryableError(ImagegenError):
    """A failure that may succeed if tried again later (a dependency down, a timeout)."""


class PermanentError(ImagegenError):
    """A failure that will fail the same way again (bad input, a missing model)."""


class PoisonMessageError(PermanentError):
    """A message that cannot be decoded or validated against its contract."""


class ConfigurationError(PermanentError):
    """Settings that cannot work (a default secret outside dev, a missing model)."""


class NotFoundError(PermanentError):
    """A thing that does not exist (or that the caller may not see)."""
