"""Run a benchmark's child process and read what it used (shared by the benches).

A child's peak RSS and CPU come from ``os.wait4`` (``ru_maxrss``, ``ru_utime + ru_stime``: the
child alone, all its threads), which ``subprocess`` does not give: the child is started with
``Popen``, one of its streams read to the end, then reaped with ``wait4``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Literal


def run_measured(
    cmd: list[str], *, what: str, capture: Literal["stdout", "stderr"] = "stdout"
) -> tuple[str, Any]:
    """``cmd``'s ``capture`` stream (the other is inherited) and its ``os.wait4`` resource
    usage; a child that fails raises ``RuntimeError`` naming ``what`` (with the end of its
    stderr when that is the stream read)."""
    proc = subprocess.Popen(cmd, text=True, **{capture: subprocess.PIPE})  # type: ignore[call-overload]
    stream = proc.stdout if capture == "stdout" else proc.stderr
    assert stream is not None
    text = stream.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = f": {text.strip()[-500:]}" if capture == "stderr" else ""
        msg = f"{what} failed with exit code {code}{tail}"
        raise RuntimeError(msg)
    return text, usage
