"""POSIX conformance in the style of pjdfstest, each case on a real mount. Special files:
FIFOs, Unix sockets, device nodes.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

from helpers import oserror
from posixlib import (
    ALICE,
    as_user,
    read_from,
    user_errno,
)

# -- special files -----------------------------------------------------------------------


def test_fifo(target):
    root = target.root
    umask = os.umask(0o002)
    try:
        os.mkfifo(root / "fifo", 0o627)
    finally:
        os.umask(umask)
    st = os.stat(root / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o625
    assert st.st_size == 0
    target.remount()
    assert stat.S_ISFIFO(os.stat(root / "fifo").st_mode)
    payload = os.urandom(200_000)  # more than a pipe buffer
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with open(root / "fifo", "wb") as w:
                w.write(payload)
            code = 0
        finally:
            os._exit(code)
    with open(root / "fifo", "rb") as r:
        got = r.read()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert got == payload
    assert os.stat(root / "fifo").st_size == 0
    # a non-root user may make FIFOs too
    as_user(root, ALICE, ALICE, os.mkfifo, "alices-fifo")
    assert stat.S_ISFIFO(os.stat(root / "alices-fifo").st_mode)
    assert oserror(os.open, root / "fifo", os.O_WRONLY | os.O_NONBLOCK) == errno.ENXIO


def test_unix_socket(target):
    root = target.root
    cwd = os.getcwd()
    os.chdir(root)  # socket paths are limited to 107 bytes: bind relative to cwd
    try:
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind("sock")
        srv.listen()
        with srv:
            assert stat.S_ISSOCK(os.stat(root / "sock").st_mode)
            cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            cli.connect("sock")
            conn, _ = srv.accept()
            with cli, conn:
                cli.sendall(b"ping")
                assert conn.recv(4) == b"ping"
    finally:
        os.chdir(cwd)
    assert oserror(os.open, root / "sock", os.O_RDONLY) == errno.ENXIO
    target.remount()
    assert stat.S_ISSOCK(os.stat(root / "sock").st_mode)
    os.unlink(root / "sock")


def test_device_nodes(target):
    root = target.root
    os.umask(umask := os.umask(0))
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(root / "loop", stat.S_IFBLK | 0o640, os.makedev(7, 1234))
    big = os.makedev(4000, 1 << 19)  # majors and minors beyond 8 bits
    os.mknod(root / "big", stat.S_IFCHR | 0o600, big)
    os.mknod(root / "reg", stat.S_IFREG | 0o640)
    os.mknod(root / "fifo", stat.S_IFIFO | 0o600)

    def check():
        st = os.stat(root / "null")
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666 & ~umask
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
        st = os.stat(root / "loop")
        assert stat.S_ISBLK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (7, 1234)
        assert os.stat(root / "big").st_rdev == big
        st = os.stat(root / "reg")
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_rdev == 0
        assert stat.S_ISFIFO(os.stat(root / "fifo").st_mode)

    check()
    target.remount()
    check()
    assert read_from(root / "reg") == b""
    # only root may make devices
    assert user_errno(root, ALICE, ALICE, os.mknod, "dev", stat.S_IFCHR | 0o600,
                      os.makedev(1, 3)) == errno.EPERM
    os.link(root / "null", root / "null2")
    assert os.stat(root / "null").st_nlink == 2
    os.rename(root / "loop", root / "loop2")
    assert os.stat(root / "loop2").st_rdev == os.makedev(7, 1234)


def test_device_nodes_cannot_be_opened_nodev(target):
    """megafs mounts are nodev (libfuse's default, and mount.megafs drops ``-o dev``):
    device nodes can be made but not opened."""
    if target.megafs is None:
        return  # a local-disk reference is typically not nodev
    os.mknod(target.root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert oserror(os.open, target.root / "null", os.O_RDONLY) == errno.EACCES
