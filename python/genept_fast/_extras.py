"""The optional parts of genept-fast and the one error that names the extra to install.

genept-fast is not on PyPI: it is installed from a clone (``pip install .``) or from a wheel
built with ``make wheel``. That is the core: GenePT-w/-s, the local and OpenAI embedders, gene
text and identifiers, file I/O and streaming. The rest comes with an extra, added to an
environment where genept-fast is installed (pip reads the extra from the installed package)::

    pip install 'genept-fast[eval]'   # evaluation, plots, the demo (scanpy, scikit-learn, ...)
    pip install 'genept-fast[dask]'   # genept_fast.dask
    pip install 'genept-fast[annotate]'  # cell-type annotation (faiss-cpu, scikit-learn)
    pip install 'genept-fast[soma]'   # TileDB-SOMA / CELLxGENE Census experiments as a source

or at install time, from a clone: ``pip install '.[eval]'``.

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
    "soma": ("tiledbsoma", "somacore"),
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
    msg = (
        f"{what} needs {names} (the {extra!r} extra): pip install 'genept-fast[{extra}]' adds it"
        f" to this environment's genept-fast (in a clone: pip install '.[{extra}]')"
    )
    return MissingDependencyError(msg)


def require_extra(extra: str, what: str) -> None:
    """Raise :func:`missing_extra` unless every module of ``extra`` is installed (none is
    imported here)."""
    missing = tuple(m for m in EXTRAS[extra] if not _installed(m))
    if missing:
        raise missing_extra(extra, what, missing)
