"""Quota: df shows it, writes beyond it fail with ENOSPC, and it can be changed."""

import errno
import os
import time

import pytest


@pytest.fixture
def quota_fs(megafs):
    megafs.mkfs("--quota", "5M")
    megafs.mount()
    return megafs


def _write(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


def _wait_used_at_most(mnt, limit, timeout=10.0):
    """The kernel sends RELEASE asynchronously after close(2): the data of a file
    deleted right after closing it counts until the daemon has seen that."""
    deadline = time.monotonic() + timeout
    while True:
        st = os.statvfs(mnt)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        if used <= limit or time.monotonic() > deadline:
            return used
        time.sleep(0.05)


def test_quota_is_enforced_and_changeable(quota_fs):
    fs = quota_fs
    st = os.statvfs(fs.mnt)
    assert st.f_blocks * st.f_frsize == 5 << 20
    _write(fs.mnt / "a", 3 << 20)
    st = os.statvfs(fs.mnt)
    assert (st.f_blocks - st.f_bfree) * st.f_frsize >= 3 << 20
    with pytest.raises(OSError) as e:
        _write(fs.mnt / "b", 3 << 20)  # the error shows at fsync (writeback cache)
    assert e.value.errno == errno.ENOSPC
    (fs.mnt / "b").unlink()
    fd = os.open(fs.mnt / "e", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, os.urandom(3 << 20))
    with pytest.raises(OSError) as e:  # without fsync, close(2) reports it
        os.close(fd)
    assert e.value.errno == errno.ENOSPC
    (fs.mnt / "e").unlink()
    assert _wait_used_at_most(fs.mnt, 4 << 20) <= 4 << 20
    _write(fs.mnt / "c", 1 << 20)  # below the quota again: fine
    fs.umount()
    r = fs.run("megafs", "quota", fs.url, "20M")
    assert "20971520" in r.stdout
    fs.mount()
    st = os.statvfs(fs.mnt)
    assert st.f_blocks * st.f_frsize == 20 << 20
    _write(fs.mnt / "d", 6 << 20)
    fs.umount()
    fs.mount(fresh_cache=True)
    assert (fs.mnt / "a").stat().st_size == 3 << 20
    assert (fs.mnt / "d").stat().st_size == 6 << 20
    r = fs.run("megafs", "quota", fs.url, "none")
    assert "none" in r.stdout


def test_stat_shows_usage_savings_and_cache(quota_fs):
    fs = quota_fs
    data = os.urandom(600_000)
    (fs.mnt / "one").write_bytes(data)
    (fs.mnt / "two").write_bytes(data)  # deduplicated
    (fs.mnt / "text").write_bytes(b"compressible " * 50_000)
    (fs.mnt / "sparse").touch()
    os.truncate(fs.mnt / "sparse", 1 << 30)
    fs.flush()
    out = fs.run("megafs", "stat", fs.mnt).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["quota"] == "5.0 MiB"
    assert fields["files"] == "4"
    assert fields["waiting for upload"] == "0 B"
    assert fields["saved by deduplication"].startswith("585.9 KiB")  # one copy of "one"
    assert not fields["saved by compression"].startswith("-")
    assert fields["saved by holes"].startswith("1.0 GiB")
    for key in ("used (stored)", "cache", "metadata", "daemon pid"):
        assert fields[key]
