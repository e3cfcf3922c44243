"""Background upload of dirty blocks, in batches with one write barrier each.

A batch: pick dirty blocks, hash + seal + put them concurrently (bounded by
the backend's parallelism and a byte budget), call ``backend.sync()`` once,
then in one transaction point the block map at the new objects and mark the
cache files clean. So the block map never names an object that is not durably
stored, and a block rewritten during its upload stays dirty (generation check).
"""

from __future__ import annotations

import logging

import trio

from megafs.core.blockmap import BlockMap
from megafs.core.cache import BlockCache, Entry
from megafs.errors import MegafsError
from megafs.store.objects import ObjectStore, new_block_key

log = logging.getLogger(__name__)
BATCH_BYTES = 64 * 1024 * 1024


class Uploader:
    def __init__(self, cache: BlockCache, blockmap: BlockMap, store: ObjectStore, *,
                 delay: float = 1.0):
        self.cache = cache
        self.blockmap = blockmap
        self.store = store
        self.delay = delay  # upload blocks left alone this long (seconds)
        self.limit = trio.CapacityLimiter(store.backend.parallelism)
        self.flushing = 0
        self.last_error: str | None = None
        self.uploaded_bytes = 0

    def _pick(self) -> list[Entry]:
        cache = self.cache
        urgent = self.flushing or cache.wanted.is_set() or cache.dirty_bytes > cache.max_dirty // 2
        cutoff = trio.current_time() - self.delay
        batch, size = [], 0
        for e in cache.dirty.values():
            if e.uploading or (not urgent and e.last_write > cutoff):
                continue
            batch.append(e)
            size += e.size
            if size >= BATCH_BYTES:
                break
        return batch

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            batch = self._pick()
            if not batch:
                self.cache.wanted = trio.Event()
                with trio.move_on_after(min(self.delay, 0.5) if self.cache.dirty else 5):
                    await self.cache.wanted.wait()
                continue
            try:
                await self._upload(batch)
                failures = 0
                self.last_error = None
            except MegafsError as e:
                failures += 1
                self.last_error = str(e)
                log.error("upload failed (attempt %d): %s", failures, e)
                await trio.sleep(min(30.0, 0.5 * 2**failures))

    async def _upload(self, batch: list[Entry]) -> None:
        results: list[tuple[Entry, int, object]] = []
        for e in batch:
            e.uploading = True
        try:
            async with trio.open_nursery() as nursery:
                for e in batch:
                    await self.limit.acquire_on_behalf_of(e)
                    nursery.start_soon(self._one, e, results)
            await self.store.backend.sync()
        finally:
            for e in batch:
                e.uploading = False
        with self.blockmap.db:
            for e, gen, res in results:
                self._apply(e, gen, res)
        self.cache.evict()

    async def _one(self, e: Entry, results: list) -> None:
        try:
            if e.removed:
                return
            gen = e.gen
            data = self.cache.read(e, 0, e.size) if e.size else b""
            if not data or data.count(0) == len(data):
                results.append((e, gen, None))
                return
            if len(data) >= 128 * 1024:
                digest = await trio.to_thread.run_sync(self.store.keys.dedup_hash, data)
            else:
                digest = self.store.keys.dedup_hash(data)
            dup = self.blockmap.find_duplicate(digest)
            if dup is not None:
                results.append((e, gen, dup))
                return
            key = new_block_key()
            stored = await self.store.put_block(key, data)
            self.uploaded_bytes += stored
            results.append((e, gen, (key, digest, len(data), stored)))
        finally:
            self.limit.release_on_behalf_of(e)

    def _apply(self, e: Entry, gen: int, res) -> None:
        if isinstance(res, tuple):
            key, digest, size, stored = res
            dup = self.blockmap.find_duplicate(digest)  # same content uploaded twice in a batch
            obj = dup if dup is not None else self.blockmap.add_object(key, digest, size, stored)
            if dup is not None:
                self.blockmap.add_object(key, None, size, stored)  # garbage, deleted later
        else:
            obj = res
        if e.removed:
            return
        self.blockmap.set_block(e.ino, e.blk, obj)
        if e.gen == gen:
            self.cache.mark_clean(e)

    async def flush(self) -> None:
        """Upload every dirty block; return when none is left (or raise on failure)."""
        self.flushing += 1
        try:
            while self.cache.dirty:
                self.cache.wanted.set()
                with trio.move_on_after(1):
                    await self.cache.changed.wait()
        finally:
            self.flushing -= 1

