"""Background upload of dirty blocks, in batches with one write barrier each.

A batch: pick dirty blocks, hash + seal + put them concurrently (bounded by
the backend's parallelism and a byte budget), call ``backend.sync()`` once,
then in one transaction point the block map at the new objects and mark the
cache files clean. So the block map never names an object that is not durably
stored, and a block rewritten during its upload stays dirty (generation check).
"""

from __future__ import annotations

import logging

import apsw
import trio

from megafs.core.blockmap import BlockMap
from megafs.core.cache import BlockCache, Entry
from megafs.core.schema import commit_batch
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
                with trio.move_on_after(max(0.05, min(self.delay, 0.5))):
                    await self.cache.wanted.wait()
                continue
            try:
                await self._upload(batch)
                failures = 0
                self.last_error = None
            except (MegafsError, OSError, apsw.Error) as e:  # storage down, cache disk full
                failures += 1
                self.last_error = str(e)
                log.error("upload failed (attempt %d): %s", failures, e)
                await trio.sleep(min(30.0, 0.5 * 2**failures))

    async def _upload(self, batch: list[Entry]) -> None:
        results: list[tuple[Entry, int, bytes | None, tuple | None]] = []
        errors: list[Exception] = []
        for e in batch:
            e.uploading = True
        try:
            async with trio.open_nursery() as nursery:
                for e in batch:
                    await self.limit.acquire_on_behalf_of(e)
                    nursery.start_soon(self._one, e, results, errors)
            await self.store.backend.sync()
        finally:
            for e in batch:
                e.uploading = False
        with self.blockmap.db:
            done = [e for e, gen, digest, new in results if self._apply(e, gen, digest, new)]
        # The block map must be on disk before a cache file loses its dirty name:
        # otherwise a crash leaves a "clean" file that no metadata points to.
        commit_batch(self.blockmap.db)
        for e in done:
            if not e.removed and e.dirty:
                self.cache.mark_clean(e)
        self.cache.evict()
        if errors:  # what did get stored is recorded above; the rest is retried later
            raise errors[0]

    async def _one(self, e: Entry, results: list, errors: list) -> None:
        """Hash and (unless an identical object exists) seal and store one block."""
        try:
            if e.removed:
                return
            gen = e.gen
            data = self.cache.read(e, 0, e.size) if e.size else b""
            if not data or data.count(0) == len(data):
                results.append((e, gen, None, None))
                return
            if len(data) >= 128 * 1024:
                digest = await trio.to_thread.run_sync(self.store.keys.dedup_hash, data)
            else:
                digest = self.store.keys.dedup_hash(data)
            if self.blockmap.find_duplicate(digest) is not None:
                results.append((e, gen, digest, None))
                return
            key = new_block_key()
            stored = await self.store.put_block(key, data)
            self.uploaded_bytes += stored
            results.append((e, gen, digest, (key, len(data), stored)))
        except (MegafsError, OSError) as err:
            errors.append(err)
        finally:
            self.limit.release_on_behalf_of(e)

    def _apply(self, e: Entry, gen: int, digest: bytes | None, new: tuple | None) -> bool:
        """Point the block at its object; True if the cache copy may now be marked clean."""
        obj = None
        if digest is not None:
            # Looked up again now: a duplicate found earlier may have been deleted as
            # garbage meanwhile, and the same content may have been stored twice.
            obj = self.blockmap.find_duplicate(digest)
            if new is not None:
                key, size, stored = new
                if obj is None:
                    obj = self.blockmap.add_object(key, digest, size, stored)
                else:
                    self.blockmap.add_object(key, None, size, stored)  # garbage, deleted later
            elif obj is None:
                return False  # its duplicate vanished: stays dirty, uploaded next round
        if e.removed:
            return False
        self.blockmap.set_block(e.ino, e.blk, obj)
        self.cache.set_stored(e, obj is not None)
        return e.gen == gen and not e.writing

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

