"""Debian's Chromium driven by playwright (playwright never downloads a browser here): one
place that finds it, launches it and keeps a screenshot of every page for the CI log."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

TIMEOUT_MS = 180_000  # a whole pack on a busy CI machine
EXPECT_MS = 60_000  # one step: a review confirmed, thumbnails fetched


def chromium_binary() -> str:
    for candidate in (os.environ.get("IMAGEGEN_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "Chromium is not installed and could not be installed (./dev setup installs"
            " Debian's chromium when run as root with apt); set IMAGEGEN_CHROMIUM to a binary"
        )
    return found


@contextmanager
def chromium_context(screenshots: Path) -> Iterator[Any]:
    """A fresh browser context; on the way out, what each of its pages looked like at the
    end (or at the failure) is saved as `page-<n>.png` under `screenshots`."""
    executable = chromium_binary()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # Chromium's sandbox refuses to run as root (CI containers); it isolates nothing
        # we need for a page on loopback.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        sync_api.expect.set_options(timeout=EXPECT_MS)
        try:
            context = browser.new_context()
            context.set_default_timeout(TIMEOUT_MS)
            try:
                yield context
            finally:
                for number, page in enumerate(context.pages):
                    page.screenshot(path=str(screenshots / f"page-{number}.png"), full_page=True)
        finally:
            browser.close()
