"""Background upload of dirty blocks: a pipeline of bounded concurrency.

A scheduler starts the upload of every block that is due (see below), keeping at
most ``backend.parallelism`` uploads and :data:`INFLIGHT_BYTES` of block data in
flight; an upload starts as soon as another one ends, so one slow PUT never
holds up the others. An upload hashes the block and, unless an identical object
exists, seals and stores it. Finished uploads are committed in groups (at most
:data:`COMMIT_INTERVAL` seconds or :data:`COMMIT_BLOCKS` blocks apart): call
``backend.sync()`` once, then in one transaction point the block map at the new
objects, commit it to disk, and only then mark the cache files clean. So the
block map never names an object that is not durably stored, a cache file never
loses its dirty name before the block map naming its object is on disk, and a
block rewritten during its upload stays dirty (generation check).

A block is due

* when someone waits for uploads: a flush (unmount, ``megafs ctrl flush``,
  shares), writers waiting for room in the cache, or dirty data past half its
  budget;
* on a remote backend (``Backend.remote``: S3), when it is full and the writer
  has moved on to the next block of the file (a sequential write: the block is
  complete), unless it is among the last :data:`_RECENT` blocks uploaded (then it
  is being rewritten);
* otherwise once it was left alone for ``delay`` seconds (the write-back delay: a
  block that is being rewritten is not uploaded again and again).

Sealed blocks are not stored one object each but gathered into packs
(:mod:`megafs.store.packs`, docs/format.md §4a): a pack is stored when the next
block would not fit (:data:`~megafs.store.packs.PACK_TARGET`), when someone waits
for uploads and no block is being prepared, or :data:`PACK_LINGER` seconds after
its first block (:data:`PACK_QUIET` when no other block waits). Its blocks reach the committer only once the pack is stored, so
the ordering above holds for packs: pack durable (``sync``), then the block map.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict, deque

import apsw
import trio

from megafs.core import fsynced
from megafs.core.blockmap import BlockMap
from megafs.core.cache import BlockCache, Entry, read_whole
from megafs.core.schema import commit_batch
from megafs.errors import CacheError, MegafsError
from megafs.store.objects import ObjectStore, new_block_key
from megafs.store.packs import PackBuilder
from megafs.threads import run_sync

log = logging.getLogger(__name__)
INFLIGHT_BYTES = 64 * 1024 * 1024  # block data being uploaded at once (at least one block)
COMMIT_INTERVAL = 0.25  # seconds a finished upload may wait for others to commit with
COMMIT_BLOCKS = 256  # ... or until this many have finished
POLL = 0.1  # seconds between looks for blocks that became due (cheap while none is dirty)
_QUEUE = 64  # due blocks taken from the cache per look
_THREAD_HASH = 128 * 1024  # hash larger blocks in a worker thread
_RECENT = 4096  # blocks remembered as uploaded: written again, they wait for the delay
#: Seconds an open pack waits for more blocks before it is stored anyway. Each pack
#: costs at least 1 MiB of storage, so a slow trickle of small writes costs at most
#: 1 MiB per this many seconds until compaction.
PACK_LINGER = 5.0
#: ... or only this long when no other block waits to be uploaded (nothing more is
#: coming soon: the data reaches the store without the full wait).
PACK_QUIET = 1.0


def _zero_or_hash(data: bytes, dedup_hash) -> bytes | None:
    """None if *data* is all zero bytes (a hole), else its deduplication hash."""
    if not data[0] and not data[-1] and data.count(0) == len(data):
        return None
    return dedup_hash(data)


def _prepare(store: ObjectStore, key: str, src: bytes | int, size: int, direct: bool,
             seal: bool) -> tuple[bytes, bytes | None, tuple | None]:
    """(In a worker thread.) The block's bytes (read from *src*, see
    :meth:`BlockCache.source`), their deduplication hash (None: all zeros) and, if
    *seal*, the object to store under *key* (:meth:`ObjectStore.prepare_block`)."""
    data = src if isinstance(src, bytes) else read_whole(src, size, direct)
    digest = _zero_or_hash(data, store.keys.dedup_hash)
    if digest is None or not seal:
        return data, digest, None
    return data, digest, store.prepare_block(key, data)


class Uploader:
    def __init__(self, cache: BlockCache, blockmap: BlockMap, store: ObjectStore, *,
                 delay: float = 1.0):
        self.cache = cache
        self.blockmap = blockmap
        self.store = store
        self.delay = delay  # upload blocks left alone this long (seconds)
        self.workers = max(1, store.backend.parallelism)
        self.eager = store.backend.remote  # upload complete blocks before the delay
        # Hashing and sealing use a core each: more at once only adds context switches.
        self._cpu = trio.CapacityLimiter(len(os.sched_getaffinity(0)) or 1)
        self.flushing = 0
        self.last_error: str | None = None
        self.uploaded_bytes = 0
        self.failures = 0  # consecutive failed uploads or commits
        self._resume_at = 0.0  # after a failure: start no upload before this time
        self._inflight = 0  # uploads started and not finished
        self._inflight_bytes = 0
        self._done: list[tuple[Entry, int, bytes | None, tuple | None]] = []  # to commit
        self._queue: deque[Entry] = deque()  # due blocks, oldest first
        self._wake = trio.Event()  # set (and replaced) whenever an upload finishes
        self._dup_rate = 0.0  # moving average: how many recent blocks had a duplicate
        self._recent: OrderedDict[tuple[int, int], Entry] = OrderedDict()  # uploaded last
        self._pack: PackBuilder | None = None  # the pack being filled
        self._pack_opened = 0.0  # when its first block went in
        self._pack_members: list[tuple] = []  # (entry, gen, digest, block key, size, sha256)
        self._packed_bytes = 0  # sealed bytes in the open pack and in packs being stored
        self._nursery: trio.Nursery | None = None
        #: digest -> blocks with the same bytes as one in a pack not committed yet; they
        #: are committed after it (as duplicates), so a pack never holds two copies
        self._sealing: dict[bytes, list[tuple]] = {}

    # -- scheduling -------------------------------------------------------------
    def _signal(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    @staticmethod
    def _startable(e: Entry) -> bool:
        return e.dirty and not (e.uploading or e.removed or e.writing)

    def _due(self, e: Entry, urgent: bool, cutoff: float) -> bool:
        if urgent or e.last_write <= cutoff:
            return True
        if not self.eager or e.size < self.cache.bs or self._recent.get((e.ino, e.blk)) is e:
            return False  # partial, or rewritten since a recent upload: wait for the delay
        nxt = self.cache.entries.get((e.ino, e.blk + 1))
        return nxt is not None and nxt.last_write >= e.last_write

    def _urgent(self) -> bool:
        cache = self.cache
        return bool(self.flushing or cache.wanted.is_set()
                    or cache.dirty_bytes > cache.max_dirty // 2)

    def _next(self) -> Entry | None:
        """The next block to upload, if one is due."""
        queue = self._queue
        while True:
            while queue:
                e = queue.popleft()
                if self._startable(e):
                    return e
            cache = self.cache
            urgent = self._urgent()
            cutoff = trio.current_time() - self.delay
            for e in cache.dirty.values():
                if self._startable(e) and self._due(e, urgent, cutoff):
                    queue.append(e)
                    if len(queue) >= _QUEUE:
                        break
            if not queue:
                return None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._committer)
            task_status.started()
            while True:
                now = trio.current_time()
                if now < self._resume_at:  # uploads failed: back off
                    await trio.sleep(self._resume_at - now)
                    continue
                e = self._next()
                if e is None:
                    if self._pack is not None and not self._inflight and self._pack_due():
                        self._close_pack()
                    self.cache.wanted = trio.Event()
                    with trio.move_on_after(POLL):
                        await self.cache.wanted.wait()
                    continue
                busy = self._inflight_bytes + self._packed_bytes
                if self._inflight >= self.workers or (
                        (self._inflight or self._packed_bytes) and busy + e.size > INFLIGHT_BYTES):
                    self._queue.appendleft(e)  # still first in line
                    await self._wake.wait()
                    continue
                e.uploading = True
                self._inflight += 1
                self._inflight_bytes += e.size
                nursery.start_soon(self._one, e, e.size)

    def _failed(self, err: Exception) -> None:
        """Count a failure (once per backoff period) and pause new uploads."""
        now = trio.current_time()
        self.last_error = str(err)
        if now >= self._resume_at:
            self.failures += 1
            log.error("upload failed (attempt %d): %s", self.failures, err)
            self._resume_at = now + min(30.0, 0.5 * 2**self.failures)

    # -- one upload -------------------------------------------------------------
    async def _one(self, e: Entry, size: int) -> None:
        """Hash and (unless an identical object exists) seal and store one block."""
        keep = False  # True: handed to the committer, which clears e.uploading
        try:
            if e.removed:
                return
            key = new_block_key()
            prepared = None
            if e.size >= _THREAD_HASH:
                # One trip to a worker thread reads, hashes and seals, unless recent blocks
                # often had duplicates: then sealing before the lookup would mostly be wasted.
                async with self._cpu:
                    if e.removed:  # truncated or deleted while waiting for a core
                        return
                    gen, n = e.gen, e.size
                    src = self.cache.source(e)
                    try:
                        data, digest, prepared = await run_sync(
                            _prepare, self.store, key, src, n, self.cache.direct,
                            self._dup_rate < 0.1)
                    except trio.Cancelled:  # before the thread took the descriptor
                        if isinstance(src, int):
                            os.close(src)
                        raise
            else:  # small: read and hash right here (a thread trip costs more)
                gen, n = e.gen, e.size
                data = self.cache.read(e, 0, n) if n else b""
                digest = _zero_or_hash(data, self.store.keys.dedup_hash) if n else None
            duplicate = digest is None or self.blockmap.find_duplicate(digest) is not None
            if digest is not None:
                self._dup_rate = 0.95 * self._dup_rate + (0.05 if duplicate else 0.0)
            if duplicate:
                self._done.append((e, gen, digest, None))
            elif digest in self._sealing:  # the same bytes wait in a pack: share them
                self._sealing[digest].append((e, gen, digest, None))
            else:
                if prepared is None:
                    blob, sha256 = await self.store.seal_packed(key, data)
                else:
                    blob, _, sha256 = prepared
                if digest in self._sealing:  # packed by another upload meanwhile
                    self._sealing[digest].append((e, gen, digest, None))
                else:
                    self._add_to_pack((e, gen, digest, key, len(data), sha256), blob)
            keep = True
            if self.failures or self.last_error:
                self.failures = 0
                self.last_error = None
        except (MegafsError, OSError, apsw.Error) as err:  # storage down, cache disk full
            self._failed(err)
        finally:
            if not keep:
                e.uploading = False
            self._inflight -= 1
            self._inflight_bytes -= size
            self._signal()

    # -- packs ------------------------------------------------------------------
    def _add_to_pack(self, member: tuple, blob: bytes) -> None:
        if self._pack is not None and not self._pack.fits(len(blob)):
            self._close_pack()
        if self._pack is None:
            self._pack, self._pack_members = PackBuilder(), []
            self._pack_opened = trio.current_time()
        offset = self._pack.add(blob)
        self._sealing[member[2]] = []
        self._packed_bytes += len(blob)
        self._pack_members.append((*member, len(blob), offset))

    def _pack_due(self) -> bool:
        """Whether the open pack should be stored now (no block is being sealed)."""
        age = trio.current_time() - self._pack_opened
        if self._urgent() or age >= PACK_LINGER:
            return True
        return age >= PACK_QUIET and all(e.uploading for e in self.cache.dirty.values())

    def _close_pack(self) -> None:
        """Start storing the open pack."""
        pack, members = self._pack, self._pack_members
        self._pack, self._pack_members = None, []
        self._nursery.start_soon(self._put_pack, pack, members)

    async def _put_pack(self, pack: PackBuilder, members: list[tuple]) -> None:
        """Store a pack, then hand its blocks to the committer (which syncs first)."""
        stored = False
        try:
            size = await self.store.put_pack(pack)
            self.uploaded_bytes += size
            for e, gen, digest, key, n, sha256, length, offset in members:
                self._done.append((e, gen, digest,
                                   (key, n, length, sha256, (pack.key, offset, size, pack.length))))
            stored = True
            if self.failures or self.last_error:
                self.failures = 0
                self.last_error = None
        except (MegafsError, OSError) as err:  # storage down: the blocks are sent again
            self._failed(err)
        finally:
            aliases = [a for m in members for a in self._sealing.pop(m[2], [])]
            if stored:  # after the blocks they duplicate: the committer finds those
                self._done.extend(aliases)
            else:
                for e, *_ in (*members, *aliases):
                    e.uploading = False
            self._packed_bytes -= pack.length
            self._signal()

    # -- committing finished uploads --------------------------------------------
    async def _committer(self) -> None:
        while True:
            while not self._done:
                await self._wake.wait()
            deadline = trio.current_time() + COMMIT_INTERVAL
            with trio.move_on_at(deadline):
                while self._inflight and len(self._done) < COMMIT_BLOCKS:
                    await self._wake.wait()
            try:
                await self._commit()
            except (MegafsError, OSError, apsw.Error) as err:
                self._failed(err)
                await trio.sleep(max(0.0, self._resume_at - trio.current_time()))

    async def _commit(self) -> None:
        batch, self._done = self._done, []
        try:
            # The commit grows the metadata's write-ahead log on the cache disk: if clean
            # blocks fill it (they are in the store), evict some first, or the commit
            # fails, dirty blocks never become clean, and nothing ever frees the disk.
            with contextlib.suppress(CacheError):  # no clean block left: try anyway
                self.cache.ensure_space(0)
            await self.store.backend.sync()
            with self.blockmap.db:
                done = [e for e, gen, digest, new in batch if self._apply(e, gen, digest, new)]
                # An fsynced block's row goes with the upload of that very content.
                synced = [(e.ino, e.blk) for e in done if e.synced]
                if synced:
                    fsynced.forget(self.blockmap.db, synced)
            # The block map must be on disk before a cache file loses its dirty name:
            # otherwise a crash leaves a "clean" file that no metadata points to.
            commit_batch(self.blockmap.db)
        finally:  # on failure the blocks stay dirty and are uploaded again
            for e, *_ in batch:
                e.uploading = False
        recent = self._recent
        for e, *_ in batch:
            recent[(e.ino, e.blk)] = e  # the entry itself: a new file may reuse the inode
            recent.move_to_end((e.ino, e.blk))
        while len(recent) > _RECENT:
            recent.popitem(last=False)
        for e in done:
            if not e.removed and e.dirty:
                e.synced = False
                self.cache.mark_clean(e)
        self.cache.evict()

    def _apply(self, e: Entry, gen: int, digest: bytes | None, new: tuple | None) -> bool:
        """Point the block at its object; True if the cache copy may now be marked clean."""
        obj = None
        if digest is not None:
            # Looked up again now: a duplicate found earlier may have been deleted as
            # garbage meanwhile, and the same content may have been stored twice.
            obj = self.blockmap.find_duplicate(digest)
            if new is not None:
                key, size, stored, sha256, pack = new
                if obj is None:
                    obj = self.blockmap.add_object(key, digest, size, stored, sha256, pack)
                else:  # garbage, deleted later
                    self.blockmap.add_object(key, None, size, stored, sha256, pack)
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
