"""POSIX conformance in the style of pjdfstest, each case on a real mount. Permission bits,
ownership (chmod, chown, set-ID bits, utimes rules), sticky and set-group-ID
directories.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess

import pytest
from helpers import LocalStore, MegaFS, oserror
from posixlib import (
    ALICE,
    BOB,
    CAROL,
    OTHERS,
    RENAME_EXCHANGE,
    STAFF,
    as_user,
    mode_of,
    read_from,
    renameat2,
    user_errno,
    write_to,
)

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
