"""Packs in the core: identical blocks written together are stored once (no dead copy
in the pack), and every block of a pack is mapped to its own range of it."""

from __future__ import annotations

import os


async def test_identical_blocks_in_one_pack_are_stored_once(core):
    block = os.urandom(core.bs)
    for i in range(6):  # six files of the same bytes, before any is uploaded
        await core.create(f"copy{i}", block + os.urandom(100))
    await core.fs.uploader.flush()
    stats = core.fs.blockmap.stats()
    assert stats["blocks"] == 12 and stats["objects"] == 7  # one shared, six tails
    assert stats["packs"] == 1 and stats["dead_bytes"] == 0, stats
    rows = core.fs.db.execute(
        "SELECT pack, pack_offset, stored_size FROM objects ORDER BY pack_offset").fetchall()
    assert len({pack for pack, _, _ in rows}) == 1
    ends = [0] + [offset + size for _, offset, size in rows]
    assert [offset for _, offset, _ in rows] == ends[:-1]  # back to back, no gap
    for i in range(6):
        assert (await core.read(f"copy{i}"))[:core.bs] == block
