"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright.

Each browser test module calls :func:`playwright_or_skip` at import (the module is skipped
where Chromium or Playwright is missing) and uses :func:`launch` for its module-scoped
browser fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: As the machine's probe starts it: no sandbox (root), no GPU, and none of Chromium's own
#: network traffic (this machine's closed network refuses it, many connections at a time).
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def playwright_or_skip() -> Any:
    """Playwright's sync API; skips the calling test module where Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium) "
                    "to run the browser tests", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")


@contextmanager
def launch(sync_api: Any) -> Iterator[Any]:
    """A headless Chromium browser, closed at the end."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()
