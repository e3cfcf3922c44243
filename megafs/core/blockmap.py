"""The block map: which stored object holds each block, with reference counts.

Objects are deduplicated by a keyed hash of their plaintext. An object whose
reference count reaches zero stays in the table (and in the store) until a
metadata snapshot that no longer references it has been committed; then
:meth:`BlockMap.take_garbage` hands it to the snapshot code for deletion.

Every change of the ``blocks`` rows goes through here, which keeps
``inodes.nblocks`` (the number of rows of an inode, for ``st_blocks``) in step,
and drops the ``damaged`` record of a block once its row is replaced or removed
(the block was overwritten, truncated away or its file removed).

Damage (recorded by fsck, :meth:`BlockMap.mark_damaged`) keeps the ``blocks`` rows,
so reading the block stays an error everywhere, and takes the object's hash out of
deduplication, so new writes of the same bytes get a fresh object.
"""

from __future__ import annotations

import apsw

#: Positions in a block reference (:meth:`BlockMap.ref_of`).
REF_KEY, REF_HASH, REF_DAMAGE, REF_WHERE = range(4)
#: How the damage of a block in table ``unsent`` begins (:meth:`BlockMap.ref_of`).
UNSENT = "its newest data was never uploaded by"


class BlockMap:
    def __init__(self, conn: apsw.Connection):
        self.db = conn
        self.ex = conn.execute
        #: False while the table ``unsent`` is known to be empty: removing blocks then
        #: spares its DELETE (refreshed by :meth:`refresh_unsent`).
        self.unsent_rows = True
        self.refresh_unsent()

    def refresh_unsent(self) -> None:
        self.unsent_rows = bool(self.ex(
            "SELECT 1 FROM sqlite_master WHERE name='unsent'").fetchone()) and bool(
            self.ex("SELECT EXISTS (SELECT 1 FROM unsent)").fetchone()[0])

    def ref_of(self, ino: int, blockno: int) -> tuple | None:
        """(object key, its recorded keyed hash, the damage reason or None, where it is
        stored) of a stored block; None for a hole. Where: (pack key, offset, length)
        for a block in a pack, None for a one-block object stored under its key.

        A block whose newest data its writer never uploaded (table ``unsent``) is
        unreadable: its reference has that reason as damage, and the key "" when the
        block map names no older content."""
        row = self.ex(
            "SELECT o.key, o.hash, d.reason, o.pack, o.pack_offset, o.stored_size"
            " FROM blocks b JOIN objects o ON o.id = b.object"
            " LEFT JOIN damaged d ON d.inode = b.inode AND d.blockno = b.blockno"
            " WHERE b.inode=? AND b.blockno=?", (ino, blockno)).fetchone()
        if self.unsent_rows:
            lost = self.ex("SELECT writer FROM unsent WHERE inode=? AND blockno=?",
                           (ino, blockno)).fetchone()
            if lost is not None:
                reason = f"{UNSENT} {lost[0]}, which wrote it"
                if row is None:
                    return "", None, reason, None
                row = (*row[:2], reason, *row[3:])
        if row is None:
            return None
        key, digest, damage, pack, offset, length = row
        return key, digest, damage, (pack, offset, length) if pack is not None else None

    def record_unsent(self, blocks, writer: str) -> None:
        """(At a metadata upload.) The blocks *blocks* ((inode, blockno) pairs) hold data
        this writer has not uploaded yet: the state it uploads says so."""
        rows = [(writer, i, b, writer) for i, b in blocks]
        # A row of an earlier writer becomes this one's. (Not an upsert: its conflict
        # clause would override the journal triggers' OR IGNORE.)
        self.db.executemany("UPDATE unsent SET writer=? WHERE inode=? AND blockno=?"
                            " AND writer != ?", rows)
        self.db.executemany("INSERT OR IGNORE INTO unsent (inode, blockno, writer)"
                            " VALUES (?, ?, ?)", [r[1:] for r in rows])
        self.refresh_unsent()

    def is_damaged(self, ino: int, blockno: int) -> bool:
        """True if reading the block fails: damage recorded, or data never uploaded."""
        if self.ex("SELECT 1 FROM damaged WHERE inode=? AND blockno=?",
                   (ino, blockno)).fetchone() is not None:
            return True
        return self.unsent_rows and self.ex("SELECT 1 FROM unsent WHERE inode=? AND"
                                            " blockno=?", (ino, blockno)).fetchone() is not None

    def mark_damaged(self, obj: int, reason: str, found_ns: int) -> list[tuple[int, int]]:
        """Record every block naming object *obj* as damaged and take the object out of
        deduplication; return the (inode, blockno) pairs recorded."""
        with self.db:
            key = self.ex("SELECT key FROM objects WHERE id=?", (obj,)).fetchone()[0]
            users = self.ex("SELECT inode, blockno FROM blocks WHERE object=?",
                            (obj,)).fetchall()
            self.ex("UPDATE objects SET hash=NULL WHERE id=?", (obj,))
            for ino, blockno in users:
                self.ex("INSERT OR REPLACE INTO damaged (inode, blockno, key, reason, found)"
                        " VALUES (?,?,?,?,?)", (ino, blockno, key, reason, found_ns))
        return users

    def damaged(self) -> dict[int, list[int]]:
        """inode -> the numbers of its damaged blocks, ascending."""
        out: dict[int, list[int]] = {}
        for ino, blockno in self.ex("SELECT inode, blockno FROM damaged ORDER BY inode, blockno"):
            out.setdefault(ino, []).append(blockno)
        return out

    def has_block(self, ino: int, blockno: int) -> bool:
        return self.ex("SELECT 1 FROM blocks WHERE inode=? AND blockno=?",
                       (ino, blockno)).fetchone() is not None

    def find_duplicate(self, digest: bytes) -> int | None:
        """The object holding content with this keyed hash (possibly unreferenced garbage:
        referencing it again before the garbage collector runs keeps it)."""
        row = self.ex("SELECT id FROM objects WHERE hash=?", (digest,)).fetchone()
        return row[0] if row else None

    def add_object(self, key: str, digest: bytes | None, size: int, stored_size: int,
                   sha256: bytes | None = None,
                   pack: tuple[str, int, int, int] | None = None) -> int:
        """Register a freshly uploaded object (refcount 0); return its id. *sha256* is
        the SHA-256 of the sealed object as stored (share manifests list it); *pack* is
        (pack key, offset of the envelope in it, the pack's stored size, the bytes of
        envelopes in it) for a block stored in a pack."""
        pack_key = offset = None
        if pack is not None:
            pack_key, offset, pack_size, used = pack
            self.ex("INSERT OR IGNORE INTO packs (key, size, used) VALUES (?,?,?)",
                    (pack_key, pack_size, used))
        self.ex("INSERT INTO objects (key, hash, refcount, size, stored_size, sha256, pack,"
                " pack_offset) VALUES (?,?,0,?,?,?,?,?)",
                (key, digest, size, stored_size, sha256, pack_key, offset))
        return self.db.last_insert_rowid()

    def set_sha256(self, key: str, sha256: bytes) -> None:
        """Record the SHA-256 of an object stored before it was recorded at upload."""
        self.ex("UPDATE objects SET sha256=? WHERE key=?", (sha256, key))

    def _decref(self, obj: int) -> None:
        self.ex("UPDATE objects SET refcount=refcount-1 WHERE id=?", (obj,))

    def set_block(self, ino: int, blockno: int, obj: int | None) -> None:
        """Point (ino, blockno) at *obj* (None: make it a hole)."""
        with self.db:
            old = self.ex("SELECT object FROM blocks WHERE inode=? AND blockno=?",
                          (ino, blockno)).fetchone()
            if self.unsent_rows:  # its newest data is uploaded now (or it is a hole)
                self.ex("DELETE FROM unsent WHERE inode=? AND blockno=?", (ino, blockno))
            if old and old[0] == obj:
                return
            if old:
                self.ex("DELETE FROM damaged WHERE inode=? AND blockno=?", (ino, blockno))
            if obj is None:
                if not old:
                    return
                self.ex("DELETE FROM blocks WHERE inode=? AND blockno=?", (ino, blockno))
                self.ex("UPDATE inodes SET nblocks=nblocks-1 WHERE id=?", (ino,))
            else:
                self.ex("INSERT OR REPLACE INTO blocks (inode, blockno, object) VALUES (?,?,?)",
                        (ino, blockno, obj))
                self.ex("UPDATE objects SET refcount=refcount+1 WHERE id=?", (obj,))
                if not old:
                    self.ex("UPDATE inodes SET nblocks=nblocks+1 WHERE id=?", (ino,))
            if old:
                self._decref(old[0])

    def drop_from(self, ino: int, first_block: int, *, count: bool = True) -> None:
        """Unmap every block of *ino* numbered >= *first_block* (``count=False``: leave the
        inode's ``nblocks`` alone, for an inode about to be deleted)."""
        with self.db:
            self.ex(
                "UPDATE objects SET refcount = refcount - (SELECT count(*) FROM blocks"
                " WHERE inode=? AND blockno>=? AND object=objects.id) WHERE id IN"
                " (SELECT object FROM blocks WHERE inode=? AND blockno>=?)",
                (ino, first_block, ino, first_block))
            self.ex("DELETE FROM blocks WHERE inode=? AND blockno>=?", (ino, first_block))
            dropped = self.db.changes()
            self.ex("DELETE FROM damaged WHERE inode=? AND blockno>=?", (ino, first_block))
            if self.unsent_rows:
                self.ex("DELETE FROM unsent WHERE inode=? AND blockno>=?", (ino, first_block))
            if dropped and count:
                self.ex("UPDATE inodes SET nblocks=nblocks-? WHERE id=?", (dropped, ino))

    def drop_damaged(self, ino: int) -> None:
        """Forget the damage records of *ino* (one without blocks: drop_from needs more)."""
        self.ex("DELETE FROM damaged WHERE inode=?", (ino,))
        if self.unsent_rows:
            self.ex("DELETE FROM unsent WHERE inode=?", (ino,))

    def garbage(self) -> list[tuple[int, str | None]]:
        """(id, key to delete) of every unreferenced object; the key is None for a block
        in a pack (the pack goes once no object row names it: :meth:`take_empty_packs`)."""
        return self.ex("SELECT id, CASE WHEN pack IS NULL THEN key END FROM objects"
                       " WHERE refcount=0").fetchall()

    def garbage_packs(self) -> list[str]:
        """The packs holding no referenced block, taken with :meth:`garbage` (in the same
        step as the metadata image an upload ships): the packs that upload may delete."""
        return [k for (k,) in self.ex(
            "SELECT key FROM packs WHERE NOT EXISTS (SELECT 1 FROM objects o"
            " WHERE o.pack = packs.key AND o.refcount > 0)").fetchall()]

    def take_empty_packs(self, candidates: list[str]) -> list[str]:
        """Forget those of *candidates* (:meth:`garbage_packs`, taken before the upload)
        that no object row names any more; return their keys, to delete from the store
        now that a head without them is written. A pack that was not garbage when the
        upload started (its blocks moved by compaction since) waits for the next one,
        whose head names the blocks' new places."""
        keys = [k for k in candidates if self.ex(
            "SELECT 1 FROM objects WHERE pack=? LIMIT 1", (k,)).fetchone() is None]
        for key in keys:
            self.ex("DELETE FROM packs WHERE key=?", (key,))
        return keys

    def forget_if_garbage(self, obj: int) -> bool:
        """Delete the row of *obj* if it is still unreferenced; True if deleted."""
        self.ex("DELETE FROM objects WHERE id=? AND refcount=0", (obj,))
        return self.db.changes() > 0

    #: Packs still holding a referenced block (a pack holding none is deleted after the
    #: next metadata upload, as an unreferenced one-block object is).
    _LIVE_PACKS = ("FROM packs p WHERE EXISTS (SELECT 1 FROM objects o WHERE o.pack = p.key"
                   " AND o.refcount > 0)")

    def stored_bytes(self) -> int:
        """Bytes of data in the store (after deduplication and compression): live
        one-block objects and every envelope in a pack that holds a live block, dead
        space included (what the quota counts until compaction reclaims it). Pack
        padding is not counted: see :meth:`padding_bytes`."""
        return self.ex(
            "SELECT (SELECT coalesce(sum(stored_size), 0) FROM objects WHERE refcount>0"
            f" AND pack IS NULL) + (SELECT coalesce(sum(used), 0) {self._LIVE_PACKS})"
        ).fetchone()[0]

    def dead_bytes(self) -> int:
        """Bytes of envelopes no block refers to any more (deleted or overwritten data) in
        packs that still hold live blocks: what compaction would reclaim."""
        return self.ex(
            f"SELECT (SELECT coalesce(sum(used), 0) {self._LIVE_PACKS}) - (SELECT"
            " coalesce(sum(stored_size), 0) FROM objects WHERE refcount>0 AND pack IS NOT NULL)"
        ).fetchone()[0]

    def padding_bytes(self) -> int:
        """Bytes of live packs after their envelopes (their random padding)."""
        return self.ex(f"SELECT coalesce(sum(size - used), 0) {self._LIVE_PACKS}").fetchone()[0]

    def stats(self) -> dict:
        blocks = self.ex("SELECT count(*) FROM blocks").fetchone()[0]
        objs, plain = self.ex(
            "SELECT count(*), coalesce(sum(size),0) FROM objects WHERE refcount>0").fetchone()
        stored = self.stored_bytes()
        packs = self.ex(f"SELECT count(*) {self._LIVE_PACKS}").fetchone()[0]
        logical = self.ex(
            "SELECT coalesce(sum(o.size),0) FROM blocks b JOIN objects o ON o.id=b.object"
        ).fetchone()[0]
        return {"blocks": blocks, "objects": objs, "plain_bytes": plain, "stored_bytes": stored,
                "logical_bytes": logical, "packs": packs, "dead_bytes": self.dead_bytes(),
                "padding_bytes": self.padding_bytes()}


def byte_ranges(blocknos: list[int], block_size: int) -> list[tuple[int, int]]:
    """Ascending block numbers merged into [start, end) byte ranges."""
    out: list[tuple[int, int]] = []
    for n in blocknos:
        start, end = n * block_size, (n + 1) * block_size
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
