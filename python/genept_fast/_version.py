"""Versions, for provenance: genept-fast's own (from the compiled core, so a stale build shows)
and those of the packages a result depends on."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from genept_fast._core import __version__ as __version__

__all__ = ["__version__", "versions"]


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (``"not installed"`` where absent)."""
    out: dict[str, str] = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
