"""Shared by the POSIX conformance tests (tests/test_posix_*.py): the directory under test
(:class:`Target`; the ``target`` fixture is in conftest.py), users played by forked children
(:func:`as_user`), and renameat2(2).

The mount uses ``-o allow_other`` (with megafs' ``default_permissions``) so that
other users can be played: :func:`as_user` forks a child that drops to another
uid/gid set with ``setresuid``/``setresgid`` and works with paths relative to the
directory under test (its cwd), so the test's private tmp directories above the
mountpoint do not get in the way.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import stat
from pathlib import Path

from helpers import LocalStore, MegaFS

BS = 64 * 1024
ALICE, BOB, CAROL = 1000, 1001, 1002  # uids with no passwd entries: none are needed
STAFF, OTHERS = 2000, 2001  # gids
PATH_MAX = 4096
TICK = 0.02  # longer than the kernel's coarse clock tick, so consecutive stamps differ


# -- the directory under test ---------------------------------------------------------


class Target:
    """The directory under test and how to remount it."""

    def __init__(self, root: Path, other_fs: Path, megafs: MegaFS | None, options=()):
        self.root = root  # the tests' working directory, mode 0777
        self.other_fs = other_fs  # a directory on another filesystem (EXDEV)
        self.megafs = megafs
        self.options = options

    def remount(self) -> None:
        """Unmount and mount again with an empty cache directory (a no-op on local disk)."""
        if self.megafs is not None:
            self.megafs.umount()
            self.megafs.mount(fresh_cache=True, args=self.options)


def allow_other_mount(tmp_path: Path) -> MegaFS:
    """A fresh local-store filesystem (64 KiB blocks) mounted with ``-o allow_other``;
    the caller must call ``cleanup()``."""
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    try:
        fs.mkfs()
        fs.mount(args=("-o", "allow_other"))
    except BaseException:
        fs.cleanup()
        raise
    return fs


_KINDS = ["megafs"] + (["local-disk"] if os.environ.get("MEGAFS_POSIX_ON_LOCAL_DISK") else [])


def as_user(cwd, uid, gid, fn, *args, groups=()):
    """Run ``fn(*args)`` in a child process with cwd *cwd* and all uids *uid*, all gids
    *gid* and supplementary *groups*; return its result or raise the OSError it raised."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        code = 0
        try:
            os.close(r)
            os.chdir(cwd)
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                result = ("ok", fn(*args))
            except OSError as e:
                result = ("oserror", e.errno, str(e))
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                result = ("exception", repr(e))
            data = pickle.dumps(result)
            while data:
                data = data[os.write(w, data):]
        except BaseException:  # noqa: BLE001
            code = 99
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while chunk := f.read():
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "as_user child failed"
    result = pickle.loads(b"".join(chunks))
    if result[0] == "oserror":
        raise OSError(result[1], result[2])
    if result[0] == "exception":
        raise AssertionError(f"as_user({uid}): {result[1]}")
    return result[1]


def user_errno(cwd, uid, gid, fn, *args, groups=()) -> int:
    """errno of ``fn(*args)`` run as *uid*, 0 if it succeeded."""
    try:
        as_user(cwd, uid, gid, fn, *args, groups=groups)
    except OSError as e:
        return e.errno
    return 0


def mode_of(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write_to(path, data: bytes = b"x", flags: int = os.O_WRONLY | os.O_APPEND) -> None:
    fd = os.open(path, flags, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def read_from(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# -- renameat2 -------------------------------------------------------------------------

RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
AT_FDCWD = -100
libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]


def renameat2(old, new, flags: int) -> None:
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))
