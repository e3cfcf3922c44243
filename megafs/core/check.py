"""Checking and repairing a filesystem in its store (the engine of fsck.megafs).

Checks, in order: the head (a missing or damaged one is rebuilt from the snapshot and
deltas that verify, see :mod:`megafs.core.rebuild`), the superblock version the head
records, every snapshot and delta the head names (size, SHA-256, authentication),
that the head descends from what the given cache directory has seen (otherwise
nothing is changed: exit 22 unless forced), the lock, every data object the
metadata references (exists, authenticates, right length, plaintext matches the
keyed hash recorded for it), objects nothing references (data objects are deleted,
metadata objects never), reference counts,
the per-inode block counts (``st_blocks``), directory entries without inodes, inodes without entries (orphans) and link
counts. Repairs change only metadata and delete only unreferenced objects; the
repaired metadata is committed as a new full snapshot.

Repair never hides damage: a damaged or missing data object is moved aside to
``q/<hex>`` (copied, then deleted once the repaired metadata is committed), the
blocks naming it are recorded in the ``damaged`` table and keep their rows, so
reading them stays an error on every machine until the block is overwritten,
truncated away or its file removed. Files with recorded damage are listed on
every run and make fsck exit with FSCK_ERRORS (problems it could not repair).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import apsw
import trio

from megafs.backends import NoSuchObject
from megafs.core import fsynced, retention, schema, snapshot
from megafs.core.blockmap import UNSENT, BlockMap, byte_ranges
from megafs.core.descent import Seen, check_superblock, refusal, relate
from megafs.core.follow import writer_alive
from megafs.core.localcopy import history_of
from megafs.core.namespace import ROOT, Namespace, now_ns
from megafs.core.rebuild import rebuild_head
from megafs.errors import CorruptObject, RollbackDetected, UnsupportedFormat
from megafs.store import followers as store_followers
from megafs.store import lock as store_lock
from megafs.store.followers import PREFIX as FOLLOWERS_PREFIX
from megafs.store.objects import HEAD_KEY, QUARANTINE_PREFIX, ObjectStore, quarantine_key
from megafs.store.share import WEB_PAGE
from megafs.store.superblock import OBJECT_KEY as SUPERBLOCK_KEY


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    repaired: bool = False
    read_only_reason: str | None = None
    damaged: list[str] = field(default_factory=list)  # files with recorded damage (paths)


class Checker:
    """One fsck run over the store's newest metadata: :meth:`run` checks, repairs unless
    ``repair`` is false (or the store is mounted), and returns the :class:`Report`.
    Problems are told through *say* as they are found, one line each.

    *seen* is what the cache directory fsck was given last saw: a store head that does
    not descend from it is refused (RollbackDetected) unless *force*. *sb_version* is
    the superblock's version, which must not be older than the head's. *lease* is the
    store's lock, held while repairing.
    """

    def __init__(self, store: ObjectStore, block_size: int, *, repair: bool,
                 say: Callable[[str], None], progress: Callable[[str], None] = lambda text: None,
                 lease: store_lock.Lease | None = None,
                 seen: Seen | None = None, force: bool = False, sb_version: int = 0,
                 retention_s: float | None = None):
        self.seen = seen
        #: How long objects the metadata no longer names are kept (raised to 10 follow
        #: intervals of any announced follower when the run looks at them).
        self.retention = retention.default_retention() if retention_s is None \
            else retention_s
        self.force = force
        self.sb_version = sb_version
        self.keep_data = False  # the head was rebuilt: delete no data object this run
        self.store = store
        self.lease = lease  # the store's lock, held while repairing
        self.bs = block_size
        self.backend = store.backend
        self.repair = repair
        self.say = say
        self.progress = progress
        self.report = Report()
        self.changed = False  # metadata repaired: commit a new snapshot
        self.moved: list[str] = []  # quarantined originals: deleted after the commit

    def problem(self, text: str, *, fixed: str = "") -> None:
        self.report.problems.append(text)
        self.say(f"{text}{f'; {fixed}' if fixed and self.repair else ''}")

    async def run(self) -> Report:
        head = await self._head()
        if head is None:
            return self.report
        check_superblock(self.sb_version, head)
        try:
            self.db = await snapshot.load(self.store, head)  # sizes, hashes, authentication
        except (CorruptObject, UnsupportedFormat) as e:
            self.problem(f"the metadata the head names cannot be read: {e}")
            self.repair = False
            return self.report
        self._check_descent(head)
        await self._check_lock()
        snapshot.confirm(self.db, head)
        self.ns = Namespace(self.db)
        self.blockmap = BlockMap(self.db)  # unmaps blocks keeping nblocks and refcounts
        stored = {k async for k in self.backend.list("")}
        await self._check_objects(stored)
        await self._finish_quarantine(stored)
        self._check_damaged_rows()
        self._check_refcounts()
        self._check_block_counts()
        self._check_entries()
        self._check_link_counts()
        garbage = await self._check_unreferenced(stored, head)
        if self.repair and (self.changed or garbage):
            snap = snapshot.Snapshotter(self.db, self.store, self.blockmap, keep_metadata=True)
            snap.retention = self.retention
            await snap.upload(full=True)
            self.report.repaired = True
        for key in self.moved:  # the committed metadata records them as damaged now
            await self.backend.delete(key)
        self._list_damaged()
        await self._list_unsent()
        return self.report

    async def _head(self) -> dict | None:
        """The store's head; a missing or damaged one is rebuilt (written if repairing)."""
        try:
            head = await self.store.read_head()
            if head is not None:
                return head
            what = "the store has no metadata head"
        except CorruptObject as e:
            what = f"the store's head is unusable ({e})"
        head = await rebuild_head(self.store, self.sb_version, self.say)
        if head is None:
            self.problem(f"{what}, and no metadata snapshot in the store verifies:"
                         " nothing to check")
            self.repair = False
            return None
        self.problem(f"{what}: rebuilt it from snapshot {head['snapshot']} and"
                     f" {len(head['deltas'])} deltas (metadata version {head['seq']});"
                     " no data object is deleted in this run", fixed="head written")
        self.keep_data = True
        if self.repair:
            head["hash"] = await self.store.write_head(head)
            await self.backend.sync()
            self.report.repaired = True
        return head

    def _check_descent(self, head: dict) -> None:
        """Refuse to change a store whose head the cache directory knows to be older."""
        relation = relate(self.seen, head, history_of(self.db))
        if relation.accepted:
            return
        error = refusal(self.seen, head, relation)
        if not self.force:
            raise RollbackDetected(f"{error}; fsck.megafs changed nothing (--force checks"
                                   " and repairs this state anyway)")
        self.say(f"{error}; checking it anyway (--force)")

    async def _check_lock(self) -> None:
        if self.lease is not None:  # taken for the repair: report a leftover one it replaced
            if self.lease.took_over is not None:
                self.problem(f"leftover lock of {store_lock.describe(self.lease.took_over)}"
                             " (that mount is gone)", fixed="removed")
                self.report.repaired = True
            return
        try:
            holder = await store_lock.read(self.store)
        except (CorruptObject, UnsupportedFormat):
            self.problem("the store's lock object is damaged", fixed="removed")
            if self.repair:
                await self.backend.delete(store_lock.LOCK_KEY)
                self.report.repaired = True
            return
        if holder is None:
            return
        who = f"{holder['host']} pid {holder['pid']}"
        if store_lock.is_stale(holder):
            self.problem(f"leftover lock of {who} (that mount is gone)", fixed="removed")
            if self.repair:
                await self.backend.delete(store_lock.LOCK_KEY)
                self.report.repaired = True
        elif self.repair:
            self.report.read_only_reason = (f"the store is mounted ({who}): checking only;"
                                            " unmount it to repair")
            self.say(self.report.read_only_reason)
            self.repair = False

    async def _check_objects(self, stored: set[str]) -> None:
        """Verify every referenced object not already recorded as damaged; quarantine the
        bad ones (see the module docstring)."""
        rows = self.db.execute("SELECT id, key, size, hash, pack, pack_offset, stored_size"
                               " FROM objects WHERE refcount > 0"
                               " AND key NOT IN (SELECT key FROM damaged)").fetchall()
        await self._check_packs(stored)
        bad: dict[int, str] = {}
        limit = trio.CapacityLimiter(self.backend.parallelism * 2)
        done = 0

        async def verify(obj: int, key: str, size: int, digest: bytes | None, pack: str | None,
                         offset: int | None, length: int) -> None:
            nonlocal done
            where = (pack, offset, length) if pack is not None else None
            async with limit:
                try:
                    if (pack or key) not in stored:
                        raise CorruptObject(f"data block {key} is missing from the store"
                                            + (f" (pack {pack})" if pack else ""))
                    data = await self.store.get_block(key, digest, where)
                    if len(data) != size:
                        raise CorruptObject(f"data block {key} has the wrong length")
                except (CorruptObject, UnsupportedFormat, NoSuchObject) as e:
                    bad[obj] = str(e) if pack is None or pack in str(e) else f"{e} (pack {pack})"
                done += 1
                self.progress(f"checked {done} of {len(rows)} data objects")

        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(verify, *row)
        bs = self.bs
        for obj, reason in sorted(bad.items()):
            key, pack, offset, length = self.db.execute(
                "SELECT key, pack, pack_offset, stored_size FROM objects WHERE id=?",
                (obj,)).fetchone()
            where = (pack, offset, length) if pack is not None else None
            users = self.db.execute("SELECT inode, blockno FROM blocks WHERE object=?",
                                    (obj,)).fetchall()
            fixed = "recorded as damaged" + (
                "" if (pack or key) not in stored else
                f", object moved aside to {quarantine_key(key)}" if pack is None else
                f", its envelope copied aside to {quarantine_key(key)} (pack {pack} kept)")
            for ino, blockno in users:
                self.problem(f"{self.ns.path_of(ino)}: bytes {blockno * bs}-{(blockno + 1) * bs}"
                             f" unreadable: {reason}", fixed=fixed)
            if self.repair:
                await self._quarantine(key, stored, where)
                self.blockmap.mark_damaged(obj, reason, now_ns())
                self.changed = True

    async def _quarantine(self, key: str, stored: set[str],
                          where: tuple[str, int, int] | None = None) -> None:
        """Copy the object *key* (if it exists) to ``q/<hex>``; the original is deleted
        once the metadata recording the damage is committed (backends cannot rename).
        A block in a pack (*where*) is copied from its range; the pack stays (it holds
        other blocks) and its damaged range counts as dead space."""
        if (where[0] if where else key) not in stored:
            return
        try:
            if where is None:
                blob = await self.backend.get(key)
            else:
                blob = await self.backend.get_range(*where)
        except NoSuchObject:
            return
        await self.backend.put(quarantine_key(key), blob)
        if where is None:
            self.moved.append(key)

    async def _check_packs(self, stored: set[str]) -> None:
        """Every pack the metadata names exists with the size it records (a pack cut or
        grown after its last block loses nothing, but the provider changed it: a problem;
        the repair records the size found, as its blocks are verified one by one); report
        the dead space in packs."""
        packs = self.db.execute("SELECT key, size FROM packs").fetchall()
        missing = [key for key, _ in packs if key not in stored]
        for key in missing:
            self.say(f"pack {key} is missing from the store")
        sizes: dict[str, int | None] = {}
        limit = trio.CapacityLimiter(self.backend.parallelism * 2)

        async def size_of(key: str) -> None:
            async with limit:
                sizes[key] = await self.backend.size(key)

        async with trio.open_nursery() as nursery:
            for key, _ in packs:
                if key in stored:
                    nursery.start_soon(size_of, key)
        for key, size in packs:
            found = sizes.get(key)
            if found is not None and found != size:
                self.problem(f"pack {key} is {found} bytes in the store, but the metadata"
                             f" records {size}: changed outside megafs (its blocks are"
                             " checked one by one)", fixed="the size found recorded")
                if self.repair:
                    self.db.execute("UPDATE packs SET size=? WHERE key=?", (found, key))
                    self.changed = True
        if packs:
            dead, padding = self.blockmap.dead_bytes(), self.blockmap.padding_bytes()
            total = sum(size for _, size in packs)
            self.say(f"{len(packs)} packs, {total} bytes: {dead} bytes of dead space"
                     f" (deleted data, {100 * dead // max(total, 1)}%), {padding} bytes of"
                     " padding")

    async def _finish_quarantine(self, stored: set[str]) -> None:
        """Damage already recorded whose object is still in place (a run stopped between
        the commit and deleting the originals): move it aside now."""
        if not self.repair:
            return
        for (key,) in self.db.execute("SELECT DISTINCT key FROM damaged").fetchall():
            if key in stored and key not in self.moved:
                await self._quarantine(key, stored)

    def _check_damaged_rows(self) -> None:
        """Damage records of blocks that no longer exist (nothing left to protect)."""
        stale = self.db.execute(
            "SELECT d.inode, d.blockno FROM damaged d WHERE NOT EXISTS (SELECT 1 FROM blocks b"
            " WHERE b.inode=d.inode AND b.blockno=d.blockno)").fetchall()
        for ino, blockno in stale:
            self.problem(f"inode {ino}: damage recorded for block {blockno}, which is a hole",
                         fixed="record removed")
            if self.repair:
                self.db.execute("DELETE FROM damaged WHERE inode=? AND blockno=?",
                                (ino, blockno))
                self.changed = True

    def _list_damaged(self) -> None:
        """Name every file with recorded damage and its unreadable byte ranges."""
        for ino, blocknos in self.blockmap.damaged().items():
            path = self.ns.path_of(ino)
            ranges = ", ".join(f"{a}-{b}" for a, b in byte_ranges(blocknos, self.bs))
            self.report.damaged.append(path)
            self.say(f"{path}: damaged, bytes {ranges} (objects under {QUARANTINE_PREFIX});"
                     " reading them fails until they are overwritten, truncated away or the"
                     " file is removed")

    async def _list_unsent(self) -> None:
        """Blocks whose newest data the state's writer had not uploaded (table ``unsent``):
        with that writer still mounted, they are on their way (said, not a problem);
        otherwise that data is lost to the store, and the files are listed as damaged."""
        rows = self.db.execute(
            "SELECT inode, blockno, writer FROM unsent ORDER BY inode, blockno").fetchall()
        if not rows:
            return
        try:
            holder = None if self.lease is not None else await store_lock.read(self.store)
        except (CorruptObject, UnsupportedFormat):
            holder = None
        mounted = store_lock.describe(holder) if writer_alive(holder) else None
        waiting = [(ino, blockno) for ino, blockno, writer in rows if writer == mounted]
        if waiting:  # the mounted writer's own: on their way
            self.say(f"{len(waiting)} blocks of {len({i for i, _ in waiting})} files wait for"
                     f" upload by the writer {mounted} (mounted)")
        lost: dict[int, list[int]] = {}
        writers: dict[int, set[str]] = {}
        for ino, blockno, writer in rows:
            if writer != mounted:
                lost.setdefault(ino, []).append(blockno)
                writers.setdefault(ino, set()).add(writer)
        for ino, blocknos in lost.items():
            path = self.ns.path_of(ino)
            ranges = ", ".join(f"{a}-{b}" for a, b in byte_ranges(blocknos, self.bs))
            self.report.damaged.append(path)
            self.say(f"{path}: bytes {ranges} unreadable: {UNSENT}"
                     f" {', '.join(sorted(writers[ino]))}, which stopped before it did;"
                     " reading them fails until they are overwritten, truncated away or the"
                     " file is removed")

    def _check_refcounts(self) -> None:
        wrong = self.db.execute(
            "SELECT o.id, o.key, o.refcount, (SELECT count(*) FROM blocks b WHERE b.object=o.id)"
            " AS n FROM objects o WHERE o.refcount != n").fetchall()
        for obj, key, have, want in wrong:
            self.problem(f"object {key}: reference count {have}, should be {want}",
                         fixed="corrected")
            if self.repair:
                self.db.execute("UPDATE objects SET refcount=? WHERE id=?", (want, obj))
                self.changed = True
        dangling = self.db.execute(
            "SELECT inode, blockno FROM blocks WHERE object NOT IN (SELECT id FROM objects)"
        ).fetchall()
        for ino, blockno in dangling:
            self.problem(f"{self.ns.path_of(ino)}: block {blockno} names no object",
                         fixed="made a hole")
            if self.repair:
                self.blockmap.set_block(ino, blockno, None)
                self.changed = True

    def _check_block_counts(self) -> None:
        """``inodes.nblocks`` (what st_blocks shows) against the rows of the block map."""
        wrong = self.db.execute(
            "SELECT i.id, i.nblocks, (SELECT count(*) FROM blocks b WHERE b.inode=i.id) AS n"
            " FROM inodes i WHERE i.nblocks != n").fetchall()
        for ino, have, want in wrong:
            self.problem(f"{self.ns.path_of(ino)}: block count {have}, should be {want}",
                         fixed="corrected")
            if self.repair:
                self.db.execute("UPDATE inodes SET nblocks=? WHERE id=?", (want, ino))
                self.changed = True

    def _check_entries(self) -> None:
        for did, parent, name in self.db.execute(
                "SELECT id, parent, name FROM dentries WHERE inode NOT IN"
                " (SELECT id FROM inodes) OR parent NOT IN (SELECT id FROM inodes)").fetchall():
            self.problem(f"entry {name.decode(errors='replace')!r} in directory {parent}"
                         " points nowhere", fixed="removed")
            if self.repair:
                self.db.execute("DELETE FROM dentries WHERE id=?", (did,))
                self.changed = True
        orphans = self.db.execute(
            "SELECT id, nlink, mode FROM inodes WHERE id != ? AND id NOT IN"
            " (SELECT inode FROM dentries)", (ROOT,)).fetchall()
        for ino, nlink, mode in orphans:
            if nlink == 0 or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                self.problem(f"inode {ino} has no name and no links", fixed="deleted")
                if self.repair:
                    self.blockmap.drop_from(ino, 0)
                    self.ns.purge(ino)
                    self.changed = True
                continue
            self.problem(f"inode {ino} is in no directory", fixed="moved to /lost+found")
            if self.repair:
                lost = self._lost_and_found()
                self.db.execute("INSERT INTO dentries (parent, name, inode) VALUES (?,?,?)",
                                (lost, f"inode-{ino}".encode(), ino))
                self.changed = True

    def _lost_and_found(self) -> int:
        row = self.db.execute("SELECT inode FROM dentries WHERE parent=? AND name=?",
                              (ROOT, b"lost+found")).fetchone()
        if row:
            return row[0]
        return self.ns.make(ROOT, b"lost+found", stat.S_IFDIR | 0o700, 0, 0)[0]

    def _check_link_counts(self) -> None:
        rows = self.db.execute(
            "SELECT i.id, i.mode, i.nlink,"
            " (SELECT count(*) FROM dentries d WHERE d.inode=i.id),"
            " (SELECT count(*) FROM dentries d JOIN inodes c ON c.id=d.inode"
            "  WHERE d.parent=i.id AND (c.mode & ?) = ?)"
            " FROM inodes i", (stat.S_IFMT(0o177777), stat.S_IFDIR)).fetchall()
        for ino, mode, nlink, names, subdirs in rows:
            want = 2 + subdirs if stat.S_ISDIR(mode) else names
            if nlink != want and (names or ino == ROOT):
                self.problem(f"{self.ns.path_of(ino)}: link count {nlink}, should be {want}",
                             fixed="corrected")
                if self.repair:
                    self.db.execute("UPDATE inodes SET nlink=?, ctime_ns=? WHERE id=?",
                                    (want, now_ns(), ino))
                    self.changed = True

    async def _check_unreferenced(self, stored: set[str], head: dict) -> int:
        known = {SUPERBLOCK_KEY, HEAD_KEY, store_lock.LOCK_KEY, head["snapshot"],
                 *head.get("deltas", []), WEB_PAGE}  # the page of megafs web enable
        known |= {r[0] for r in self.db.execute("SELECT key FROM objects")}
        known |= {r[0] for r in self.db.execute("SELECT key FROM packs")}
        known |= {f"s/{r[0]}" for r in self.db.execute("SELECT id FROM shares")}
        known |= {k for k in stored if k.startswith(FOLLOWERS_PREFIX)}  # followers' leases
        announced = await store_followers.followers(self.store)
        self.retention = retention.effective(
            self.retention, [float(f.get("interval", 0)) for f in announced])
        held = retention.pending(self.db, time.time(), self.retention)
        held &= stored - known
        if held:  # followers may still read them (docs/format.md §5c)
            self.say(f"{len(held)} objects no longer named by the metadata are pending deletion"
                     " (inside the retention period): kept")
        known |= held
        if self.repair:  # the rest of the list is gone or garbage (deleted below)
            self.db.execute("DELETE FROM retained WHERE key NOT IN"
                            f" ({','.join('?' * len(held))})", tuple(held))
            self.changed = self.changed or self.db.changes() > 0
        metadata = sorted(k for k in stored if k not in known and k.startswith("m/"))
        if metadata:  # perhaps a newer state than the head's: never deleted by fsck
            self.say(f"{len(metadata)} metadata objects in the store are not referenced by the"
                     " head: kept (fsck.megafs never deletes metadata)")
        extra = sorted(k for k in stored if k not in known and not k.startswith("m/")
                       and not k.startswith(QUARANTINE_PREFIX))
        if extra and self.keep_data:
            self.problem(f"{len(extra)} objects in the store are not referenced by anything:"
                         " kept in this run, as the head was rebuilt (run fsck.megafs again"
                         " to remove them)")
        elif extra:
            self.problem(f"{len(extra)} objects in the store are not referenced by anything",
                         fixed="removed")
            if self.repair:
                for key in extra:
                    await self.backend.delete(key)
        return 0 if self.keep_data else len(extra)


def local_changes(cache_dir: str) -> str | None:
    """Describe changes a cache directory holds that may not be in the store, or None."""
    path = os.path.join(cache_dir, "metadata.db")
    if not os.path.exists(path):
        return None
    blocks = os.path.join(cache_dir, "blocks")
    dirty = len([n for n in os.listdir(blocks) if n.endswith(".d")]) \
        if os.path.isdir(blocks) else 0
    conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        pending = schema.unsent_changes(conn)
        dirty += fsynced.count(conn)
    except apsw.Error:
        pending = 0
    finally:
        conn.close()
    if dirty or pending:
        return (f"the cache directory {cache_dir} holds {dirty} blocks and"
                f" {pending} metadata changes not yet in the store: mount the filesystem"
                " with that cache directory to upload them")
    return None
