"""Extended attributes in the core: the setxattr flags, list, remove, times, and no
leftovers on an inode number used again.

(The FUSE adapter passes flags 0 to ``Filesystem.setxattr``: pyfuse3 emulates
XATTR_CREATE/XATTR_REPLACE with a getxattr first. The end-to-end test of the flags
covers that path; these cover the core's own handling.)"""

from __future__ import annotations

import errno
import os

import pytest
from corelib import XATTR_CREATE, XATTR_REPLACE, attr, fs_errno

# (exists before, flags, errno or None)
FLAGS = [
    (True, XATTR_CREATE, errno.EEXIST),
    (False, XATTR_REPLACE, errno.ENODATA),
    (True, XATTR_REPLACE, None),
    (False, XATTR_CREATE, None),
    (True, 0, None),
    (False, 0, None),
]


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize("exists, flags, err", FLAGS,
                         ids=[f"{'existing' if e else 'missing'}-flags{f}" for e, f, _ in FLAGS])
async def test_setxattr_flags(core, kind, exists, flags, err):
    if kind == "file":
        ino = await core.create("x", b"")
    else:
        core.mkdir("x")
        ino = core.ino("x")
    core.fs.setxattr(ino, b"user.other", b"o", 0)
    if exists:
        core.fs.setxattr(ino, b"user.a", b"old", 0)
    if err is None:
        core.fs.setxattr(ino, b"user.a", b"new", flags)
        assert core.fs.getxattr(ino, b"user.a") == b"new"
    else:
        assert fs_errno(core.fs.setxattr, ino, b"user.a", b"new", flags) == err
        if exists:
            assert core.fs.getxattr(ino, b"user.a") == b"old"
        else:
            assert fs_errno(core.fs.getxattr, ino, b"user.a") == errno.ENODATA
    want = {b"user.other"} | ({b"user.a"} if exists or err is None else set())
    assert set(core.fs.listxattr(ino)) == want
    assert core.fs.getxattr(ino, b"user.other") == b"o"


async def test_list_get_remove(core):
    ino = await core.create("f")
    big = os.urandom(65536)
    assert core.fs.listxattr(ino) == []
    assert fs_errno(core.fs.getxattr, ino, b"user.none") == errno.ENODATA
    core.fs.setxattr(ino, b"user.one", b"1", 0)
    core.fs.setxattr(ino, b"user.bin", b"\0\x01\xff" + big, 0)
    core.fs.setxattr(ino, b"user.empty", b"", 0)
    core.fs.setxattr(ino, b"trusted.t", b"t", 0)
    assert sorted(core.fs.listxattr(ino)) == [b"trusted.t", b"user.bin", b"user.empty",
                                              b"user.one"]
    assert core.fs.getxattr(ino, b"user.bin") == b"\0\x01\xff" + big
    assert core.fs.getxattr(ino, b"user.empty") == b""
    core.fs.setxattr(ino, b"user.one", b"replaced", 0)
    assert core.fs.getxattr(ino, b"user.one") == b"replaced"
    core.fs.removexattr(ino, b"user.bin")
    assert fs_errno(core.fs.getxattr, ino, b"user.bin") == errno.ENODATA
    assert fs_errno(core.fs.removexattr, ino, b"user.bin") == errno.ENODATA
    assert fs_errno(core.fs.removexattr, ino, b"user.never") == errno.ENODATA
    for name in (b"user.one", b"user.empty", b"trusted.t"):
        core.fs.removexattr(ino, name)
    assert core.fs.listxattr(ino) == []


async def test_xattrs_are_per_inode_and_shared_by_hard_links(core):
    a = await core.create("a")
    b = await core.create("b")
    core.link("a", "a2")
    core.fs.setxattr(a, b"user.x", b"on a", 0)
    assert core.fs.getxattr(core.ino("a2"), b"user.x") == b"on a"
    assert core.fs.listxattr(b) == []
    assert fs_errno(core.fs.getxattr, b, b"user.x") == errno.ENODATA


async def test_set_and_remove_change_ctime_only(core):
    ino = await core.create("f", b"x")
    old = 10**18
    await core.fs.setattr(ino, {"mtime_ns": old, "ctime_ns": old})
    core.fs.setxattr(ino, b"user.a", b"1", 0)
    row = core.fs.getattr(ino)
    assert attr(row, "ctime_ns") > old and attr(row, "mtime_ns") == old
    await core.fs.setattr(ino, {"ctime_ns": old})
    core.fs.removexattr(ino, b"user.a")
    assert attr(core.fs.getattr(ino), "ctime_ns") > old
    await core.fs.setattr(ino, {"ctime_ns": old})
    assert fs_errno(core.fs.setxattr, ino, b"user.b", b"2", XATTR_REPLACE) == errno.ENODATA
    assert attr(core.fs.getattr(ino), "ctime_ns") == old  # a refused change changes nothing


async def test_no_xattrs_on_an_inode_number_used_again(core):
    """Inode numbers are reused once an inode is purged: its attributes must be gone."""
    old = await core.create("f")
    core.fs.setxattr(old, b"user.secret", b"of the old file", 0)
    core.unlink("f")
    new = await core.create("g")
    assert new == old  # the numbering reuses it (else this test proves less)
    assert core.fs.listxattr(new) == []
    assert fs_errno(core.fs.getxattr, new, b"user.secret") == errno.ENODATA
