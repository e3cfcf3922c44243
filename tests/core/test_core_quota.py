"""Quota and usage figures in the core: a write that could take the store past its quota
fails with ENOSPC (data waiting for upload counts before compression); what is stored
counts after deduplication and compression; ``usage`` (what statfs shows) and
``stats`` (``megafs stat``) follow."""

from __future__ import annotations

import errno
import os

import pytest
from corelib import async_errno, attr

QUOTA = 256 * 1024
with_quota = pytest.mark.parametrize("core_options", [{"quota": QUOTA}], ids=["quota"])


async def _write(core, path: str, offset: int, data: bytes) -> int:
    ino = core.ino(path)
    core.fs.open(ino)
    try:
        return await core.fs.write(ino, offset, data)
    finally:
        core.fs.release(ino)


@with_quota
async def test_write_past_the_quota_is_enospc(core):
    assert core.fs.quota == QUOTA  # from the superblock, as a mount reads it
    await core.create("a", os.urandom(200 * 1024))
    await core.create("b")
    assert await async_errno(_write, core, "b", 0, os.urandom(100 * 1024)) == errno.ENOSPC
    assert attr(core.stat("b"), "size") == 0
    assert core.fs.inflight == 0
    assert await _write(core, "b", 0, os.urandom(40 * 1024)) == 40 * 1024
    # once uploaded, random data takes a little more than its size (the sealing pads it):
    # 240 KiB of data, but more than 240 KiB stored
    await core.fs.uploader.flush()
    assert await async_errno(_write, core, "b", 40 * 1024, os.urandom(17 * 1024)) == \
        errno.ENOSPC
    assert core.fs.usage()[1] == await core.stored_block_bytes() > 240 * 1024


@with_quota
async def test_room_comes_back_when_files_go(core):
    await core.create("a", os.urandom(240 * 1024))
    await core.fs.uploader.flush()
    await core.create("b")
    assert await async_errno(_write, core, "b", 0, os.urandom(64 * 1024)) == errno.ENOSPC
    core.unlink("a")  # its objects are unreferenced now: no longer counted
    assert await _write(core, "b", 0, os.urandom(64 * 1024)) == 64 * 1024


@with_quota
async def test_compressible_and_duplicate_data_count_once_stored(core):
    block = b"megafs " * (core.bs // 7) + b"x" * (core.bs % 7)
    await core.create("a", block * 3)  # 192 KiB, three identical blocks
    await core.fs.uploader.flush()
    files, used = core.fs.usage()
    assert used < 4096, used  # one compressed object
    # Waiting for upload, data counts whole (before deduplication): 128 KiB at a time.
    for name in ("b", "c", "d"):  # 576 KiB of files in all, in a 256 KiB quota
        await core.create(name, block * 2)
        await core.fs.uploader.flush()
    assert core.fs.usage()[1] == used
    # Identical blocks uploaded at once may each be stored; all but one are garbage,
    # deleted from the store after the next metadata snapshot.
    assert await core.check(unmount=False) == []
    assert await core.stored_block_bytes() == used
    stats = core.fs.stats()
    assert stats["file_bytes"] == 9 * core.bs
    assert stats["block_bytes"] == 9 * core.bs
    assert stats["unique_bytes"] == core.bs
    assert stats["stored_bytes"] == used
    assert stats["quota"] == QUOTA


@with_quota
async def test_sparse_growth_costs_no_quota(core):
    ino = await core.create("sparse")
    await core.fs.setattr(ino, {"size": 1 << 40})
    assert await _write(core, "sparse", (1 << 40) - 5, b"tail!") == 5
    assert attr(core.fs.getattr(ino), "size") == (1 << 40)
    assert await core.fs.read(ino, (1 << 40) - 10, 100) == bytes(5) + b"tail!"
    await core.fs.uploader.flush()
    assert core.fs.usage()[1] < 4096


async def test_usage_figures(core):
    """``usage()``: inodes, and bytes stored plus waiting for upload."""
    assert core.fs.usage() == (1, 0)
    data = os.urandom(100 * 1024)
    await core.create("f", data)
    core.mkdir("d")
    files, used = core.fs.usage()
    assert files == 3
    assert used == len(data)  # waiting for upload, counted before compression
    await core.fs.uploader.flush()
    files, used = core.fs.usage()
    assert used == await core.stored_block_bytes() > len(data)  # sealed: a little more
    assert used == core.fs.stats()["stored_bytes"]
    assert core.fs.stats()["files"] == 1
    assert core.fs.quota is None
    core.unlink("f")
    assert core.fs.usage() == (2, 0)


async def test_st_blocks_counts_data_not_size(core):
    ino = await core.create("f", b"x" * 10)
    assert attr(core.fs.getattr(ino), "blocks") == 8  # 4 KiB, as on ext4
    await core.fs.setattr(ino, {"size": 10 * core.bs})
    # a block of data counts whole once the size allows; the holes cost nothing
    assert attr(core.fs.getattr(ino), "blocks") == core.bs // 512
    await _write(core, "f", 5 * core.bs, os.urandom(core.bs))
    assert attr(core.fs.getattr(ino), "blocks") == 2 * core.bs // 512
    await core.fs.uploader.flush()
    assert attr(core.fs.getattr(ino), "blocks") == 2 * core.bs // 512  # whole stored blocks
