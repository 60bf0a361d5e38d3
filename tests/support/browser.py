"""Debian's chromium driven by playwright, for the tests that render a page in a real browser."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest

__all__ = ["CHROMIUM", "playwright"]

CHROMIUM = Path("/usr/bin/chromium")


def playwright(needed_by: str) -> ModuleType:
    """`playwright.sync_api`, where chromium and playwright are installed; otherwise skip, or fail under CI=true
    (CI must run `needed_by`)."""
    reason = None
    if not CHROMIUM.exists():
        reason = f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        sync_api = importlib.import_module("playwright.sync_api")
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[test]')"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs {needed_by}: {reason}")
        pytest.skip(reason)
    return sync_api
