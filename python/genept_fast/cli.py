"""The ``genept-fast`` command line: on top of everything, below nothing.

Each subcommand lives in :mod:`genept_fast.commands` as a module with ``register(subparsers)``,
which adds its parser and sets ``func`` to the function that runs it.

A user never sees a Python traceback. What goes wrong is said in one line on stderr,
``genept-fast COMMAND: error: ...``, and the exit status says whose it is (:data:`EXIT_CODES`):

- 0: done;
- 2: the input or the call (:class:`~genept_fast.errors.InputError`, a missing or unreadable
  file, a usage error, a missing optional extra) — fix the call;
- 3: a remote service failed or cannot be reached (:class:`~genept_fast.errors.ServiceError`:
  NCBI, MyGene, an LLM, OpenAI or a compatible server, the Batch API, Zenodo) — try again
  later, or check the key, the URL or the network; work done so far is cached or kept;
- 1: genept-fast failed: out of memory or threads (one line), or a bug — then the line names a
  log file that holds the traceback, to report;
- 130: interrupted (Ctrl-C); work that can be resumed is kept and the line says where.

Python warnings raised while a command runs are printed the same way, one line each:
``genept-fast COMMAND: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import TYPE_CHECKING, Any, NoReturn

from genept_fast import __version__
from genept_fast._secrets import remember_url, scrub
from genept_fast.commands._args import HelpFormatter, respell
from genept_fast.errors import (
    InputError,
    MissingDependencyError,
    ResourceError,
    ServiceError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: Subcommand modules under genept_fast.commands, in the order of the pipeline.
COMMANDS = (
    "gene_text",
    "embed_genes",
    "fetch_genept",
    "encode",
    "build_reference",
    "annotate",
    "evaluate",
    "demo",
)

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_SERVICE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: The exit statuses of ``genept-fast`` and what each means (the README prints this table).
EXIT_CODES = {
    EXIT_OK: "done",
    EXIT_FAILED: "genept-fast failed: out of memory or threads, or a bug (a log file is named)",
    EXIT_INPUT: "bad input or call: arguments, a missing or unreadable file, a missing extra",
    EXIT_SERVICE: "a remote service failed or cannot be reached (NCBI, OpenAI, Zenodo, ...)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); resumable work is kept",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line (and the usage left to ``--help``), defaults
    shown in ``--help`` (:class:`~genept_fast.commands._args.HelpFormatter`), and the old
    spellings of options read as the new ones (:func:`~genept_fast.commands._args.old_spelling`).
    Subcommand parsers are of this class too."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None:
            args = respell(self, args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {scrub(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genept-fast",
        description="GenePT single-cell embeddings: "
        "gene text → gene embeddings → cell embeddings → evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"genept-fast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"genept_fast.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"genept_fast.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The exception's message and notes (``add_note``) as one line, secrets masked."""
    parts = [str(exc).strip() or type(exc).__name__]
    parts += [str(n).strip() for n in getattr(exc, "__notes__", ())]
    return scrub("; ".join(" ".join(p.split()) for p in parts if p))


def _remember_argv(argv: Sequence[str]) -> None:
    """Remember the password of every URL on the command line (``--opt URL``, ``--opt=URL``),
    so that whatever quotes it later (an echoed ``Authorization`` header built from it, a
    traceback) is scrubbed."""
    for arg in argv:
        value = arg.partition("=")[2] if arg.startswith("-") else arg
        if "://" in value and "@" in value:
            remember_url(value)


def _crash_log(argv: Sequence[str], exc: BaseException) -> str | None:
    """Write the traceback of an unexpected error to a log file; return its path.

    Everything written passes through the scrubber: the log is meant to be attached to a
    public bug report.
    """
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        fd, path = tempfile.mkstemp(prefix=f"genept-fast-crash-{stamp}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"genept-fast {__version__}, python {sys.version.split()[0]}\n")
            fh.write(scrub(f"argv: {list(argv)!r}\n\n"))
            fh.write(scrub("".join(traceback.format_exception(exc))))
    except OSError:
        return None
    return path


def _one_line_warnings(prog: str) -> Callable[..., str]:
    """A ``warnings.formatwarning`` that writes ``PROG: warning: message`` (one line, not
    Python's two lines with the source). Warnings are still warnings: filters and recorders
    (``pytest.warns``, ``catch_warnings(record=True)``) see them as before."""

    def formatwarning(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        return f"{prog}: warning: {scrub(' '.join(str(message).split()))}\n"

    return formatwarning


def _exit_status(exc: Exception) -> int:
    """The exit status of an exception that ended a command (see :data:`EXIT_CODES`)."""
    if isinstance(exc, ServiceError):
        return EXIT_SERVICE
    if isinstance(exc, (ConnectionError, TimeoutError)) and not isinstance(exc, BrokenPipeError):
        return EXIT_SERVICE  # a network failure that no client translated
    if isinstance(exc, (InputError, MissingDependencyError, OSError)):
        return EXIT_INPUT  # OSError: a missing, unreadable or unwritable file
    if _invalid_url(exc):
        return EXIT_INPUT
    return EXIT_FAILED


def _invalid_url(exc: Exception) -> bool:
    """Whether ``exc`` is ``httpx``'s refusal of a URL that no check of ours saw first (every
    URL option is checked by :func:`genept_fast._secrets.check_url`; this is the net)."""
    httpx = sys.modules.get("httpx2")
    return httpx is not None and isinstance(exc, httpx.InvalidURL)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _remember_argv(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_INPUT
    prog = f"genept-fast {args.command}"
    formatwarning = warnings.formatwarning
    warnings.formatwarning = _one_line_warnings(prog)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        notes = scrub("; ".join(str(n) for n in getattr(exc, "__notes__", ())))
        print(f"{prog}: interrupted" + (f"; {notes}" if notes else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        hint = " (try a smaller --chunk-size)" if args.command == "encode" else ""
        print(f"{prog}: error: out of memory{hint}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        status = _exit_status(exc)
        if status != EXIT_FAILED or isinstance(exc, ResourceError):
            what = "invalid URL: " if _invalid_url(exc) else ""
            print(f"{prog}: error: {what}{_one_line(exc)}", file=sys.stderr)
            return status
        log = _crash_log(argv, exc)
        where = f"the traceback is in {log}" if log else "no log file could be written"
        print(
            f"{prog}: internal error ({type(exc).__name__}: {_one_line(exc)}); this is a bug"
            f" in genept-fast {__version__}, please report it: {where}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    finally:
        warnings.formatwarning = formatwarning  # for whoever called main()


if __name__ == "__main__":
    raise SystemExit(main())
