"""Atomic file output: a result appears under its name whole, or not at all.

Everything genept-fast writes goes to a temporary file in the destination's folder, is flushed
to disk, and is then renamed over the destination (``os.replace``, atomic on POSIX). A crash
leaves at most a hidden ``.<name>.*.tmp`` file behind, never a truncated result.

The temporary file is created with mode ``0o666`` filtered by the process's umask, as ``open()``
and every ordinary tool do (not ``0o600`` as :func:`tempfile.mkstemp` would), so a result is as
readable by collaborators as any other file the user makes.

Whether an existing destination may be replaced is decided before any work starts, by
:func:`genept_fast._outputs.check_output`; this module only does the writing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "new_temp_file"]


def new_temp_file(dest: Path) -> Path:
    """Create an empty, uniquely named ``.<name>.<random>.tmp`` beside ``dest``.

    The file is created with ``O_EXCL`` and mode ``0o666``, which the kernel filters through the
    umask: the finished file gets the permissions any other new file would get.
    """
    for _ in range(100):
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    msg = f"cannot create a temporary file beside {dest}"  # pragma: no cover - 100 collisions
    raise FileExistsError(msg)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is synced and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_temp_file(dest)
    try:
        yield tmp
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
