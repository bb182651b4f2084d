"""The ``genept-fast`` command line: on top of everything, below nothing.

Each subcommand lives in :mod:`genept_fast.commands` as a module with ``register(subparsers)``,
which adds its parser and sets ``func`` to the function that runs it. Errors that name a user
mistake (:class:`~genept_fast.GeneptError`, missing files) are printed without a traceback and
exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

from genept_fast import __version__
from genept_fast._core import GeneptError

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Subcommand modules under genept_fast.commands, in the order of the pipeline.
COMMANDS = (
    "gene_text",
    "embed_genes",
    "encode",
    "build_reference",
    "annotate",
    "evaluate",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (GeneptError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"genept-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genept-fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
