"""renameat2 in the core: the whole matrix, table-driven, on one standard tree.

The tree (``setup``)::

    f        file "F"            h1, h2   two names of one file "H"
    g        file "G"            l        symlink -> f
    e/       empty directory     a/b/c/   three nested directories
    n/x      directory with a file
"""

from __future__ import annotations

import errno
import stat

import pytest
from corelib import (
    DIR,
    GID,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    UID,
    attr,
    fs_errno,
)

NAME_MAX = 255


async def setup(core) -> dict[str, int]:
    """Make the standard tree; return {path: inode} of everything in it."""
    await core.create("f", b"F")
    await core.create("g", b"G")
    await core.create("h1", b"H")
    core.link("h1", "h2")
    core.symlink("l", "f")
    core.mkdir("e", "n", "a", "a/b", "a/b/c")
    await core.create("n/x", b"X")
    return {p: ino for p, (ino, _) in core.tree().items()}


# (id, old, new, flags, errno): the rename fails and nothing changes.
FAILS = [
    ("dir over non-empty dir", "e", "n", 0, errno.ENOTEMPTY),
    ("file over dir", "f", "e", 0, errno.EISDIR),
    ("symlink over dir", "l", "e", 0, errno.EISDIR),
    ("dir over file", "e", "f", 0, errno.ENOTDIR),
    ("dir over symlink", "e", "l", 0, errno.ENOTDIR),
    ("dir into its own subdirectory", "a", "a/b/c/a", 0, errno.EINVAL),
    ("dir into its own child", "a", "a/b/a", 0, errno.EINVAL),
    ("dir into itself", "a", "a/a", 0, errno.EINVAL),
    ("dir onto its non-empty ancestor", "a/b/c", "a", 0, errno.ENOTEMPTY),
    ("noreplace: into own subdirectory", "a", "a/b/c/a", RENAME_NOREPLACE, errno.EINVAL),
    ("noreplace over a file", "f", "g", RENAME_NOREPLACE, errno.EEXIST),
    ("noreplace over a dir", "f", "e", RENAME_NOREPLACE, errno.EEXIST),
    ("noreplace over a symlink", "g", "l", RENAME_NOREPLACE, errno.EEXIST),
    ("noreplace dir over empty dir", "n", "e", RENAME_NOREPLACE, errno.EEXIST),
    ("exchange with a missing name", "f", "missing", RENAME_EXCHANGE, errno.ENOENT),
    ("exchange dir with its own subdirectory", "a", "a/b/c", RENAME_EXCHANGE, errno.EINVAL),
    ("exchange subdirectory with its ancestor", "a/b/c", "a", RENAME_EXCHANGE, errno.EINVAL),
    ("noreplace and exchange", "f", "g", RENAME_NOREPLACE | RENAME_EXCHANGE, errno.EINVAL),
    ("exchange and whiteout", "f", "g", RENAME_EXCHANGE | RENAME_WHITEOUT, errno.EINVAL),
    ("unknown flag", "f", "new", 8, errno.EINVAL),
    ("missing source", "missing", "new", 0, errno.ENOENT),
    ("missing source, noreplace", "missing", "new", RENAME_NOREPLACE, errno.ENOENT),
    ("new parent is a file", "g", "f/new", 0, errno.ENOTDIR),
    ("new name of 256 bytes", "f", "n" * (NAME_MAX + 1), 0, errno.ENAMETOOLONG),
]


@pytest.mark.parametrize("old, new, flags, err", [c[1:] for c in FAILS],
                         ids=[c[0] for c in FAILS])
async def test_rename_fails_and_changes_nothing(core, old, new, flags, err):
    await setup(core)
    before = core.tree()
    assert core.rename_errno(old, new, flags) == err
    assert core.tree() == before


# (id, old, new, flags, {path after: path before whose inode it now is}, paths now gone).
# Paths not named keep their inodes.
WORKS = [
    ("file over file", "f", "g", 0, {"g": "f"}, ["f"]),
    ("file to a new name in another dir", "f", "e/f2", 0, {"e/f2": "f"}, ["f"]),
    ("symlink over file", "l", "g", 0, {"g": "l"}, ["l"]),
    ("file over symlink", "g", "l", 0, {"l": "g"}, ["g"]),
    ("file over a hard link of another file", "f", "h2", 0, {"h2": "f"}, ["f"]),
    ("dir over empty dir", "n", "e", 0, {"e": "n", "e/x": "n/x"}, ["n", "n/x"]),
    ("dir into another dir", "n", "a/b/n", 0, {"a/b/n": "n", "a/b/n/x": "n/x"}, ["n", "n/x"]),
    ("dir out of its parent", "a/b/c", "c", 0, {"c": "a/b/c"}, ["a/b/c"]),
    ("noreplace to a free name", "f", "free", RENAME_NOREPLACE, {"free": "f"}, ["f"]),
    ("exchange two files", "f", "g", RENAME_EXCHANGE, {"f": "g", "g": "f"}, []),
    ("exchange file and symlink", "f", "l", RENAME_EXCHANGE, {"f": "l", "l": "f"}, []),
    ("exchange file and dir across dirs", "f", "a/b", RENAME_EXCHANGE,
     {"a/b": "f", "f": "a/b", "f/c": "a/b/c"}, ["a/b/c"]),
    ("exchange two dirs across dirs", "n", "a/b", RENAME_EXCHANGE,
     {"n": "a/b", "n/c": "a/b/c", "a/b": "n", "a/b/x": "n/x"}, ["a/b/c", "n/x"]),
    ("same inode: hard links", "h1", "h2", 0, {}, []),
    ("same inode: hard links, exchange", "h1", "h2", RENAME_EXCHANGE, {}, []),
    ("same inode: hard links, noreplace", "h1", "h2", RENAME_NOREPLACE, {}, []),
    ("file onto itself", "f", "f", 0, {}, []),
    ("dir onto itself", "a", "a", 0, {}, []),
]


@pytest.mark.parametrize("old, new, flags, moved, gone", [c[1:] for c in WORKS],
                         ids=[c[0] for c in WORKS])
async def test_rename_works(core, old, new, flags, moved, gone):
    inos = await setup(core)
    core.rename(old, new, flags)
    want = {p: ino for p, ino in inos.items() if p not in gone and p not in moved}
    want |= {p: inos[was] for p, was in moved.items()}
    assert {p: ino for p, (ino, _) in core.tree().items()} == want
    # contents follow their inodes
    for path, data in (("f", b"F"), ("g", b"G"), ("h1", b"H"), ("n/x", b"X")):
        now = [p for p, ino in want.items() if ino == inos[path]]
        for p in now:
            assert await core.read(p) == data


async def test_replaced_file_is_purged_and_its_blocks_freed(core):
    await core.create("old", b"o" * 100_000)
    await core.create("new", b"n" * 10)
    await core.fs.uploader.flush()
    old = core.ino("old")
    assert core.fs.blockmap.stats()["blocks"] == 3  # two of "old", one of "new"
    core.rename("new", "old")
    assert fs_errno(core.fs.getattr, old) == errno.ENOENT
    assert core.fs.blockmap.stats()["blocks"] == 1
    assert len(core.fs.blockmap.garbage()) == 2  # deleted after the next snapshot
    assert await core.read("old") == b"n" * 10


async def test_replaced_open_file_stays_readable_until_released(core):
    await core.create("src", b"replacement")
    old = await core.create("dst", b"replaced but open")
    core.fs.open(old)
    core.rename("src", "dst")
    assert attr(core.fs.getattr(old), "nlink") == 0
    assert await core.fs.read(old, 0, 100) == b"replaced but open"
    assert await core.fs.write(old, 0, b"REPLACED") == 8
    assert await core.fs.read(old, 0, 100) == b"REPLACED but open"
    assert await core.read("dst") == b"replacement"
    core.fs.release(old)
    assert fs_errno(core.fs.getattr, old) == errno.ENOENT


async def test_rename_of_an_open_file_keeps_the_handle(core):
    core.mkdir("d")
    ino = await core.create("f", b"before ")
    core.fs.open(ino)
    core.rename("f", "d/g")
    await core.fs.write(ino, 7, b"after")
    core.fs.release(ino)
    assert await core.read("d/g") == b"before after"
    assert core.names() == ["d"]


async def test_whiteout_leaves_a_character_device_owned_by_the_caller(core):
    ino = await core.create("a", b"a")
    core.fs.rename(1, b"a", 1, b"b", RENAME_WHITEOUT, 4321, 8765)
    assert core.ino("b") == ino
    wh = core.stat("a")
    assert stat.S_ISCHR(attr(wh, "mode")) and attr(wh, "rdev") == 0
    assert (attr(wh, "uid"), attr(wh, "gid")) == (4321, 8765)
    assert attr(wh, "ino") != ino


async def test_rename_times(core):
    core.mkdir("p", "q")
    ino = await core.create("p/f", b"x")
    other = await core.create("q/g", b"y")
    old = 10**18  # 2001: every time below must move forward from here
    for i in (ino, other, core.ino("p"), core.ino("q")):
        await core.fs.setattr(i, {"mtime_ns": old, "ctime_ns": old})
    core.rename("p/f", "q/f")
    for path in ("p", "q"):
        assert attr(core.stat(path), "mtime_ns") > old
        assert attr(core.stat(path), "ctime_ns") > old
    assert attr(core.fs.getattr(ino), "ctime_ns") > old
    assert attr(core.fs.getattr(ino), "mtime_ns") == old  # a rename is no modification
    assert attr(core.fs.getattr(other), "ctime_ns") == old
    core.rename("q/f", "q/g", RENAME_EXCHANGE)
    assert attr(core.fs.getattr(other), "ctime_ns") > old


async def test_exchange_keeps_parent_link_counts_and_dotdot(core):
    """A file and a directory swap parents: each parent's nlink follows its subdirs."""
    core.mkdir("p", "q", "q/dir")
    await core.create("p/file", b"a file")
    p, q = core.ino("p"), core.ino("q")
    core.rename("p/file", "q/dir", RENAME_EXCHANGE)
    assert (core.nlink("p"), core.nlink("q")) == (3, 2)
    assert stat.S_ISDIR(attr(core.stat("p/file"), "mode"))
    assert await core.read("q/dir") == b"a file"
    dotdot = core.fs.lookup(core.ino("p/file"), b"..")
    core.fs.forget(dotdot[0], 1)
    assert dotdot[0] == p != q


async def test_rename_updates_the_dir_kind_for_directory_moves(core):
    """A directory moved between parents: nlink moves along, ".." follows."""
    core.mkdir("a", "b", "a/d", "a/d/e")
    core.rename("a/d", "b/d")
    assert (core.nlink(""), core.nlink("a"), core.nlink("b"), core.nlink("b/d")) == (4, 2, 3, 3)
    row = core.fs.lookup(core.ino("b/d"), b"..")
    core.fs.forget(row[0], 1)
    assert row[0] == core.ino("b")
    assert stat.S_IFMT(attr(row, "mode")) == stat.S_IFMT(DIR)
    assert (UID, GID) == (attr(core.stat("b/d"), "uid"), attr(core.stat("b/d"), "gid"))


async def test_an_entry_whose_inode_row_is_missing_is_enoent(core):
    """A damaged database (an entry naming an inode without a row): renaming from or over
    that entry answers ENOENT, never a constraint failure (EIO), and NOREPLACE still
    answers EEXIST for the name that is taken."""
    await core.create("f", b"F")
    await core.create("g", b"G")
    await core.create("h", b"H")
    gone, lost = core.ino("g"), core.ino("h")
    db = core.fs.db
    db.execute("DELETE FROM inodes WHERE id IN (?, ?)", (gone, lost))
    try:
        assert core.rename_errno("f", "g") == errno.ENOENT
        assert core.rename_errno("f", "g", RENAME_EXCHANGE) == errno.ENOENT
        assert core.rename_errno("f", "g", RENAME_NOREPLACE) == errno.EEXIST
        assert core.rename_errno("h", "f") == errno.ENOENT
        entries = db.execute("SELECT name, inode FROM dentries WHERE parent=? ORDER BY name",
                             (core.ino(""),)).fetchall()
        assert entries == [(b"f", core.ino("f")), (b"g", gone), (b"h", lost)]
    finally:  # repair what the test broke: the fixture's check then finds the tree whole
        db.execute("DELETE FROM dentries WHERE inode IN (?, ?)", (gone, lost))
