"""The check every core test ends with can fail: damage the metadata behind the
Filesystem's back (the only test here that touches the database directly), see the
checker (check only) report it, and undo the damage so that the teardown passes."""

from __future__ import annotations

import os


async def test_the_check_sees_damage(core):
    core.mkdir("d")
    ino = await core.create("d/f", os.urandom(100_000))
    d = core.ino("d")
    assert await core.check(unmount=False) == []
    db = core.fs.db
    db.execute("UPDATE inodes SET nlink=5 WHERE id=?", (d,))
    db.execute("UPDATE objects SET refcount=refcount+1")
    db.execute("UPDATE inodes SET nblocks=7 WHERE id=?", (ino,))
    problems = await core.check(unmount=False)
    assert "/d: link count 5, should be 2" in problems
    assert "/d/f: block count 7, should be 2" in problems
    assert sum("reference count 2, should be 1" in p for p in problems) == 2
    assert len(problems) == 4
    db.execute("UPDATE inodes SET nlink=2 WHERE id=?", (d,))
    db.execute("UPDATE objects SET refcount=refcount-1")
    db.execute("UPDATE inodes SET nblocks=2 WHERE id=?", (ino,))
    assert await core.check(unmount=False) == []


async def test_the_check_sees_an_inode_kept_open_past_unmount(core):
    """Without the unmount step, an unlinked file still open is an orphan."""
    ino = await core.create("f", b"x")
    core.fs.open(ino)
    core.unlink("f")
    assert await core.check(unmount=False) == [f"inode {ino} has no name and no links"]
    core.fs.release(ino)
    assert await core.check(unmount=False) == []
