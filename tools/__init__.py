"""Developer tools, not part of the installed package: run them from the repository
root as ``python -m tools.<name>`` (``python -m tools.manpages --all``)."""
