"""Metadata snapshots: the local database, sealed, as the filesystem's state in the store.

The store holds a full snapshot (the database image) and the deltas written
since (small images holding the rows that changed, see :func:`build_delta`);
``head`` names the snapshot and its deltas in order. Most uploads are deltas,
so their cost follows what changed, not the size of the filesystem.

Write order (docs/format.md, "Write ordering"):

1. every data object the metadata references is already durable (the uploader
   only maps blocks to objects after a write barrier);
2. the snapshot or delta object ``m/<random>`` is written;
3. ``head`` is replaced to name it, with the next sequence number;
4. only then are superseded snapshots/deltas and the objects that were garbage
   at upload time deleted.

A crash anywhere leaves ``head`` naming a complete snapshot whose objects all exist.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import apsw
import trio

from megafs import FORMAT_VERSION
from megafs.core.blockmap import BlockMap
from megafs.core.schema import (
    DELTA_SCHEMA,
    JOURNALED,
    check_version,
    commit_batch,
    connect,
    create,
    upgrade,
)
from megafs.errors import CorruptObject
from megafs.store.objects import ObjectStore, new_metadata_key

log = logging.getLogger(__name__)


def get_state(conn: apsw.Connection, key: str, default=None):
    row = conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_state(conn: apsw.Connection, key: str, value) -> None:
    conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?,?)", (key, value))


def initial_image(uid: int, gid: int) -> bytes:
    """The metadata of a new filesystem (an empty root directory owned by *uid*:*gid*),
    as a database image for its first snapshot."""
    conn = apsw.Connection(":memory:")
    create(conn, root_uid=uid, root_gid=gid, now_ns=time.time_ns())
    image = conn.serialize("main")
    conn.close()
    return image


def upgrade_schema(conn: apsw.Connection) -> None:
    """Upgrade the working copy from an older schema version (see schema.upgrade); its
    next upload is then a full snapshot, never a delta on the old-format snapshot."""
    if upgrade(conn):
        with conn:
            set_state(conn, "delta_bytes", 1 << 62)
        log.info("metadata upgraded to schema version %d", conn.execute(
            "PRAGMA user_version").fetchone()[0])


def confirm(conn: apsw.Connection, head: dict) -> None:
    """Record that the store's head is *head* (its number, base snapshot and deltas)."""
    set_state(conn, "seq", head["seq"])
    set_state(conn, "snapshot", head["snapshot"])
    set_state(conn, "deltas", json.dumps(head.get("deltas", [])))
    conn.execute("DELETE FROM state WHERE key='seq_pending'")


class Snapshotter:
    """Ships metadata changes to the store: small deltas, now and then a full snapshot."""

    #: Write a full snapshot instead of another delta once the deltas since the last
    #: one add up to this fraction of its size (or there are MAX_DELTAS of them).
    REBASE_FRACTION = 0.5
    MAX_DELTAS = 200

    def __init__(self, conn: apsw.Connection, store: ObjectStore, blockmap: BlockMap, *,
                 before_delete=None):
        self.db = conn
        self.store = store
        self.blockmap = blockmap
        self.before_delete = before_delete  # async hook: runs before garbage is deleted
        self.uploaded_changes = -1  # total_changes() at the last upload
        # An upload interrupted by a crash: its keys go back into the journal.
        with conn:
            conn.execute("INSERT OR IGNORE INTO journal SELECT * FROM journal_sent")
            conn.execute("DELETE FROM journal_sent")
        self.last_size = 0  # bytes of the last upload (tests and statistics)

    def changed(self) -> bool:
        """True while some metadata change has not reached the store (the journal holds
        the keys of every row changed since the last upload)."""
        return self.db.execute("SELECT EXISTS (SELECT 1 FROM journal)").fetchone()[0] == 1

    def _want_full(self) -> bool:
        deltas = json.loads(get_state(self.db, "deltas", "[]"))
        base = int(get_state(self.db, "base_size", 0))
        spent = int(get_state(self.db, "delta_bytes", 0))
        return (not get_state(self.db, "snapshot") or len(deltas) >= self.MAX_DELTAS
                or spent > max(base * self.REBASE_FRACTION, 256 * 1024))

    async def upload(self, *, full: bool | None = None) -> int:
        """Commit the metadata changes to the store; return the new sequence number."""
        db = self.db
        seq = int(get_state(db, "seq", 0)) + 1
        base = get_state(db, "snapshot")
        deltas = json.loads(get_state(db, "deltas", "[]"))
        full = self._want_full() if full is None else full
        # Durable before head can name it: after a crash the next mount must know that
        # a head with this number came from here (see Daemon._metadata).
        set_state(db, "seq_pending", seq)
        commit_batch(db)
        # One synchronous step: the image, the garbage list and the journal agree.
        garbage = self.blockmap.garbage()
        with db:
            db.execute("INSERT OR IGNORE INTO journal_sent SELECT * FROM journal")
            db.execute("DELETE FROM journal")
        image = _portable(db.serialize("main")) if full else build_delta(db)
        key = new_metadata_key()
        try:
            if full:
                size = await self.store.put_metadata(key, image)
                head_deltas, dead = [], [base, *deltas] if base else []
            else:
                size = await self.store.put_metadata(key, image, delta=True)
                head_deltas, dead = [*deltas, key], []
            await self.store.backend.sync()
            head = {"format": FORMAT_VERSION, "seq": seq, "snapshot": key if full else base,
                    "deltas": head_deltas, "time": time.time(),
                    "host": socket.gethostname(), "pid": os.getpid()}
            await self.store.write_head(head)
            await self.store.backend.sync()
        except BaseException:
            with trio.CancelScope(shield=True), db:
                db.execute("INSERT OR IGNORE INTO journal SELECT * FROM journal_sent")
                db.execute("DELETE FROM journal_sent")
            raise
        with db:
            confirm(db, head)
            db.execute("DELETE FROM journal_sent")
            if full:
                set_state(db, "base_size", size)
                set_state(db, "delta_bytes", 0)
            else:
                set_state(db, "delta_bytes", int(get_state(db, "delta_bytes", 0)) + size)
            dead += [k for obj, k in garbage if self.blockmap.forget_if_garbage(obj)]
        commit_batch(db)
        self.uploaded_changes = db.total_changes()
        self.last_size = size
        if self.before_delete is not None:
            await self.before_delete()
        for k in dead:
            await self.store.backend.delete(k)
        log.info("metadata %s %d committed (%d bytes, %d objects freed)",
                 "snapshot" if full else "delta", seq, size, len(dead))
        return seq


def build_delta(db: apsw.Connection) -> bytes:
    """A small database image with the current version of every row named in
    ``journal_sent`` and a ``deleted`` table for the rows that no longer exist."""
    delta = apsw.Connection(":memory:")
    delta.execute("PRAGMA page_size=1024")
    delta.execute(DELTA_SCHEMA)
    delta.execute("CREATE TABLE deleted (tbl TEXT NOT NULL, a NOT NULL, b NOT NULL)")
    with delta:
        for table, cols in JOURNALED.items():
            keys = db.execute("SELECT a, b FROM journal_sent WHERE tbl=?", (table,)).fetchall()
            where = " AND ".join(f"{c}=?" for c in cols)
            for a, b in keys:
                args = (a, b)[:len(cols)]
                row = db.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchone()
                if row is None:
                    delta.execute("INSERT INTO deleted VALUES (?,?,?)", (table, a, b))
                else:
                    marks = ",".join("?" * len(row))
                    delta.execute(f"INSERT INTO {table} VALUES ({marks})", row)
    image = delta.serialize("main")
    delta.close()
    return image


def apply_delta(conn: apsw.Connection, image: bytes, name: str) -> None:
    """Apply a delta image (see :func:`build_delta`) to the database *conn*."""
    if not image.startswith(b"SQLite format 3\x00"):
        raise CorruptObject(f"metadata delta {name} is not a database")
    conn.execute("ATTACH ':memory:' AS delta")
    try:
        conn.deserialize("delta", image)
        with conn:
            for table, cols in JOURNALED.items():
                key = ", ".join(cols)
                if len(cols) == 1:
                    conn.execute(f"DELETE FROM main.{table} WHERE {key} IN"
                                 " (SELECT a FROM delta.deleted WHERE tbl=?)", (table,))
                else:
                    conn.execute(f"DELETE FROM main.{table} WHERE ({key}) IN"
                                 " (SELECT a, b FROM delta.deleted WHERE tbl=?)", (table,))
                conn.execute(f"INSERT OR REPLACE INTO main.{table} SELECT * FROM delta.{table}")
    except apsw.Error as e:
        raise CorruptObject(f"metadata delta {name} cannot be applied: {e}") from None
    finally:
        conn.execute("DETACH delta")


async def load(store: ObjectStore, head: dict) -> apsw.Connection:
    """The metadata *head* names, as an in-memory database (for checks and tools)."""
    conn = apsw.Connection(":memory:")
    conn.deserialize("main", await store.get_metadata(head["snapshot"]))
    check_version(conn)
    for name in head.get("deltas", []):
        apply_delta(conn, await store.get_metadata(name, delta=True), name)
    upgrade(conn)
    return conn


def _portable(image: bytes) -> bytes:
    """Mark a database image as rollback-journal mode (header bytes 18-19), so it can be
    opened in memory; :func:`download` switches the working copy back to WAL."""
    if len(image) >= 20 and image[18:20] == b"\x02\x02":
        image = image[:18] + b"\x01\x01" + image[20:]
    return image


async def download(store: ObjectStore, head: dict, path: str) -> apsw.Connection:
    """Replace the database at *path* with the state *head* names (its snapshot plus
    its deltas, in order); return it opened."""
    image = await store.get_metadata(head["snapshot"])
    if not image.startswith(b"SQLite format 3\x00"):
        raise CorruptObject(f"metadata snapshot {head['snapshot']} is not a database")
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    tmp = path + ".download"
    with open(tmp, "wb") as f:
        f.write(image)
    os.rename(tmp, path)
    conn = connect(path)
    check_version(conn)
    for name in head.get("deltas", []):
        apply_delta(conn, await store.get_metadata(name, delta=True), name)
    with conn:
        confirm(conn, head)
        set_state(conn, "base_size", len(image))
        set_state(conn, "delta_bytes", 0 if not head.get("deltas") else 1 << 62)
        # Unreferenced objects in the image may already be deleted from the store.
        conn.execute("DELETE FROM objects WHERE refcount=0")
        conn.execute("DELETE FROM journal")
        conn.execute("DELETE FROM journal_sent")
    upgrade_schema(conn)
    return conn
