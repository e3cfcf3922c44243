"""Shares and inode numbers: a purged inode's number may be reused at once, and a new
file that gets it must not inherit the old file's link."""

from __future__ import annotations


async def test_a_reused_inode_number_does_not_inherit_a_link(core):
    old = await core.create("shared", b"old secret")
    db = core.fs.db
    db.execute("INSERT INTO shares (id, inode, key, created) VALUES ('a' || hex(randomblob(15)),"
               " ?, randomblob(32), 0)", (old,))
    core.unlink("shared")
    new = await core.create("private", b"never shared")
    assert new == old  # the number was reused: the case that matters
    assert db.execute("SELECT count(*) FROM shares WHERE inode=?", (new,)).fetchone() == (0,)
    assert db.execute("SELECT inode FROM shares").fetchall() == [(0,)]
