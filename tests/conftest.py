"""Shared fixtures. Test modules keep their own helpers; this file only locates shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (real NCBI summaries and gene labels).

    Skips on a developer's machine without it; fails under CI (``CI=true``), where the tests that
    read it must run.
    """
    if not SHARED_DATA.is_dir():
        msg = f"shared data not found at {SHARED_DATA}"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{msg} (CI=true: tests that read it must run)")
        pytest.skip(msg)
    return SHARED_DATA
