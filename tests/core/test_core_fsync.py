"""fsync of small blocks: their content goes into the metadata database (table
``fsynced``) with the metadata, one WAL sync makes both durable, and a crash brings
the content back (docs/format.md §6, rule 4).

A crash is simulated in process: the uploader stops, and the database connection is
closed with its batch of changes uncommitted (lost, as after ``kill -9``); a new
``Filesystem`` then opens the same cache directory and recovers.
"""

from __future__ import annotations

import os

import pytest
import trio
from corelib import BS, Core, make_core

from megafs.core import fsynced, snapshot
from megafs.core.cache import DB_SYNC_BLOCK, SPILL_SIZE
from megafs.core.check import local_changes
from megafs.core.filesystem import Filesystem
from megafs.core.schema import connect

NEVER = 3600.0  # an upload delay no test waits for


def rows(core: Core) -> dict[tuple[int, int], bytes]:
    return {(ino, blk): data for ino, blk, data in fsynced.rows(core.fs.db)}


def block_files(core: Core) -> list[str]:
    return sorted(os.listdir(core.fs.cache.dir))


async def write(core: Core, ino: int, offset: int, data: bytes) -> None:
    core.fs.open(ino)
    try:
        assert await core.fs.write(ino, offset, data) == len(data)
    finally:
        core.fs.release(ino)


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_fsync_of_a_small_file_puts_it_in_the_database_not_in_a_file(core):
    data = os.urandom(4096)
    ino = await core.create("f", data)
    await core.fs.fsync(ino)
    assert rows(core) == {(ino, 0): data}
    assert block_files(core) == []  # the block stays in memory
    assert await core.read("f") == data
    await core.fs.uploader.flush()  # the row goes with the upload of that content
    assert rows(core) == {}
    assert await core.read("f") == data


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_larger_blocks_are_fsynced_in_their_files(core):
    data = os.urandom(DB_SYNC_BLOCK + 1)
    ino = await core.create("f", data)
    await core.fs.fsync(ino)
    assert rows(core) == {}
    assert block_files(core) == [f"{ino}-0.d"]


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_fsync_of_all_files_puts_small_blocks_in_the_database(core):
    a = await core.create("a", b"a" * 100)
    b = await core.create("b", b"b" * 5000)
    await core.fs.fsync(None)
    assert rows(core) == {(a, 0): b"a" * 100, (b, 0): b"b" * 5000}


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_a_write_after_the_fsync_keeps_the_row_until_its_upload(core):
    ino = await core.create("f", b"1" * 4096)
    await core.fs.fsync(ino)
    await write(core, ino, 0, b"2" * 4096)  # not fsynced: the row keeps the old content
    assert rows(core) == {(ino, 0): b"1" * 4096}
    await core.fs.uploader.flush()
    assert rows(core) == {}
    assert await core.read("f") == b"2" * 4096


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_rows_go_with_their_blocks(core):
    await core.create("a", A)
    b = await core.create("b", A)
    c = await core.create("c", A)
    await core.fs.fsync(None)
    core.unlink("a")  # purged
    await core.fs.setattr(b, {"size": 0})  # block dropped
    await core.fs.setattr(c, {"size": 10})  # block cut
    assert rows(core) == {(c, 0): A[:10]}


async def _crash_and_recover(tmp_path, steps) -> tuple[bytes | None, dict, list[str]]:
    """Run *steps(core)* on a fresh filesystem whose uploads wait, crash it, recover it
    from its cache directory; return the file "f"'s content (None if it is gone), the
    rows left in ``fsynced`` and the checker's problems after everything is uploaded."""
    async with trio.open_nursery() as nursery:
        old = await make_core(tmp_path, nursery, upload_delay=NEVER)
        await steps(old)
        nursery.cancel_scope.cancel()
    old.fs.cache.close()
    old.fs.db.close()  # the batch since the last commit is lost, as after kill -9
    cache = str(tmp_path / "cache")
    async with trio.open_nursery() as nursery:
        fs = Filesystem(connect(os.path.join(cache, "metadata.db")), old.store, cache,
                        block_size=BS, cache_size=64 << 20, upload_delay=0.05, timeout=5.0)
        try:
            fs.recover()
            await nursery.start(fs.uploader.run)
            core = Core(fs, old.store, BS)
            left = rows(core)
            try:
                content = await core.read("f")
            except Exception:  # noqa: BLE001 - FsError(ENOENT): the file is gone
                content = None
            problems = await core.check()
            assert rows(core) == {}, "rows outlived the upload of their blocks"
        finally:
            nursery.cancel_scope.cancel()
            fs.close()
    return content, left, problems


A, B = b"A" * 4096, b"B" * 3000


async def _fsynced(core: Core) -> int:
    ino = await core.create("f", A)
    await core.fs.fsync(ino)
    return ino


async def only_fsync(core):
    ino = await _fsynced(core)
    await write(core, ino, 4096, B)  # never fsynced nor committed: lost


async def truncated_after(core):
    ino = await _fsynced(core)
    await core.fs.setattr(ino, {"size": 100})
    core.fs.commit()  # the batch commit of every second: the truncate is durable


async def truncated_and_extended_after(core):
    ino = await _fsynced(core)
    await core.fs.setattr(ino, {"size": 100})
    await core.fs.setattr(ino, {"size": 4096})  # the rest reads as zeros, after a crash too
    core.fs.commit()


async def emptied_after(core):
    ino = await _fsynced(core)
    await core.fs.setattr(ino, {"size": 0})
    core.fs.commit()


async def removed_after(core):
    await _fsynced(core)
    core.unlink("f")  # (no lookup nor open file left: purged at once)
    core.fs.commit()


async def grown_into_a_file_and_fsynced(core):
    ino = await _fsynced(core)
    await write(core, ino, 4096, B * 60)  # past the memory size: moves to its .d file
    await core.fs.fsync(ino)


async def rewritten_and_uploaded(core):
    ino = await _fsynced(core)
    await write(core, ino, 0, B)
    core.fs.uploader.delay = 0.0
    await core.fs.uploader.flush()
    core.fs.commit()


async def snapshot_taken_meanwhile(core):
    await _fsynced(core)
    core.fs.commit()
    await snapshot.Snapshotter(core.fs.db, core.store, core.fs.blockmap).upload(full=True)


CRASH_CASES = [
    (only_fsync, A),
    (truncated_after, A[:100]),
    (truncated_and_extended_after, A[:100] + bytes(3996)),
    (emptied_after, b""),
    (removed_after, None),
    (grown_into_a_file_and_fsynced, A + B * 60),
    (rewritten_and_uploaded, B + A[len(B):]),
    (snapshot_taken_meanwhile, A),
]


@pytest.mark.parametrize("steps, expected", CRASH_CASES, ids=[c[0].__name__ for c in CRASH_CASES])
async def test_a_crash_keeps_what_was_fsynced(tmp_path, monkeypatch, steps, expected):
    monkeypatch.setenv("MEGAFS_INSECURE_TEST_KDF", "1")
    monkeypatch.setenv("MEGAFS_RETENTION", "0")
    assert len(B * 60) + 4096 > SPILL_SIZE
    content, _, problems = await _crash_and_recover(tmp_path, steps)
    assert content == expected
    assert problems == []


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_images_from_the_store_carry_no_pending_blocks(core, tmp_path):
    """A full snapshot taken while a block waits in ``fsynced`` holds that row; a
    machine that downloads or loads it must not take it for its own."""
    ino = await core.create("f", A)
    await core.fs.fsync(ino)
    core.fs.commit()
    await snapshot.Snapshotter(core.fs.db, core.store, core.fs.blockmap).upload(full=True)
    head = await core.store.read_head()
    other = await snapshot.download(core.store, head, str(tmp_path / "other.db"))
    assert fsynced.count(other) == 0
    other.close()
    loaded = await snapshot.load(core.store, head)
    assert fsynced.count(loaded) == 0
    loaded.close()
    await core.fs.uploader.flush()


@pytest.mark.parametrize("core_options", [{"upload_delay": NEVER}])
async def test_fsck_counts_fsynced_blocks_as_not_uploaded(core, tmp_path):
    ino = await core.create("f", A)
    await core.fs.fsync(ino)
    said = local_changes(str(tmp_path / "cache"))
    assert said is not None and "holds 1 blocks" in said
    await core.fs.uploader.flush()
    core.fs.commit()
    assert "holds 0 blocks" in local_changes(str(tmp_path / "cache"))  # (metadata remains)
