"""OpenAI SDK exceptions -> the hosted providers' retryable / permanent errors.

The scheduler owns retries and failover (DECISIONS.md #2), so the SDK's own retries are
off and every failure surfaces here once. The worker reports `type(exc).__name__` as the
attempt's `error_type`, hence a class per kind of refusal (auth) on top of the types every
hosted backend shares (`hosted.py`); a safety-system refusal is the shared
`ProviderContentPolicyError`, reported as ContentPolicyViolation and final for the image.
"""

from __future__ import annotations

from collections.abc import Mapping

import openai

from services.generator.backends.hosted_http import (
    ProviderContentPolicyError,
    ProviderPermanentError,
    ProviderRateLimited,
    ProviderRetryableError,
    retry_after_seconds,
)

__all__ = [
    "API_KEY_SETTING",
    "PROVIDER",
    "ProviderAuthError",
    "ProviderContentPolicyError",
    "map_openai_error",
]

PROVIDER = "openai"
API_KEY_SETTING = "IMAGEGEN_OPENAI_API_KEY"
# The `error.code` of an HTTP 400 whose prompt or image OpenAI's safety system refused:
# dall-e-3 says content_policy_violation (type invalid_request_error), GPT image models say
# moderation_blocked (type image_generation_user_error, with `moderation_details`).
_CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})


class ProviderAuthError(ProviderPermanentError):
    """The API key is missing, wrong or lacks access (401/403)."""


def map_openai_error(exc: openai.OpenAIError) -> ProviderRetryableError | ProviderPermanentError:
    """The project error for one SDK exception; the message names provider, status and reason."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderRetryableError(PROVIDER, "request timed out")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderRetryableError(PROVIDER, f"connection failed: {exc.message}")
    if isinstance(exc, openai.APIStatusError):
        return _from_status(exc)
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderRetryableError(PROVIDER, f"malformed response: {exc.message}")
    # Anything else the SDK raises is a bug or misuse on our side: say so, don't retry.
    return ProviderPermanentError(PROVIDER, f"{type(exc).__name__}: {exc}")


def _from_status(exc: openai.APIStatusError) -> ProviderRetryableError | ProviderPermanentError:
    status = exc.status_code
    body = exc.body if isinstance(exc.body, Mapping) else {}
    detail = str(body.get("message") or exc.response.text[:200] or exc.message)
    code = exc.code or ""
    label = f"HTTP {status}" + (f" {code}" if code else "") + f": {detail}"
    if status == 429:
        wait = retry_after_seconds(exc.response.headers.get("retry-after"))
        return ProviderRateLimited(
            PROVIDER, f"{label} (retry after {wait:g}s)", status=status, retry_after_s=wait
        )
    if status >= 500 or status in (408, 409):
        return ProviderRetryableError(PROVIDER, label, status=status)
    if status in (401, 403):
        return ProviderAuthError(PROVIDER, f"{label}; check {API_KEY_SETTING}", status=status)
    if code in _CONTENT_POLICY_CODES:
        refused = f"HTTP {status} {code}: refused by its safety system: {detail}"
        return ProviderContentPolicyError(PROVIDER, refused + _moderation(body), status=status)
    return ProviderPermanentError(PROVIDER, label, status=status)


def _moderation(error: Mapping[str, object]) -> str:
    """What GPT image models add about a refusal: " (stage: input, categories: ...)"."""
    details = error.get("moderation_details")
    if not isinstance(details, Mapping):
        return ""
    parts = []
    if details.get("moderation_stage"):
        parts.append(f"stage: {details['moderation_stage']}")
    categories = details.get("categories")
    if isinstance(categories, list) and categories:
        parts.append(f"categories: {', '.join(map(str, categories))}")
    return f" ({'; '.join(parts)})" if parts else ""
