"""``python -m megafs`` runs the ``megafs`` tool."""

from megafs.cli.entry import megafs

raise SystemExit(megafs())
