"""Headless Chromium (Debian's package) driven by Playwright, for the console's browser tests.

Playwright's own browser download does not work here: it drives /usr/bin/chromium.
Without it the tests are skipped, with the reason, except in CI (CI=true), where they
fail: `.ci/run` installs chromium and chromium-driver when they are missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("RELAY_TEST_CHROMIUM", "/usr/bin/chromium"))
# As root, on a machine with no network: no sandbox, no GPU, nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def require_chromium() -> None:
    """Skip (or, in CI, fail) when Chromium or Playwright is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium chromium-driver)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[test]')")
    if not missing:
        return
    reason = "browser tests need " + " and ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(reason + "; in CI they must run (.ci/run installs chromium)")
    pytest.skip(reason)


class Shots:
    """Screenshots of each page a test saw, written under its tmp folder if it fails."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[tuple[str, bytes]] = []

    async def take(self, page: Any, name: str) -> None:
        self.taken.append((name, await page.screenshot(full_page=True)))

    def write(self) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        out = []
        for i, (name, png) in enumerate(self.taken, 1):
            path = self.folder / f"{i:02d}-{re.sub(r'[^a-z0-9-]+', '-', name.lower())}.png"
            path.write_bytes(png)
            out.append(path)
        return out


async def launch() -> AsyncIterator[Any]:
    """A fresh headless Chromium (a new empty profile each time)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
