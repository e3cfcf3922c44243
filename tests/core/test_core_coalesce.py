"""Cold reads of small files that share a pack, on a remote store: one range request
fetches a run of neighbouring blocks (megafs/core/cache.py, COALESCE_SPAN), and every
neighbour is verified before it enters the cache; a damaged neighbour is left out and
fails only for its own file."""

from __future__ import annotations

import errno
import os

import pytest
import trio
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


class Paused(BackendWrapper):
    """Holds the first range read until *go* is set (a reader caught mid-fetch)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.started, self.go = trio.Event(), trio.Event()

    async def get_range(self, key, offset, length):
        if not self.started.is_set():
            self.started.set()
            await self.go.wait()
        return await self.inner.get_range(key, offset, length)


async def test_compaction_never_pulls_a_block_from_under_a_reader(core):
    """A reader fetching a block from its pack while the compactor moves it and the old
    pack is deleted (as the garbage path does after the next head) reads it at its new
    place: no EIO, the right bytes."""
    keep, gone = os.urandom(50_000), os.urandom(50_000)
    await core.create("keep", keep)
    await core.create("gone", gone)
    await core.fs.uploader.flush()
    core.unlink("gone")  # its envelope is dead space now
    core.fs.cache.evict(0)
    ino = core.ino("keep")
    old_pack = core.fs.blockmap.ref_of(ino, 0)[3][0]
    paused = Paused(core.store.backend)
    core.store.backend = paused
    got = []

    async def reader():
        got.append(await core.read("keep"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await paused.started.wait()
        core.fs.compactor.live_fraction = 1.0
        paused.started = trio.Event()  # the compactor's own reads pass
        paused.started.set()
        assert await core.fs.compactor.compact_once() == 1
        assert core.fs.blockmap.ref_of(ino, 0)[3][0] != old_pack
        os.unlink(os.path.join(paused.inner.root, "p", old_pack[2:4], old_pack[2:]))
        paused.go.set()
    assert got == [keep]
