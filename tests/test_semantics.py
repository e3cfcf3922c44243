"""POSIX semantics, each checked on a real mount (64 KiB blocks)."""

from __future__ import annotations

import errno
import mmap
import os
import random
import stat

import pytest
from helpers import oserror

from megafs.store.packs import PACK_UNIT

BS = 64 * 1024


def test_regular_files(mounted):
    p = mounted.mnt / "file"
    p.write_bytes(b"hello world")
    st = os.stat(p)
    assert stat.S_ISREG(st.st_mode) and st.st_size == 11 and st.st_nlink == 1
    with open(p, "r+b") as f:
        f.seek(6)
        f.write(b"WORLD!")
    assert p.read_bytes() == b"hello WORLD!"
    p.write_bytes(b"short")  # O_TRUNC
    assert p.read_bytes() == b"short"
    assert oserror(os.open, str(p), os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    os.unlink(p)
    assert not p.exists()
    assert oserror(os.stat, p) == errno.ENOENT
    assert oserror(os.unlink, p) == errno.ENOENT


@pytest.mark.parametrize("store", ["local"], indirect=True)  # namespace only
def test_symlinks(mounted):
    mnt = mounted.mnt
    (mnt / "target").write_bytes(b"via link")
    os.symlink("target", mnt / "rel")
    os.symlink(str(mnt / "target"), mnt / "abs")
    os.symlink("nowhere/at/all", mnt / "dangling")
    long_target = "x/" * 2000
    os.symlink(long_target, mnt / "long")
    for name, target in [("rel", "target"), ("abs", str(mnt / "target")),
                         ("dangling", "nowhere/at/all"), ("long", long_target)]:
        st = os.lstat(mnt / name)
        assert stat.S_ISLNK(st.st_mode)
        assert os.readlink(mnt / name) == target
        assert st.st_size == len(target.encode())
    assert (mnt / "rel").read_bytes() == b"via link"
    assert (mnt / "abs").read_bytes() == b"via link"
    assert oserror(os.stat, mnt / "dangling") == errno.ENOENT
    assert oserror(os.readlink, mnt / "target") == errno.EINVAL
    mounted.remount()
    assert os.readlink(mnt / "rel") == "target"
    assert os.readlink(mnt / "long") == long_target
    assert (mnt / "abs").read_bytes() == b"via link"


def test_unlink_open_file_stays_readable(mounted):
    p = mounted.mnt / "victim"
    data = os.urandom(3 * BS + 123)
    p.write_bytes(data)
    mounted.flush()  # make it uploaded too, not just cached
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        assert not p.exists()
        assert os.listdir(mounted.mnt) == []
        assert os.pread(fd, len(data) + 10, 0) == data
        assert os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b"still writable", BS)
        assert os.pread(fd, 14, BS) == b"still writable"
        p.write_bytes(b"a new file by the same name")
        assert os.pread(fd, 10, 0) == data[:10]
    finally:
        os.close(fd)
    assert p.read_bytes() == b"a new file by the same name"
    mounted.remount()
    assert os.listdir(mounted.mnt) == ["victim"]
    assert p.read_bytes() == b"a new file by the same name"


@pytest.mark.parametrize("store", ["local"], indirect=True)  # namespace only
def test_chmod_chown_utime_nanoseconds(mounted):
    mnt = mounted.mnt
    p = mnt / "f"
    p.write_bytes(b"x")
    (mnt / "d").mkdir()
    os.chown(p, 1234, 5678)
    os.chmod(p, 0o4751)
    os.chmod(mnt / "d", 0o1777)
    atime, mtime = 1_111_111_111_123_456_789, 1_600_000_000_987_654_321
    os.utime(p, ns=(atime, mtime))
    os.utime(mnt / "d", ns=(atime + 1, mtime + 1))
    os.symlink("f", mnt / "l")
    os.utime(mnt / "l", ns=(atime + 2, mtime + 2), follow_symlinks=False)

    def check():
        st = os.stat(p)
        assert stat.S_IMODE(st.st_mode) == 0o4751
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
        st = os.stat(mnt / "d")
        assert stat.S_IMODE(st.st_mode) == 0o1777
        assert (st.st_atime_ns, st.st_mtime_ns) == (atime + 1, mtime + 1)
        st = os.lstat(mnt / "l")
        assert st.st_mtime_ns == mtime + 2

    check()
    ctime = os.stat(p).st_ctime_ns
    mounted.remount()
    check()
    assert os.stat(p).st_ctime_ns == ctime
    os.chmod(p, 0o600)
    assert os.stat(p).st_ctime_ns > ctime


@pytest.mark.parametrize("use_fd", [False, True], ids=["truncate", "ftruncate"])
def test_truncate_shrink_and_grow(mounted, use_fd):
    p = mounted.mnt / "t"
    data = os.urandom(5 * BS + 1000)
    p.write_bytes(data)

    def trunc(size):
        if use_fd:
            with open(p, "r+b") as f:
                os.ftruncate(f.fileno(), size)
        else:
            os.truncate(p, size)

    # within a block, still dirty in the cache
    trunc(4 * BS + 10)
    trunc(4 * BS + 20)
    expect = data[:4 * BS + 10] + bytes(10)
    assert p.read_bytes() == expect
    # across block boundaries: shrink into block 1, grow past the old end
    trunc(BS + 100)
    trunc(6 * BS)
    expect = data[:BS + 100] + bytes(6 * BS - BS - 100)
    assert os.stat(p).st_size == 6 * BS
    assert p.read_bytes() == expect
    # shrink exactly to a block boundary, then grow
    trunc(BS)
    trunc(2 * BS + 5)
    expect = data[:BS] + bytes(BS + 5)
    assert p.read_bytes() == expect
    mounted.remount()
    assert p.read_bytes() == expect
    # now the blocks come from the store (fresh cache): shrink and grow again
    with open(p, "r+b") as f:
        f.seek(BS + 1)
        f.write(b"\xff" * (BS - 1))
    mounted.remount()
    expect = data[:BS] + b"\0" + b"\xff" * (BS - 1) + bytes(5)
    assert p.read_bytes() == expect
    trunc(BS + 7)
    trunc(3 * BS)
    expect = expect[:BS + 7] + bytes(3 * BS - BS - 7)
    assert p.read_bytes() == expect
    trunc(0)
    assert p.read_bytes() == b""
    trunc(10)
    assert p.read_bytes() == bytes(10)
    mounted.remount()
    assert p.read_bytes() == bytes(10)


def test_shrink_grow_of_uploaded_block_in_fresh_cache(mounted):
    """Shrink a file whose last block is only in the store (not cached), then grow it."""
    p = mounted.mnt / "t"
    data = os.urandom(2 * BS)
    p.write_bytes(data)
    mounted.remount()
    os.truncate(p, 100)
    os.truncate(p, 2 * BS)
    assert p.read_bytes() == data[:100] + bytes(2 * BS - 100)
    mounted.remount()
    assert p.read_bytes() == data[:100] + bytes(2 * BS - 100)


def test_sparse_file(mounted, store):
    p = mounted.mnt / "sparse"
    off = 10 << 30
    mounted.flush()
    before = store.total_bytes()
    with open(p, "wb") as f:
        f.seek(off)
        f.write(b"!")
    assert os.stat(p).st_size == off + 1

    def check():
        with open(p, "rb") as f:
            for pos in (0, BS - 1, 1 << 30, off - BS - 3, off - 5):
                f.seek(pos)
                assert f.read(4) == bytes(4), pos
            f.seek(off - 3)
            assert f.read(10) == b"\0\0\0!"

    check()
    mounted.umount()
    grown = store.total_bytes() - before
    # One pack (whole MiB, mostly random padding) holds the block of the "!"; the hole
    # itself stores nothing.
    assert grown < PACK_UNIT + 256 * 1024, f"store grew by {grown} bytes for a 1-byte sparse write"
    mounted.mount(fresh_cache=True)
    assert os.stat(p).st_size == off + 1
    check()


@pytest.mark.parametrize("store", ["local"], indirect=True)  # namespace only
def test_user_xattrs(mounted):
    p = mounted.mnt / "f"
    p.write_bytes(b"")
    (mounted.mnt / "d").mkdir()
    big = os.urandom(4000)
    os.setxattr(p, "user.one", b"1")
    os.setxattr(p, "user.bin", b"\0\x01\xff" + big)
    os.setxattr(mounted.mnt / "d", "user.dir", b"on a directory")
    assert os.getxattr(p, "user.one") == b"1"
    assert os.getxattr(p, "user.bin") == b"\0\x01\xff" + big
    assert sorted(os.listxattr(p)) == ["user.bin", "user.one"]
    os.setxattr(p, "user.one", b"replaced")
    assert os.getxattr(p, "user.one") == b"replaced"
    assert oserror(os.setxattr, p, "user.one", b"x", os.XATTR_CREATE) == errno.EEXIST
    assert oserror(os.setxattr, p, "user.none", b"x", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.empty", b"")
    assert os.getxattr(p, "user.empty") == b""
    os.removexattr(p, "user.bin")
    assert oserror(os.getxattr, p, "user.bin") == errno.ENODATA
    assert oserror(os.removexattr, p, "user.bin") == errno.ENODATA
    mounted.remount()
    assert sorted(os.listxattr(p)) == ["user.empty", "user.one"]
    assert os.getxattr(p, "user.one") == b"replaced"
    assert os.getxattr(mounted.mnt / "d", "user.dir") == b"on a directory"


def test_statfs(mounted):
    st = os.statvfs(mounted.mnt)
    assert st.f_bsize > 0 and st.f_frsize > 0
    assert st.f_blocks > 0
    assert st.f_blocks >= st.f_bfree >= st.f_bavail >= 0
    assert st.f_files >= st.f_ffree >= 0
    assert st.f_namemax == 255
    used0 = (st.f_blocks - st.f_bfree) * st.f_frsize
    (mounted.mnt / "data").write_bytes(os.urandom(1 << 20))
    mounted.flush()
    st = os.statvfs(mounted.mnt)
    used1 = (st.f_blocks - st.f_bfree) * st.f_frsize
    assert used1 - used0 >= 1 << 20


def test_o_append(mounted):
    p = mounted.mnt / "log"
    p.write_bytes(b"start\n")
    fd1 = os.open(p, os.O_WRONLY | os.O_APPEND)
    fd2 = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd1, b"one\n")
        os.write(fd2, b"two\n")
        os.lseek(fd1, 0, os.SEEK_SET)
        os.write(fd1, b"three\n")
        os.write(fd2, b"x" * (BS + 10) + b"\n")
        os.write(fd1, b"four\n")
    finally:
        os.close(fd1)
        os.close(fd2)
    expect = b"start\none\ntwo\nthree\n" + b"x" * (BS + 10) + b"\nfour\n"
    assert p.read_bytes() == expect
    mounted.remount()
    assert p.read_bytes() == expect


def test_mmap_write_then_read_back(mounted):
    p = mounted.mnt / "mapped"
    size = 3 * BS + 500
    orig = os.urandom(size)
    p.write_bytes(orig)
    expect = bytearray(orig)
    with open(p, "r+b") as f:
        m = mmap.mmap(f.fileno(), size)
        assert m[:100] == orig[:100]  # mmap read
        assert m[BS * 2:BS * 2 + 10] == orig[BS * 2:BS * 2 + 10]
        for off, chunk in [(10, b"mapped-1"), (BS - 3, b"across-boundary"),
                           (size - 7, b"the-end")]:
            m[off:off + len(chunk)] = chunk
            expect[off:off + len(chunk)] = chunk
        m.close()  # munmap
    assert p.read_bytes() == bytes(expect)
    mounted.remount()
    assert p.read_bytes() == bytes(expect)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == bytes(expect)


@pytest.mark.parametrize("store", ["local"], indirect=True)  # namespace only
def test_large_directory_listing(mounted):
    d = mounted.mnt / "big"
    d.mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(3000)}
    for n in names:
        os.close(os.open(d / n, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(d)
    assert len(listed) == len(names) and set(listed) == names
    assert {e.name for e in os.scandir(d)} == names
    # delete while listing: every entry not deleted is still seen exactly once
    seen = []
    with os.scandir(d) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i == 1000:
                for n in sorted(names)[:500]:
                    os.unlink(d / n)
    assert len(seen) == len(set(seen))
    assert set(sorted(names)[500:]) <= set(seen)
    mounted.remount()
    assert set(os.listdir(d)) == set(sorted(names)[500:])


def test_block_sized_and_unaligned_writes(mounted):
    p = mounted.mnt / "data"
    rng = random.Random(42)
    expect = bytearray()

    def write(off, data):
        nonlocal expect
        if len(expect) < off + len(data):
            expect += bytes(off + len(data) - len(expect))
        expect[off:off + len(data)] = data
        os.pwrite(fd, data, off)

    fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        write(0, os.urandom(BS))  # one whole block
        write(BS, os.urandom(3 * BS))  # several whole blocks at once
        write(BS - 100, os.urandom(200))  # across a boundary
        write(5 * BS + 7, os.urandom(2 * BS + 13))  # unaligned, leaves a hole
        write(12345, b"z" * 77777)  # compressible, overlapping
        for _ in range(30):
            off = rng.randrange(0, 10 * BS)
            write(off, rng.randbytes(rng.randrange(1, 3 * BS)))
        os.fsync(fd)
        assert os.pread(fd, len(expect) + 100, 0) == bytes(expect)
    finally:
        os.close(fd)
    assert p.read_bytes() == bytes(expect)
    mounted.remount()
    assert os.stat(p).st_size == len(expect)
    assert p.read_bytes() == bytes(expect)
    mounted.umount()
    assert mounted.fsck().returncode == 0


def test_read_sizes(mounted):
    """Reads of every alignment and size return exactly the file's bytes."""
    p = mounted.mnt / "r"
    data = os.urandom(4 * BS + 333)
    p.write_bytes(data)
    mounted.remount()
    with open(p, "rb", buffering=0) as f:
        for off, n in [(0, 1), (BS - 1, 2), (BS, BS), (BS + 1, 3 * BS), (len(data) - 1, 10),
                       (len(data), 10), (len(data) + 5, 10), (7, len(data))]:
            assert os.pread(f.fileno(), n, off) == data[off:off + n], (off, n)


def test_identical_blocks_in_many_files(mounted):
    """Equal blocks (deduplicated in the store) stay independent files."""
    mnt = mounted.mnt
    block = os.urandom(BS)
    (mnt / "a").write_bytes(block * 3)
    (mnt / "b").write_bytes(block + bytes(BS) + block)
    mounted.flush()
    (mnt / "c").write_bytes(block * 2)
    os.unlink(mnt / "a")
    with open(mnt / "b", "r+b") as f:
        f.write(b"changed")
    mounted.remount()
    assert (mnt / "b").read_bytes() == b"changed" + block[7:] + bytes(BS) + block
    assert (mnt / "c").read_bytes() == block * 2
    os.unlink(mnt / "b")
    (mnt / "d").write_bytes(block)
    mounted.remount()
    assert (mnt / "c").read_bytes() == block * 2
    assert (mnt / "d").read_bytes() == block
    mounted.umount()
    assert mounted.fsck().returncode == 0
