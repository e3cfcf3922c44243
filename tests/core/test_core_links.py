"""Link counts in the core: files (one per name), directories (2 + subdirectories),
through link, unlink, rmdir and rename, with lookups and open handles held."""

from __future__ import annotations

import errno
import os

import pytest
from corelib import FILE, RENAME_EXCHANGE, attr, fs_errno


async def test_hard_links(core):
    core.mkdir("sub")
    ino = await core.create("a", b"shared")
    core.link("a", "sub/b")
    core.link("sub/b", "c")
    assert {core.ino(p) for p in ("a", "sub/b", "c")} == {ino}
    assert [core.nlink(p) for p in ("a", "sub/b", "c")] == [3, 3, 3]
    core.fs.open(ino)
    await core.fs.write(ino, 6, b" data")
    core.fs.release(ino)
    assert await core.read("c") == b"shared data"
    core.unlink("a")
    assert core.nlink("sub/b") == 2 and core.nlink("c") == 2
    core.unlink("sub/b")
    assert core.nlink("c") == 1
    assert await core.read("c") == b"shared data"


@pytest.mark.parametrize("target, new, err", [
    ("d", "dirlink", errno.EPERM),  # no hard links to directories
    ("f", "g", errno.EEXIST),  # the new name exists
    ("f", "d", errno.EEXIST),  # ... as a directory
    ("f", "g/x", errno.ENOTDIR),  # the new parent is a file
    ("f", "n" * 256, errno.ENAMETOOLONG),
])
async def test_link_fails(core, target, new, err):
    core.mkdir("d")
    await core.create("f", b"f")
    await core.create("g", b"g")
    before = core.tree()
    assert fs_errno(core.link, target, new) == err
    assert core.tree() == before
    assert core.nlink("f") == 1


async def test_link_of_a_removed_inode_is_refused(core):
    """A name whose file is gone cannot be linked (the kernel sends the inode, and
    linkat of an unlinked file is refused before; here the inode no longer exists)."""
    ino = await core.create("f", b"f")
    core.unlink("f")
    assert fs_errno(core.fs.link, ino, 1, b"back") == errno.ENOENT
    assert core.names() == []


async def test_directory_link_counts(core):
    """Same sequence as the kernel test: mkdir, rename within and across parents, over
    an empty directory, exchange of a file and a directory, rmdir."""
    core.mkdir("a", "b")
    base = core.nlink("")

    def nlinks():
        return (core.nlink(""), core.nlink("a"), core.nlink("b"))

    core.mkdir("a/sub0", "a/sub1", "a/sub2")
    await core.create("a/file")
    core.make("a/fifo", 0o10644)
    core.symlink("a/link", "sub0")
    assert nlinks() == (base, 5, 2)
    core.rename("a/sub0", "b/sub0")
    assert nlinks() == (base, 4, 3)
    core.rename("a/sub1", "a/sub1-renamed")  # same parent
    assert nlinks() == (base, 4, 3)
    core.rename("a/sub1-renamed", "b/sub0")  # over an empty directory
    assert nlinks() == (base, 3, 3)
    core.rename("a/file", "b/sub0", RENAME_EXCHANGE)  # file <-> directory
    assert nlinks() == (base, 4, 2)
    core.rmdir("a/sub2")
    assert nlinks() == (base, 3, 2)
    core.rename("a", "b/a")
    assert (core.nlink(""), core.nlink("b"), core.nlink("b/a")) == (base - 1, 3, 3)
    assert core.nlink("b/a/file") == 2  # the directory that was exchanged in


async def test_mkdir_and_rmdir_count_in_the_parent(core):
    assert core.nlink("") == 2
    core.mkdir("d", "d/e", "d/e/f", "d/g")
    await core.create("d/file", b"x")
    assert (core.nlink(""), core.nlink("d"), core.nlink("d/e"), core.nlink("d/e/f")) == \
        (3, 4, 3, 2)
    assert core.nlink("d/file") == 1
    core.rmdir("d/g")
    assert core.nlink("d") == 3
    core.rmdir("d/e/f")
    assert core.nlink("d/e") == 2
    core.rmdir("d/e")
    core.unlink("d/file")
    core.rmdir("d")
    assert core.nlink("") == 2 and core.names() == []


@pytest.mark.parametrize("how, path, err", [
    ("rmdir", "d", errno.ENOTEMPTY),
    ("rmdir", "d/file", errno.ENOTDIR),
    ("rmdir", "missing", errno.ENOENT),
    ("unlink", "d", errno.EISDIR),
    ("unlink", "d/sub", errno.EISDIR),
    ("unlink", "missing", errno.ENOENT),
    ("unlink", "d/file/x", errno.ENOENT),  # a file has no entries (the kernel never asks)
])
async def test_remove_fails(core, how, path, err):
    core.mkdir("d", "d/sub")
    await core.create("d/file", b"x")
    before = core.tree()
    fn = core.rmdir if how == "rmdir" else core.unlink
    assert fs_errno(fn, path) == err
    assert core.tree() == before
    assert core.nlink("d") == 3


async def test_unlinked_open_file_lives_until_released(core):
    data = os.urandom(3 * core.bs + 123)
    ino = await core.create("victim", data)
    await core.fs.uploader.flush()  # stored, not only cached
    core.fs.open(ino)
    core.unlink("victim")
    assert core.names() == []
    assert attr(core.fs.getattr(ino), "nlink") == 0
    assert await core.fs.read(ino, 0, len(data) + 10) == data
    await core.fs.write(ino, core.bs, b"still writable")
    assert await core.fs.read(ino, core.bs, 14) == b"still writable"
    new = await core.create("victim", b"a new file by the same name")
    assert new != ino
    assert await core.fs.read(ino, 0, 10) == data[:10]
    await core.fs.uploader.flush()
    core.fs.release(ino)
    assert fs_errno(core.fs.getattr, ino) == errno.ENOENT
    assert core.fs.blockmap.stats()["blocks"] == 1  # the new file's only
    assert await core.read("victim") == b"a new file by the same name"


async def test_unlinked_file_lives_while_the_kernel_holds_a_lookup(core):
    row = core.fs.make(1, b"f", FILE, 0, 0)  # one lookup held
    ino = row[0]
    core.unlink("f")
    assert attr(core.fs.getattr(ino), "nlink") == 0
    core.fs.open(ino)
    core.fs.forget(ino, 1)
    assert attr(core.fs.getattr(ino), "nlink") == 0  # still open
    core.fs.release(ino)
    assert fs_errno(core.fs.getattr, ino) == errno.ENOENT


async def test_removed_directory_held_by_a_lookup(core):
    core.mkdir("d", "d/sub")
    row = core.fs.lookup(core.ino("d"), b"sub")
    core.rmdir("d/sub")
    assert attr(core.fs.getattr(row[0]), "nlink") == 0
    assert core.fs.readdir(row[0], 0) == []
    assert core.nlink("d") == 2
    core.fs.forget(row[0], 1)
    assert fs_errno(core.fs.getattr, row[0]) == errno.ENOENT
    core.rmdir("d")
    assert core.nlink("") == 2


async def test_rename_over_a_file_with_other_links(core):
    await core.create("src", b"new")
    old = await core.create("dst", b"old")
    core.link("dst", "keep")
    core.rename("src", "dst")
    assert core.nlink("keep") == 1 and core.ino("keep") == old
    assert await core.read("keep") == b"old"
    assert await core.read("dst") == b"new"
