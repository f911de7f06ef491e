"""Reading pages with an LLM (any OpenAI-compatible chat endpoint, structured output).

The scheduler asks before it plans a scene or story whose pages come without a scene
description. An LLM is a help, never a dependency: a timeout, an error status or an
answer that does not follow the schema makes that page fall back to the deterministic
extractor (`scenes.extract`), and after one failure the rest of the request, and every
request for a cool-down, skips the LLM, so a dead endpoint costs one timeout, not one
per page. The whole request's reading is also bounded by `scene_llm_budget_s`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydantic import BaseModel, Field, ValidationError

from schemas.characters import CharacterSpec
from schemas.requests import GenerateScene, GenerateStory
from services.scheduler.scenes import SceneFacts, match_names
from services.scheduler.settings import SchedulerSettings

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam
    from openai.types.shared_params import ResponseFormatJSONSchema

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You read one page of an illustrated story and describe the single picture an"
    " illustrator should draw for it. Answer in JSON with: setting (where and when, a short"
    " phrase), action (what is visibly happening, one or two sentences), characters_present"
    " (the names of the listed characters who appear in the picture; none that are not"
    " listed) and mood (one or two words)."
)


class SceneReadError(Exception):
    """The LLM gave no usable scene (timeout, error status, off-schema answer)."""


class SceneReader(Protocol):
    async def read(self, text: str, characters: Sequence[CharacterSpec]) -> SceneFacts:
        """The scene of a page of text; raises SceneReadError when it cannot."""
        ...

    async def aclose(self) -> None:
        """Release the reader's connections."""
        ...


class LlmScene(BaseModel):
    """The answer the LLM must give (its JSON schema is the response format)."""

    setting: str = Field(max_length=300)
    action: str = Field(max_length=1000)
    characters_present: list[str] = Field(max_length=10)
    mood: str = Field(max_length=60)


def response_format(characters: Sequence[CharacterSpec]) -> dict[str, Any]:
    """The `response_format` of the request: a strict JSON schema, names from the cast."""
    names: dict[str, Any] = {"type": "string"}
    if characters:
        names["enum"] = [c.name for c in characters]
    schema = {
        "type": "object",
        "properties": {
            "setting": {"type": "string"},
            "action": {"type": "string"},
            "characters_present": {"type": "array", "items": names},
            "mood": {"type": "string"},
        },
        "required": ["setting", "action", "characters_present", "mood"],
        "additionalProperties": False,
    }
    spec = {"name": "scene", "strict": True, "schema": schema}
    return {"type": "json_schema", "json_schema": spec}


def cast_format(fmt: dict[str, Any]) -> ResponseFormatJSONSchema:
    return cast("ResponseFormatJSONSchema", fmt)


class OpenAISceneReader:
    """Reads pages through the `openai` SDK's async client (never blocks the loop)."""

    def __init__(self, *, base_url: str | None, api_key: str, model: str, timeout_s: float) -> None:
        from openai import AsyncOpenAI  # a heavy import, only when configured

        self._client = AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )
        self._model = model
        self._timeout_s = timeout_s

    async def read(self, text: str, characters: Sequence[CharacterSpec]) -> SceneFacts:
        import openai

        listed = ", ".join(c.name for c in characters) or "(none)"
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Characters: {listed}\n\nPage:\n{text}"},
        ]
        fmt = cast_format(response_format(characters))
        try:
            completion = await asyncio.wait_for(
                self._client.chat.completions.create(
                    model=self._model, messages=messages, response_format=fmt, temperature=0
                ),
                # The client's own timeout covers each phase; this bounds the whole call.
                self._timeout_s + 1.0,
            )
        except (openai.OpenAIError, TimeoutError) as exc:
            raise SceneReadError(f"{type(exc).__name__}: {exc}") from exc
        if not completion.choices:
            raise SceneReadError("no choices in the answer")
        message = completion.choices[0].message
        if getattr(message, "refusal", None):
            raise SceneReadError(f"refused: {message.refusal}")
        try:
            scene = LlmScene.model_validate(json.loads(message.content or ""))
        except (ValueError, ValidationError) as exc:
            raise SceneReadError(f"answer does not follow the schema: {exc}") from exc
        return SceneFacts(
            setting=" ".join(scene.setting.split()),
            action=" ".join(scene.action.split()),
            character_ids=match_names(scene.characters_present, characters),
            mood=" ".join(scene.mood.split()),
            source="llm",
        )

    async def aclose(self) -> None:
        await self._client.close()


@dataclass(frozen=True)
class _Page:
    number: int
    text: str
    cast: tuple[CharacterSpec, ...]


def pages_to_read(request: GenerateScene | GenerateStory) -> list[_Page]:
    """The pages a request leaves without a scene description (and with text to read)."""
    if isinstance(request, GenerateScene):
        if request.scene_description.strip() or not request.page_text.strip():
            return []
        return [_Page(request.page_number, request.page_text, tuple(request.characters))]
    if not request.include_scene_images:
        return []
    story = request.story
    by_id = {c.id: c for c in story.characters}
    return [
        _Page(
            page.page_number,
            page.text,
            tuple(by_id[i] for i in dict.fromkeys(page.character_ids) if i in by_id)
            or tuple(story.characters),
        )
        for page in story.pages
        if not (page.scene_description or "").strip() and page.text.strip()
    ]


class SceneResolver:
    """Page number -> the LLM's scene, for the pages it could read in time."""

    def __init__(
        self,
        reader: SceneReader | None,
        *,
        concurrency: int = 4,
        budget_s: float = 15.0,
        cooldown_s: float = 30.0,
    ) -> None:
        self._reader = reader
        self._limit = asyncio.Semaphore(concurrency)
        self._budget_s = budget_s
        self._cooldown_s = cooldown_s
        self._down_until = 0.0

    @property
    def enabled(self) -> bool:
        return self._reader is not None

    async def resolve(self, request: GenerateScene | GenerateStory) -> dict[int, SceneFacts]:
        """Pages missing from the answer are left to the deterministic extractor."""
        pages = pages_to_read(request)
        if self._reader is None or not pages or time.monotonic() < self._down_until:
            return {}
        found: dict[int, SceneFacts] = {}
        tasks = [asyncio.create_task(self._read(request.job_id, p, found)) for p in pages]
        _done, late = await asyncio.wait(tasks, timeout=self._budget_s)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            log.warning(
                "event=scene_llm_over_budget job_id=%s pages=%d unread=%d",
                request.job_id,
                len(pages),
                len(late),
            )
        return found

    async def _read(self, job_id: str, page: _Page, found: dict[int, SceneFacts]) -> None:
        assert self._reader is not None
        async with self._limit:
            if time.monotonic() < self._down_until:
                return  # an earlier page failed: the extractor reads the rest
            try:
                found[page.number] = await self._reader.read(page.text, page.cast)
            except SceneReadError as exc:
                self._down_until = time.monotonic() + self._cooldown_s
                log.warning(
                    "event=scene_llm_failed_fallback_extractor job_id=%s page=%d error=%s",
                    job_id,
                    page.number,
                    str(exc)[:300],
                )

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()


def build_scene_resolver(settings: SchedulerSettings) -> SceneResolver:
    """An LLM-backed resolver when an endpoint or key is configured, else a no-op one."""
    reader: SceneReader | None = None
    if settings.scene_llm_base_url or settings.scene_llm_api_key is not None:
        key = settings.scene_llm_api_key
        reader = OpenAISceneReader(
            base_url=settings.scene_llm_base_url,
            # Local OpenAI-compatible servers often need no key; the SDK insists on one.
            api_key=key.get_secret_value() if key is not None else "not-needed",
            model=settings.scene_llm_model,
            timeout_s=settings.scene_llm_timeout_s,
        )
    return SceneResolver(
        reader,
        concurrency=settings.scene_llm_concurrency,
        budget_s=settings.scene_llm_budget_s,
        cooldown_s=settings.scene_llm_cooldown_s,
    )
