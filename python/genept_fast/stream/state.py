"""The resumable part of a streaming job: ``<output>.partial/`` and its manifest.

The work directory holds the data written so far (see :mod:`genept_fast.stream.sinks`), a
``manifest.json`` listing the chunks whose results are completely written, and a ``.lock`` file
(``flock``: a second process on the same output fails fast; the lock dies with its process, so
``kill -9`` leaves nothing to clean up). A chunk enters the manifest only after its data is
written, and the manifest is replaced atomically (temp file + ``os.replace``), so after a crash
every listed chunk is complete; unlisted chunks are simply computed again.

The manifest also records a fingerprint of the input (path, size, mtime, shape) and of the
parameters (encoder, preprocessing, chunk size, output format and dtype). When either differs
on resume, the old state is discarded with a warning and the job starts over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import TYPE_CHECKING, Any

from genept_fast._atomic import atomic_write_bytes
from genept_fast._outputs import remove_path
from genept_fast.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["MANIFEST_VERSION", "PartialState", "atomic_write_bytes", "check_work_dir"]

log = logging.getLogger("genept_fast.stream")

MANIFEST_VERSION = 1


def check_work_dir(path: Path) -> None:
    """Refuse ``path`` as a work directory unless it is missing, empty, or holds our files.

    Whatever else is there (a user's folder that happens to be called ``<output>.partial``) is
    never cleared.
    """
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        names = {p.name for p in path.iterdir()}
        if not names or "manifest.json" in names or ".lock" in names:
            return
    msg = (
        f"{path} exists and is not genept-fast work state (no manifest.json); it is never"
        " removed: move it away or choose another output"
    )
    raise InputError(msg)


class PartialState:
    """The ``<output>.partial/`` work directory of one job, held under an exclusive lock.

    Parameters
    ----------
    workdir
        The directory (created if missing).
    header
        What identifies the job: input fingerprint, parameters, shape. A stored manifest whose
        header differs is discarded.
    resume
        ``False`` discards any stored state unconditionally.
    """

    def __init__(self, workdir: Path, header: dict[str, Any], *, resume: bool = True) -> None:
        self.dir = workdir
        self.header = json.loads(json.dumps(header))  # normalise tuples etc. for comparison
        check_work_dir(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock()
        self.done: set[int] = set()
        self.discarded: str | None = None
        try:
            self._load(resume)
        except BaseException:
            self.release()
            raise

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def _lock(self) -> int | None:
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locking
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            msg = f"{self.dir} is in use by another running job (lock held); wait for it to finish"
            raise InputError(msg) from e
        return fd

    def release(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _clear(self) -> None:
        for p in self.dir.iterdir():
            if p.name != ".lock":
                remove_path(p)

    def _load(self, resume: bool) -> None:
        path = self.manifest_path
        if not path.exists():
            self._clear()
            self._save()
            return
        reason = None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            stored, reason = None, f"its manifest is unreadable ({e})"
        if stored is not None:
            if not resume:
                reason = "resume=False"
            elif stored.get("header") != self.header:
                reason = _diff(stored.get("header"), self.header)
        if reason is None and stored is not None:
            n_chunks = int(self.header["n_chunks"])
            self.done = {int(i) for i in stored.get("done", []) if 0 <= int(i) < n_chunks}
            return
        self.discarded = reason
        log.warning("discarding partial state in %s: %s; starting over", self.dir, reason)
        self._clear()
        self.done = set()
        self._save()

    def _save(self) -> None:
        body = {"version": MANIFEST_VERSION, "header": self.header, "done": sorted(self.done)}
        atomic_write_bytes(self.manifest_path, json.dumps(body).encode())

    def mark_done(self, chunk: int) -> None:
        """Record that ``chunk``'s results are completely written."""
        self.done.add(int(chunk))
        self._save()

    def reset(self, reason: str) -> None:
        """Forget every chunk (the work data is missing or unusable)."""
        log.warning("discarding partial state in %s: %s; starting over", self.dir, reason)
        self.discarded = reason
        self._clear()
        self.done = set()
        self._save()

    def remove(self) -> None:
        """Delete the work directory (after the final output is installed) and unlock."""
        self.release()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.dir)


def _diff(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "its manifest has no header"
    for part in ("input", "params"):
        o, n = old.get(part) or {}, new.get(part) or {}
        changed = sorted(k for k in set(o) | set(n) if o.get(k) != n.get(k))
        if changed:
            what = "the input changed" if part == "input" else "the parameters changed"
            details = ", ".join(f"{k}: {o.get(k)!r} -> {n.get(k)!r}" for k in changed[:4])
            return f"{what} ({details})"
    return "the job differs from the one that wrote it"
