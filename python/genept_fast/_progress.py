"""Progress of a long step: a tqdm bar on a terminal, one plain line about every 10 s elsewhere.

tqdm writes a new frame (``\\r``) up to ten times a second; in a log file that is one endless
line, so the commands used to switch their bars off whenever stderr was not a terminal
(``progress = ... and sys.stderr.isatty()``), and a 100-second GenePT-s step in a cluster job or
behind ``| tee`` printed nothing at all. :func:`progress` keeps the bar where it belongs (a
terminal, a Jupyter notebook) and elsewhere prints lines such as::

    embedding (all-MiniLM-L6-v2): 2,560/7,000 sentence (37%), 41.2 sentence/s, ~1m48s left

at most one per interval (``GENEPT_FAST_PROGRESS_INTERVAL`` seconds, 10 by default), checked
each time the work advances, and a final line with the time taken when the step closes. Call
sites keep their ``progress=False`` / ``--no-progress`` switch and pass it as ``disable``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from genept_fast.errors import InvalidArgumentError

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

__all__ = ["INTERVAL_ENV", "LogProgress", "Progress", "interval_seconds", "progress"]

#: The environment variable that sets the seconds between two log lines.
INTERVAL_ENV = "GENEPT_FAST_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


class Progress(Protocol):
    """What :func:`progress` returns: the part of tqdm's interface genept-fast uses."""

    n: float
    total: float | None

    def update(self, n: float = 1) -> Any: ...

    def refresh(self) -> Any: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> Any: ...

    def close(self) -> Any: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any: ...


def interval_seconds() -> float:
    """Seconds between two log lines: ``GENEPT_FAST_PROGRESS_INTERVAL``, else 10."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        msg = f"{INTERVAL_ENV}={raw!r}: expected a number of seconds >= 0 (default 10)"
        raise InvalidArgumentError(msg)
    return value


def progress(
    total: float | None = None,
    *,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    initial: float = 0,
    unit_scale: bool = False,
    leave: bool = True,
    file: IO[str] | None = None,
) -> Progress:
    """A progress meter for ``total`` units of work (None: unknown).

    On a terminal (``file``, default stderr, is a TTY) or in a Jupyter kernel: a tqdm bar. Else
    a :class:`LogProgress`, which prints a plain line at most every
    ``GENEPT_FAST_PROGRESS_INTERVAL`` seconds (10 by default) and a final one on :meth:`close`
    (``leave=False``: no final line, for an inner step whose outer step reports). ``disable``
    shows nothing at all but still counts. Use it as a context manager or call ``close()``.
    """
    stream = sys.stderr if file is None else file
    interval = interval_seconds()  # checked even when disabled: a bad value is always named
    if disable:
        return LogProgress(total, desc=desc, unit=unit, initial=initial, file=None)
    shown: dict[str, Any] = {"desc": desc, "unit": unit, "unit_scale": unit_scale, "leave": leave}
    notebook = _in_notebook()
    if notebook or _is_terminal(stream):
        from tqdm.auto import tqdm  # a widget in Jupyter (it draws there), else the text bar

        where = {} if notebook else {"file": stream}
        return tqdm(total=total, initial=initial, **shown, **where)
    return LogProgress(total, initial=initial, file=stream, interval=interval, **shown)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, OSError, ValueError):  # no isatty, or a closed file
        return False


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython already imported and running as IPKernelApp)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


class LogProgress:
    """Progress as plain lines for a log: at most one per ``interval`` seconds, then a final one.

    The same calls as a tqdm bar (``update``, ``n``, ``refresh``, ``set_postfix_str``,
    ``close``, a context manager), safe from several threads. ``file=None`` prints nothing.
    """

    def __init__(
        self,
        total: float | None = None,
        *,
        desc: str = "",
        unit: str = "it",
        initial: float = 0,
        unit_scale: bool = False,
        leave: bool = True,
        file: IO[str] | None = None,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.n = initial
        self.desc, self.unit, self.unit_scale, self.leave = desc, unit, unit_scale, leave
        self.file, self.interval, self.clock = file, interval, clock
        self.postfix = ""
        self._initial = initial
        self._start = self._last = clock()
        self._closed = False
        self._lock = threading.Lock()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units done; print a line if the interval has passed."""
        with self._lock:
            self.n += n
            self._tick()

    def refresh(self) -> None:
        """Print a line if the interval has passed (after ``n`` was set directly)."""
        with self._lock:
            self._tick()

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text added to the end of each line (tqdm's postfix)."""
        with self._lock:
            self.postfix = str(s)
            if refresh:
                self._tick()

    def close(self) -> None:
        """The final line (unless ``leave=False``); later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.leave:
                self._emit(self.final_line(self.clock()))

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _tick(self) -> None:
        now = self.clock()
        finished = self.total is not None and self.n >= self.total  # close() says it
        if not self._closed and not finished and now - self._last >= self.interval:
            self._last = now
            self._emit(self.line(now))

    def _emit(self, text: str) -> None:
        if self.file is not None:
            print(text, file=self.file, flush=True)

    # -- the text of a line ------------------------------------------------------------------

    def line(self, now: float) -> str:
        """``desc: done/total unit (pct%), rate unit/s, ~time left``."""
        rate = self._rate(now)
        parts = [self._count()]
        if rate is not None:
            parts.append(self._rate_text(rate))
            if self.total is not None and rate > 0 and self.n < self.total:
                parts.append(f"~{_duration((self.total - self.n) / rate)} left")
        return self._with_desc(", ".join(parts))

    def final_line(self, now: float) -> str:
        """``desc: done/total unit (pct%) in time (rate unit/s)``."""
        text = f"{self._count()} in {_duration(now - self._start)}"
        rate = self._rate(now)
        if rate is not None:
            text += f" ({self._rate_text(rate)})"
        return self._with_desc(text)

    def _with_desc(self, text: str) -> str:
        if self.postfix:
            text += f", {self.postfix}"
        return f"{self.desc}: {text}" if self.desc else text

    def _count(self) -> str:
        if self.unit_scale:  # 494kB/1.23MB, as tqdm writes it
            done = f"{self._amount(self.n)}{self.unit}"
            of = f"/{self._amount(self.total)}{self.unit}" if self.total is not None else ""
        else:  # 2,560/7,000 sentence
            done = self._amount(self.n)
            of = f"/{self._amount(self.total)}" if self.total is not None else ""
            of += f" {self.unit}"
        if self.total is None:
            return done + of
        pct = 100.0 * self.n / self.total if self.total > 0 else 100.0
        return f"{done}{of} ({pct:.0f}%)"

    def _amount(self, value: float) -> str:
        if self.unit_scale:
            from tqdm import tqdm

            return str(tqdm.format_sizeof(value))
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"

    def _rate(self, now: float) -> float | None:
        elapsed = now - self._start
        done = self.n - self._initial
        return done / elapsed if elapsed > 0 and done > 0 else None

    def _rate_text(self, rate: float) -> str:
        if rate < 1:
            return f"{1 / rate:.1f} s/{self.unit}"
        if self.unit_scale:
            return f"{self._amount(rate)}{self.unit}/s"
        return f"{rate:,.0f} {self.unit}/s" if rate >= 100 else f"{rate:.1f} {self.unit}/s"


def _duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s" if seconds >= 1 or seconds == 0 else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
