"""Subcommands of the ``genept-fast`` command line, one module each (see :mod:`genept_fast.cli`).

Shared argument types are in :mod:`genept_fast.commands._args` (re-exported here).

Each command imports the library inside its ``run``: building the parser must stay cheap, so
that ``genept-fast --help``, ``--version`` and every other command do not load what one command
needs (anndata, polars, the embedders, faiss). Library modules import at the top, except for
a heavy or optional dependency, where a comment says why.
"""

from __future__ import annotations

from genept_fast.commands._args import INT_MAX, int_range, positive_float, probability

__all__ = ["INT_MAX", "int_range", "positive_float", "probability"]
