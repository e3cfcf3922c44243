"""Compaction: rewrite packs that hold mostly dead space (docs/format.md §4a, §6).

A pack is never rewritten in place. When blocks are deleted or overwritten their
envelopes stay in their pack as dead space; the :class:`Compactor` copies the live
envelopes of such packs, byte for byte (an envelope is bound to its block id, not to
the pack holding it), into a new pack, in this order:

1. the new pack is stored and made durable (``backend.sync``);
2. the block map is pointed at it (objects whose pack is still the old one) and
   committed locally; the next metadata upload ships the change;
3. the old pack's rows are all dead now: they are forgotten at that upload, and the
   pack is deleted after its head is written, through the same garbage path as any
   unreferenced object (so whatever delays garbage deletion applies to packs too).

A reader that fetched a block's old range keeps reading the old pack, which exists
until a head no longer naming it has been written; a read that fails because the
block moved meanwhile is retried at its new place (:meth:`BlockCache._load`).

I/O is bounded: one round reads at most :data:`~megafs.store.packs.PACK_TARGET`
bytes of live envelopes and writes one pack, and rounds are ``interval`` seconds
apart. Every envelope is verified (authenticated, keyed hash) before it is copied;
a pack holding a damaged block is left alone (fsck reports it).
"""

from __future__ import annotations

import logging

import trio

from megafs.core.blockmap import BlockMap
from megafs.core.schema import commit_batch
from megafs.errors import CorruptObject, MegafsError
from megafs.store.objects import ObjectStore
from megafs.store.packs import PACK_TARGET, PackBuilder
from megafs.threads import run_sync

log = logging.getLogger(__name__)

#: Rewrite a pack once its live blocks fill less than this fraction of its envelopes:
#: dead space then stays under ~20 % of what packs hold.
DEFAULT_LIVE_FRACTION = 0.8
#: Seconds between compaction rounds.
DEFAULT_INTERVAL = 30.0
#: A pack mostly padding (envelopes filling less than this fraction of it) is merged
#: with others of its kind, when there are at least two.
SPARSE_FRACTION = 0.5


class Compactor:
    """Finds packs worth rewriting and rewrites them, a bounded amount per round."""

    def __init__(self, blockmap: BlockMap, store: ObjectStore, *,
                 live_fraction: float = DEFAULT_LIVE_FRACTION,
                 interval: float = DEFAULT_INTERVAL):
        self.blockmap = blockmap
        self.db = blockmap.db
        self.store = store
        self.live_fraction = live_fraction
        self.interval = interval
        self.rewritten = 0  # packs compacted since the mount
        self.busy = False  # a round is running

    def candidates(self) -> list[tuple[str, int]]:
        """(pack, live bytes) of the packs one round rewrites, fewest live bytes first
        (none with a live fraction of 0: compaction is off)."""
        if self.live_fraction <= 0:
            return []
        rows = self.db.execute(
            "SELECT p.key, p.size, p.used, coalesce(sum(o.stored_size), 0) AS live"
            " FROM packs p LEFT JOIN objects o ON o.pack = p.key AND o.refcount > 0"
            " WHERE NOT EXISTS (SELECT 1 FROM objects d JOIN damaged g ON g.key = d.key"
            "  WHERE d.pack = p.key)"
            " GROUP BY p.key HAVING live > 0 ORDER BY live").fetchall()
        dead = [(k, live) for k, _size, used, live in rows if live < used * self.live_fraction]
        sparse = [(k, live) for k, size, used, live in rows
                  if used < size * SPARSE_FRACTION and (k, live) not in dead]
        if len(sparse) < 2:
            sparse = []
        chosen, total = [], 0
        for key, live in sorted(dead + sparse, key=lambda r: r[1]):
            if total + live > PACK_TARGET:
                break
            chosen.append((key, live))
            total += live
        if len(chosen) == 1 and chosen[0] not in dead:
            return []  # one sparse pack alone would only be copied
        return chosen

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            try:
                await self.compact_once()
            except (MegafsError, OSError) as e:  # storage down: try again next round
                log.warning("compaction round failed: %s", e)

    async def compact_once(self) -> int:
        """Rewrite the packs :meth:`candidates` picks; return how many were rewritten."""
        chosen = self.candidates()
        if not chosen:
            return 0
        self.busy = True
        log.info("compacting %d packs (%d live bytes)", len(chosen), sum(n for _, n in chosen))
        try:
            return await self._rewrite([key for key, _ in chosen])
        finally:
            self.busy = False

    async def _rewrite(self, packs: list[str]) -> int:
        builder = PackBuilder()
        moved: list[tuple[int, str, int]] = []  # (object id, old pack, new offset)
        done = []
        for pack in packs:
            rows = self.db.execute(
                "SELECT id, key, hash, pack_offset, stored_size FROM objects"
                " WHERE pack=? AND refcount > 0", (pack,)).fetchall()
            envelopes = []
            try:
                for obj, key, digest, offset, length in rows:
                    blob = await self.store.get_envelope(key, (pack, offset, length))
                    await run_sync(self.store.open_verified_block, key, blob, digest)
                    envelopes.append((obj, blob))
            except CorruptObject as e:
                log.warning("pack %s not compacted: %s", pack, e)
                continue
            for obj, blob in envelopes:
                moved.append((obj, pack, builder.add(blob)))
            done.append(pack)
        if not moved:
            return 0
        size = await self.store.put_pack(builder)
        await self.store.backend.sync()  # durable before the block map names it
        with self.db:
            self.db.execute("INSERT INTO packs (key, size, used) VALUES (?,?,?)",
                            (builder.key, size, builder.length))
            for obj, old, offset in moved:
                self.db.execute("UPDATE objects SET pack=?, pack_offset=? WHERE id=? AND pack=?",
                                (builder.key, offset, obj, old))
        commit_batch(self.db)
        self.rewritten += len(done)
        log.info("compacted %d packs into %s (%d blocks, %d bytes)", len(done), builder.key,
                 len(moved), builder.length)
        return len(done)
