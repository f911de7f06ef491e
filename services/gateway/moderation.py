"""Moderation of user text before anything is saved or queued.

A `ModerationPolicy` looks at named texts and returns the first `Flag` (which field, which
category, why) or None. The built-in `WordListPolicy` (a small list of phrases per
category, plus configurable extra terms) always runs; `OpenAIModerationPolicy` (the
moderation endpoint through the openai SDK) runs after it when an API key is configured.
If the endpoint cannot be reached the request is refused with 503 (fail closed: nothing
unmoderated gets queued).

Routes use `ModeratorDep` and `await moderator.require_allowed({("body", "name"): ...})`:
a flag becomes a 422 naming the field, with `type: "moderation"` and the `category`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status

from imagegen.errors import RetryableError
from services.gateway.problems import Loc, field_error
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 10_000
"""Longer texts are refused before any policy sees them."""

BUILTIN_TERMS: dict[str, tuple[str, ...]] = {
    "sexual": (
        "nude",
        "nudes",
        "naked",
        "nudity",
        "topless",
        "porn",
        "porno",
        "pornographic",
        "nsfw",
        "explicit sex",
        "sex scene",
        "erotic",
        "hentai",
        "genitals",
    ),
    "violence/graphic": (
        "gore",
        "gory",
        "decapitated",
        "decapitation",
        "beheading",
        "dismembered",
        "dismemberment",
        "disembowelled",
        "disemboweled",
        "mutilated",
        "mutilation",
    ),
    "self-harm": ("self harm", "self-harm", "suicide", "slit wrists"),
    "hate": ("swastika", "white power", "ethnic cleansing"),
}


@dataclass(frozen=True)
class Flag:
    """Why a text was refused."""

    loc: Loc
    category: str
    reason: str


class ModerationUnavailableError(RetryableError):
    """The moderation service could not give an answer."""


class ModerationPolicy(Protocol):
    """Decides whether texts may be used."""

    async def check(self, texts: Mapping[Loc, str]) -> Flag | None:
        """The first refused text's flag, or None when all may be used."""
        ...

    async def aclose(self) -> None:
        """Release clients."""
        ...


def _normalise(text: str) -> str:
    """Casefolded words separated by single spaces ("N.U.D.E" and "Nude!" both match)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = re.sub(r"(?<=\b\w)\.(?=\w\b)", "", folded)  # n.u.d.e -> nude
    return " " + " ".join(re.findall(r"\w+", folded)) + " "


class WordListPolicy:
    """Whole-word, case-insensitive phrase matching; extra terms count as "custom"."""

    def __init__(
        self,
        terms: Mapping[str, Iterable[str]] = BUILTIN_TERMS,
        extra_terms: Iterable[str] = (),
    ) -> None:
        self._phrases: list[tuple[str, str, str]] = []
        groups = {**{k: list(v) for k, v in terms.items()}, "custom": list(extra_terms)}
        for category, phrases in groups.items():
            for phrase in phrases:
                normal = _normalise(phrase)
                if normal.strip():
                    self._phrases.append((normal, category, phrase))

    async def check(self, texts: Mapping[Loc, str]) -> Flag | None:
        for loc, text in texts.items():
            normal = _normalise(text)
            for phrase, category, original in self._phrases:
                if phrase in normal:
                    return Flag(loc, category, f"contains {original!r}")
        return None

    async def aclose(self) -> None:
        return None


class OpenAIModerationPolicy:
    """OpenAI's moderation endpoint: all texts in one call, the first flagged one refused."""

    def __init__(self, api_key: str, *, base_url: str | None, model: str, timeout_s: float) -> None:
        from openai import AsyncOpenAI  # a heavy import, only when configured

        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=1
        )
        self._model = model

    async def check(self, texts: Mapping[Loc, str]) -> Flag | None:
        import openai

        if not texts:
            return None
        locs = list(texts)
        try:
            response = await self._client.moderations.create(
                model=self._model, input=[texts[loc] for loc in locs]
            )
        except openai.OpenAIError as exc:
            log.warning("event=moderation_unavailable error=%r", exc)
            raise ModerationUnavailableError(f"moderation endpoint failed: {exc}") from exc
        for loc, result in zip(locs, response.results, strict=False):
            if result.flagged:
                flagged: dict[str, Any] = result.categories.model_dump(by_alias=True)
                names = [name for name, on in flagged.items() if on] or ["flagged"]
                return Flag(loc, names[0], f"flagged by the moderation model: {', '.join(names)}")
        return None

    async def aclose(self) -> None:
        await self._client.close()


class Moderator:
    """Runs the policies in order; turns a flag into a 422 naming the field."""

    def __init__(self, policies: list[ModerationPolicy]) -> None:
        self._policies = policies

    async def check(self, texts: Mapping[Loc, str | None]) -> Flag | None:
        present = {loc: text for loc, text in texts.items() if text}
        for loc, text in present.items():
            if len(text) > MAX_TEXT_CHARS:
                return Flag(loc, "too_long", f"longer than {MAX_TEXT_CHARS} characters")
        for policy in self._policies:
            flag = await policy.check(present)
            if flag is not None:
                return flag
        return None

    async def require_allowed(self, texts: Mapping[Loc, str | None]) -> None:
        """Raise a 422 naming the refused field (503 if moderation is unavailable)."""
        try:
            flag = await self.check(texts)
        except ModerationUnavailableError as exc:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "moderation is unavailable; nothing was created, please retry",
                headers={"Retry-After": "5"},
            ) from exc
        if flag is None:
            return
        log.info(
            "event=moderation_refused loc=%s category=%s",
            ".".join(map(str, flag.loc)),
            flag.category,
        )
        raise field_error(
            flag.loc,
            f"refused by content policy ({flag.category}): {flag.reason}",
            kind="moderation",
            category=flag.category,
        )

    async def aclose(self) -> None:
        for policy in self._policies:
            await policy.aclose()


def build_moderator(settings: GatewaySettings) -> Moderator:
    """The built-in list, then OpenAI's endpoint when a key is configured. No I/O."""
    policies: list[ModerationPolicy] = [WordListPolicy(extra_terms=settings.moderation_extra_terms)]
    if settings.openai_api_key is not None:
        policies.append(
            OpenAIModerationPolicy(
                settings.openai_api_key.get_secret_value(),
                base_url=settings.openai_base_url,
                model=settings.moderation_model,
                timeout_s=settings.moderation_timeout_s,
            )
        )
    return Moderator(policies)


def texts_of(value: Any, loc: Loc) -> dict[Loc, str]:
    """Every string inside a JSON-like value, keyed by its location (for moderation)."""
    found: dict[Loc, str] = {}
    if isinstance(value, str):
        found[loc] = value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found.update(texts_of(item, (*loc, str(key))))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found.update(texts_of(item, (*loc, index)))
    return found


def get_moderator(request: Request) -> Moderator:
    moderator: Moderator = request.app.state.moderator
    return moderator


ModeratorDep = Annotated[Moderator, Depends(get_moderator)]
