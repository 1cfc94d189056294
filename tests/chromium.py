"""Headless Chromium for the browser tests: the distribution's binary, or a skip that says how to get it.

Chromium comes from the distribution (``scripts/install_chromium.sh``, run by ``make test``) and
Playwright drives it through ``executable_path``: no browser download. Without it a test module
skips, saying so, except under CI (``$CI`` set), where that fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_chromium():
    """Playwright's sync API, once ``CHROMIUM`` is known to exist; call at module level."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is absent: run scripts/install_chromium.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)
    return pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'")
