"""One rule for everything genept-fast writes: nothing the user did not ask to replace is lost.

Every command and every API writer (``GeneEmbeddings.write``, ``write_texts``, the evaluation
reports, the streaming encoder) calls :func:`check_output` before it starts work, then writes
files through :func:`genept_fast._atomic.atomic_path` and moves finished directory stores into
place with :func:`install`. The rule:

1. **An existing output is refused**, with a message naming it, unless the caller passes
   ``overwrite=True`` (``--overwrite`` on the command line; :func:`add_overwrite_argument`).
2. **A directory is only ever removed when genept-fast wrote it**: a zarr store whose attributes
   carry :data:`STORE_MARKER` (see :func:`is_own_store`, :func:`store_attrs`). A file output
   never replaces a directory, and a report folder is never removed (only the files the report
   writes are replaced). :func:`install` checks this again when a long job finishes, in case a
   directory appeared at the output while it ran.
3. **An input is never an output**: an output equal to an input of the same call, or inside an
   input directory (a ``.zarr`` store), is refused whatever ``overwrite`` says; so is a store
   output that contains an input (replacing it would delete the input). Paths are compared
   after resolving symbolic links, and hard links to the same file count as equal.
4. **Files honour the umask** (``0o666 & ~umask``, as any tool's; see :mod:`genept_fast._atomic`).

Partial state of an interrupted job (``<output>.partial/`` of :mod:`genept_fast.stream`) is
removed when the job fails on its input (it could never be resumed) and kept, with its size
said, when the job can be resumed.

API
---
``check_output(path, *, kind="file", overwrite=False, inputs=(), names=()) -> Path``
    ``kind="file"``: one file, replaced atomically. ``kind="store"``: a directory store written
    whole (``.zarr``). ``kind="folder"``: a folder receiving the files ``names`` (reports).
    Raises :class:`~genept_fast.errors.InputError`; returns ``Path(path)``.
``is_own_store(path) -> bool``, ``store_attrs() -> dict``, ``STORE_MARKER``
    Recognise / mark a store genept-fast wrote.
``install(src, dst) -> None``
    Move a finished file or directory ``src`` over ``dst`` under rule 2.
``add_overwrite_argument(parser)``
    The ``--overwrite`` flag of a subcommand.
``remove_path(path)``
    Remove a file or directory tree that genept-fast owns (work state, a store it replaces).
``disk_usage(path) -> int`` and ``format_bytes(n) -> str``
    For messages about what is kept on disk.

A new command follows the rule with three calls: ``add_overwrite_argument(parser)`` when it
registers, ``check_output(args.output, overwrite=args.overwrite, inputs=[...every input
path...])`` before any work, and a writer that goes through ``atomic_path`` (or an API writer
that takes ``overwrite=``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genept_fast._version import __version__
from genept_fast.errors import InputError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterable

__all__ = [
    "OVERWRITE_HINT",
    "STORE_MARKER",
    "add_overwrite_argument",
    "check_key",
    "check_output",
    "disk_usage",
    "format_bytes",
    "install",
    "is_own_store",
    "remove_path",
    "store_attrs",
]

#: Attribute key that marks a directory store as written by genept-fast.
STORE_MARKER = "genept_fast.store"

#: How to ask for an existing output to be replaced.
OVERWRITE_HINT = "use --overwrite (overwrite=True in Python) to replace it"

OutputKind = Literal["file", "store", "folder"]


def check_key(key: str) -> str:
    """``key`` if it is a plain name for an array or ``obsm`` entry (no path, no dot segments)."""
    if not isinstance(key, str) or not key.strip():
        msg = f"key must be a non-empty name, got {key!r}"
        raise InputError(msg)
    if "/" in key or "\\" in key or key.startswith(".") or any(ord(c) < 32 for c in key):
        msg = (
            f"key {key!r} is not a plain name (no '/', '\\', leading '.' or control characters):"
            " it names an array inside the output, never a path"
        )
        raise InputError(msg)
    return key


def store_attrs() -> dict[str, Any]:
    """The attributes that mark a store as genept-fast's (merge them into the store's attrs)."""
    return {STORE_MARKER: {"writer": f"genept-fast {__version__}", "version": 1}}


def _zarr_attrs(path: Path) -> dict[str, Any] | None:
    if not any((path / name).is_file() for name in ("zarr.json", ".zgroup")):
        return None
    try:
        import zarr

        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return None


def is_own_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory store that genept-fast wrote (and so may replace).

    Recognised: a zarr group whose attributes hold :data:`STORE_MARKER`, and, for stores written
    before the marker existed, a zarr group whose attributes hold the streaming encoder's
    provenance (``{key: {"params": {"encoder": ..., "n_cells": ...}}}``).
    """
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        return False
    attrs = _zarr_attrs(p)
    if attrs is None:
        return False
    if STORE_MARKER in attrs:
        return True
    for value in attrs.values():
        params = value.get("params") if isinstance(value, dict) else None
        if isinstance(params, dict) and "encoder" in params and "n_cells" in params:
            return True
    return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _check_apart(output: Path, inputs: Iterable[Any], *, replaces_dir: bool) -> None:
    out_real = Path(os.path.realpath(output))
    for inp in inputs:
        if inp is None:
            continue
        inp = Path(inp)
        in_real = Path(os.path.realpath(inp))
        if out_real == in_real or _same_file(output, inp):
            msg = f"the output {output} is the input {inp}; choose another output"
            raise InputError(msg)
        if in_real in out_real.parents:
            msg = f"the output {output} is inside the input {inp}; choose another output"
            raise InputError(msg)
        if replaces_dir and out_real in in_real.parents:
            msg = (
                f"the input {inp} is inside the output {output}, which would replace it; "
                "choose another output"
            )
            raise InputError(msg)


def _is_real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def check_output(
    path: str | os.PathLike[str],
    *,
    kind: OutputKind = "file",
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    names: Iterable[str] = (),
) -> Path:
    """Refuse an output that would lose something (see the module docstring); call before work.

    Parameters
    ----------
    path
        The output: a file, a directory store, or a folder of files.
    kind
        ``"file"``, ``"store"`` (a directory written whole, such as ``.zarr``) or ``"folder"``
        (a folder receiving the files ``names``; the folder itself is never removed).
    overwrite
        Replace an existing output (a directory only if genept-fast wrote it).
    inputs
        The input paths of the same call (``None`` entries are skipped).
    names
        For ``kind="folder"``: the files that will be written into it.

    Returns
    -------
    pathlib.Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    InputError
        The output exists (and ``overwrite`` is false), is a directory that may not be
        replaced, or is, contains or lies inside an input.
    """
    out = Path(path)
    inputs = list(inputs)
    if kind == "folder":
        if _exists(out) and not out.is_dir():
            msg = f"the output folder {out} exists and is not a folder"
            raise InputError(msg)
        for name in names:
            target = out / name
            _check_apart(target, inputs, replaces_dir=False)
            if target.is_dir():
                msg = f"{target} is a directory; a report file never replaces a directory"
                raise InputError(msg)
            if _exists(target) and not overwrite:
                msg = f"{target} already exists; {OVERWRITE_HINT}"
                raise InputError(msg)
        return out
    if kind not in ("file", "store"):
        msg = f"kind must be 'file', 'store' or 'folder', got {kind!r}"
        raise InputError(msg)
    _check_apart(out, inputs, replaces_dir=kind == "store")
    if not _exists(out):
        return out
    if _is_real_dir(out):
        if kind == "file":
            msg = f"{out} is a directory; an output file never replaces a directory"
            raise InputError(msg)
        if not overwrite:
            msg = f"{out} already exists; {OVERWRITE_HINT}"
            raise InputError(msg)
        if not is_own_store(out):
            msg = (
                f"{out} is a directory that genept-fast did not write; it is never removed:"
                " choose another output or move it away yourself"
            )
            raise InputError(msg)
        return out
    if not overwrite:
        msg = f"{out} already exists; {OVERWRITE_HINT}"
        raise InputError(msg)
    return out


def remove_path(path: Path) -> None:
    """Remove a file, a link or a directory tree (for work state genept-fast owns)."""
    if _is_real_dir(path):
        shutil.rmtree(path)
    elif _exists(path):
        path.unlink()


def install(src: Path, dst: Path) -> None:
    """Move the finished ``src`` (file or directory) to ``dst``, replacing what is there.

    ``dst`` never holds a partial result: a file replaces a file with one ``os.replace``;
    otherwise what is at ``dst`` is renamed aside, ``src`` renamed into place, and the old one
    removed. A directory at ``dst`` is only replaced when :func:`is_own_store` recognises it.
    """
    if _is_real_dir(dst) and not is_own_store(dst):
        msg = (
            f"{dst} is a directory that genept-fast did not write (it appeared while the job"
            f" ran?); it is never removed: the finished result stays in {src}"
        )
        raise InputError(msg)
    if _is_real_dir(dst) or (src.is_dir() and _exists(dst)):
        aside = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        remove_path(aside)
        dst.replace(aside)
        src.replace(dst)
        remove_path(aside)
        return
    src.replace(dst)


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--overwrite`` to a subcommand's parser."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output (a directory only if genept-fast wrote it)",
    )


def disk_usage(path: str | os.PathLike[str]) -> int:
    """Bytes of disk that ``path`` (a file or a directory tree) occupies."""
    p = Path(path)
    total = 0
    if not _is_real_dir(p):
        with contextlib.suppress(OSError):
            st = p.stat()
            total = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
        return total
    for root, _dirs, files in os.walk(p):
        for f in files:
            with contextlib.suppress(OSError):
                st = Path(root, f).lstat()
                total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def format_bytes(n: float) -> str:
    """``n`` bytes as ``"645 MB"``, ``"1.2 GB"``, ``"120 GB"`` (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{int(n)} B"
