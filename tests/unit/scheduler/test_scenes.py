"""Scene extraction: the deterministic extractor, the LLM path against a local
OpenAI-compatible server over real HTTP, fallback on its failures, character matching,
and the scheduler's handler putting the derived scene on the GenerateImage."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from schemas.characters import CharacterSpec
from schemas.requests import GenerateScene, GenerateStory, StoryPage, StorySpec, UserTier
from services.scheduler.expansion import plan
from services.scheduler.scenes import extract, match_names, named_in, page_scene
from services.scheduler.scenes_llm import (
    OpenAISceneReader,
    SceneReadError,
    SceneResolver,
    build_scene_resolver,
)
from tests.fixtures.openai_chat_server import ChatServer, openai_chat_server, read_page
from tests.unit.scheduler.fakes import fast_settings
from tests.unit.scheduler.memrig import memory_rig

MIA = CharacterSpec(id="mia", name="Mia", seed=11)
FOX = CharacterSpec(id="fox", name="Mr. Fox", seed=22)
OLI = CharacterSpec(id="oli", name="Oliver Stone", seed=33)
CAST = [MIA, FOX, OLI]

NIGHT = (
    "Once upon a time there was a girl called Mia. One night, Mia's lantern flickered as"
    ' she crept into the dark forest. The fox followed her quietly! "Wait for me," he said.'
)
BEACH = (
    "The sun was warm. At the beach, OLIVER built a giant sandcastle and laughed as the"
    " waves splashed over it. Everyone was happy."
)


# --- the deterministic extractor --------------------------------------------------------


def test_extractor_picks_the_action_setting_time_mood_and_names() -> None:
    facts = extract(NIGHT, CAST)
    assert facts.source == "extractor"
    # The two sentences with the most action, in page order; the intro and the line of
    # dialogue are left out.
    assert facts.action == (
        "One night, Mia's lantern flickered as she crept into the dark forest."
        " The fox followed her quietly!"
    )
    assert facts.setting == "in the dark forest at night"
    assert facts.character_ids == ("mia", "fox")  # a possessive, and "fox" of "Mr. Fox"
    assert facts.mood == "scary"


def test_extractor_on_a_beach_page_in_upper_case_names() -> None:
    facts = extract(BEACH, CAST)
    assert facts.setting == "at the beach"
    assert facts.character_ids == ("oli",)  # "OLIVER" of "Oliver Stone", any case
    assert facts.mood == "joyful"
    assert "built a giant sandcastle" in facts.action


@pytest.mark.parametrize(
    ("text", "setting", "mood"),
    [
        ("Granny baked bread in the warm kitchen while snow fell.", "in the warm kitchen", "cozy"),
        ("The children ran to the playground after school.", "in the playground", ""),
        ("It was a quiet morning.", "in the morning", "calm"),
        ("Nobody said anything.", "", ""),
    ],
)
def test_extractor_settings_and_moods(text: str, setting: str, mood: str) -> None:
    facts = extract(text, CAST)
    assert (facts.setting, facts.mood) == (setting, mood)
    assert facts.character_ids == ()


def test_names_match_whole_words_only_and_unknown_names_are_ignored() -> None:
    assert named_in("Miami was sunny; a foxglove grew.", CAST) == ()
    assert named_in("mia\u2019s hat", CAST) == ("mia",)
    assert match_names(["MIA", "Stone", "Gandalf"], CAST) == ("mia", "oli")


def test_a_page_without_a_description_gets_one_from_its_text() -> None:
    scene = page_scene(description="", text=NIGHT, candidates=CAST)
    assert scene.source == "extractor"
    assert scene.description.startswith("One night, Mia's lantern flickered")
    assert "Setting: in the dark forest at night." in scene.description
    assert scene.description.endswith("Mood: scary.")
    assert scene.characters == tuple(CAST)  # not narrowed unless asked
    given = page_scene(description="a picnic", text=NIGHT, candidates=CAST, narrow=True)
    assert (given.description, given.source, given.characters) == (
        "a picnic",
        "request",
        tuple(CAST),
    )
    empty = page_scene(description="", text="  ", candidates=CAST)
    assert (empty.description, empty.source) == ("", "")


def _story(pages: list[StoryPage]) -> GenerateStory:
    spec = StorySpec(id="s1", title="Night walk", pages=pages, characters=CAST)
    return GenerateStory(job_id="job-s1", user_id="u1", tier=UserTier.PAID, story=spec)


def test_story_pages_show_the_characters_their_text_names() -> None:
    request = _story(
        [
            StoryPage(page_number=1, text=NIGHT),  # names Mia and the fox
            StoryPage(page_number=2, text="The stars came out."),  # names no one: all
            StoryPage(page_number=3, text="Oliver waved.", character_ids=["mia", "oli"]),
        ]
    )
    planned = plan(request, steps=4, guidance=7.0)
    portraits = {p.job.character.id: p.index for p in planned if p.phase == "portraits"}
    scenes = {p.job.image.page_number: p for p in planned if p.phase == "scenes"}
    first = scenes[1]
    assert [first.job.character.id, *(c.id for c in first.job.characters)] == ["mia", "fox"]
    assert first.depends_on == {portraits["mia"], portraits["fox"]}  # not Oliver's portrait
    assert first.job.scene_source == "extractor"
    assert "crept into the dark forest" in first.job.scene_description
    assert len(scenes[2].job.characters) == 2 and scenes[2].depends_on == set(portraits.values())
    # A page that lists its characters keeps them all, even one its text does not name.
    third = scenes[3].job
    assert [third.character.id, *(c.id for c in third.characters)] == ["mia", "oli"]


# --- the LLM path, over real HTTP ---------------------------------------------------------


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    with openai_chat_server() as server:
        yield server


def _reader(chat: ChatServer, timeout_s: float = 2.0) -> OpenAISceneReader:
    return OpenAISceneReader(
        base_url=chat.base_url, api_key=chat.api_key or "", model="gpt-4o-mini", timeout_s=timeout_s
    )


async def test_llm_reads_a_page_with_structured_output(chat: ChatServer) -> None:
    reader = _reader(chat)
    try:
        facts = await reader.read(NIGHT, CAST)
    finally:
        await reader.aclose()
    expected = read_page(NIGHT, [c.name for c in CAST])
    assert facts.source == "llm"
    assert (facts.setting, facts.action, facts.mood) == (
        expected["setting"],
        expected["action"],
        expected["mood"],
    )
    assert facts.character_ids == ("mia",)  # the server names "Mia" only (not "Mr. Fox")
    (call,) = chat.calls
    fmt = call["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == ["setting", "action", "characters_present", "mood"]
    assert schema["properties"]["characters_present"]["items"]["enum"] == [
        "Mia",
        "Mr. Fox",
        "Oliver Stone",
    ]


@pytest.mark.parametrize("fault", ["status_500", "status_429", "invalid_json", "slow"])
async def test_llm_failures_raise_scene_read_error(chat: ChatServer, fault: str) -> None:
    if fault.startswith("status_"):
        chat.fail_next(int(fault.removeprefix("status_")))
    elif fault == "invalid_json":
        chat.invalid_json_next()
    else:
        chat.slow_next(0.8)
    reader = _reader(chat, timeout_s=0.3)
    try:
        with pytest.raises(SceneReadError):
            await reader.read(BEACH, CAST)
    finally:
        await reader.aclose()


def _scene_request(text: str, description: str = "") -> GenerateScene:
    return GenerateScene(
        job_id=str(uuid.uuid4()),
        user_id="alice",
        tier=UserTier.PAID,
        story_id="s1",
        page_number=4,
        characters=[MIA, FOX],
        page_text=text,
        scene_description=description,
    )


async def test_resolver_falls_back_and_cools_down_after_a_failure(
    chat: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A timeout long enough for a loaded machine: the 500 must be what fails the call.
    resolver = SceneResolver(_reader(chat, timeout_s=10.0), cooldown_s=60.0)
    try:
        chat.fail_next(500)
        with caplog.at_level(logging.WARNING, logger="services.scheduler.scenes_llm"):
            assert await resolver.resolve(_scene_request(NIGHT)) == {}
        assert "event=scene_llm_failed_fallback_extractor" in caplog.text
        # The cool-down: the next request does not call the server at all.
        assert await resolver.resolve(_scene_request(BEACH)) == {}
        assert len(chat.calls) == 1
    finally:
        await resolver.aclose()
    # With no reading, planning falls back to the extractor.
    (planned,) = plan(_scene_request(NIGHT), steps=4, guidance=7.0, scenes={})
    assert planned.job.scene_source == "extractor"


async def test_resolver_reads_only_pages_without_a_description(chat: ChatServer) -> None:
    resolver = SceneResolver(_reader(chat))
    try:
        assert await resolver.resolve(_scene_request(NIGHT, description="given")) == {}
        story = _story(
            [
                StoryPage(page_number=1, text=NIGHT),
                StoryPage(page_number=2, text=BEACH, scene_description="a beach"),
                StoryPage(page_number=3, text=""),
            ]
        )
        readings = await resolver.resolve(story)
    finally:
        await resolver.aclose()
    assert set(readings) == {1} and len(chat.calls) == 1
    assert readings[1].source == "llm"


def test_no_llm_configured_means_no_reader() -> None:
    assert not build_scene_resolver(fast_settings()).enabled
    assert build_scene_resolver(fast_settings(scene_llm_base_url="http://127.0.0.1:9/v1")).enabled


# --- through the scheduler's handler ---------------------------------------------------------


async def test_handler_puts_the_llm_scene_on_the_generate_image(
    database_url: str, chat: ChatServer
) -> None:
    settings = fast_settings(
        scene_llm_base_url=chat.base_url,
        scene_llm_api_key=chat.api_key,
        scene_llm_timeout_s=2.0,
    )
    async with memory_rig(database_url, settings, None) as m:
        try:
            with_llm = _scene_request(NIGHT)
            given = _scene_request(NIGHT, description="Mia and the fox on a moonlit bridge")
            await m.rig.submit(with_llm, "alice")
            await m.rig.submit(given, "alice")

            async def both_dispatched() -> bool:
                ids = {j.image.job_id for j in await m.rig.jobs()}
                return {with_llm.job_id, given.job_id} <= ids

            await m.rig.wait(both_dispatched, "both scenes dispatched")
            jobs = {j.image.job_id: j for j in await m.rig.jobs()}
        finally:
            await m.rig.scheduler.scenes.aclose()
    llm_job = jobs[with_llm.job_id]
    expected = read_page(NIGHT, ["Mia", "Mr. Fox"])
    assert llm_job.scene_source == "llm"
    assert llm_job.scene_description.startswith(expected["action"])
    assert f"Setting: {expected['setting']}." in llm_job.scene_description
    assert llm_job.scene_description.endswith("Mood: mysterious.")
    # The caller chose both characters; the LLM's reading describes, never drops one.
    assert llm_job.character.id == "mia" and [c.id for c in llm_job.characters] == ["fox"]
    assert jobs[given.job_id].scene_source == "request"
    assert jobs[given.job_id].scene_description == "Mia and the fox on a moonlit bridge"
    assert len(chat.calls) == 1  # the page with a description was not sent
