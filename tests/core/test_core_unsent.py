"""Data a writer never uploaded (table ``unsent``): a metadata state uploaded while some
blocks wait for upload names the files' new sizes, and says which blocks. Anybody else
who loads that state (a writer after a take-over or ``--force``, a follower of a dead
writer, fsck) gets EIO for those blocks, never zeros or older bytes; the writer itself
reads its own data, and the rows go once the blocks are uploaded, truncated or removed."""

from __future__ import annotations

import errno
import os

import pytest
from corelib import BS, async_errno

from megafs.core import snapshot
from megafs.core.check import Checker
from megafs.core.filesystem import Filesystem

pytestmark = pytest.mark.parametrize("core_options", [{"upload_delay": 3600.0}])


async def _upload_state(core) -> dict:
    """A metadata upload of the writer as the mount does it; returns the new head."""
    snap = snapshot.Snapshotter(core.fs.db, core.store, core.fs.blockmap)
    snap.data_complete = lambda: not core.fs.cache.dirty
    snap.unsent_blocks = lambda: list(core.fs.cache.dirty)
    core.fs.commit()
    await snap.upload()
    return await core.store.read_head()


async def _elsewhere(core, tmp_path, name: str) -> Filesystem:
    """The store's state loaded by another machine (a fresh cache directory)."""
    cache = tmp_path / name
    cache.mkdir()
    head = await core.store.read_head()
    conn = await snapshot.download(core.store, head, str(cache / "metadata.db"))
    return Filesystem(conn, core.store, str(cache), block_size=BS, cache_size=64 << 20,
                      upload_delay=3600.0, timeout=5.0)


async def _read(fs: Filesystem, ino: int, offset: int, size: int) -> bytes:
    fs.open(ino)
    try:
        return await fs.read(ino, offset, size)
    finally:
        fs.release(ino)


async def test_blocks_never_uploaded_are_eio_elsewhere_and_readable_here(core, tmp_path):
    old = os.urandom(2 * BS)
    old_ino = await core.create("old", old)
    await core.fs.uploader.flush()  # "old" is in the store
    core.fs.open(old_ino)
    await core.fs.write(old_ino, 0, b"n" * 1000)  # block 0 newer here than in the store
    core.fs.release(old_ino)
    new = os.urandom(3 * BS)
    new_ino = await core.create("new", new)  # nothing of it in the store
    head = await _upload_state(core)
    assert head["complete"] is False
    unsent = sorted(core.fs.db.execute("SELECT inode, blockno FROM unsent"))
    assert unsent == [(old_ino, 0), (new_ino, 0), (new_ino, 1), (new_ino, 2)]
    # The writer reads its own data.
    assert await core.read("new") == new
    assert await core.read("old") == b"n" * 1000 + old[1000:]

    other = await _elsewhere(core, tmp_path, "other")
    try:
        assert other.getattr(new_ino)[4] == 3 * BS  # the new size is in the state
        assert await async_errno(_read, other, new_ino, 0, 10) == errno.EIO  # not zeros
        assert await async_errno(_read, other, old_ino, 0, 10) == errno.EIO  # not old bytes
        assert await _read(other, old_ino, BS, BS) == old[BS:]  # uploaded: readable
        # Truncating cuts the rows with the blocks; a whole-block rewrite replaces one.
        await other.setattr(new_ino, {"size": BS + 5})
        assert await async_errno(_read, other, new_ino, 0, 10) == errno.EIO
        await other.setattr(new_ino, {"size": 0})
        assert await _read(other, new_ino, 0, 10) == b""
        other.open(old_ino)
        await other.write(old_ino, 0, b"w" * BS)
        other.release(old_ino)
        assert await _read(other, old_ino, 0, 3) == b"www"
        said: list[str] = []
        report = await Checker(core.store, BS, repair=False, say=said.append).run()
        assert sorted(report.damaged) == ["/new", "/old"], said
        assert any(line.startswith("/new: bytes 0-196608 unreadable: its newest data was"
                                   " never uploaded by ") for line in said), said
    finally:
        other.close()

    # Once the writer has uploaded its data, its rows are gone and the next state reads.
    await core.fs.uploader.flush()
    assert core.fs.db.execute("SELECT count(*) FROM unsent").fetchone()[0] == 0
    assert (await _upload_state(core))["complete"] is True
    later = await _elsewhere(core, tmp_path, "later")
    try:
        assert await _read(later, new_ino, 0, 3 * BS) == new
        assert await _read(later, old_ino, 0, 2 * BS) == b"n" * 1000 + old[1000:]
    finally:
        later.close()


async def test_removing_a_file_drops_its_rows(core):
    ino = await core.create("gone", os.urandom(BS))
    await _upload_state(core)
    assert core.fs.db.execute("SELECT count(*) FROM unsent WHERE inode=?",
                              (ino,)).fetchone()[0] == 1
    core.unlink("gone")
    assert core.fs.db.execute("SELECT count(*) FROM unsent").fetchone()[0] == 0


async def test_a_row_takes_the_name_of_the_writer_that_dirties_its_block_again(core):
    """A block a dead writer left unsent, written again here: the next state names this
    writer (fsck then waits for it while it is mounted, instead of calling it lost)."""
    import socket

    ino = await core.create("again", os.urandom(BS))
    core.fs.db.execute("INSERT INTO unsent VALUES (?, 0, 'gone.example pid 1')", (ino,))
    core.fs.blockmap.refresh_unsent()
    await _upload_state(core)
    assert core.fs.db.execute("SELECT writer FROM unsent WHERE inode=?", (ino,)).fetchall() \
        == [(f"{socket.gethostname()} pid {os.getpid()}",)]
    await core.fs.uploader.flush()
    assert core.fs.db.execute("SELECT count(*) FROM unsent").fetchone()[0] == 0
