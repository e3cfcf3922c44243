"""Fixtures for end-to-end tests on real FUSE mounts.

* ``store``: where a filesystem's objects live. Parametrized by backend kind so that
  an S3 store can be added next to the local one: add a param here and a
  :class:`helpers.Store` subclass; every test using ``store`` / ``store_url`` /
  ``megafs`` / ``mounted`` then runs against it too.
* ``megafs``: a :class:`helpers.MegaFS` driving the command-line tools (mkfs, mount,
  umount, fsck, kill -9 of the daemon, remount with a fresh or the same cache
  directory). Its teardown always unmounts what is still mounted
  (``fusermount3 -u -z``) and kills leftover daemons by pid.
* ``mounted``: ``megafs`` after ``mkfs.megafs --block-size 64K`` and a mount.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import LocalStore, MegaFS, Store


@pytest.fixture(params=["local"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    raise AssertionError(f"unknown store kind {request.param}")


@pytest.fixture
def store_url(store) -> str:
    return store.url


@pytest.fixture
def megafs(store, tmp_path) -> Iterator[MegaFS]:
    fs = MegaFS(store, tmp_path)
    try:
        yield fs
    finally:
        fs.cleanup()


@pytest.fixture
def mounted(megafs) -> MegaFS:
    """A fresh filesystem with 64 KiB blocks, mounted on ``megafs.mnt``."""
    megafs.mkfs()
    megafs.mount()
    return megafs
