"""The browser download page (``megafs.html``), built from ``web/`` in the source tree by
``web/build.mjs`` and shipped as package data. ``megafs web enable`` uploads it next to a
store's objects; docs/format.md §5b describes the links it opens."""

from __future__ import annotations

from importlib import resources

PAGE_NAME = "megafs.html"


def page() -> bytes:
    """The page's bytes, exactly as built and checked in."""
    return resources.files(__name__).joinpath(PAGE_NAME).read_bytes()
