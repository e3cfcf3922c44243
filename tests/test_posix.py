"""POSIX conformance in the style of pjdfstest, each case on a real mount.

The mount uses ``-o allow_other`` (with megafs' ``default_permissions``) so that
other users can be played: :func:`as_user` forks a child that drops to another
uid/gid set with ``setresuid``/``setresgid`` and works with paths relative to the
directory under test (its cwd), so the test's private tmp directories above the
mountpoint do not get in the way.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from helpers import LocalStore, MegaFS, oserror

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


@pytest.fixture(params=_KINDS)
def target(request, tmp_path):
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
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]


def renameat2(old, new, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(old))


# -- permission bits -------------------------------------------------------------------


def test_file_permission_bits_for_owner_group_and_others(target):
    root = target.root
    p = root / "f"
    p.write_bytes(b"secret")
    os.chown(p, ALICE, STAFF)
    os.chmod(p, 0o640)

    def check():
        as_user(root, ALICE, ALICE, lambda: os.truncate("f", 6))
        assert as_user(root, ALICE, ALICE, read_from, "f") == b"secret"
        as_user(root, ALICE, ALICE, write_to, "f", b"+alice")
        assert as_user(root, BOB, BOB, read_from, "f", groups=[STAFF]) == b"secret+alice"
        assert user_errno(root, BOB, BOB, write_to, "f", groups=[STAFF]) == errno.EACCES
        assert user_errno(root, CAROL, CAROL, read_from, "f") == errno.EACCES
        assert user_errno(root, CAROL, CAROL, write_to, "f") == errno.EACCES
        assert as_user(root, CAROL, CAROL, os.access, "f", os.R_OK) is False
        assert as_user(root, BOB, BOB, os.access, "f", os.R_OK, groups=[STAFF]) is True

    check()
    target.remount()
    check()
    # the owner class decides for the owner, even when group or others may do more
    os.chmod(p, 0o066)
    assert user_errno(root, ALICE, STAFF, read_from, "f", groups=[STAFF]) == errno.EACCES
    assert as_user(root, BOB, BOB, read_from, "f") == b"secret+alice"
    # a member of the group is judged by the group bits, not by the others bits
    os.chmod(p, 0o604)
    assert user_errno(root, BOB, BOB, read_from, "f", groups=[STAFF]) == errno.EACCES
    assert as_user(root, CAROL, CAROL, read_from, "f") == b"secret+alice"
    # root reads and writes whatever the mode, but executes only if some x bit is set
    os.chmod(p, 0o000)
    assert read_from(p) == b"secret+alice"
    write_to(p, b"!")
    assert oserror(subprocess.run, [str(p)]) == errno.EACCES


def test_directory_permission_bits(target):
    root = target.root
    d = root / "d"
    d.mkdir()
    (d / "inside").write_bytes(b"in")
    os.chown(d, ALICE, ALICE)
    os.chmod(d, 0o755)
    # no write permission: no create, unlink, rename, mkdir, symlink, link
    for fn, args in [(write_to, ("d/new", b"", os.O_CREAT | os.O_WRONLY)),
                     (os.unlink, ("d/inside",)), (os.rename, ("d/inside", "d/moved")),
                     (os.mkdir, ("d/sub",)), (os.symlink, ("x", "d/link")),
                     (os.mkfifo, ("d/fifo",))]:
        assert user_errno(root, BOB, BOB, fn, *args) == errno.EACCES, fn.__name__
    assert as_user(root, BOB, BOB, read_from, "d/inside") == b"in"
    # the owner may
    as_user(root, ALICE, ALICE, write_to, "d/new", b"", os.O_CREAT | os.O_WRONLY)
    assert os.stat(d / "new").st_uid == ALICE
    # read without search: names are listed, but nothing inside can be reached
    os.chmod(d, 0o744)
    assert sorted(as_user(root, BOB, BOB, os.listdir, "d")) == ["inside", "new"]
    assert user_errno(root, BOB, BOB, os.stat, "d/inside") == errno.EACCES
    # search without read: known names are reachable, the listing is not
    os.chmod(d, 0o711)
    assert user_errno(root, BOB, BOB, os.listdir, "d") == errno.EACCES
    assert as_user(root, BOB, BOB, read_from, "d/inside") == b"in"
    # neither
    os.chmod(d, 0o700)
    assert user_errno(root, BOB, BOB, os.stat, "d/inside") == errno.EACCES
    assert user_errno(root, BOB, BOB, os.chdir, "d") == errno.EACCES
    # write + search for others: everybody may create and remove
    os.chmod(d, 0o777)
    as_user(root, BOB, BOB, os.unlink, "d/inside")
    as_user(root, BOB, BOB, os.mkdir, "d/bobs")
    assert os.stat(d / "bobs").st_uid == BOB
    # moving a directory to another parent needs write permission on it (for its "..")
    os.mkdir(root / "d2", 0o777)
    os.chmod(root / "d2", 0o777)
    os.mkdir(d / "alices")
    os.chown(d / "alices", ALICE, ALICE)
    os.chmod(d / "alices", 0o755)
    assert user_errno(root, BOB, BOB, os.rename, "d/alices", "d2/alices") == errno.EACCES
    as_user(root, ALICE, ALICE, os.rename, "d/alices", "d2/alices")


def test_default_mode_honours_umask(target):
    root = target.root

    def make_all():
        os.umask(0o027)
        write_to("f", b"", os.O_CREAT | os.O_WRONLY)
        os.mkdir("d")
        os.mkfifo("p")
        os.symlink("f", "l")
        return True

    as_user(root, ALICE, ALICE, make_all)
    assert mode_of(root / "f") == 0o640  # 0o666 & ~0o027
    assert mode_of(root / "d") == 0o750
    assert mode_of(root / "p") == 0o640
    assert mode_of(root / "l") == 0o777
    for name in ("f", "d", "p", "l"):
        st = os.lstat(root / name)
        assert (st.st_uid, st.st_gid) == (ALICE, ALICE), name


def test_execute_scripts_and_binaries(target):
    root = target.root
    script = root / "script.sh"
    script.write_text("#!/bin/sh\necho \"args: $*\"\nexit 7\n")
    os.chmod(script, 0o755)
    proc = subprocess.run([str(script), "a", "b"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (7, "args: a b\n")
    binary = root / "true-copy"
    shutil.copy2("/bin/true", binary)  # executing it maps the file with PROT_EXEC
    assert subprocess.run([str(binary)]).returncode == 0
    os.chmod(binary, 0o700)
    assert user_errno(root, ALICE, ALICE, subprocess.run, ["./true-copy"]) == errno.EACCES
    os.chmod(binary, 0o755)
    assert as_user(root, ALICE, ALICE, lambda: subprocess.run(["./true-copy"]).returncode) == 0


def test_without_allow_other_other_users_are_locked_out(tmp_path):
    """FUSE's own rule: only the mounting user (and root) may use a mount without
    ``allow_other``; everyone else gets EACCES, whatever the modes."""
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    try:
        fs.mkfs()
        fs.mount()
        os.chmod(fs.mnt, 0o777)
        (fs.mnt / "f").write_bytes(b"x")
        os.chmod(fs.mnt / "f", 0o666)
        assert user_errno(tmp_path, ALICE, ALICE, os.stat, "mnt/f") == errno.EACCES
    finally:
        fs.cleanup()


def test_open_flags(target):
    root = target.root
    (root / "f").write_bytes(b"data")
    (root / "d").mkdir()
    os.symlink("f", root / "l")
    os.symlink("nowhere", root / "dangling")
    cases = [
        ("f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, errno.EEXIST),
        ("dangling", os.O_CREAT | os.O_EXCL | os.O_WRONLY, errno.EEXIST),
        ("l", os.O_RDONLY | os.O_NOFOLLOW, errno.ELOOP),
        ("f", os.O_RDONLY | os.O_DIRECTORY, errno.ENOTDIR),
        ("d", os.O_WRONLY, errno.EISDIR),
        ("d", os.O_RDWR, errno.EISDIR),
        ("d", os.O_CREAT | os.O_WRONLY, errno.EISDIR),
        ("f/x", os.O_CREAT | os.O_WRONLY, errno.ENOTDIR),
        ("missing/x", os.O_CREAT | os.O_WRONLY, errno.ENOENT),
    ]
    for name, flags, err in cases:
        assert oserror(os.open, root / name, flags, 0o644) == err, (name, flags)
    # O_CREAT through a dangling symlink creates its target
    os.close(os.open(root / "dangling", os.O_CREAT | os.O_WRONLY, 0o644))
    assert (root / "nowhere").exists()
    # O_NOFOLLOW on a regular file is fine; O_PATH opens symlinks themselves
    os.close(os.open(root / "f", os.O_RDONLY | os.O_NOFOLLOW))
    fd = os.open(root / "l", os.O_PATH | os.O_NOFOLLOW)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    # permission is checked at open, not at use
    os.chmod(root / "f", 0o644)
    os.chown(root / "f", ALICE, ALICE)
    assert user_errno(root, BOB, BOB, write_to, "f") == errno.EACCES
    assert user_errno(root, BOB, BOB, os.truncate, "f", 0) == errno.EACCES

    def open_then_chmod():
        fd = os.open("f", os.O_WRONLY | os.O_APPEND)
        os.chmod("f", 0o400)
        os.write(fd, b"+still writable")
        os.close(fd)
        return True

    as_user(root, ALICE, ALICE, open_then_chmod)
    assert (root / "f").read_bytes() == b"data+still writable"


def test_symlink_ownership_is_its_own(target):
    root = target.root
    (root / "f").write_bytes(b"")
    os.symlink("f", root / "l")
    os.chown(root / "l", ALICE, STAFF, follow_symlinks=False)
    assert (os.lstat(root / "l").st_uid, os.lstat(root / "l").st_gid) == (ALICE, STAFF)
    assert (os.stat(root / "f").st_uid, os.stat(root / "f").st_gid) == (0, 0)
    os.chown(root / "l", BOB, -1)  # follows
    assert os.stat(root / "f").st_uid == BOB and os.lstat(root / "l").st_uid == ALICE
    target.remount()
    assert os.lstat(root / "l").st_uid == ALICE and os.stat(root / "f").st_uid == BOB


# -- ownership -------------------------------------------------------------------------


def test_chown_and_chmod_rules(target):
    root = target.root
    p = root / "f"
    p.write_bytes(b"x")
    os.chown(p, ALICE, STAFF)
    os.chmod(p, 0o644)
    # only the owner (or root) changes the mode
    assert user_errno(root, BOB, STAFF, os.chmod, "f", 0o666, groups=[STAFF]) == errno.EPERM
    as_user(root, ALICE, ALICE, os.chmod, "f", 0o600, groups=[STAFF])
    assert mode_of(p) == 0o600
    # the owner may not give the file away ...
    assert user_errno(root, ALICE, ALICE, os.chown, "f", BOB, -1) == errno.EPERM
    # ... but may change the group to one of their own groups only
    as_user(root, ALICE, ALICE, os.chown, "f", -1, OTHERS, groups=[STAFF, OTHERS])
    assert os.stat(p).st_gid == OTHERS
    assert user_errno(root, ALICE, ALICE, os.chown, "f", -1, 4242,
                      groups=[STAFF]) == errno.EPERM
    # a no-op chown is allowed to the owner, not to others
    as_user(root, ALICE, ALICE, os.chown, "f", -1, -1)
    as_user(root, ALICE, ALICE, os.chown, "f", ALICE, -1)
    assert user_errno(root, BOB, BOB, os.chown, "f", BOB, -1) == errno.EPERM
    # the owner setting set-group-ID for a group they are not in: the bit is dropped
    os.chown(p, ALICE, STAFF)
    as_user(root, ALICE, ALICE, os.chmod, "f", 0o2755)
    assert mode_of(p) == 0o755
    as_user(root, ALICE, ALICE, os.chmod, "f", 0o2755, groups=[STAFF])
    assert mode_of(p) == 0o2755
    # root may do anything
    os.chown(p, CAROL, 4242)
    os.chmod(p, 0o7777)
    assert (os.stat(p).st_uid, os.stat(p).st_gid, mode_of(p)) == (CAROL, 4242, 0o7777)
    target.remount()
    assert (os.stat(p).st_uid, os.stat(p).st_gid, mode_of(p)) == (CAROL, 4242, 0o7777)


def test_chown_clears_setuid_and_setgid(target):
    root = target.root
    for name in ("by-root", "by-owner"):
        (root / name).write_bytes(b"#!/bin/sh\n")
        os.chown(root / name, ALICE, STAFF)
        os.chmod(root / name, 0o6755)
    os.chown(root / "by-root", BOB, -1)
    assert mode_of(root / "by-root") == 0o755
    as_user(root, ALICE, ALICE, os.chown, "by-owner", -1, OTHERS, groups=[OTHERS])
    assert mode_of(root / "by-owner") == 0o755
    # set-group-ID without group execute is not cleared
    (root / "sgid-noexec").write_bytes(b"")
    os.chmod(root / "sgid-noexec", 0o2644)
    os.chown(root / "sgid-noexec", BOB, -1)
    assert mode_of(root / "sgid-noexec") == 0o2644
    target.remount()
    assert mode_of(root / "by-root") == 0o755
    assert mode_of(root / "by-owner") == 0o755


@pytest.mark.parametrize("how", ["write", "truncate", "open-trunc"])
def test_modification_by_other_user_clears_setuid(target, how):
    """A write by someone else to a set-user-ID file must drop the set-ID bits."""
    root = target.root
    p = root / "suid"
    p.write_bytes(b"#!/bin/sh\nexit 0\n")
    os.chown(p, ALICE, STAFF)
    os.chmod(p, 0o6777)
    if how == "write":
        as_user(root, BOB, BOB, write_to, "suid", b"# appended\n")
    elif how == "truncate":
        as_user(root, BOB, BOB, os.truncate, "suid", 5)
    else:
        as_user(root, BOB, BOB, write_to, "suid", b"new", os.O_WRONLY | os.O_TRUNC)
    assert mode_of(p) == 0o777
    target.remount()
    assert mode_of(p) == 0o777


def test_utimes_permission_rules(target):
    root = target.root
    p = root / "f"
    p.write_bytes(b"x")
    os.chown(p, ALICE, ALICE)
    os.chmod(p, 0o666)
    past = (1_000_000_000_000_000_000, 1_000_000_000_000_000_000)
    # the owner sets any time
    as_user(root, ALICE, ALICE, lambda: os.utime("f", ns=past))
    assert os.stat(p).st_mtime_ns == past[1]
    # somebody with write permission may only set "now"
    assert user_errno(root, BOB, BOB, lambda: os.utime("f", ns=past)) == errno.EPERM
    as_user(root, BOB, BOB, os.utime, "f", None)
    assert os.stat(p).st_mtime_ns > past[1]
    # without write permission not even that
    os.chmod(p, 0o644)
    assert user_errno(root, BOB, BOB, os.utime, "f", None) == errno.EACCES
    assert user_errno(root, BOB, BOB, lambda: os.utime("f", ns=past)) == errno.EPERM


# -- sticky and set-group-ID directories ------------------------------------------------


def test_sticky_directory(target):
    root = target.root
    tmp = root / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    os.chown(tmp, CAROL, CAROL)

    def make(owner, name, directory=False):
        def go():
            if directory:
                os.mkdir(name)
            else:
                write_to(name, b"", os.O_CREAT | os.O_WRONLY)
            os.chmod(name, 0o777)
        as_user(root, owner, owner, go)

    make(ALICE, "tmp/alice")
    make(ALICE, "tmp/alice-dir", directory=True)
    make(BOB, "tmp/bob")
    # others may write to the file, but not remove or rename it, nor replace it by rename
    as_user(root, BOB, BOB, write_to, "tmp/alice", b"bob was here")
    assert user_errno(root, BOB, BOB, os.unlink, "tmp/alice") == errno.EPERM
    assert user_errno(root, BOB, BOB, os.rename, "tmp/alice", "tmp/x") == errno.EPERM
    assert user_errno(root, BOB, BOB, os.rename, "tmp/bob", "tmp/alice") == errno.EPERM
    assert user_errno(root, BOB, BOB, os.rmdir, "tmp/alice-dir") == errno.EPERM
    assert user_errno(root, BOB, BOB, renameat2, "tmp/bob", "tmp/alice",
                      RENAME_EXCHANGE) == errno.EPERM
    target.remount()
    assert sorted(os.listdir(tmp)) == ["alice", "alice-dir", "bob"]
    assert mode_of(tmp) == 0o1777
    # the file's owner may
    as_user(root, ALICE, ALICE, os.rename, "tmp/alice", "tmp/alice2")
    # the directory's owner may
    as_user(root, CAROL, CAROL, os.unlink, "tmp/alice2")
    as_user(root, CAROL, CAROL, os.rmdir, "tmp/alice-dir")
    # root may
    os.unlink(tmp / "bob")
    assert os.listdir(tmp) == []
    # without the sticky bit anybody with write permission may
    os.chmod(tmp, 0o777)
    make(ALICE, "tmp/alice")
    as_user(root, BOB, BOB, os.unlink, "tmp/alice")


def test_setgid_directory(target):
    root = target.root
    shared = root / "shared"
    shared.mkdir()
    os.chown(shared, ALICE, STAFF)
    os.chmod(shared, 0o2777)
    plain = root / "plain"
    plain.mkdir()
    os.chmod(plain, 0o777)

    def make_all(prefix):
        write_to(f"{prefix}/file", b"", os.O_CREAT | os.O_WRONLY)
        os.mkdir(f"{prefix}/dir")
        os.mkfifo(f"{prefix}/fifo")
        os.symlink("file", f"{prefix}/link")
        return True

    as_user(root, BOB, BOB, make_all, "shared")  # BOB is not in STAFF
    as_user(root, BOB, BOB, make_all, "plain")
    os.chmod(shared / "dir", 0o2777)

    def check():
        for name in ("file", "dir", "fifo", "link"):
            assert os.lstat(shared / name).st_gid == STAFF, name
            assert os.lstat(shared / name).st_uid == BOB, name
            assert os.lstat(plain / name).st_gid == BOB, name
        assert mode_of(shared / "dir") & stat.S_ISGID  # new directories inherit the bit
        assert not mode_of(shared / "file") & stat.S_ISGID
        assert not mode_of(plain / "dir") & stat.S_ISGID

    check()
    # a non-member asking for set-group-ID on a file in the group does not get it
    as_user(root, BOB, BOB, lambda: os.close(os.open("shared/x", os.O_CREAT, 0o2775)))
    assert mode_of(shared / "x") == 0o775 & ~0o022
    # nested: inherited through the new subdirectory
    as_user(root, CAROL, CAROL, os.mkdir, "shared/dir/deeper", 0o777)
    assert os.stat(shared / "dir" / "deeper").st_gid == STAFF
    assert mode_of(shared / "dir" / "deeper") & stat.S_ISGID
    target.remount()
    check()


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
    _libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                               ctypes.c_size_t]
    assert _libc.getxattr(os.fsencode(p), b"user.max", buf, 10) == -1
    assert ctypes.get_errno() == errno.ERANGE
    assert _libc.getxattr(os.fsencode(p), b"user.max", None, 0) == big


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


# -- directories, ENOTEMPTY, EXDEV ---------------------------------------------------------


def test_enotempty_and_friends(target):
    root = target.root
    d = root / "d"
    (d / "sub").mkdir(parents=True)
    assert oserror(os.rmdir, d) == errno.ENOTEMPTY
    (root / "e").mkdir()
    (root / "e" / "f").write_bytes(b"")
    assert oserror(os.rename, root / "e", d) == errno.ENOTEMPTY
    assert oserror(os.rename, d / "sub", root / "e") == errno.ENOTEMPTY
    assert oserror(renameat2, d / "sub", root / "e", RENAME_NOREPLACE) == errno.EEXIST
    assert oserror(os.rmdir, f"{d}/sub/.") == errno.EINVAL
    assert oserror(os.rmdir, f"{d}/sub/..") == errno.ENOTEMPTY
    assert oserror(os.rmdir, root / "e" / "f") == errno.ENOTDIR
    assert oserror(os.unlink, d) == errno.EISDIR
    # a directory whose only entry was unlinked while open is empty
    fd = os.open(root / "e" / "f", os.O_RDWR)
    try:
        os.unlink(root / "e" / "f")
        os.rmdir(root / "e")
        os.write(fd, b"still usable")
        assert os.pread(fd, 100, 0) == b"still usable"
    finally:
        os.close(fd)
    # an unlinked directory held open: it reads as empty, nothing may be created in it
    dfd = os.open(d / "sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(d / "sub")
        assert os.listdir(dfd) == []
        assert oserror(lambda: os.mkdir("x", dir_fd=dfd)) == errno.ENOENT
        assert oserror(lambda: os.open("x", os.O_CREAT | os.O_WRONLY, 0o600,
                                       dir_fd=dfd)) == errno.ENOENT
        assert os.fstat(dfd).st_nlink == 0
    finally:
        os.close(dfd)
    os.rmdir(d)
    assert os.listdir(root) == []


def test_exdev(target):
    root = target.root
    (root / "f").write_bytes(b"x")
    (root / "d").mkdir()
    other = target.other_fs / f"exdev-{os.getpid()}"
    other.write_bytes(b"y")
    try:
        assert oserror(os.rename, root / "f", other.with_suffix(".new")) == errno.EXDEV
        assert oserror(os.rename, other, root / "g") == errno.EXDEV
        assert oserror(os.rename, root / "d", other.with_suffix(".d")) == errno.EXDEV
        assert oserror(os.link, root / "f", other.with_suffix(".l")) == errno.EXDEV
        assert oserror(os.link, other, root / "l") == errno.EXDEV
        assert oserror(renameat2, root / "f", other, RENAME_EXCHANGE) == errno.EXDEV
        # mv falls back to copy + unlink
        subprocess.run(["mv", str(root / "f"), str(other.with_suffix(".mv"))], check=True)
        assert other.with_suffix(".mv").read_bytes() == b"x"
        assert not (root / "f").exists()
    finally:
        for p in (other, other.with_suffix(".mv")):
            p.unlink(missing_ok=True)


def test_exdev_between_two_megafs_mounts(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = allow_other_mount(tmp_path / "one")
    two = None
    try:
        two = allow_other_mount(tmp_path / "two")
        (one.mnt / "f").write_bytes(b"x")
        assert oserror(os.rename, one.mnt / "f", two.mnt / "f") == errno.EXDEV
        assert oserror(os.link, one.mnt / "f", two.mnt / "f") == errno.EXDEV
        assert os.stat(one.mnt).st_dev != os.stat(two.mnt).st_dev
    finally:
        one.cleanup()
        if two is not None:
            two.cleanup()


# -- rename corner cases ---------------------------------------------------------------


def test_rename_directory_into_its_own_subtree(target):
    root = target.root
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "x").write_bytes(b"")
    for dst in ("a/b/c/a", "a/b/a", "a/a"):
        assert oserror(os.rename, root / "a", root / dst) == errno.EINVAL, dst
        assert oserror(renameat2, root / "a", root / dst, RENAME_NOREPLACE) == errno.EINVAL
    assert oserror(renameat2, root / "a", root / "a/b/c", RENAME_EXCHANGE) == errno.EINVAL
    assert oserror(renameat2, root / "a/b/c", root / "a", RENAME_EXCHANGE) == errno.EINVAL
    # onto its own ancestor: the ancestor is not empty
    assert oserror(os.rename, root / "a/b/c", root / "a") == errno.ENOTEMPTY
    assert oserror(os.rename, f"{root}/a/b", f"{root}/a/b/c/.") in (errno.EINVAL, errno.EBUSY)
    assert oserror(os.rename, f"{root}/a/b/c/.", f"{root}/y") in (errno.EINVAL, errno.EBUSY)
    assert oserror(os.rename, f"{root}/x", f"{root}/a/b/c/.") in (errno.EEXIST, errno.EBUSY,
                                                                  errno.EISDIR)
    assert oserror(os.rename, str(root / "x") + "/", root / "y") == errno.ENOTDIR
    assert sorted(os.listdir(root)) == ["a", "x"]
    assert os.listdir(root / "a" / "b" / "c") == []


def test_rename_replaces_symlink_not_its_target(target):
    root = target.root
    (root / "t").write_bytes(b"target")
    os.symlink("t", root / "l")
    (root / "new").write_bytes(b"new")
    os.rename(root / "new", root / "l")
    assert (root / "t").read_bytes() == b"target"
    assert not os.path.islink(root / "l") and (root / "l").read_bytes() == b"new"
    # renaming a symlink moves the link itself
    os.symlink("t", root / "l2")
    (root / "d").mkdir()
    os.rename(root / "l2", root / "d" / "l2")
    assert os.readlink(root / "d" / "l2") == "t"
    assert oserror(os.stat, root / "d" / "l2") == errno.ENOENT  # relative to d now


def test_rename_of_open_files(target):
    root = target.root
    (root / "d").mkdir()
    fd = os.open(root / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"before ")
        os.rename(root / "f", root / "d" / "g")
        os.write(fd, b"after")
        assert (root / "d" / "g").read_bytes() == b"before after"
        (root / "h").write_bytes(b"replacement")
        os.rename(root / "h", root / "d" / "g")  # replaces the open file
        os.write(fd, b" orphan")
        assert os.pread(fd, 100, 0) == b"before after orphan"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    target.remount()
    assert (root / "d" / "g").read_bytes() == b"replacement"
    assert os.listdir(root / "d") == ["g"]


# -- sizes, holes, huge files ---------------------------------------------------------------


def test_truncate_to_one_petabyte_costs_nothing(target):
    root = target.root
    if target.megafs is not None:
        target.megafs.flush()
        before = target.megafs.store.total_bytes()
    p = root / "huge"
    PB = 1 << 50 if target.megafs else 1 << 40  # ext4 stops at 16 TiB
    t0 = time.monotonic()
    with open(p, "wb") as f:
        f.truncate(PB)
        f.seek(PB - 4)
        f.write(b"tail")
    os.truncate(root / "huge", PB + BS + 17)
    assert time.monotonic() - t0 < 2
    assert os.stat(p).st_size == PB + BS + 17

    def check():
        with open(p, "rb") as f:
            for off in (0, 12345, BS * 1000, 1 << 40, PB - BS - 1):
                f.seek(off)
                assert f.read(100) == bytes(100), off
            f.seek(PB - 8)
            assert f.read(100) == bytes(4) + b"tail" + bytes(92)
            f.seek(PB + BS + 10)
            assert f.read(100) == bytes(7)

    check()
    if target.megafs is not None:
        target.megafs.flush()
        grown = target.megafs.store.total_bytes() - before
        assert grown < 512 * 1024, f"the store grew by {grown} bytes"
    target.remount()
    assert os.stat(p).st_size == PB + BS + 17
    check()
    t0 = time.monotonic()
    os.truncate(p, 10)
    os.truncate(p, PB)
    assert time.monotonic() - t0 < 2
    with open(p, "rb") as f:
        f.seek(PB - 8)
        assert f.read() == bytes(8)
    # beyond what the filesystem supports: EFBIG, not a corrupt size
    assert oserror(os.truncate, p, (1 << 63) - 1) in (errno.EFBIG, errno.EINVAL)
    assert os.stat(p).st_size == PB
    st = os.stat(p)
    assert st.st_blocks * 512 <= 1 << 20, f"st_blocks={st.st_blocks} for an empty 1 PiB file"


def test_st_blocks_counts_allocated_data_only(target):
    """st_blocks is the space the data takes (du, cp --sparse, tar --sparse use it)."""
    root = target.root
    sparse = root / "sparse"
    with open(sparse, "wb") as f:
        f.seek(100 << 20)
        f.write(b"end")
    full = root / "full"
    full.write_bytes(os.urandom(3 * BS))
    empty = root / "empty"
    empty.write_bytes(b"")
    for _ in range(2):
        assert os.stat(full).st_blocks * 512 >= 3 * BS
        assert os.stat(empty).st_blocks == 0
        blocks = os.stat(sparse).st_blocks
        assert blocks * 512 <= 1 << 20, f"{blocks} blocks for a 100 MiB file holding 3 bytes"
        du = subprocess.run(["du", "-k", str(sparse)], capture_output=True, text=True,
                            check=True).stdout.split()[0]
        assert int(du) <= 1024, f"du says {du} KiB"
        target.remount()


def test_o_trunc_on_existing_file_survives_remount(target):
    root = target.root
    p = root / "f"
    p.write_bytes(b"a long first version of the file")
    p.write_bytes(b"short")  # open(O_WRONLY | O_CREAT | O_TRUNC)
    assert p.read_bytes() == b"short"
    big = root / "big"
    big.write_bytes(os.urandom(3 * BS))
    with open(big, "wb") as f:
        f.write(b"x" * 10)
    target.remount()
    assert p.read_bytes() == b"short"
    assert os.stat(p).st_size == 5
    assert big.read_bytes() == b"x" * 10


def test_o_trunc_of_empty_write(target):
    """open(O_TRUNC) with nothing written afterwards leaves an empty file."""
    root = target.root
    p = root / "f"
    p.write_bytes(os.urandom(2 * BS + 5))
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    assert os.stat(p).st_size == 0
    target.remount()
    assert os.stat(p).st_size == 0
    assert p.read_bytes() == b""


def test_holes_read_as_zeros_after_shrink_and_grow_in_place(target):
    root = target.root
    p = root / "f"
    data = os.urandom(2 * BS + 100)
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, BS // 2)
        os.pwrite(fd, b"z", 2 * BS + 50)  # grow by writing past the end
        expect = data[:BS // 2] + bytes(2 * BS + 50 - BS // 2) + b"z"
        assert os.pread(fd, 3 * BS, 0) == expect
    finally:
        os.close(fd)
    target.remount()
    assert p.read_bytes() == expect
