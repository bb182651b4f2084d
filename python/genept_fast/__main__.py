"""``python -m genept_fast`` runs the command line."""

from genept_fast.cli import main

raise SystemExit(main())
