"""The ``genept-fast`` command line: on top of everything, below nothing.

Each subcommand lives in :mod:`genept_fast.commands` as a module with ``register(subparsers)``,
which adds its parser and sets ``func`` to the function that runs it.

A user never sees a Python traceback. What goes wrong is said in one line on stderr,
``genept-fast COMMAND: error: ...``, with the exit status saying whose it is:

- 2: the input or the arguments (:class:`~genept_fast.GeneptError`, a missing or unreadable
  file, a usage error) — fix the call;
- 1: the network or a service (:class:`~genept_fast._http.HttpError`, connection failures),
  running out of memory, or a bug in genept-fast: then the line names a log file that holds the
  traceback, to report;
- 130: interrupted (Ctrl-C); work that can be resumed is kept and the line says where.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
import traceback
from typing import TYPE_CHECKING, NoReturn

from genept_fast import __version__
from genept_fast._core import GeneptError

if TYPE_CHECKING:
    from collections.abc import Sequence

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


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line (and the usage left to ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    """The exception's message and notes (``add_note``) as one line."""
    parts = [str(exc).strip() or type(exc).__name__]
    parts += [str(n).strip() for n in getattr(exc, "__notes__", ())]
    return "; ".join(" ".join(p.split()) for p in parts if p)


def _crash_log(argv: Sequence[str], exc: BaseException) -> str | None:
    """Write the traceback of an unexpected error to a log file; return its path."""
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        fd, path = tempfile.mkstemp(prefix=f"genept-fast-crash-{stamp}-", suffix=".log")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(f"genept-fast {__version__}, python {sys.version.split()[0]}\n")
            fh.write(f"argv: {list(argv)!r}\n\n")
            fh.write("".join(traceback.format_exception(exc)))
    except OSError:
        return None
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (already printed)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    prog = f"genept-fast {args.command}"
    from genept_fast._http import HttpError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        notes = "; ".join(str(n) for n in getattr(exc, "__notes__", ()))
        print(f"{prog}: interrupted" + (f"; {notes}" if notes else ""), file=sys.stderr)
        return 130
    except (HttpError, ConnectionError, TimeoutError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (GeneptError, OSError) as exc:
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError:
        hint = " (try a smaller --chunk-size)" if args.command == "encode" else ""
        print(f"{prog}: error: out of memory{hint}", file=sys.stderr)
        return 1
    except Exception as exc:
        log = _crash_log(argv, exc)
        where = f"the traceback is in {log}" if log else "no log file could be written"
        print(
            f"{prog}: internal error ({type(exc).__name__}: {_one_line(exc)}); this is a bug"
            f" in genept-fast {__version__}, please report it: {where}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
