"""``python -m megafs`` runs the ``megafs`` tool."""

from megafs.cli.tool import main

raise SystemExit(main())
