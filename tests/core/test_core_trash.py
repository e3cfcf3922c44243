"""Dropped cache files leave the request path: renamed to a garbage name at once (the
block's own name is free again) and unlinked later in a worker thread; garbage a
crash leaves behind is removed by the next mount's recovery."""

from __future__ import annotations

import os

import trio

from megafs.core.trash import GARBAGE_SUFFIX


def block_files(core) -> list[str]:
    return sorted(os.listdir(core.fs.cache.dir))


async def test_a_removed_file_s_cache_file_is_unlinked_later(core):
    async with trio.open_nursery() as nursery:
        core.fs.cache.nursery = nursery
        ino = await core.create("f", b"x" * 4 * 65536)  # blocks too large to fsync in the db
        await core.fs.fsync(ino)
        assert block_files(core) == [f"{ino}-0.d", f"{ino}-1.d", f"{ino}-2.d", f"{ino}-3.d"]
        core.unlink("f")
        core.fs.release(ino)
        for n in list(core.fs.lookups.items()):
            core.fs.forget(*n)
        assert all(GARBAGE_SUFFIX in name for name in block_files(core))
        while core.fs.cache.trash.reaping:  # the worker thread unlinks them
            await trio.sleep(0.01)
        assert block_files(core) == []
        core.fs.cache.nursery = None


async def test_recovery_removes_garbage(core):
    path = os.path.join(core.fs.cache.dir, f"7-0.d{GARBAGE_SUFFIX}3")
    with open(path, "wb") as f:
        f.write(b"old")
    core.fs.recover()
    assert block_files(core) == []


async def test_without_a_nursery_files_are_unlinked_at_once(core, tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"1")
    core.fs.cache.trash.discard(str(path))
    assert not path.exists()
