"""Subcommands of the ``genept-fast`` command line, one module each (see :mod:`genept_fast.cli`)."""
