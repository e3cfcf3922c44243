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
REF_KEY, REF_HASH, REF_DAMAGE = range(3)


class BlockMap:
    def __init__(self, conn: apsw.Connection):
        self.db = conn
        self.ex = conn.execute

    def ref_of(self, ino: int, blockno: int) -> tuple[str, bytes | None, str | None] | None:
        """(object key, its recorded keyed hash, the damage reason or None) of a stored
        block; None for a hole."""
        return self.ex(
            "SELECT o.key, o.hash, d.reason FROM blocks b JOIN objects o ON o.id = b.object"
            " LEFT JOIN damaged d ON d.inode = b.inode AND d.blockno = b.blockno"
            " WHERE b.inode=? AND b.blockno=?", (ino, blockno)).fetchone()

    def is_damaged(self, ino: int, blockno: int) -> bool:
        return self.ex("SELECT 1 FROM damaged WHERE inode=? AND blockno=?",
                       (ino, blockno)).fetchone() is not None

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
                   sha256: bytes | None = None) -> int:
        """Register a freshly uploaded object (refcount 0); return its id. *sha256* is
        the SHA-256 of the sealed object as stored (share manifests list it)."""
        self.ex("INSERT INTO objects (key, hash, refcount, size, stored_size, sha256)"
                " VALUES (?,?,0,?,?,?)", (key, digest, size, stored_size, sha256))
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

    def drop_from(self, ino: int, first_block: int) -> None:
        """Unmap every block of *ino* numbered >= *first_block*."""
        with self.db:
            self.ex(
                "UPDATE objects SET refcount = refcount - (SELECT count(*) FROM blocks"
                " WHERE inode=? AND blockno>=? AND object=objects.id) WHERE id IN"
                " (SELECT object FROM blocks WHERE inode=? AND blockno>=?)",
                (ino, first_block, ino, first_block))
            self.ex("DELETE FROM blocks WHERE inode=? AND blockno>=?", (ino, first_block))
            dropped = self.db.changes()
            self.ex("DELETE FROM damaged WHERE inode=? AND blockno>=?", (ino, first_block))
            if dropped:
                self.ex("UPDATE inodes SET nblocks=nblocks-? WHERE id=?", (dropped, ino))

    def drop_damaged(self, ino: int) -> None:
        """Forget the damage records of *ino* (one without blocks: drop_from needs more)."""
        self.ex("DELETE FROM damaged WHERE inode=?", (ino,))

    def garbage(self) -> list[tuple[int, str]]:
        return self.ex("SELECT id, key FROM objects WHERE refcount=0").fetchall()

    def forget_if_garbage(self, obj: int) -> bool:
        """Delete the row of *obj* if it is still unreferenced; True if deleted."""
        self.ex("DELETE FROM objects WHERE id=? AND refcount=0", (obj,))
        return self.db.changes() > 0

    def stored_bytes(self) -> int:
        """Bytes of live objects in the store (after deduplication and compression)."""
        return self.ex("SELECT coalesce(sum(stored_size), 0) FROM objects WHERE refcount>0"
                       ).fetchone()[0]

    def stats(self) -> dict:
        blocks = self.ex("SELECT count(*) FROM blocks").fetchone()[0]
        objs, plain, stored = self.ex(
            "SELECT count(*), coalesce(sum(size),0), coalesce(sum(stored_size),0) FROM objects"
            " WHERE refcount>0").fetchone()
        logical = self.ex(
            "SELECT coalesce(sum(o.size),0) FROM blocks b JOIN objects o ON o.id=b.object"
        ).fetchone()[0]
        return {"blocks": blocks, "objects": objs, "plain_bytes": plain, "stored_bytes": stored,
                "logical_bytes": logical}


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
