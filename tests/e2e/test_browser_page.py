"""The web page keeps its place: reloads, cancels, outages and /docs (issue 18), in Chromium.

The plain demo stack shared with other modules (tests/e2e/conftest.py); each test signs
in as its own user so galleries and job lists do not mix.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser_support import TIMEOUT_MS, chromium_context
from tests.e2e.stack import RunningStack

pytestmark = pytest.mark.e2e

LONG_PACK = 23  # long enough to still be running after a reload


@pytest.fixture(scope="module")
def stack(demo_stack: RunningStack) -> RunningStack:
    """The plain demo stack this module shares with others (tests/e2e/conftest.py)."""
    return demo_stack


@pytest.fixture
def browser_context(stack: RunningStack, tmp_path: Path) -> Iterator[Any]:
    with chromium_context(tmp_path) as context:
        yield context


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    failures: list[str] = []
    page.on("pageerror", lambda error: failures.append(str(error)))
    yield page
    assert not failures, failures


def _signed_in(stack: RunningStack, page: Any, character: str = "Ivy") -> str:
    """A fresh paid user with one character, signed in on the page; returns the token."""
    from playwright.sync_api import expect

    user = f"page-{uuid.uuid4().hex[:8]}"
    token = stack.token_for(user, "paid")
    with stack.client(token) as client:
        created = client.post("/api/v1/characters", json={"name": character})
        assert created.status_code == 201, created.text
    page.goto(f"{stack.gateway}/?token={token}")
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()
    expect(page.locator("#character option:checked")).to_have_text(character)
    return token


def _start_pack(page: Any, count: int) -> Any:
    """Start a pack from the form; returns its card once it shows its slots."""
    from playwright.sync_api import expect

    pack = page.locator("#pack-form")
    pack.get_by_label("Images (1 to 23)").fill(str(count))
    pack.get_by_role("button", name="Generate pack").click()
    job = page.locator("#jobs article.job").first
    expect(job.locator(".slot")).to_have_count(count)
    return job


def test_reload_brings_back_a_running_job_with_live_progress(
    stack: RunningStack, page: Any
) -> None:
    from playwright.sync_api import expect

    token = _signed_in(stack, page)
    job = _start_pack(page, LONG_PACK)
    job_id = job.get_attribute("data-job-id")
    # Its place in the tier's queue, live over SSE (queue_status), until it runs.
    expect(job.locator(".queue")).to_contain_text(" queue")
    expect(job.locator('.job-status[data-status="running"]')).to_be_visible()

    page.reload()
    card = page.locator(f'#jobs article.job[data-job-id="{job_id}"]')
    expect(card).to_be_visible()
    expect(card).to_have_attribute("aria-label", f"Pack of {LONG_PACK}: Ivy")
    expect(card.locator(".slot")).to_have_count(LONG_PACK)
    expect(page.locator("#no-jobs")).to_be_hidden()
    expect(card.locator(".queue")).to_contain_text("to wait")
    # Its stream resumed: what happened before the reload is replayed, then more arrives live.
    expect(card.locator(".slot .state").filter(has_text="done").first).to_be_visible()
    done_before = card.locator(".slot.stored").count()
    expect(card.locator(".slot.stored")).not_to_have_count(done_before)
    card.get_by_role("button", name="Cancel").click()
    expect(card.locator(".job-status")).to_contain_text("cancelled", timeout=TIMEOUT_MS)

    # Ended jobs come back too after a reload, drawn from their records with their images.
    with stack.client(token) as client:
        record = client.get(f"/api/v1/jobs/{job_id}").json()
    stored = [i for i in record["images"] if i["status"] == "completed"]
    page.reload()
    ended = page.locator(f'#jobs article.job[data-job-id="{job_id}"]')
    expect(ended.locator(".job-status")).to_contain_text(
        f"cancelled ({record['completed']} of {LONG_PACK} images"
    )
    expect(ended.locator(".slot.stored")).to_have_count(len(stored))
    expect(ended.locator(".slot.stored img")).to_have_count(len(stored))
    expect(ended.locator(".slot:not(.stored):not(.failed)")).to_have_count(0)
    expect(ended.get_by_role("button", name="Cancel")).to_be_hidden()


def test_cancelled_images_stay_out_of_the_gallery(stack: RunningStack, page: Any) -> None:
    from playwright.sync_api import expect

    token = _signed_in(stack, page)
    job = _start_pack(page, LONG_PACK)
    job.get_by_role("button", name="Cancel").click()
    expect(job.locator(".job-status")).to_contain_text("cancelled", timeout=TIMEOUT_MS)
    job_id = job.get_attribute("data-job-id")
    with stack.client(token) as client:
        record = client.get(f"/api/v1/jobs/{job_id}").json()
    stored = [i for i in record["images"] if i["status"] == "completed"]
    assert len(stored) < LONG_PACK, "the cancel came too late to test anything"
    # Every slot says what became of its image: none is left waiting or "finishing".
    expect(job.locator(".slot.stored")).to_have_count(len(stored))
    expect(job.locator(".slot:not(.stored):not(.failed)")).to_have_count(0)
    expect(job.locator(".slot.failed .state").first).to_have_text("cancelled")

    page.get_by_role("button", name="Refresh").click()
    gallery = page.locator("#gallery")
    expect(gallery.locator(".tile")).to_have_count(len(stored))
    expect(gallery.locator(".tile:not(:has(img))")).to_have_count(0)


def test_the_unreachable_banner_goes_once_the_gateway_answers(
    stack: RunningStack, browser_context: Any, page: Any
) -> None:
    from playwright.sync_api import expect

    _signed_in(stack, page)
    browser_context.set_offline(True)
    page.get_by_role("button", name="Refresh").click()
    banner = page.locator("#error")
    expect(banner).to_contain_text("Cannot reach the gateway")
    browser_context.set_offline(False)
    expect(banner).to_be_empty(timeout=15_000)


def test_docs_render_with_no_internet(stack: RunningStack, browser_context: Any, page: Any) -> None:
    from playwright.sync_api import expect

    outside: list[str] = []

    def loopback_only(route: Any) -> None:
        host = route.request.url.split("/")[2].split(":")[0]
        if host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    browser_context.route("**/*", loopback_only)
    page.goto(f"{stack.gateway}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("imagegen gateway")
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert not outside, f"/docs asked the internet for {outside}"

    page.goto(f"{stack.gateway}/redoc")
    expect(page.locator(".api-info h1")).to_contain_text("imagegen gateway")
    expect(page.locator("[data-section-id^='operation/']").first).to_be_attached()
    # ReDoc's sidebar credit always asks for its logo and hides it when that fails; nothing
    # else may leave the machine.
    credit = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    assert [url for url in outside if url != credit] == [], f"/redoc asked for {outside}"


FACE = Path(__file__).resolve().parents[1] / "unit" / "gateway" / "data" / "face.jpg"


def _photo_variants(folder: Path, count: int) -> list[str]:
    """`count` distinct photos of the test face (mirrored, brightened, cropped)."""
    from PIL import Image, ImageEnhance, ImageOps

    face = Image.open(FACE).convert("RGB")
    variants = [
        face,
        ImageOps.mirror(face),
        ImageEnhance.Brightness(face).enhance(1.15),
        ImageEnhance.Contrast(face).enhance(1.2),
        face.crop((4, 4, face.width - 4, face.height - 4)),
        ImageEnhance.Color(face).enhance(0.8),
    ][:count]
    paths = []
    for number, image in enumerate(variants):
        path = folder / f"photo-{number}.jpg"
        image.save(path, quality=92)
        paths.append(str(path))
    return paths


def test_pack_options_prompt_only_and_reference_photos(
    stack: RunningStack, page: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    token = _signed_in(stack, page, "Noor")
    photos = _photo_variants(tmp_path, 5)

    # A reference photo for the character: the page says how many it now has.
    upload = page.locator("#photos-form")
    upload.get_by_label("Photos of the person").set_input_files(photos[0])
    upload.get_by_role("button", name="Upload photos").click()
    expect(page.locator("#photos-info")).to_have_text("Noor has 1 reference photo.")
    expect(page.locator("#character-info")).to_contain_text("1 reference photo")

    # A photo pack needs 5: the API's refusal is shown.
    pack = page.locator("#pack-form")
    pack.get_by_label("Images (1 to 23)").fill("2")
    pack.get_by_label("Photo pack").select_option("professional")
    pack.get_by_role("button", name="Generate pack").click()
    expect(page.locator("#error")).to_contain_text("a photo pack needs 5-8 reference photos")
    # A model no provider offers: refused naming the field, which the page marks.
    pack.get_by_label("Model (optional)").fill("no-such-model")
    pack.get_by_role("button", name="Generate pack").click()
    expect(page.locator("#error")).to_contain_text("model")
    expect(pack.get_by_label("Model (optional)")).to_have_attribute("aria-invalid", "true")
    pack.get_by_label("Model (optional)").fill("")

    upload.get_by_label("Photos of the person").set_input_files(photos[1:])
    upload.get_by_role("button", name="Upload photos").click()
    expect(page.locator("#photos-info")).to_have_text("Noor has 5 reference photos.")

    # A photo pack with its own style, size and quality.
    pack.get_by_label("Pack style").select_option("anime")
    pack.get_by_label("Size").select_option("512x512")
    pack.get_by_label("Quality").select_option("draft")
    pack.get_by_role("button", name="Generate pack").click()
    expect(page.locator("#error")).to_be_empty()
    job = page.locator("#jobs article.job").first
    expect(job).to_have_attribute("aria-label", "Photo pack (professional) of 2: Noor")
    expect(job.locator(".job-status")).to_have_text("completed (2 of 2 images)", timeout=TIMEOUT_MS)
    expect(job.locator(".slot img")).to_have_count(2)
    job_id = job.get_attribute("data-job-id")
    with stack.client(token) as client:
        images = client.get(f"/api/v1/jobs/{job_id}").json()["images"]
    assert {(i["style"], i["width"], i["height"]) for i in images} == {("anime", 512, 512)}
    scored = [i for i in images if i["consistencyScore"] is not None]
    expect(job.locator(".likeness")).to_have_count(len(scored))
    expect(page.locator("#gallery .tile .likeness")).to_have_count(len(scored))

    # A prompt alone, no character.
    prompt = page.locator("#prompt-form")
    prompt.get_by_label("Prompt", exact=True).fill("A phoenix rising over a harbour")
    prompt.get_by_label("Prompt style").select_option("watercolor")
    prompt.get_by_label("Width").fill("512")
    prompt.get_by_label("Height").fill("512")
    prompt.get_by_role("button", name="Generate image").click()
    made = page.locator("#jobs article.job").first
    expect(made).to_have_attribute("aria-label", "Prompt: A phoenix rising over a harbour")
    expect(made.locator(".job-status")).to_have_text(
        "completed (1 of 1 images)", timeout=TIMEOUT_MS
    )
    expect(made.locator(".slot img")).to_have_count(1)


def test_story_editor_generates_every_page(stack: RunningStack, page: Any) -> None:
    from playwright.sync_api import expect

    token = _signed_in(stack, page, "Tom")
    story = page.locator("#story-form")
    story.get_by_label("Title").fill("Tom and the Kite")
    expect(story.locator("#story-cast option:checked")).to_have_text("Tom")
    story.get_by_label("Page 1 text").fill("Tom found a kite in the shed.")
    story.get_by_role("button", name="Add page").click()
    story.get_by_label("Page 2 text").fill("The wind took it over the hill.")
    story.get_by_label("Page 2 scene (optional)").fill("a kite above a green hill")
    story.get_by_role("button", name="Add page").click()
    story.get_by_role("button", name="Remove page 3").click()
    story.get_by_role("button", name="Generate all").click()
    job = page.locator("#jobs article.job").first
    expect(job).to_have_attribute("aria-label", "Story: Tom and the Kite")
    expect(job.locator(".slot")).to_have_count(2)
    expect(job.locator(".job-status")).to_have_text("completed (2 of 2 images)", timeout=TIMEOUT_MS)
    expect(job.locator(".slot img")).to_have_count(2)
    assert job.locator("progress").first.evaluate("bar => bar.value") == 1

    # Saved: after a reload it can be picked, edited and saved again.
    page.reload()
    story.get_by_label("Your stories").select_option(label="Tom and the Kite")
    expect(story.get_by_label("Title")).to_have_value("Tom and the Kite")
    expect(story.get_by_label("Page 2 scene (optional)")).to_have_value("a kite above a green hill")
    story.get_by_label("Page 1 text").fill("Tom found a red kite in the shed.")
    story.get_by_role("button", name="Save story").click()
    expect(page.locator("#story-info")).to_have_text('Saved "Tom and the Kite" (2 pages).')
    with stack.client(token) as client:
        (saved,) = client.get("/api/v1/stories").json()["items"]
    assert [p["text"] for p in saved["pages"]] == [
        "Tom found a red kite in the shed.",
        "The wind took it over the hill.",
    ]


def test_portrait_shows_the_reference_set_it_built(stack: RunningStack, page: Any) -> None:
    from playwright.sync_api import expect

    _signed_in(stack, page, "Lea")
    portrait = page.locator("#portrait-form")
    portrait.get_by_label("Portrait style").select_option("watercolor")
    portrait.get_by_label("Portrait quality").select_option("draft")
    portrait.get_by_role("button", name="Generate portrait").click()
    job = page.locator("#jobs article.job").first
    expect(job).to_have_attribute("aria-label", "Portrait: Lea")
    # The first portrait of a look builds the reference set too: 5 references, then it.
    expect(job.locator(".job-status")).to_have_text("completed (6 of 6 images)", timeout=TIMEOUT_MS)
    expect(job.locator(".slot")).to_have_count(6)
    expect(job.locator(".slot img")).to_have_count(6)
    expect(page.locator("#character-info")).to_contain_text("reference set ready (5 images)")
