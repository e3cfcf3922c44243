"""Full disks: the cache directory's disk filling up, and the cache size limit reached
while the storage is down. Writers get ENOSPC (after blocking up to --timeout), nothing
already written is damaged, and everything works again once uploads can proceed."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from helpers import MegaFS, oserror

pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


@pytest.fixture
def offline_fs(megafs: MegaFS, tmp_path) -> MegaFS:
    """A local store that the daemon sees offline while the file ``fs.offline`` exists."""
    megafs.offline = tmp_path / "offline"
    megafs.env = dict(megafs.env, MEGAFS_FAULTS=f"offline={megafs.offline}")
    return megafs


@pytest.fixture
def small_disk(tmp_path):
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _content(i: int) -> bytes:
    return bytes([i % 251]) * 1_000_000


def _write_until_enospc(mnt, start: int, limit: int) -> int:
    for i in range(start, limit):
        try:
            with open(mnt / f"f{i}", "wb") as f:
                f.write(_content(i))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
            return i
    raise AssertionError("the disk never filled up")


def test_cache_disk_full(offline_fs, small_disk):
    fs = offline_fs
    fs.mkfs()
    fs.mount(cache_dir=small_disk / "cache", args=("--timeout", "2"))
    fs.offline.touch()  # nothing can be uploaded: dirty data stays on the small disk
    n = _write_until_enospc(fs.mnt, 0, 100)
    assert 10 < n < 24, n
    for i in range(n):  # everything acknowledged is intact
        assert (fs.mnt / f"f{i}").read_bytes() == _content(i)
    fs.offline.unlink()  # storage back: uploads free the disk (clean blocks are evictable)
    fs.flush()
    m = n + 15
    for i in range(n, m):
        (fs.mnt / f"f{i}").write_bytes(_content(i))
    fs.umount()
    fs.mount(fresh_cache=True)
    for i in range(m):
        assert (fs.mnt / f"f{i}").read_bytes() == _content(i), i


@pytest.mark.expect_log_errors(
    r"ERROR: upload failed \(attempt \d+\): .*: injected: backend offline",
    r"ERROR: write to /big \(inode \d+\) at offset \d+ failed: cache full: ")
def test_cache_limit_with_storage_down(offline_fs):
    fs = offline_fs
    fs.mkfs()
    fs.mount(args=("--cache-size", "4M", "--timeout", "2"))
    (fs.mnt / "before").write_bytes(_content(1))
    fs.flush()
    fs.offline.touch()
    big = fs.mnt / "big"
    with open(big, "wb") as f:
        written = 0
        err = None
        while written < 20_000_000:
            try:
                f.write(_content(2))
                f.flush()
                os.fsync(f.fileno())
                written += 1_000_000
            except OSError as e:
                err = e.errno
                break
    assert err == errno.ENOSPC, "writers must get ENOSPC once the cache is full of dirty data"
    assert 1_000_000 <= written <= 4_000_000
    fs.offline.unlink()  # (reading "before" offline may rightly fail: big evicted it)
    assert (fs.mnt / "before").read_bytes() == _content(1)
    fs.flush()
    (fs.mnt / "after").write_bytes(_content(3))
    fs.umount()
    fs.mount(fresh_cache=True)
    assert (fs.mnt / "before").read_bytes() == _content(1)
    assert (fs.mnt / "after").read_bytes() == _content(3)
    assert big.read_bytes()[:written] == _content(2) * (written // 1_000_000)
    assert oserror(os.stat, fs.mnt / "missing") == errno.ENOENT
