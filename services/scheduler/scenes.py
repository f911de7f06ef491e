"""Scene descriptions for pages that come without one (pure: no I/O).

A scene's description is, in order of preference: the one the user gave ("request"),
one an LLM derived from the page text ("llm", see `scenes_llm.py`), or one this
module's deterministic extractor derived ("extractor"): the one or two sentences with
the most action, a setting phrase ("in the dark forest", "at the beach"), the time of
day and a mood. Both derivations also say which of the story's characters the page
names; a page that lists no characters then shows only those (all of them when the
text names none), so the characters put on the job match the description.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from schemas.characters import CharacterSpec
from services.scheduler.scenes_words import (
    ACTION_WORDS,
    DETERMINERS,
    MOOD_WORDS,
    PLACE_PREPOSITIONS,
    PLACE_WORDS,
    TIME_WORDS,
    words,
)

SceneSource = Literal["request", "llm", "extractor"]
MAX_DESCRIPTION = 2000
_ACTION_SENTENCES = 2
_ACTION_LIMIT = 400

_SENTENCE_END = re.compile("(?<=[.!?\u2026])[\"'\u201d\u2019)]*\\s+")
_TITLES = words(
    "the mr mrs ms miss dr doctor sir lady lord captain king queen prince princess"
    " aunt uncle grandma grandpa granny old little big young baby mister madam"
)
_STATIC_PREPOSITION = {
    "into": "in",
    "inside": "in",
    "through": "in",
    "to": "in",
    "toward": "near",
    "towards": "near",
    "along": "on",
    "across": "on",
    "onto": "on",
}
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_QUOTED = re.compile(r"[\"“][^\"”]*[\"”]")
_PLACE = re.compile(
    rf"\b(?:{'|'.join(PLACE_PREPOSITIONS)})\s+(?:{'|'.join(DETERMINERS)})\s+"
    rf"((?:[a-z'-]+\s+){{0,2}}?(?:{'|'.join(sorted(PLACE_WORDS, key=len, reverse=True))}))\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class SceneFacts:
    """What a page shows: where, what happens, who is there (character ids), the mood."""

    setting: str = ""
    action: str = ""
    character_ids: tuple[str, ...] = ()
    mood: str = ""
    source: SceneSource = "extractor"


@dataclass(frozen=True)
class PageScene:
    """The description a scene image gets, where it came from, and who is in it."""

    description: str
    source: SceneSource | Literal[""]
    characters: tuple[CharacterSpec, ...]


def name_pattern(name: str) -> re.Pattern[str] | None:
    """A case-insensitive whole-word match for `name`, possessives included ("Mia's")."""
    words = name.split()
    if not words:
        return None
    spelled = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![\w])(?:{spelled})(?:['\u2019]s?)?(?![\w])", re.IGNORECASE)


def _names_of(character: CharacterSpec) -> list[str]:
    """The full name, then each word of a longer name that is not a title ("Luna" of
    "Princess Luna", "Fox" of "Mr. Fox")."""
    full = " ".join(character.name.split())
    words = [w.strip(".,") for w in full.split()]
    parts = [w for w in words if len(w) >= 3 and w.lower() not in _TITLES] if len(words) > 1 else []
    return [full, *parts] if full else []


def named_in(text: str, characters: Sequence[CharacterSpec]) -> tuple[str, ...]:
    """Ids of the characters whose names appear in `text`, in cast order."""
    found = []
    for character in characters:
        for name in _names_of(character):
            pattern = name_pattern(name)
            if pattern is not None and pattern.search(text):
                found.append(character.id)
                break
    return tuple(found)


def match_names(names: Sequence[str], characters: Sequence[CharacterSpec]) -> tuple[str, ...]:
    """Ids of the characters `names` refer to (case-insensitive; unknown names ignored)."""
    wanted = " | ".join(names)
    return named_in(wanted, characters)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def _action_score(sentence: str, characters: Sequence[CharacterSpec]) -> float:
    spoken = sum(len(q) for q in _QUOTED.findall(sentence))
    words = _WORD.findall(_QUOTED.sub(" ", sentence).lower())
    verbs = sum(1 for w in words if w in ACTION_WORDS)
    places = 1 if _PLACE.search(sentence) else 0
    people = len(named_in(sentence, characters))
    # Dialogue is hard to draw: a sentence that is mostly speech ranks low.
    talk = spoken / max(len(sentence), 1)
    return 2.0 * verbs + places + 0.5 * people + (0.5 if "!" in sentence else 0.0) - 2.0 * talk


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: limit + 1].rsplit(" ", 1)[0].rstrip(",;:")[:limit]


def action_of(text: str, characters: Sequence[CharacterSpec]) -> str:
    """The one or two sentences with the most action, in the page's order."""
    found = sentences(text)
    if not found:
        return ""
    ranked = sorted(range(len(found)), key=lambda i: (-_action_score(found[i], characters), i))[
        :_ACTION_SENTENCES
    ]
    return _clip(" ".join(found[i] for i in sorted(ranked)), _ACTION_LIMIT)


def setting_of(text: str) -> str:
    """The first place phrase ("in the dark forest") plus a time of day, when named."""
    place = ""
    match = _PLACE.search(text)
    if match is not None:
        parts = " ".join(match.group(0).split()).lower().split(" ", 1)
        # Where the scene is, not where someone heads: "into the forest" is "in the forest".
        place = " ".join([_STATIC_PREPOSITION.get(parts[0], parts[0]), *parts[1:]])
    seen = set(_WORD.findall(text.lower()))
    when = next((TIME_WORDS[w] for w in TIME_WORDS if w in seen), "")
    if when and when.split()[-1] in place.split():
        when = ""
    return " ".join(p for p in (place, when) if p)


def mood_of(text: str) -> str:
    """The mood whose words the page uses most (the earlier-listed mood on ties)."""
    words = _WORD.findall(text.lower())
    scores = {mood: sum(1 for w in words if w in vocab) for mood, vocab in MOOD_WORDS.items()}
    best = max(scores, key=lambda m: scores[m])
    return best if scores[best] > 0 else ""


def extract(text: str, characters: Sequence[CharacterSpec]) -> SceneFacts:
    """The deterministic extractor: the same text always gives the same scene."""
    return SceneFacts(
        setting=setting_of(text),
        action=action_of(text, characters),
        character_ids=named_in(text, characters),
        mood=mood_of(text),
        source="extractor",
    )


def _mentions(text: str, name: str) -> bool:
    pattern = name_pattern(name)
    return pattern is not None and pattern.search(text) is not None


def describe(facts: SceneFacts, characters: Sequence[CharacterSpec]) -> str:
    """One description for the prompt: the action, then setting, others present, mood
    ("Mia crept into the forest. Setting: in the forest at night. Mood: scary.")."""
    names = {c.id: c.name for c in characters}
    action = facts.action.strip()
    parts = [action if not action or action[-1] in ".!?\"'" else f"{action}."]
    if facts.setting.strip():
        parts.append(f"Setting: {facts.setting.strip()}.")
    unnamed = [names[i] for i in facts.character_ids if i in names]
    unnamed = [n for n in unnamed if not _mentions(action, n)]
    if unnamed:
        parts.append(f"With {', '.join(unnamed)}.")
    if facts.mood.strip():
        parts.append(f"Mood: {facts.mood.strip()}.")
    return _clip(" ".join(p for p in parts if p), MAX_DESCRIPTION)


def page_scene(
    *,
    description: str,
    text: str,
    candidates: Sequence[CharacterSpec],
    derived: SceneFacts | None = None,
    narrow: bool = False,
) -> PageScene:
    """The scene of one page.

    `candidates` are the characters that may appear (the page's list, or the whole cast
    when it lists none); with `narrow`, only those the page names appear (all of them
    when it names none). A user's description is used as given, with every candidate.
    `derived` is an LLM's reading of the page; without it the extractor reads it.
    """
    cast = tuple(candidates)
    if description.strip():
        return PageScene(_clip(description, MAX_DESCRIPTION), "request", cast)
    if not text.strip():
        return PageScene("", "", cast)
    facts = derived if derived is not None else extract(text, cast)
    present = set(facts.character_ids)
    if narrow and present:
        cast = tuple(c for c in cast if c.id in present)
    return PageScene(describe(facts, candidates), facts.source, cast)
