"""POSIX conformance in the style of pjdfstest, each case on a real mount. Names and
symlinks (PATH_MAX, ENAMETOOLONG), extended attributes and ACLs.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat

from helpers import oserror
from posixlib import (
    PATH_MAX,
    libc,
    read_from,
)

# -- names and symlinks -------------------------------------------------------------------


def test_symlink_targets_up_to_path_max(target):
    root = target.root
    longest = ("d" * 254 + "/") * 17
    longest = longest[:PATH_MAX - 1]  # 4095 bytes plus the NUL: PATH_MAX
    os.symlink(longest, root / "longest")
    assert oserror(os.symlink, longest + "x", root / "too-long") == errno.ENAMETOOLONG
    utf8 = "é" * 2047  # 4094 bytes
    os.symlink(utf8, root / "utf8")
    binary = b"\xff\xfe/\x01" * 1000
    os.symlink(binary, os.fsencode(root / "binary"))

    def check():
        assert os.readlink(root / "longest") == longest
        assert os.lstat(root / "longest").st_size == PATH_MAX - 1
        assert os.readlink(root / "utf8") == utf8
        assert os.lstat(root / "utf8").st_size == len(utf8.encode())
        assert os.readlink(os.fsencode(root / "binary")) == binary
        assert oserror(os.stat, root / "longest") == errno.ENOENT
        assert not (root / "too-long").exists()

    check()
    target.remount()
    check()
    # a target that resolves: 4095 bytes of "./" ending in a real file
    (root / "real").write_bytes(b"reached")
    via = "./" * ((PATH_MAX - 1 - len("real")) // 2) + "real"
    os.symlink(via, root / "via")
    assert read_from(root / "via") == b"reached"


def test_name_too_long_everywhere(target):
    root = target.root
    (root / "f").write_bytes(b"")
    (root / "d").mkdir()
    bad = "n" * 256
    for fn, args in [(os.mkfifo, (root / bad,)), (os.mknod, (root / bad, stat.S_IFREG)),
                     (os.mkdir, (root / "d" / bad,)), (os.stat, (root / bad,)),
                     (os.unlink, (root / bad,)), (os.rmdir, (root / bad,)),
                     (os.rename, (root / bad, root / "g")), (os.chmod, (root / bad, 0o600)),
                     (os.setxattr, (root / "f", "user." + "x" * 251, b"v")),
                     (os.getxattr, (root / "f", "user." + "x" * 251))]:
        e = oserror(fn, *args)
        assert e in (errno.ENAMETOOLONG, errno.ERANGE), (fn.__name__, errno.errorcode[e])
        assert e == (errno.ERANGE if "xattr" in fn.__name__ else errno.ENAMETOOLONG)
    # whole paths longer than PATH_MAX fail in the kernel ...
    too_long_path = str(root) + ("/" + "p" * 200) * 21
    assert oserror(os.stat, too_long_path) == errno.ENAMETOOLONG
    # ... but the filesystem itself has no limit on depth: build one deeper than PATH_MAX
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(25):
            name = f"{i:02d}" + "p" * 240
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open("leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    target.remount()
    deep = str(root)
    fd = os.open(deep, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(25):
            nfd = os.open(f"{i:02d}" + "p" * 240, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        assert os.listdir(fd) == ["leaf"]
    finally:
        os.close(fd)
    shutil.rmtree(root / ("00" + "p" * 240))  # rmtree works through fds
    assert sorted(os.listdir(root)) == ["d", "f"]


def test_xattr_size_limits(target):
    root = target.root
    p = root / "f"
    p.write_bytes(b"")
    big = 65536 if target.megafs else 3000  # ext4 keeps values in one block
    os.setxattr(p, "user.max", b"v" * big)
    assert os.getxattr(p, "user.max") == b"v" * big
    assert oserror(os.setxattr, p, "user.toobig", b"v" * 65537) == errno.E2BIG
    os.setxattr(p, "user." + "n" * 250, b"long name")
    target.remount()
    assert os.getxattr(p, "user.max") == b"v" * big
    assert os.getxattr(p, "user." + "n" * 250) == b"long name"
    # a buffer too small for the value
    buf = ctypes.create_string_buffer(10)
    libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                               ctypes.c_size_t]
    assert libc.getxattr(os.fsencode(p), b"user.max", buf, 10) == -1
    assert ctypes.get_errno() == errno.ERANGE
    assert libc.getxattr(os.fsencode(p), b"user.max", None, 0) == big


def test_xattr_create_and_replace_flags(target):
    p = target.root / "f"
    p.write_bytes(b"")
    os.setxattr(p, "user.a", b"1", os.XATTR_CREATE)
    assert oserror(os.setxattr, p, "user.a", b"2", os.XATTR_CREATE) == errno.EEXIST
    assert oserror(os.setxattr, p, "user.b", b"2", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(p, "user.a", b"3", os.XATTR_REPLACE)
    assert os.getxattr(p, "user.a") == b"3"
    assert os.listxattr(p) == ["user.a"]


def test_xattrs_on_symlinks_and_special_files(target):
    root = target.root
    (root / "f").write_bytes(b"")
    os.symlink("f", root / "l")
    os.mkfifo(root / "p")
    # user.* attributes are not allowed on symlinks (EPERM from the kernel); trusted.* are
    e = oserror(lambda: os.setxattr(root / "l", "user.x", b"v", follow_symlinks=False))
    assert e == errno.EPERM
    os.setxattr(root / "l", "trusted.x", b"on the link", follow_symlinks=False)
    os.setxattr(root / "l", "user.y", b"through the link")  # lands on f
    assert os.getxattr(root / "f", "user.y") == b"through the link"
    assert os.getxattr(root / "l", "trusted.x", follow_symlinks=False) == b"on the link"
    assert oserror(os.setxattr, root / "p", "user.x", b"v") == errno.EPERM
    os.setxattr(root / "p", "trusted.t", b"on a fifo")
    target.remount()
    assert os.getxattr(root / "l", "trusted.x", follow_symlinks=False) == b"on the link"
    assert os.getxattr(root / "p", "trusted.t") == b"on a fifo"


def test_posix_acls_are_not_supported(target):
    """No POSIX ACLs (see docs/posix.md): the system.posix_acl_* attributes are refused
    with EOPNOTSUPP, and the modes alone decide."""
    if target.megafs is None:
        return
    p = target.root / "f"
    p.write_bytes(b"")
    # a minimal ACL (user::rw- group::r-- other::r--) in the kernel's xattr format
    acl = (b"\x02\x00\x00\x00" + b"\x01\x00\x06\x00\xff\xff\xff\xff"
           + b"\x04\x00\x04\x00\xff\xff\xff\xff" + b"\x20\x00\x04\x00\xff\xff\xff\xff")
    assert oserror(os.setxattr, p, "system.posix_acl_access", acl) == errno.EOPNOTSUPP
    assert oserror(os.getxattr, p, "system.posix_acl_access") in (errno.EOPNOTSUPP,
                                                                  errno.ENODATA)
