"""POSIX conformance in the style of pjdfstest, each case on a real mount. Directories
(ENOTEMPTY, EXDEV) and rename corner cases.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import errno
import os
import subprocess

from helpers import oserror
from posixlib import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    allow_other_mount,
    renameat2,
)

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
