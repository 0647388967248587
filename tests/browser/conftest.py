"""What the browser tests share: Debian's Chromium (Playwright's own browser download does
not work here), launched once per test module, and the mark that skips them without it,
except in CI, which installs it (.ci/run): there they fail instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true",
    reason=f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():  # only in CI, where needs_chromium does not skip
        pytest.fail(f"CI runs the browser tests: {CHROMIUM} is missing (.ci/run installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield launched
        finally:
            launched.close()
