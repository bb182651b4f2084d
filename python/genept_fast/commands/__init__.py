"""Subcommands of the ``genept-fast`` command line, one module each (see :mod:`genept_fast.cli`).

Shared argument types are in :mod:`genept_fast.commands._args` (re-exported here).
"""

from __future__ import annotations

from genept_fast.commands._args import INT_MAX, int_range, positive_float, probability

__all__ = ["INT_MAX", "int_range", "positive_float", "probability"]
