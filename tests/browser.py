"""What the browser tests share: Debian's headless Chromium (`apt-get install chromium`),
driven by Playwright's Python package and never `playwright install`, launched one way.

A test module imports what it needs from here; without the playwright package the module is
skipped, and `needs_chromium` (its `pytestmark`) skips it where Chromium is absent.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from conftest import ROOT

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
TIMEOUT_MS = 90_000  # 2 slow cores: a page load and a transcription take seconds
ARTIFACTS = ROOT / "tests" / ".artifacts"  # screenshots; UPDATE_SCREENSHOT=1 also copies them to docs/
DESKTOP = {"width": 1400, "height": 1000}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as playwright:
        yield playwright


def launch(playwright, profile: Path, args: Sequence[str] = (), viewport=DESKTOP, **options):
    """A Chromium with its own profile directory (its own localStorage): Playwright's
    persistent context is how it passes Chromium a fresh --user-data-dir."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        headless=True,
        args=[*CHROMIUM_ARGS, *args],
        viewport=viewport,
        **options,
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context
