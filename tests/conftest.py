"""Shared fixtures. Test modules keep their own helpers; this file locates shared data and
keeps the tests' caches out of the user's own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    """Tests that use the default cache folder get one of their own (subprocesses inherit it),
    never ``~/.cache/genept-fast``; tests of the folder rule set or clear the variable."""
    if not os.environ.get("GENEPT_FAST_CACHE_DIR"):
        folder = tempfile.mkdtemp(prefix="genept-fast-test-cache-")
        os.environ["GENEPT_FAST_CACHE_DIR"] = config.stash[_CACHE] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_CACHE, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


_CACHE = pytest.StashKey[str]()


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


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _missing_module(report: pytest.CollectReport | pytest.TestReport) -> bool:
    return report.skipped and "could not import" in str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    """Under CI a test module skipped because a package is missing fails instead: the test
    extra installs every package the tests use, so a skip there means it lost one."""
    outcome = yield
    report = outcome.get_result()
    if _under_ci() and _missing_module(report):
        report.outcome = "failed"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """The same for a test that skips itself on a missing package."""
    outcome = yield
    report = outcome.get_result()
    if _under_ci() and _missing_module(report):
        report.outcome = "failed"
    return None
