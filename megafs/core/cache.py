"""The local block cache: decrypted blocks as files, with write-back.

Block *n* of inode *i* lives in ``<cache>/blocks/<i>-<n>`` while it is clean
(identical to the stored object the block map names) and in ``<i>-<n>.d``
while it holds data not yet uploaded. The name is the durable dirty flag: after
``kill -9`` the next mount finds every ``.d`` file and uploads it. Fetched
blocks are written to ``.tmp`` and renamed, so a clean file is never partial.

Invariant: bytes of a block past the end of the file are zero (truncate trims
the last block), so growing a file never exposes stale data.

``Entry.stored`` says whether the block map has a row for the block; ``unstored``
counts, per inode, the dirty blocks without one (new data not uploaded yet), which
``st_blocks`` adds to the inode's ``nblocks``. This bookkeeping (the entry index,
the byte counts, file names and descriptors, eviction and the free-space guard)
lives in the base class :class:`megafs.core.cacheindex.CacheIndex`; this module
adds the block contents: fetching, readahead, reads, writes and truncation.

A fetched block enters the cache only after it was verified against the keyed
hash the block map records for it (:meth:`ObjectStore.get_block`); a block the
block map records as damaged is not fetched at all. Either failure is a
:class:`CorruptObject`, which the filesystem turns into EIO naming the file.

A block created by a small write starts in memory (``Entry.buf``) instead of a
file: most small files are written, closed and uploaded without a cache file
ever being created. Such a block moves to a ``.d`` file when it grows past
:data:`SPILL_SIZE`, when memory blocks exceed their budget, or when the file is
fsynced while the block is larger than :data:`DB_SYNC_BLOCK`. A smaller one stays
in memory when fsynced: its content goes into the metadata database (table
``fsynced``, :meth:`BlockCache.sync_targets`), which the same WAL sync as the
metadata makes durable -- one device flush per fsync instead of two, and no file
to create, sync, rename and delete. Either way fsynced data survives a crash;
data nobody fsynced may be lost if the daemon is killed, as on any filesystem.

Everything here runs in the trio thread; an :class:`Entry`'s file descriptor is
only used between awaits, so eviction can never close it under a reader.
"""

from __future__ import annotations

import errno
import logging
import os

import trio

from megafs.backends import NoSuchObject
from megafs.core import directio
from megafs.core.blockmap import REF_DAMAGE, UNSENT, BlockMap
from megafs.core.cacheindex import CacheIndex, Entry, cache_error
from megafs.errors import CacheError, CorruptObject, MegafsError
from megafs.store.objects import ObjectStore
from megafs.threads import run_sync

log = logging.getLogger(__name__)
SPILL_SIZE = 128 * 1024
THREAD_WRITE = 256 * 1024
#: A cold read of a small block in a pack on a remote store also fetches the blocks
#: stored near it in the same pack (up to a quarter of this before it, the rest after),
#: in one request (docs/format.md §4a): reading a folder of small files written
#: together costs a request per COALESCE_SPAN, not per file.
COALESCE_SPAN = 1 << 20
COALESCE_BELOW = 256 * 1024  # envelopes at least this large are fetched alone
#: An fsync keeps a dirty memory block of at most this many bytes in memory and stores
#: its content in the metadata database (table ``fsynced``) rather than a ``.d`` file;
#: at most DB_SYNC_TOTAL bytes per fsync, the rest go to files as larger blocks do.
DB_SYNC_BLOCK = 32 * 1024
DB_SYNC_TOTAL = 1 << 20


def _pwrite(fd: int, data, offset: int) -> None:
    """pwrite all of *data* or raise (a short write means the disk is full)."""
    n = os.pwrite(fd, data, offset)
    if n != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _padded(data: bytes, size: int) -> bytes:
    """*data* zero-padded to *size* bytes (a block file may end before the block does)."""
    return data + bytes(size - len(data)) if len(data) < size else data


def read_whole(fd: int, size: int, direct: bool) -> bytes:
    """(Blocking.) The first *size* bytes of the file open as *fd*, zero-padded; closes *fd*."""
    try:
        return _padded(directio.pread(fd, size, 0) if direct else os.pread(fd, size, 0), size)
    finally:
        os.close(fd)


class BlockCache(CacheIndex):
    def __init__(self, path: str, store: ObjectStore, blockmap: BlockMap, block_size: int,
                 max_bytes: int):
        super().__init__(path, block_size, max_bytes)
        self.store = store
        self.blockmap = blockmap
        self.max_dirty = max(max_bytes * 3 // 4, 2 * block_size)
        self.loading: dict[tuple[int, int], trio.Event] = {}
        self.wanted = trio.Event()  # set when someone waits for uploads
        self._nursery: trio.Nursery | None = None
        self.window = max(2, store.backend.parallelism)  # blocks fetched ahead of a reader
        # Large writes and upload reads of block files bypass the page cache (directio).
        self.direct = store.backend.remote and directio.supported(self.dir)

    @property
    def nursery(self) -> trio.Nursery | None:
        """Set by the daemon: enables readahead, and unlinking dropped files later."""
        return self._nursery

    @nursery.setter
    def nursery(self, nursery: trio.Nursery | None) -> None:
        self._nursery = self.trash.nursery = nursery

    # -- recovery -------------------------------------------------------------
    def recover(self, inode_sizes) -> int:
        """Index the files left by an earlier run; return the number of dirty blocks found.

        *inode_sizes(ino)* returns an inode's size, or None if it no longer exists.
        """
        found: dict[tuple[int, int], bool] = {}
        for name in os.listdir(self.dir):
            base, _, suffix = name.partition(".")
            try:
                ino, blk = map(int, base.split("-"))
                size = inode_sizes(ino)
            except ValueError:
                size = None
            if suffix not in ("", "d") or size is None or blk * self.bs >= max(size, 1):
                os.unlink(os.path.join(self.dir, name))
                continue
            if (ino, blk) in found:  # a clean and a dirty copy: the dirty one is newer
                os.unlink(f"{self.dir}/{ino}-{blk}")
            found[(ino, blk)] = found.get((ino, blk), False) or suffix == "d"
        for (ino, blk), dirty in found.items():
            e = Entry(ino, blk, 0, dirty, self.blockmap.has_block(ino, blk))
            e.size = os.stat(self._path(e)).st_size
            self._add(e)
        return len(self.dirty)

    # -- access ---------------------------------------------------------------
    async def entry(self, ino: int, blk: int, *, create: bool, fetch: bool = True,
                    small: bool = False, may_be_stored: bool = True) -> Entry | None:
        """The cache entry of a block, fetching it from the store if needed.

        Returns None for a hole unless *create*. With ``fetch=False`` (the
        caller overwrites the whole block) the stored content is not fetched.
        A block created for a *small* write starts in memory. ``may_be_stored=False``
        (the inode has no block in the block map) spares the block map query.
        """
        key = (ino, blk)
        while True:
            e = self.entries.get(key)
            if e is not None:
                self.entries.move_to_end(key)
                return e
            ev = self.loading.get(key)
            if ev is None:
                break
            await ev.wait()
        ref = self.blockmap.ref_of(ino, blk) if fetch else None
        if ref is None:
            if not create:
                return None
            stored = not fetch and may_be_stored and self.blockmap.has_block(ino, blk)
            if small and self.mem_bytes < self.mem_limit:
                e = self._add(Entry(ino, blk, 0, dirty=True, stored=stored))
                e.buf = bytearray()
                return e
            return self._create(ino, blk, b"", dirty=True, stored=stored)
        ev = self.loading[key] = trio.Event()
        return await self._load(ino, blk, ref, ev, create)

    async def _load(self, ino: int, blk: int, ref: tuple, ev: trio.Event,
                    create: bool) -> Entry | None:
        """Fetch and verify a block (*ref*: :meth:`BlockMap.ref_of`) whose loading event
        *ev* is registered; wake waiters at the end."""
        try:
            while True:
                objkey, digest, damage, where = ref
                if damage is not None and damage.startswith(UNSENT):
                    raise CorruptObject(f"block {blk} is unreadable: {damage}")
                if damage is not None:
                    raise CorruptObject(f"block {blk} is recorded as damaged ({damage});"
                                        f" the object {objkey} was moved aside by fsck")
                try:
                    if where is not None and where[2] < COALESCE_BELOW \
                            and self.store.backend.remote:
                        data = await self._fetch_with_neighbours(objkey, digest, where)
                    else:
                        data = await self.store.get_block(objkey, digest, where)
                except CorruptObject:
                    # Moved by compaction (or rewritten) while we read, and its old pack
                    # gone? Then read it as it is now; otherwise it is damage.
                    if self.blockmap.ref_of(ino, blk) == ref:
                        raise
                now = self.blockmap.ref_of(ino, blk)
                if now == ref:
                    break
                if now is None:  # truncated away while we fetched
                    if not create:
                        return None
                    return self._create(ino, blk, b"", dirty=True, stored=False)
                ref = now
            return self._create(ino, blk, data, dirty=False, stored=True)
        finally:
            del self.loading[(ino, blk)]
            ev.set()

    async def _fetch_with_neighbours(self, objkey: str, digest: bytes | None,
                                     where: tuple[str, int, int]) -> bytes:
        """Fetch a small block together with the live blocks stored near it in its pack
        (one range request of at most COALESCE_SPAN bytes); the neighbours that verify
        enter the cache as clean blocks of their files. Return the block's plaintext."""
        pack, offset, length = where
        rows = self.blockmap.ex(
            "SELECT id, key, hash, pack_offset, stored_size FROM objects WHERE pack=?"
            " AND refcount > 0 AND pack_offset >= ? AND pack_offset + stored_size <= ?"
            " AND pack_offset != ? ORDER BY pack_offset",
            (pack, offset - COALESCE_SPAN // 4, offset - COALESCE_SPAN // 4 + COALESCE_SPAN,
             offset)).fetchall()
        if not rows:
            return await self.store.get_block(objkey, digest, where)
        start = min(offset, rows[0][3])
        end = max(offset + length, rows[-1][3] + rows[-1][4])
        try:
            span = await self.store.backend.get_range(pack, start, end - start)
        except NoSuchObject:
            raise CorruptObject(f"data block {objkey} is missing from the store"
                                f" (pack {pack})") from None
        view = memoryview(span)
        own = bytes(view[offset - start:offset - start + length])
        if len(own) != length:
            raise CorruptObject(f"data block {objkey} is cut short in pack {pack}")
        data = await run_sync(self.store.open_verified_block, objkey, own, digest)
        users = self._users({row[0]: row for row in rows})
        if users:
            opened = await run_sync(self._open_neighbours, users, view, start)
            for (ino, blk), (key, plain) in opened.items():
                ref = self.blockmap.ref_of(ino, blk)
                if (ino, blk) in self.entries or (ino, blk) in self.loading or ref is None \
                        or ref[0] != key or ref[REF_DAMAGE] is not None:
                    continue  # changed, cached or being fetched meanwhile
                try:
                    self._create(ino, blk, plain, dirty=False, stored=True)
                except CacheError:  # no room: the neighbours are only a bonus
                    break
        return data

    def _users(self, rows: dict[int, tuple]) -> dict[tuple[int, int], tuple]:
        """(inode, block) -> object row, for the blocks naming *rows* not in the cache."""
        marks = ",".join("?" * len(rows))
        return {(ino, blk): rows[obj] for ino, blk, obj in self.blockmap.ex(
            f"SELECT inode, blockno, object FROM blocks WHERE object IN ({marks})",
            tuple(rows)) if (ino, blk) not in self.entries and (ino, blk) not in self.loading}

    def _open_neighbours(self, users: dict, view: memoryview, base: int) -> dict:
        """(In a worker thread.) Open and verify the neighbours' envelopes in *view*;
        those that fail are left out (a reader that needs one reports it)."""
        out = {}
        for user, (_obj, key, digest, offset, length) in users.items():
            try:
                plain = self.store.open_verified_block(
                    key, bytes(view[offset - base:offset - base + length]), digest)
            except CorruptObject:
                continue
            out[user] = (key, plain)
        return out

    def readahead(self, ino: int, blk: int, last_blk: int) -> None:
        """Start fetching the stored blocks after *blk* (up to *last_blk*) not yet cached;
        for blocks cached on disk but not opened yet, let the kernel read them ahead."""
        nxt = self.entries.get((ino, blk + 1))
        if nxt is not None:
            if nxt.fd is None and nxt.buf is None:
                for b in range(blk + 1, min(blk + 16, last_blk) + 1):
                    e = self.entries.get((ino, b))
                    if e is not None and e.fd is None and e.buf is None:
                        os.posix_fadvise(self._fd(e), 0, 0, os.POSIX_FADV_WILLNEED)
            return
        if self.nursery is None:
            return
        for b in range(blk + 1, min(blk + self.window, last_blk) + 1):
            key = (ino, b)
            if key in self.entries or key in self.loading:
                continue
            ref = self.blockmap.ref_of(ino, b)
            if ref is not None and ref[REF_DAMAGE] is None:  # (the reader reports damaged blocks)
                self.loading[key] = ev = trio.Event()
                self.nursery.start_soon(self._prefetch, ino, b, ref, ev)

    async def _prefetch(self, ino: int, blk: int, ref: tuple, ev: trio.Event) -> None:
        try:
            await self._load(ino, blk, ref, ev, False)
        except MegafsError as e:  # the reader that needs the block fetches it and reports
            log.debug("readahead of inode %d block %d failed: %s", ino, blk, e)

    def _create(self, ino: int, blk: int, data: bytes, dirty: bool, stored: bool) -> Entry:
        self.ensure_space(len(data) or 4096)
        e = Entry(ino, blk, len(data), dirty, stored)
        path = self._path(e)
        try:
            if data:  # fetched content: never leave a partial clean file behind
                fd = os.open(path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, data)
                os.rename(path + ".tmp", path)
            else:  # a new dirty block: an empty or partial one is harmless
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as err:
            raise cache_error(self.dir, err) from None
        self.evict(self.max_bytes - e.size)  # before adding: never evict the new entry
        self._add(e)
        self._remember_fd(e, fd)
        return e

    def _spill(self, e: Entry) -> None:
        """Move a memory block into its cache file."""
        self.ensure_space(len(e.buf))
        path = self._path(e)
        data, e.buf = e.buf, None
        self.mem_bytes -= len(data)
        try:
            if e.dirty:  # as in _create: a partial dirty file is harmless, no rename needed
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    _pwrite(fd, data, 0)
                    if e.synced:  # recovery prefers the file to the fsynced row: durable
                        os.fsync(fd)
                except OSError:
                    os.close(fd)
                    raise
            else:  # a clean file must never be partial
                fd = os.open(path + ".tmp", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                os.write(fd, data)
                os.rename(path + ".tmp", path)
        except OSError as err:
            e.buf = data
            self.mem_bytes += len(data)
            raise cache_error(self.dir, err) from None
        self._remember_fd(e, fd)

    def read(self, e: Entry, offset: int, size: int) -> bytes:
        if e.buf is not None:
            data = bytes(e.buf[offset:offset + size])
        else:
            data = os.pread(self._fd(e), size, offset)
        return _padded(data, size)

    def source(self, e: Entry) -> bytes | int:
        """What an upload reads the whole block from: its bytes (memory blocks, small
        ones), or a new descriptor of its file for :func:`read_whole` in a worker
        thread (whoever calls that closes it)."""
        if e.buf is not None or e.size < THREAD_WRITE:
            return self.read(e, 0, e.size) if e.size else b""
        return os.dup(self._fd(e))

    def write(self, e: Entry, offset: int, data) -> None:
        end = offset + len(data)
        if e.buf is not None and (end > SPILL_SIZE or self.mem_bytes > self.mem_limit):
            self.ensure_space(end)
            self._spill(e)
        elif e.buf is None and end > e.size:
            self.ensure_space(end - e.size)
        if not e.dirty:
            if e.buf is None:
                os.rename(self._path(e), f"{self.dir}/{e.ino}-{e.blk}.d")
            e.dirty = True
            self.dirty[(e.ino, e.blk)] = e
            self.dirty_bytes += e.size
            if not e.stored:
                self._count_unstored(e.ino, 1)
        if e.buf is not None:
            buf = e.buf
            if offset > len(buf):
                buf.extend(bytes(offset - len(buf)))
            buf[offset:end] = data
        elif data:  # (an empty write only marks the block dirty: no syscall)
            _pwrite(self._fd(e), data, offset)
        if end > e.size:
            self._resize(e, end)
        e.gen += 1
        e.last_write = trio.current_time()

    async def write_async(self, e: Entry, offset: int, data) -> None:
        """:meth:`write`, with large writes to block files done in a worker thread, so the
        copy into the page cache overlaps with receiving the next request."""
        if e.buf is not None or len(data) < THREAD_WRITE:
            self.write(e, offset, data)
            return
        self.ensure_space(max(0, offset + len(data) - e.size))
        self.write(e, offset, b"")  # marks dirty; bumps the generation before the data lands
        fd = os.dup(self._fd(e))
        e.writing += 1
        try:
            await run_sync(directio.pwrite if self.direct else _pwrite, fd, data, offset)
        finally:
            e.writing -= 1
            os.close(fd)
        if not e.removed:
            end = offset + len(data)
            if end > e.size:
                self._resize(e, end)
            e.gen += 1  # an upload that read the block mid-write must not mark it clean
            e.last_write = trio.current_time()

    def truncate_block(self, e: Entry, size: int) -> None:
        if size < e.size:
            self.write(e, size, b"")  # marks the block dirty before its content changes
            if e.buf is not None:
                del e.buf[size:]
            else:
                os.ftruncate(self._fd(e), size)
            self._resize(e, size)

    async def wait_for_room(self, timeout: float) -> None:
        """Block writers while too much data waits for upload; after *timeout* seconds
        without room (the storage is down), fail with ENOSPC."""
        if self.dirty_bytes < self.max_dirty:  # the common case: no cancel scope to set up
            return
        with trio.move_on_after(timeout):
            while self.dirty_bytes >= self.max_dirty:
                self.wanted.set()
                await self.changed.wait()
            return
        err = CacheError(f"cache full: {self.dirty_bytes} bytes wait for upload")
        err.errno = errno.ENOSPC
        raise err

    def sync_targets(self, ino: int | None) -> tuple[list[int], list[tuple[int, int, bytes]]]:
        """What an fsync of *ino* (None: all inodes) makes durable: new descriptors of its
        dirty block files (the caller syncs and closes them; duplicates are safe while the
        cache evicts), and ``(inode, block, content)`` rows of its small dirty memory
        blocks for the table ``fsynced`` (the caller stores them in the same transaction
        and syncs the WAL). The entries of those rows are marked ``synced``; larger memory
        blocks move to their files first."""
        if ino is None:
            entries = list(self.dirty.values())
        else:
            entries = [self.entries[(ino, b)] for b in self.by_ino.get(ino, ())]
        fds: list[int] = []
        rows: list[tuple[int, int, bytes]] = []
        budget = DB_SYNC_TOTAL
        for e in entries:
            if not e.dirty:
                continue
            if e.buf is not None:
                if e.size <= DB_SYNC_BLOCK and e.size <= budget:
                    budget -= e.size
                    rows.append((e.ino, e.blk, bytes(e.buf)))
                    e.synced = True
                    continue
                self._spill(e)
            fds.append(os.dup(self._fd(e)))
        return fds, rows

    def restore(self, ino: int, blk: int, data: bytes, stored: bool) -> None:
        """Recovery: make a block's fsynced content (a row of the table ``fsynced``) a
        dirty memory block, in place of a clean copy of an older version."""
        old = self.entries.get((ino, blk))
        if old is not None:
            self._drop(old)
        e = self._add(Entry(ino, blk, 0, dirty=True, stored=stored))
        e.buf = bytearray(data)
        e.synced = True
        self._resize(e, len(data))
