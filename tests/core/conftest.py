"""The in-process ``core`` layer: the filesystem core without FUSE, root or a mount.

The ``core`` fixture builds what a mount builds, through the public functions:
``store.lifecycle.create`` writes a real store (superblock, first metadata
snapshot, head) on a local backend in a temporary directory (with the insecure,
fast test KDF), ``core.snapshot.download`` makes the working metadata database
from it, and a :class:`~megafs.core.filesystem.Filesystem` runs on that database
with its uploader in the background. Tests drive the ``Filesystem`` through its
public methods only.

After every test the fixture does what an unmount does (the kernel forgets every
lookup and releases every open file, the dirty blocks are uploaded, a full
metadata snapshot is committed) and then runs fsck's :class:`Checker` on the
store in check-only mode (``repair=False``): references, reference counts, block
counts, entries, orphans and link counts must all be right.
"""

from __future__ import annotations

import pytest
import trio
from corelib import make_core


@pytest.fixture
def core_options() -> dict:
    """Options of the ``core`` fixture's filesystem (override with parametrize or in a
    module): ``quota`` and keyword arguments of ``Filesystem``."""
    return {}


@pytest.fixture
async def core(tmp_path, monkeypatch, core_options):
    """A fresh filesystem (64 KiB blocks, root owned by 1000:1000) in this process; its
    teardown requires a clean check (see the module docstring)."""
    monkeypatch.setenv("MEGAFS_INSECURE_TEST_KDF", "1")
    monkeypatch.setenv("MEGAFS_RETENTION", "0")  # the tests count the store's objects
    async with trio.open_nursery() as nursery:
        c = await make_core(tmp_path, nursery, **core_options)
        try:
            yield c
            problems = await c.check()
        finally:
            nursery.cancel_scope.cancel()
            c.fs.close()
    assert problems == [], "the checker found problems:\n" + "\n".join(problems)
