"""The web page in real headless Chromium against the real stack (demo backend).

Uses the system's Chromium (Debian's `chromium`; `./dev setup` installs it when it can)
driven by playwright; playwright never downloads a browser here. The stack is the plain
demo stack shared with other modules (tests/e2e/conftest.py): the first test is the only
user of the token `imagegen up` prints, the second signs in as a user of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.browser_support import TIMEOUT_MS, chromium_context
from tests.e2e.stack import RunningStack

pytestmark = pytest.mark.e2e

PACK = 6


@pytest.fixture(scope="module")
def stack(demo_stack: RunningStack) -> RunningStack:
    """The plain demo stack this module shares with others (tests/e2e/conftest.py)."""
    return demo_stack


@pytest.fixture
def page(stack: RunningStack, tmp_path: Path) -> Iterator[Any]:
    with chromium_context(tmp_path) as context:
        page = context.new_page()
        failures: list[str] = []
        page.on("pageerror", lambda error: failures.append(str(error)))
        page.on(
            "console",
            lambda message: failures.append(message.text) if message.type == "error" else None,
        )
        yield page
        assert not [f for f in failures if "Failed to load resource" not in f], failures


_WATCH_SLOTS = """() => {
  window.__seen = new Set();
  const record = () => document.querySelectorAll('#jobs .slot .state')
    .forEach((el) => window.__seen.add(el.textContent.replace(/ · v\\d+$/, '')));
  new MutationObserver(record).observe(document.body,
    { subtree: true, childList: true, characterData: true });
}"""


def test_page_generates_a_pack_live_then_reviews_and_regenerates(
    stack: RunningStack, page: Any
) -> None:
    from playwright.sync_api import expect

    # The link `imagegen up` prints signs in, and the token leaves the address bar.
    page.goto(f"{stack.gateway}/?token={stack.token}")
    expect(page.get_by_text("Signed in as demo-user (paid tier)")).to_be_visible()
    assert "token=" not in page.url

    # A character with every appearance field.
    if not page.locator("#new-character").evaluate("el => el.open"):
        page.get_by_text("New character").click()
    form = page.locator("#character-form")
    form.get_by_label("Name", exact=True).fill("Ada")
    form.get_by_label("Base description").fill("A retired lighthouse keeper")
    fields = {
        "Age range": "60-70",
        "Gender": "woman",
        "Ethnicity": "Scottish",
        "Hair colour": "grey",
        "Hair style": "bun",
        "Eye colour": "blue",
        "Body type": "wiry",
        "Outfit": "oilskin coat",
        "Distinctive features (comma-separated)": "weathered hands, a scar on the chin",
        "Personality traits (comma-separated)": "stubborn, kind",
        "Style modifiers (comma-separated)": "soft light",
    }
    for label, value in fields.items():
        form.get_by_label(label).fill(value)
    form.get_by_label("Preferred art style").select_option("realistic")
    form.get_by_role("button", name="Create character").click()
    expect(page.get_by_role("status").filter(has_text="Created Ada")).to_be_visible()
    expect(page.locator("#character option:checked")).to_have_text("Ada")

    # The API's refusal is shown in words, and the field it names is marked.
    pack = page.locator("#pack-form")
    pack.get_by_label("Images (1 to 23)").fill("30")
    pack.get_by_role("button", name="Generate pack").click()
    expect(page.locator("#error")).to_contain_text("image_count")
    expect(pack.get_by_label("Images (1 to 23)")).to_have_attribute("aria-invalid", "true")

    # A pack: per-image progress live, then every thumbnail.
    page.evaluate(_WATCH_SLOTS)
    pack.get_by_label("Images (1 to 23)").fill(str(PACK))
    pack.get_by_role("button", name="Generate pack").click()
    job = page.locator("#jobs article.job").first
    expect(job.locator(".slot")).to_have_count(PACK)
    expect(job.locator(".job-status")).to_have_text(
        f"completed ({PACK} of {PACK} images)", timeout=TIMEOUT_MS
    )
    expect(job.locator(".slot img")).to_have_count(PACK)
    for image in job.locator(".slot img").all():
        expect(image).to_have_js_property("complete", True)
        assert image.evaluate("img => img.naturalWidth") > 0, "thumbnail loaded"
    assert job.locator("progress").first.evaluate("bar => bar.value") == 1
    seen = set(page.evaluate("() => [...window.__seen]"))
    assert {"generating", "done"} <= seen, f"progress shown as it happened: {seen}"
    expect(page.locator("#gallery .tile")).to_have_count(PACK)

    # Approve one image; the store confirms the review.
    job.get_by_role("button", name="Open image 1").click()
    dialog = page.locator("#image-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Approve").click()
    expect(dialog.locator("dd[data-review]")).to_have_text("approved")
    dialog.get_by_role("button", name="Close").click()
    expect(page.locator("#gallery .badge.approved")).to_have_count(1)

    # Regenerate another with a modification: a second version appears next to the first.
    job.get_by_role("button", name="Open image 2").click()
    expect(dialog).to_be_visible()
    dialog.get_by_label("Prompt addition").fill("smiling, wearing a red scarf")
    dialog.get_by_role("button", name="Regenerate").click()
    expect(dialog.locator("#regen-status")).to_have_text("Version 2 is ready.", timeout=TIMEOUT_MS)
    expect(dialog.locator("#versions button")).to_have_count(2)
    expect(dialog.locator('#versions button[data-version="2"]')).to_have_attribute(
        "aria-pressed", "true"
    )
    expect(dialog.locator("#image-title")).to_contain_text("version 2 of 2")
    big = dialog.locator("#detail-image")
    expect(big).to_have_js_property("complete", True)
    assert big.evaluate("img => img.naturalWidth") > 0
    # The first version is kept and can still be viewed.
    dialog.locator('#versions button[data-version="1"]').click()
    expect(dialog.locator("#image-title")).to_contain_text("version 1 of 2")


def test_page_signs_in_by_hand_and_generates_a_scene(stack: RunningStack, page: Any) -> None:
    from playwright.sync_api import expect

    user = "scene-painter"
    token = stack.token_for(user, "paid")
    with stack.client(token) as client:
        created = client.post("/api/v1/characters", json={"name": "Fox", "artStyle": "watercolor"})
        assert created.status_code == 201, created.text

    page.goto(stack.gateway + "/")
    signin = page.locator("#signin-form")
    # A bad token is refused with the gateway's reason, and the page stays signed out.
    signin.get_by_label("Access token").fill("not-a-token")
    signin.get_by_role("button", name="Sign in").click()
    expect(page.locator("#error")).to_contain_text("Not signed in")
    expect(page.locator("#app")).to_be_hidden()

    signin.get_by_label("Access token").fill(token)
    signin.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(f"Signed in as {user} (paid tier)")).to_be_visible()
    expect(page.locator("#error")).to_be_empty()
    expect(page.locator("#character option:checked")).to_have_text("Fox")

    scene = page.locator("#scene-form")
    scene.get_by_label("Scene description").fill("crossing a moonlit bridge")
    scene.get_by_label("Page text (optional)").fill("The fox knew the way.")
    scene.get_by_label("Style").select_option("watercolor")
    scene.get_by_label("Aspect ratio").select_option("4:3")
    scene.get_by_role("button", name="Generate scene").click()
    job = page.locator("#jobs article.job").first
    expect(job).to_have_attribute("aria-label", "Scene: Fox: crossing a moonlit bridge")
    expect(job.locator(".job-status")).to_have_text("completed (1 of 1 images)", timeout=TIMEOUT_MS)
    expect(job.locator(".slot img")).to_have_count(1)
    expect(page.locator("#gallery .tile")).to_have_count(1)
    expect(page.locator("#gallery .tile")).to_contain_text("scene")
