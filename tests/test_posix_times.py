"""POSIX conformance in the style of pjdfstest, each case on a real mount. Timestamps:
atime, mtime and ctime of namespace and data operations, relatime and noatime.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from helpers import LocalStore, MegaFS, oserror
from posixlib import (
    ALICE,
    BS,
    STAFF,
    TICK,
    read_from,
)

# -- timestamps --------------------------------------------------------------------------


def stamps(path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns


def expect_stamps(op, expected: dict, *args, forward: bool = True):
    """Run ``op(*args)``; which of atime/mtime/ctime ("amc") changed on each path must be
    exactly as in *expected*. A key may be a pair (path before, path after) for an inode
    that *op* moves. Unless *forward* is false the times changed must have grown.
    Returns op's result."""
    paths = {k: (k, k) if isinstance(k, Path) else k for k in expected}
    before = {k: stamps(old) for k, (old, _) in paths.items()}
    time.sleep(TICK)
    result = op(*args)
    name = getattr(op, "__name__", repr(op))
    for k, letters in expected.items():
        new = paths[k][1]
        after = stamps(new)
        changed = "".join(c for c, b, a in zip("amc", before[k], after, strict=True) if a != b)
        assert changed == letters, (
            f"{name}: {new.name}: expected {letters!r} to change, got {changed!r}"
            f" ({before[k]} -> {after})")
        for c, b, a in zip("amc", before[k], after, strict=True):
            assert a >= b or not forward, f"{name}: {new.name}: {c}time went backwards"
    return result


def age(path, seconds: float = 3600) -> None:
    """Put atime and mtime an hour in the past (ctime becomes now)."""
    t = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(t, t), follow_symlinks=False)


def test_timestamps_of_namespace_operations(target):
    root = target.root
    d, d2 = root / "d", root / "d2"
    d.mkdir()
    d2.mkdir()
    f = d / "f"
    age(d)
    t0 = time.time_ns()
    expect_stamps(lambda: f.write_bytes(b"data"), {d: "mc"})
    assert min(stamps(f)) >= t0 - 10_000_000
    expect_stamps(os.mkdir, {d: "mc"}, d / "sub")
    assert os.stat(d / "sub").st_mtime_ns >= t0 - 10_000_000
    expect_stamps(os.rmdir, {d: "mc"}, d / "sub")
    expect_stamps(os.symlink, {d: "mc"}, "f", d / "sym")
    expect_stamps(os.mkfifo, {d: "mc"}, d / "fifo")
    expect_stamps(os.link, {f: "c", d: "", d2: "mc"}, f, d2 / "g")
    expect_stamps(os.unlink, {f: "c", d: "", d2: "mc"}, d2 / "g")
    expect_stamps(os.rename, {(f, d / "f2"): "c", d: "mc"}, f, d / "f2")
    f = d / "f2"
    expect_stamps(os.rename, {(f, d2 / "f"): "c", d: "mc", d2: "mc"}, f, d2 / "f")
    f = d2 / "f"
    os.rename(f, d / "f")
    f = d / "f"
    expect_stamps(os.chmod, {f: "c", d: ""}, f, 0o600)
    expect_stamps(os.chown, {f: "c", d: ""}, f, ALICE, STAFF)
    expect_stamps(os.setxattr, {f: "c", d: ""}, f, "user.k", b"v")
    expect_stamps(os.removexattr, {f: "c", d: ""}, f, "user.k")
    # failures change nothing
    expect_stamps(lambda: oserror(os.unlink, d / "missing"), {d: "", f: ""})
    expect_stamps(lambda: oserror(os.mkdir, f), {d: "", f: ""})
    expect_stamps(lambda: oserror(os.rmdir, d), {d: "", f: ""})
    # utime: the times given, ctime now
    expect_stamps(lambda: os.utime(f, ns=(123, 456_000_000_789)), {f: "amc"}, forward=False)
    assert stamps(f)[:2] == (123, 456_000_000_789)
    before = {p: stamps(p) for p in (d, d2, f, d / "sym", d / "fifo")}
    target.remount()
    assert {p: stamps(p) for p in before} == before


def test_timestamps_of_data_operations(target):
    root = target.root
    f = root / "f"
    f.write_bytes(b"0123456789" * 1000)
    age(f)

    def write_some():
        with open(f, "r+b") as fh:
            fh.seek(5000)
            fh.write(b"written")

    expect_stamps(write_some, {f: "mc", root: ""})
    age(f)
    expect_stamps(os.truncate, {f: "mc"}, f, 100)
    age(f)
    expect_stamps(os.truncate, {f: "mc"}, f, 5 * BS)
    age(f)
    fd = os.open(f, os.O_RDWR)
    try:
        expect_stamps(os.ftruncate, {f: "mc"}, fd, BS)
        age(f)
        expect_stamps(os.pwrite, {f: "mc"}, fd, b"pwrite", 10)
        expect_stamps(os.fsync, {f: ""}, fd)
    finally:
        os.close(fd)
    age(f)
    expect_stamps(lambda: os.close(os.open(f, os.O_WRONLY | os.O_TRUNC)), {f: "mc", root: ""})
    assert os.stat(f).st_size == 0
    # opening without O_TRUNC and closing without writing changes nothing
    f.write_bytes(b"again")
    age(f)
    expect_stamps(lambda: os.close(os.open(f, os.O_RDWR)), {f: ""})
    before = stamps(f)
    target.remount()
    assert stamps(f) == before


def test_write_time_survives_remount(target):
    """What stat shows after a write is what is stored: the same after a remount.
    (Whether the race between the data and the times reaching the daemon shows depends
    on timing, hence many files.)"""
    root = target.root
    before = {}
    for i in range(20):
        f = root / f"f{i}"
        f.write_bytes(b"x" * 3 * BS)
        with open(f, "r+b") as fh:
            fh.seek(BS + 7)
            fh.write(b"changed")
        st = os.stat(f)
        before[f.name] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    target.remount()
    after = {}
    for name in before:
        st = os.stat(root / name)
        after[name] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    changed = {n: (before[n], after[n]) for n in before if before[n] != after[n]}
    assert not changed, f"{len(changed)} of 20 files changed (size, mtime, ctime): {changed}"


def test_read_updates_atime(target):
    """relatime: a read updates atime when it is not newer than mtime (or a day old)."""
    root = target.root
    f = root / "f"
    f.write_bytes(b"some data")
    age(f, 2 * 86400)
    target.remount()  # nothing of the file in the page cache
    a0 = stamps(f)[0]
    expect_stamps(read_from, {f: "a"}, f)
    assert stamps(f)[0] > a0 + 86400 * 10**9
    # a second read right away does not (atime is now newer than mtime)
    expect_stamps(read_from, {f: ""}, f)
    before = stamps(f)
    target.remount()
    assert stamps(f) == before


def test_readdir_updates_atime(target):
    root = target.root
    d = root / "d"
    d.mkdir()
    (d / "x").write_bytes(b"")
    age(d, 2 * 86400)
    expect_stamps(os.listdir, {d: "a"}, d)


def test_noatime_mount_option(tmp_path):
    """-o noatime: reads and listings that reach the daemon leave atime alone."""
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    try:
        fs.mkfs()
        fs.mount(args=("-o", "noatime"))
        f, d = fs.mnt / "f", fs.mnt / "d"
        f.write_bytes(b"some data")
        d.mkdir()
        age(f, 2 * 86400)
        age(d, 2 * 86400)
        fs.umount()
        fs.mount(fresh_cache=True, args=("-o", "noatime"))
        expect_stamps(read_from, {f: ""}, f)
        expect_stamps(os.listdir, {d: ""}, d)
    finally:
        fs.cleanup()
