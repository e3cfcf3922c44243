"""The filesystem core: POSIX operations over the namespace, block map and cache.

Independent of FUSE: the adapter in :mod:`megafs.fs` translates kernel requests
into these calls. Errors are :class:`FsError` (an errno).

Inode rows handed out (``INODE_COLS``) end with ``st_blocks`` in 512-byte units:
the blocks the file has in the store (``nblocks``) plus its new blocks not uploaded
yet, each counted whole, but no more than the size rounded up to 4 KiB (so a small
file counts 4 KiB, like on ext4, not a whole block of the store).

Times: with the kernel's writeback cache (``kernel_times``) the kernel owns a
regular file's mtime and ctime; it stamps them at write time and sends them with a
``setattr``, so :meth:`Filesystem.write` leaves them alone. atime follows
``relatime`` for the reads and listings that reach the daemon (see
:meth:`Filesystem._accessed`); the kernel does not maintain atime for FUSE files.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

import apsw
import trio

from megafs.core import fsynced
from megafs.core.blockmap import BlockMap, byte_ranges
from megafs.core.cache import SPILL_SIZE as SPILL
from megafs.core.cache import BlockCache
from megafs.core.compactor import Compactor
from megafs.core.lookups import LookupCounts
from megafs.core.namespace import (
    ENTRY_COOKIE,
    ENTRY_NAME,
    ENTRY_ROW,
    NAME_MAX,
    FsError,
    Namespace,
    now_ns,
)
from megafs.core.schema import ATIME_NS, CTIME_NS, INO, MODE, MTIME_NS, NBLOCKS, SIZE, commit_batch
from megafs.core.uploader import Uploader
from megafs.errors import CacheError, MegafsError
from megafs.osutil import syncfs
from megafs.store.objects import ObjectStore
from megafs.threads import run_sync

log = logging.getLogger(__name__)
MAX_FILE_SIZE = 1 << 62
DAY_NS = 86400 * 10**9
DAMAGED_LISTED = 100  # damaged files named in the stats (an xattr value is at most 64 KiB)
ALLOC_MASK = 4096 - 1  # st_blocks counts no more than the size rounded up to 4 KiB
ST_BLOCKS_SHIFT = 9  # st_blocks is in 512-byte units
FSYNC_FILES_MAX = 8  # more dirty block files than this: one syncfs instead of fsyncs
#: Positions in a readdir row (cookie, name, inode row...) of the inode's columns.
_ENTRY_INO = ENTRY_ROW + INO
_ENTRY_NBLOCKS = ENTRY_ROW + NBLOCKS


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # no WAL: everything is in the database file
        return
    _fsync_and_close(fd)


def _syncfs_and_close(path: str, fds: list[int]) -> None:
    try:
        syncfs(path)
    finally:
        for fd in fds:
            os.close(fd)


class Filesystem:
    def __init__(self, conn: apsw.Connection, store: ObjectStore, cache_dir: str, *,
                 block_size: int, cache_size: int, upload_delay: float = 1.0,
                 timeout: float = 60.0, quota: int | None = None, atime: bool = True,
                 diratime: bool = True, kernel_times: bool = False):
        self.db = conn
        self.ns = Namespace(conn)
        self.blockmap = BlockMap(conn)
        self.store = store
        self.bs = block_size
        self.cache = BlockCache(cache_dir, store, self.blockmap, block_size, cache_size)
        self.uploader = Uploader(self.cache, self.blockmap, store, delay=upload_delay)
        self.compactor = Compactor(self.blockmap, store)  # run by the mount
        self.timeout = timeout  # how long a writer waits for cache room before ENOSPC
        self.quota = quota  # bytes the store may hold (after dedup and compression)
        self.stored = self.blockmap.stored_bytes()  # refreshed by refresh_usage()
        self.inflight = 0  # bytes of writes in progress (for the quota)
        self.lookups = LookupCounts()  # inode -> the kernel's lookup count
        self.opened: dict[int, int] = {}
        self.wal_path = conn.filename + "-wal"
        self.atime = atime  # update atime on reads (relatime); off with -o noatime
        self.diratime = atime and diratime  # ... and on listings (-o nodiratime)
        self.kernel_times = kernel_times  # writes leave mtime/ctime to the kernel
        self.unstored = self.cache.unstored
        self.wal_synced_changes = -1  # total_changes() at the last WAL sync
        self.read_failed = None  #: called when a read fails (a follower then looks for news)
        #: While set, writes of data wait for it (the daemon uploads a complete state).
        self.gate: trio.Event | None = None
        self.read_only: str | None = None  #: why writes that waited at the gate fail (EROFS)
        commit_batch(conn)

    def commit(self) -> None:
        commit_batch(self.db)

    def close(self) -> None:
        commit_batch(self.db, reopen=False)
        self.cache.close()

    def recover(self) -> int:
        """After an unclean stop: purge orphans, index cache files, bring back the blocks
        an fsync left in the table ``fsynced``; return the dirty blocks found."""
        for ino in self.ns.orphans():
            self._purge(ino)

        def size_of(ino: int) -> int | None:
            row = self.db.execute("SELECT size FROM inodes WHERE id=?", (ino,)).fetchone()
            return row[0] if row else None

        self.cache.recover(size_of)
        stale = []
        for ino, blk, data in fsynced.rows(self.db):
            size = size_of(ino)
            e = self.cache.entries.get((ino, blk))
            # A .d file of the block was written after the fsync: it is newer.
            if size is None or blk * self.bs >= size or (e is not None and e.dirty):
                stale.append((ino, blk))
                continue
            self.cache.restore(ino, blk, data[:size - blk * self.bs],
                               self.blockmap.has_block(ino, blk))
        if stale:
            with self.db:
                fsynced.forget(self.db, stale)
        return len(self.cache.dirty)

    # -- lookup counting --------------------------------------------------------
    def _ref(self, row: tuple) -> tuple:
        ino = row[INO]
        self.lookups.add(ino)
        return row

    def forget(self, ino: int, n: int) -> None:
        left = self.lookups.get(ino, 0) - n
        if left > 0:
            self.lookups[ino] = left
            return
        self.lookups.pop(ino, None)
        self._maybe_purge(ino)

    def _maybe_purge(self, ino: int) -> None:
        if ino in self.lookups or ino in self.opened:
            return
        row = self.db.execute("SELECT nlink, nblocks FROM inodes WHERE id=?", (ino,)).fetchone()
        if row is not None and row[0] == 0:
            self._purge(ino, stored_blocks=row[1] > 0)

    def _purge(self, ino: int, *, stored_blocks: bool = True) -> None:
        """Remove inode *ino* with its blocks (*stored_blocks* False: it has none in the
        block map, so only damage records are left to drop)."""
        synced = self.cache.has_synced(ino)
        self.cache.drop_inode(ino)
        with self.db:
            if synced:
                fsynced.forget_from(self.db, ino)
            if stored_blocks:
                self.blockmap.drop_from(ino, 0, count=False)
            else:
                self.blockmap.drop_damaged(ino)
            self.ns.purge(ino)

    # -- attributes handed out ---------------------------------------------------
    def _out(self, row: tuple) -> tuple:
        """*row* with its last column (nblocks) turned into st_blocks."""
        n = row[NBLOCKS]
        if self.unstored:
            n += self.unstored.get(row[INO], 0)
        if not n:
            return row
        return (*row[:NBLOCKS],
                min(n * self.bs, (row[SIZE] + ALLOC_MASK) & ~ALLOC_MASK) >> ST_BLOCKS_SHIFT)

    def _accessed(self, row: tuple) -> None:
        """relatime: set atime to now if it is not newer than mtime or ctime, or is more
        than a day old. Part of the open metadata batch, so it costs no commit."""
        t = now_ns()
        a = row[ATIME_NS]
        if a <= row[MTIME_NS] or a <= row[CTIME_NS] or t - a >= DAY_NS:
            self.db.execute("UPDATE inodes SET atime_ns=? WHERE id=?", (t, row[INO]))

    # -- namespace --------------------------------------------------------------
    def getattr(self, ino: int) -> tuple:
        return self._out(self.ns.get(ino))

    def lookup(self, parent: int, name: bytes) -> tuple:
        if name == b".":
            return self._ref(self._out(self.ns.get(parent)))
        if name == b"..":
            return self._ref(self._out(self.ns.get(self.ns.parent_of(parent))))
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        return self._ref(self._out(self.ns.lookup(parent, name)))

    def make(self, parent: int, name: bytes, mode: int, uid: int, gid: int, *,
             rdev: int = 0, target: bytes | None = None) -> tuple:
        return self._ref(self.ns.make(parent, name, mode, uid, gid, rdev=rdev, target=target))

    def link(self, ino: int, parent: int, name: bytes) -> tuple:
        return self._ref(self._out(self.ns.link(ino, parent, name)))

    def unlink(self, parent: int, name: bytes, *, rmdir: bool = False) -> None:
        ino, nlink = self.ns.unlink(parent, name, rmdir=rmdir)
        if nlink == 0:
            self._maybe_purge(ino)

    def rename(self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int,
               uid: int = 0, gid: int = 0) -> None:
        """renameat2; *uid*/*gid* (the caller's) own the whiteout RENAME_WHITEOUT leaves."""
        replaced = self.ns.rename(p_old, n_old, p_new, n_new, flags, uid, gid)
        if replaced is not None:
            self._maybe_purge(replaced)

    def readdir(self, ino: int, after: int, limit: int = 256) -> list[tuple]:
        """(cookie, name, inode row...) of the entries after cookie *after*."""
        if self.diratime:
            self._accessed(self.ns.get(ino))
        rows = self.ns.readdir(ino, after, limit)
        out = self._out
        return [r if not r[_ENTRY_NBLOCKS] and r[_ENTRY_INO] not in self.unstored
                else (r[ENTRY_COOKIE], r[ENTRY_NAME], *out(r[ENTRY_ROW:]))
                for r in rows]

    def ref_entry(self, row: tuple) -> None:
        """Count a lookup the kernel takes through readdirplus."""
        self._ref(row)

    # -- attributes ---------------------------------------------------------
    async def _pass_gate(self) -> None:
        while self.gate is not None:
            await self.gate.wait()
        if self.read_only:
            raise FsError(errno.EROFS)

    async def setattr(self, ino: int, fields: dict) -> tuple:
        if "size" in fields and self.gate is not None:
            await self._pass_gate()
        t = now_ns()
        if "size" in fields:
            size = fields["size"]
            if size > MAX_FILE_SIZE:
                raise FsError(errno.EFBIG)
            old = self.ns.get(ino)
            if not stat.S_ISREG(old[MODE]):
                raise FsError(errno.EINVAL)
            if size < old[SIZE]:
                await self._shrink(ino, size)
            fields.setdefault("mtime_ns", t)
        if fields:
            fields.setdefault("ctime_ns", t)
        return self._out(self.ns.setattr(ino, fields))

    async def _shrink(self, ino: int, size: int) -> None:
        bs = self.bs
        last, within = divmod(size, bs)
        if within:
            # A damaged block cut in the middle stays damaged (its first part is lost too);
            # one whose newest data waits for upload here is in the cache.
            e = self.cache.entries.get((ino, last))
            if e is None and not self.blockmap.is_damaged(ino, last):
                e = await self.cache.entry(ino, last, create=False)
            if e is not None:
                self.cache.truncate_block(e, within)
                if e.synced:  # what a crash brings back is cut the same way
                    fsynced.truncate(self.db, ino, last, within)
            first_dropped = last + 1
        else:
            first_dropped = last
        if self.cache.has_synced(ino, first_dropped):
            fsynced.forget_from(self.db, ino, first_dropped)
        self.cache.drop_inode(ino, first_dropped)
        self.blockmap.drop_from(ino, first_dropped)

    # -- data -----------------------------------------------------------------
    def open(self, ino: int) -> None:
        self.opened[ino] = self.opened.get(ino, 0) + 1

    def release(self, ino: int) -> None:
        left = self.opened.get(ino, 0) - 1
        if left > 0:
            self.opened[ino] = left
        else:
            self.opened.pop(ino, None)
            self._maybe_purge(ino)

    async def read(self, ino: int, offset: int, size: int) -> bytes:
        row = self.ns.get(ino)
        if self.atime:
            self._accessed(row)
        fsize = row[SIZE]
        if offset >= fsize:
            return b""
        end = min(offset + size, fsize)
        bs = self.bs
        parts = []
        pos = offset
        try:
            while pos < end:
                blk, within = divmod(pos, bs)
                n = min(bs - within, end - pos)
                e = await self.cache.entry(ino, blk, create=False)
                parts.append(bytes(n) if e is None else self.cache.read(e, within, n))
                pos += n
            self.cache.readahead(ino, blk, (fsize - 1) // bs)
        except MegafsError as err:
            log.error("read of %s (inode %d) at offset %d failed: %s", self.ns.path_of(ino), ino,
                      pos, err)
            if self.read_failed is not None:
                self.read_failed()
            raise FsError(errno.EIO) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def refresh_usage(self) -> None:
        self.cache.cleaned_bytes = 0  # the uploads they stand for are in the block map now
        self.stored = self.blockmap.stored_bytes()

    def _reserve_quota(self, n: int) -> None:
        """ENOSPC if *n* more bytes could take the store past its quota (counting data
        waiting for upload and writes in progress, before compression)."""
        if self.quota is None:
            return
        if self._used() + n > self.quota:
            self.refresh_usage()  # re-reads what is stored; cleaned_bytes drops to 0
            if self._used() + n > self.quota:
                raise FsError(errno.ENOSPC)

    def _used(self) -> int:
        """Bytes counted against the quota: stored, uploaded since the last refresh,
        waiting for upload, and being written."""
        cache = self.cache
        return self.stored + cache.cleaned_bytes + cache.dirty_bytes + self.inflight

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        end = offset + len(data)
        if end > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if self.gate is not None:
            await self._pass_gate()
        self._reserve_quota(len(data))
        self.inflight += len(data)
        try:
            await self.cache.wait_for_room(self.timeout)
            await self._write_blocks(ino, offset, data)
        except MegafsError as err:
            log.error("write to %s (inode %d) at offset %d failed: %s", self.ns.path_of(ino), ino,
                      offset, err)
            full = isinstance(err, CacheError) and getattr(err, "errno", None) == errno.ENOSPC
            raise FsError(errno.ENOSPC if full else errno.EIO) from None
        except OSError as err:  # the cache directory's disk: ENOSPC, EDQUOT, EIO
            log.error("write to %s (inode %d): cache directory: %s", self.ns.path_of(ino), ino,
                      err.strerror)
            raise FsError(err.errno or errno.EIO) from None
        finally:
            self.inflight -= len(data)
        if self.kernel_times:
            self.db.execute("UPDATE inodes SET size=max(size, ?) WHERE id=?", (end, ino))
        else:
            t = now_ns()
            self.db.execute("UPDATE inodes SET size=max(size, ?), mtime_ns=?, ctime_ns=?"
                            " WHERE id=?", (end, t, t, ino))
        return len(data)

    async def _write_blocks(self, ino: int, offset: int, data: bytes) -> None:
        bs = self.bs
        pos = 0
        view = memoryview(data)
        row = self.ns.get(ino)
        size = row[SIZE]
        stored = row[NBLOCKS] > 0  # else no block of the file is in the block map
        while pos < len(data):
            blk, within = divmod(offset + pos, bs)
            n = min(bs - within, len(data) - pos)
            # Nothing to fetch when the block is overwritten whole or lies past EOF.
            fetch = blk * bs < size and not (within == 0 and n == bs)
            e = await self.cache.entry(ino, blk, create=True, fetch=fetch, small=n < SPILL,
                                       may_be_stored=stored)
            await self.cache.write_async(e, within, view[pos:pos + n])
            pos += n

    async def fsync(self, ino: int | None) -> None:
        """Make written data of *ino* (all inodes if None) survive a crash of this process.

        Small dirty blocks held in memory go into the metadata batch (table ``fsynced``),
        which is committed; then the WAL and the dirty block files, if any, are synced
        concurrently, in worker threads: a larger save waits for the slower of the syncs,
        not their sum. An editor's save of a small file costs one WAL sync, done in this
        thread: blocking for one small flush costs less than the two thread hand-offs.
        The WAL is not synced again when no row changed since its last sync."""
        fds, rows = self.cache.sync_targets(ino)
        if rows:
            fsynced.store(self.db, rows)
        self.commit()
        changes = self.db.total_changes()
        sync_wal = changes != self.wal_synced_changes
        if len(fds) > FSYNC_FILES_MAX:  # one syncfs beats hundreds of fsyncs
            await run_sync(_syncfs_and_close, self.cache.dir, fds)
            fds = []
        if not fds:
            if sync_wal:
                # The WAL alone (an editor's save of a small file): one small flush, done
                # here as SQLite does a COMMIT's under synchronous=FULL. The hop to a worker
                # thread and back cost more than the flush (75-110 us against 115-190 us).
                _fsync_path(self.wal_path)
        elif len(fds) + sync_wal == 1:  # one sync: no nursery needed
            await run_sync(_fsync_and_close, fds[0])
        else:
            async with trio.open_nursery() as nursery:
                for fd in fds:
                    nursery.start_soon(run_sync, _fsync_and_close, fd)
                if sync_wal:
                    nursery.start_soon(run_sync, _fsync_path, self.wal_path)
        self.wal_synced_changes = changes

    # -- xattrs / statfs ------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.ns.getxattr(ino, name)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int) -> None:
        self.ns.setxattr(ino, name, value, flags)

    def listxattr(self, ino: int) -> list[bytes]:
        return self.ns.listxattr(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.ns.removexattr(ino, name)

    def stats(self) -> dict:
        """Figures for ``megafs stat``."""
        blocks = self.blockmap.stats()
        damaged = self.damaged_files()
        files, logical = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM inodes WHERE mode & ? = ?",
            (stat.S_IFMT(0o177777), stat.S_IFREG)).fetchone()
        meta = self.db.execute("SELECT value FROM state WHERE key IN ('base_size')"
                               ).fetchone()
        return {
            "files": files, "inodes": self.ns.count_inodes(),
            "file_bytes": logical,  # sum of file sizes (holes included)
            "block_bytes": blocks["logical_bytes"],  # stored blocks as files use them
            "unique_bytes": blocks["plain_bytes"],  # after deduplication
            "stored_bytes": blocks["stored_bytes"],  # after compression, envelopes' padding
            "packs": blocks["packs"], "dead_bytes": blocks["dead_bytes"],  # in packs
            "padding_bytes": blocks["padding_bytes"],  # of packs (not in stored_bytes)
            "compacted_packs": self.compactor.rewritten,  # since the mount
            "quota": self.quota, "cache_bytes": self.cache.total,
            "cache_limit": self.cache.max_bytes, "dirty_bytes": self.cache.dirty_bytes,
            "metadata_local_bytes": os.path.getsize(self.db.filename),
            "metadata_snapshot_bytes": meta[0] if meta else None,
            "damaged_files": len(damaged), "damaged": damaged[:DAMAGED_LISTED],
        }

    def damaged_files(self) -> list[dict]:
        """The files with blocks recorded as damaged (by fsck): path, inode and the
        unreadable byte ranges ``[[start, end], ...]``."""
        return [{"path": self.ns.path_of(ino), "inode": ino,
                 "ranges": byte_ranges(blocknos, self.bs)}
                for ino, blocknos in self.blockmap.damaged().items()]

    def usage(self) -> tuple[int, int]:
        """(number of inodes, bytes used: stored plus waiting for upload)."""
        self.refresh_usage()
        return self.ns.count_inodes(), self.stored + self.cache.dirty_bytes
