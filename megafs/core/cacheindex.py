"""The block cache's index and accounting: which blocks are cached, and the budgets.

:class:`CacheIndex` is the base of :class:`megafs.core.cache.BlockCache`; it holds
no block data itself and never talks to the store. It keeps

* ``entries``: every cached block (an :class:`Entry`), least recently used first,
  with ``by_ino`` (inode -> its cached block numbers) and ``dirty`` (the dirty
  entries) beside it;
* the byte counts ``total`` (all cached blocks), ``dirty_bytes`` (blocks waiting
  for upload) and ``mem_bytes`` (blocks held in memory, ``Entry.buf``, with their
  budget ``mem_limit``);
* ``unstored``: per inode, the dirty blocks the block map has no row for yet
  (``Entry.stored`` is false), which ``st_blocks`` adds to the inode's ``nblocks``;
* ``fds``: the open descriptors of block files, at most :data:`MAX_FDS`, the least
  recently opened closed first.

It also decides which files a block lives in (``<i>-<n>``, ``<i>-<n>.d`` while
dirty: see :mod:`megafs.core.cache`), drops entries, evicts clean blocks, and
guards free space on the cache directory's disk (:meth:`CacheIndex.ensure_space`).
Every change of an entry's size, dirtiness or ``stored`` flag goes through
:meth:`CacheIndex._add`, :meth:`CacheIndex._resize`, :meth:`CacheIndex._drop`,
:meth:`CacheIndex.set_stored` or :meth:`CacheIndex.mark_clean` (and the
clean-to-dirty step of ``BlockCache.write``), which keep the counts exact.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict

import trio

from megafs.core.trash import Trash
from megafs.errors import CacheError

MAX_FDS = 512


def cache_error(path: str, err: OSError) -> CacheError:
    e = CacheError(f"cache directory {path}: {err.strerror}")
    e.errno = err.errno
    return e


class Entry:
    __slots__ = ("ino", "blk", "fd", "buf", "dirty", "gen", "size", "last_write", "uploading",
                 "removed", "writing", "stored", "synced")

    def __init__(self, ino: int, blk: int, size: int, dirty: bool, stored: bool):
        self.ino, self.blk, self.size, self.dirty = ino, blk, size, dirty
        self.stored = stored  # the block map has a row for this block
        self.fd = None
        self.buf: bytearray | None = None
        self.gen = 0
        self.last_write = 0.0
        self.uploading = False
        self.removed = False
        self.writing = 0  # writes in worker threads: neither evictable nor clean-able
        #: The block's content as of an fsync is in the database (table ``fsynced``): the
        #: row goes when the block is uploaded or removed (see BlockCache.fsync_parts).
        self.synced = False


class CacheIndex:
    def __init__(self, path: str, block_size: int, max_bytes: int):
        self.dir = os.path.join(path, "blocks")
        os.makedirs(self.dir, exist_ok=True)
        self.bs = block_size
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, int], Entry] = OrderedDict()
        self.by_ino: dict[int, set[int]] = {}
        self.dirty: dict[tuple[int, int], Entry] = {}
        self.unstored: dict[int, int] = {}  # inode -> dirty blocks not in the block map
        self.fds: OrderedDict[tuple[int, int], Entry] = OrderedDict()
        self.total = 0
        self.dirty_bytes = 0
        # Bytes marked clean (uploaded) since the owner last re-read the stored total:
        # counted until then, so usage never dips between the two (quota checks).
        self.cleaned_bytes = 0
        self.mem_bytes = 0
        self.mem_limit = min(64 << 20, max_bytes // 8)
        self.changed = trio.Event()  # set whenever dirty data is uploaded or removed
        st = os.statvfs(self.dir)  # keep this much free on the cache disk (ensure_space):
        self.min_free = min(64 << 20, st.f_blocks * st.f_frsize // 10)
        self._free = 0
        self._checked = -1.0
        self.trash = Trash()  # dropped block files are unlinked off the request path

    # -- bookkeeping ----------------------------------------------------------
    def _path(self, e: Entry) -> str:
        return f"{self.dir}/{e.ino}-{e.blk}{'.d' if e.dirty else ''}"

    def _fd(self, e: Entry) -> int:
        if e.fd is None:
            self._remember_fd(e, os.open(self._path(e), os.O_RDWR))
        return e.fd

    def _remember_fd(self, e: Entry, fd: int) -> None:
        e.fd = fd
        self.fds[(e.ino, e.blk)] = e
        if len(self.fds) > MAX_FDS:
            _, old = self.fds.popitem(last=False)
            os.close(old.fd)
            old.fd = None

    def _add(self, e: Entry) -> Entry:
        key = (e.ino, e.blk)
        self.entries[key] = e
        self.by_ino.setdefault(e.ino, set()).add(e.blk)
        self.total += e.size
        if e.dirty:
            self.dirty[key] = e
            self.dirty_bytes += e.size
            if not e.stored:
                self._count_unstored(e.ino, 1)
        return e

    def _count_unstored(self, ino: int, n: int) -> None:
        left = self.unstored.get(ino, 0) + n
        if left:
            self.unstored[ino] = left
        else:
            del self.unstored[ino]

    def set_stored(self, e: Entry, stored: bool) -> None:
        """Record that the block map now has (or no longer has) a row for *e*'s block."""
        if e.stored != stored:
            e.stored = stored
            if e.dirty and not e.removed:
                self._count_unstored(e.ino, -1 if stored else 1)

    def _resize(self, e: Entry, size: int) -> None:
        delta = size - e.size
        e.size = size
        self.total += delta
        if e.buf is not None:
            self.mem_bytes += delta
        if e.dirty:
            self.dirty_bytes += delta

    def _notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _drop(self, e: Entry) -> None:
        key = (e.ino, e.blk)
        del self.entries[key]
        blks = self.by_ino[e.ino]
        blks.discard(e.blk)
        if not blks:
            del self.by_ino[e.ino]
        if e.fd is not None:
            os.close(e.fd)
            del self.fds[key]
            e.fd = None
        if e.buf is not None:
            self.mem_bytes -= e.size
            e.buf = None
        else:
            self.trash.discard(self._path(e))
        self.total -= e.size
        if e.dirty:
            del self.dirty[key]
            self.dirty_bytes -= e.size
            if not e.stored:
                self._count_unstored(e.ino, -1)
            self._notify()
        e.removed = True

    def evict(self, target: int | None = None) -> None:
        """Drop least recently used clean blocks until the cache is within *target* bytes
        and the memory blocks within their budget."""
        target = self.max_bytes if target is None else target
        if self.total <= target and self.mem_bytes <= self.mem_limit:
            return
        for e in list(self.entries.values()):
            over_total = self.total > target
            if not over_total and self.mem_bytes <= self.mem_limit:
                break
            if e.dirty or e.uploading or e.writing:
                continue
            if over_total or e.buf is not None:
                self._drop(e)

    def ensure_space(self, need: int) -> None:
        """Keep free space on the cache directory's disk for the metadata database and
        logs: evict clean blocks if needed, else raise CacheError(ENOSPC) *before* the
        disk is full. statvfs runs at most every 50 ms while the running estimate of
        free space stays above the reserve."""
        self._free -= need
        now = trio.current_time()
        if self._free > self.min_free and now - self._checked < 0.05:
            return
        for attempt in range(2):
            st = os.statvfs(self.dir)
            self._checked = now
            self._free = st.f_bavail * st.f_frsize - need
            if self._free > self.min_free:
                return
            if attempt == 0:
                self.evict(max(0, self.total - (self.min_free - self._free)))
        err = CacheError(f"cache directory {self.dir}: disk full")
        err.errno = errno.ENOSPC
        raise err

    def has_synced(self, ino: int, first_blk: int = 0) -> bool:
        """True if a block of *ino* from *first_blk* on has a row in ``fsynced``."""
        entries = self.entries
        return any(entries[(ino, b)].synced for b in self.by_ino.get(ino, ()) if b >= first_blk)

    def drop_inode(self, ino: int, first_blk: int = 0) -> None:
        for blk in sorted(self.by_ino.get(ino, ())):
            if blk >= first_blk:
                self._drop(self.entries[(ino, blk)])

    # -- used by the uploader -------------------------------------------------
    def mark_clean(self, e: Entry) -> None:
        if e.buf is None:
            os.rename(self._path(e), f"{self.dir}/{e.ino}-{e.blk}")
        e.dirty = False
        del self.dirty[(e.ino, e.blk)]
        self.dirty_bytes -= e.size
        self.cleaned_bytes += e.size
        if not e.stored:
            self._count_unstored(e.ino, -1)
        self._notify()

    def close(self) -> None:
        for e in self.fds.values():
            os.close(e.fd)
            e.fd = None
        self.fds.clear()
        self.trash.close()
