"""OpenAI SDK exceptions -> the project's retryable / permanent errors.

The scheduler owns retries and failover (DECISIONS.md #2), so the SDK's own retries are
off and every failure surfaces here once. The worker reports `type(exc).__name__` as the
attempt's `error_type`, hence one class per kind of refusal.
"""

from __future__ import annotations

from collections.abc import Mapping

import openai

from imagegen.errors import PermanentError, RetryableError

PROVIDER = "openai"
API_KEY_SETTING = "IMAGEGEN_OPENAI_API_KEY"
# Codes OpenAI gives a prompt or image its safety system refused (dall-e-3 / gpt-image-1).
_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})


class ProviderRetryableError(RetryableError):
    """The provider failed in a way that may pass later: rate limit, 5xx, timeout, network."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ):
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class ProviderPermanentError(PermanentError):
    """The provider refused the request; sending it again would be refused again."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProviderAuthError(ProviderPermanentError):
    """The API key is missing, wrong or lacks access (401/403)."""


class ProviderContentPolicyError(ProviderPermanentError):
    """The provider's safety system refused the prompt or a reference image."""


def map_openai_error(exc: openai.OpenAIError) -> ProviderRetryableError | ProviderPermanentError:
    """The project error for one SDK exception; the message names provider, status and reason."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderRetryableError(f"{PROVIDER}: request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderRetryableError(f"{PROVIDER}: connection failed: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc)
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderRetryableError(f"{PROVIDER}: malformed response: {exc.message}")
    # Anything else the SDK raises is a bug or misuse on our side: say so, don't retry.
    return ProviderPermanentError(f"{PROVIDER}: {type(exc).__name__}: {exc}")


def _from_status(exc: openai.APIStatusError) -> ProviderRetryableError | ProviderPermanentError:
    status = exc.status_code
    body = exc.body if isinstance(exc.body, Mapping) else {}
    detail = str(body.get("message") or exc.response.text[:200] or exc.message)
    code = exc.code or ""
    label = f"{PROVIDER}: HTTP {status}" + (f" {code}" if code else "") + f": {detail}"
    if status == 429 or status >= 500 or status in (408, 409):
        retry_after = _retry_after(exc)
        hint = f" (retry after {retry_after:g}s)" if retry_after is not None else ""
        return ProviderRetryableError(label + hint, status=status, retry_after_s=retry_after)
    if status in (401, 403):
        return ProviderAuthError(f"{label}; check {API_KEY_SETTING}", status=status)
    if code in _CONTENT_POLICY_CODES:
        return ProviderContentPolicyError(label, status=status)
    return ProviderPermanentError(label, status=status)


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: the scheduler's backoff decides anyway
        return None
