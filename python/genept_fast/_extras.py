"""The optional parts of genept-fast and the one error that names the extra to install.

``pip install genept-fast`` is the core: GenePT-w/-s, the local and OpenAI embedders, gene text
and identifiers, file I/O and streaming. The rest comes with an extra::

    pip install 'genept-fast[eval]'   # evaluation, plots, the demo (scanpy, scikit-learn, ...)
    pip install 'genept-fast[dask]'   # genept_fast.dask
    pip install 'genept-fast[annotate]'  # cell-type annotation (faiss-cpu, scikit-learn)

What needs an extra calls :func:`require_extra` before it starts (or turns the import's
failure into :func:`missing_extra`), so a missing one is a
:class:`~genept_fast.errors.MissingDependencyError` that says what to install, not a bare
``ModuleNotFoundError`` from deep inside.
"""

from __future__ import annotations

import importlib.util

from genept_fast.errors import MissingDependencyError

__all__ = ["EXTRAS", "missing_extra", "require_extra"]

#: The modules each extra provides (import names), as declared in pyproject.toml.
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("scanpy", "sklearn", "matplotlib", "igraph", "pynndescent"),
    "dask": ("dask", "distributed"),
    "annotate": ("faiss", "threadpoolctl", "sklearn"),
}
_DISTRIBUTION = {"sklearn": "scikit-learn", "faiss": "faiss-cpu"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent that fails to import, a broken __spec__
        return False


def missing_extra(extra: str, what: str, modules: tuple[str, ...] = ()) -> MissingDependencyError:
    """The error for ``what`` (``"genept-fast evaluate"``) lacking ``modules`` of ``extra``."""
    names = ", ".join(_DISTRIBUTION.get(m, m) for m in modules or EXTRAS[extra])
    msg = f"{what} needs {names} (the {extra!r} extra): pip install 'genept-fast[{extra}]'"
    return MissingDependencyError(msg)


def require_extra(extra: str, what: str) -> None:
    """Raise :func:`missing_extra` unless every module of ``extra`` is installed (none is
    imported here)."""
    missing = tuple(m for m in EXTRAS[extra] if not _installed(m))
    if missing:
        raise missing_extra(extra, what, missing)
