"""``python -m lana`` is the ``lana`` command."""

from lana.cli import main

raise SystemExit(main())
