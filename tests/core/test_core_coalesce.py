"""Cold reads of small files that share a pack, on a remote store: one range request
fetches a run of neighbouring blocks (megafs/core/cache.py, COALESCE_SPAN), and every
neighbour is verified before it enters the cache; a damaged neighbour is left out and
fails only for its own file."""

from __future__ import annotations

import errno
import os

import pytest
from corelib import async_errno

from megafs.backends.base import BackendWrapper
from megafs.core.cache import COALESCE_SPAN

FILES = 60
SIZE = 3000  # random, so about 3 KiB sealed each: 60 of them fit in one span


class CountingRemote(BackendWrapper):
    """The store as a remote one (coalescing applies), counting data reads."""

    def __init__(self, inner):
        super().__init__(inner)
        self.remote = True
        self.ranges = 0

    async def get_range(self, key, offset, length):
        self.ranges += 1
        return await self.inner.get_range(key, offset, length)


async def _write_cold(core) -> tuple[dict[str, bytes], CountingRemote]:
    files = {f"f{i:02d}": os.urandom(SIZE) for i in range(FILES)}
    for name, data in files.items():
        await core.create(name, data)
    await core.fs.uploader.flush()
    core.fs.cache.evict(0)  # cold: nothing cached
    counting = CountingRemote(core.store.backend)
    core.store.backend = counting
    return files, counting


async def test_cold_reads_of_small_files_coalesce(core):
    files, counting = await _write_cold(core)
    assert FILES * (SIZE + 200) < COALESCE_SPAN
    for name, data in files.items():
        assert await core.read(name) == data
    assert counting.ranges == 1, counting.ranges


@pytest.mark.parametrize("victim", [0, 1, FILES // 2], ids=["first", "second", "middle"])
async def test_damaged_neighbour_fails_alone(core, victim):
    files, counting = await _write_cold(core)
    names = sorted(files)
    ino = core.ino(names[victim])
    key, _digest, _damage, (pack, offset, length) = core.fs.blockmap.ref_of(ino, 0)
    path = os.path.join(counting.inner.root, "p", pack[2:4], pack[2:])
    with open(path, "r+b") as f:  # flip one bit inside the victim's envelope
        f.seek(offset + length // 2)
        byte = f.read(1)[0]
        f.seek(offset + length // 2)
        f.write(bytes([byte ^ 1]))
    for i, name in enumerate(names):
        if i == victim:
            assert await async_errno(core.read, name) == errno.EIO
        else:
            assert await core.read(name) == files[name]
    # the checker the fixture runs at the end must see the damage: repair it by
    # removing the file (its block is then unreferenced dead space)
    core.unlink(names[victim])
