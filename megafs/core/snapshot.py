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
   at upload time discarded: deleted once their retention has passed
   (:mod:`megafs.core.retention`).

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

from megafs.core import fsynced, retention
from megafs.core.blockmap import BlockMap
from megafs.core.descent import HISTORY_KEPT
from megafs.core.schema import (
    DELTA_SCHEMA,
    JOURNALED,
    add_missing_tables,
    check_version,
    commit_batch,
    connect,
    create,
    upgrade,
)
from megafs.errors import CorruptObject
from megafs.store import lock as store_lock
from megafs.store import superblock
from megafs.store.objects import HEAD_FORMAT, ObjectStore, new_metadata_key
from megafs.threads import run_sync

log = logging.getLogger(__name__)

#: The full snapshot's image is copied beside the database, to this name + suffix.
IMAGE_SUFFIX = ".snapshot"
_BACKUP_PAGES = 1024  # pages copied per step of the backup


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
    with conn:  # its place in the chain (docs/format.md §5, head rebuild)
        set_state(conn, "chain_seq", 1)
        set_state(conn, "chain_time", time.time())
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
    """Record that the store's head is *head*: its number, hash, the hash it names as
    ``prev``, its snapshot, deltas and their ``objects`` map (None: a format-1 head)."""
    set_state(conn, "seq", head["seq"])
    set_state(conn, "snapshot", head["snapshot"])
    set_state(conn, "deltas", json.dumps(head.get("deltas", [])))
    set_state(conn, "head_hash", head.get("hash"))
    set_state(conn, "head_prev", head.get("prev"))
    set_state(conn, "objects", json.dumps(head["objects"]) if "objects" in head else None)
    set_state(conn, "sb_version", max(int(get_state(conn, "sb_version", 0) or 0),
                                      head.get("sb_version", 0)))
    conn.execute("DELETE FROM state WHERE key IN ('seq_pending', 'head_pending')")


def expected(head: dict, key: str) -> tuple[int, str] | None:
    """The (size, SHA-256) *head* records for its object *key* (None: format-1 head)."""
    entry = head.get("objects", {}).get(key)
    return tuple(entry) if entry else None


def record_history(db: apsw.Connection, seq: int) -> None:
    """Record in ``heads`` the head the upload of *seq* builds on (and the one that head
    names as ``prev``, which a head without metadata of its own, e.g. written by
    ``megafs passphrase``, did not record), keeping the newest HISTORY_KEPT."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name='heads'").fetchone():
        return  # metadata of an older schema (upgraded when it is next opened)
    rows = [(seq - 1, get_state(db, "head_hash")), (seq - 2, get_state(db, "head_prev"))]
    for number, digest in rows:
        if digest and number >= 1:
            db.execute("INSERT INTO heads (seq, hash) VALUES (?, ?) ON CONFLICT(seq) DO UPDATE"
                       " SET hash=excluded.hash WHERE hash != excluded.hash",
                       (number, bytes.fromhex(digest)))
    db.execute("DELETE FROM heads WHERE seq <= ?", (seq - 1 - HISTORY_KEPT,))


class Snapshotter:
    """Ships metadata changes to the store: small deltas, now and then a full snapshot."""

    #: Write a full snapshot instead of another delta once the deltas since the last
    #: one add up to this fraction of its size (or there are MAX_DELTAS of them).
    REBASE_FRACTION = 0.5
    MAX_DELTAS = 200

    def __init__(self, conn: apsw.Connection, store: ObjectStore, blockmap: BlockMap, *,
                 before_delete=None, keep_metadata: bool = False):
        self.db = conn
        self.store = store
        self.blockmap = blockmap
        self.before_delete = before_delete  # async hook: runs before garbage is deleted
        # fsck: a superseded snapshot and deltas may also be part of a newer state the
        # store lost (a rollback), so they are kept (docs/format.md §6).
        self.keep_metadata = keep_metadata
        self.uploaded_changes = -1  # total_changes() at the last upload
        # Full snapshots of a database file in WAL mode are copied to this file beside
        # it (see capture_image); None: serialized in memory (an in-memory database).
        self.image_path = None
        if conn.filename and conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            self.image_path = conn.filename + IMAGE_SUFFIX
            remove_file(self.image_path)  # left by a crash
        # An upload interrupted by a crash: its keys go back into the journal.
        with conn:
            conn.execute("INSERT OR IGNORE INTO journal SELECT * FROM journal_sent")
            conn.execute("DELETE FROM journal_sent")
        self.last_size = 0  # bytes of the last upload (tests and statistics)
        #: True when every block the metadata names is in the store (no data waits for
        #: upload): recorded in the head as ``complete``, the states followers show.
        self.data_complete = lambda: True
        #: The (inode, block) pairs whose data waits for upload (table ``unsent``).
        self.unsent_blocks = lambda: ()
        #: seconds objects stay in the store after the metadata stops naming them
        self.retention = retention.default_retention()

    async def _sb_version(self) -> int:
        """The superblock version to record in the next head: the newest this machine
        knows, raised if the superblock was rewritten (``megafs quota``) meanwhile."""
        known = int(get_state(self.db, "sb_version", 0) or 0)
        try:
            current = superblock.verified_version(
                await self.store.backend.get(superblock.OBJECT_KEY), self.store.keys)
        except Exception as e:  # noqa: BLE001 - unreadable now: record what is known
            log.warning("could not read the superblock's version: %s", e)
            current = None
        return max(known, current or 0)

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

    async def upload(self, *, full: bool | None = None, on_capture=None) -> int:
        """Commit the metadata changes to the store; return the new sequence number.
        *on_capture()* runs once the state to upload is taken (before the first await)."""
        db = self.db
        seq = int(get_state(db, "seq", 0)) + 1
        base = get_state(db, "snapshot")
        deltas = json.loads(get_state(db, "deltas", "[]"))
        objects = json.loads(get_state(db, "objects") or "null")
        # A format-1 head lists no sizes and hashes: start a format-2 chain afresh.
        full = (self._want_full() if full is None else full) or objects is None
        # Durable before head can name it: after a crash the next mount must know that
        # a head with this number came from here (see core/localcopy.py).
        set_state(db, "seq_pending", seq)
        commit_batch(db)
        # One synchronous step: the image, the garbage list and the journal agree.
        garbage = self.blockmap.garbage()
        garbage_packs = self.blockmap.garbage_packs()
        now = time.time()
        with db:
            record_history(db, seq)
            # The state names the new sizes of files whose data waits for upload: it
            # says which blocks, so nobody else reads them as holes or older bytes.
            self.blockmap.record_unsent(self.unsent_blocks(), store_lock.describe(
                {"host": socket.gethostname(), "pid": os.getpid()}))  # (as fsck names it)
            if full:  # what fsck needs to rebuild a lost head (docs/format.md §5)
                set_state(db, "chain_seq", seq)
                set_state(db, "chain_time", now)
            db.execute("INSERT OR IGNORE INTO journal_sent SELECT * FROM journal")
            db.execute("DELETE FROM journal")
        parent = (deltas or [base])[-1]
        reader = image = None
        if full and self.image_path:
            # A read transaction of a second connection holds this very state while it
            # is copied, in a worker thread, to a file (see capture_image).
            commit_batch(db)
            reader = begin_capture(db.filename)
        elif full:
            # Handed over as parts (see portable_parts): sealing empties the list, so
            # the image is freed before its encrypted copy is made.
            image = portable_parts(db.serialize("main"))
        else:
            image = build_delta(db, seq=seq, parent=parent, now=now)
        key = new_metadata_key()
        try:
            complete = self.data_complete()
            if on_capture is not None:
                on_capture()
            if reader is not None:
                try:
                    await run_sync(capture_image, reader, self.image_path)
                finally:
                    reader.close()
                    reader = None
                size, digest = await self.store.put_metadata_file(key, self.image_path)
            elif full:
                size, digest = await self.store.put_metadata(key, image)
            else:
                size, digest = await self.store.put_metadata(key, image, delta=True)
            if full:
                head_deltas = []
                dead = [base, *deltas] if base and not self.keep_metadata else []
                objects = {}
            else:
                head_deltas, dead = [*deltas, key], []
            objects[key] = [size, digest]
            await self.store.backend.sync()
            head = {"format": HEAD_FORMAT, "seq": seq, "prev": get_state(db, "head_hash"),
                    "sb_version": await self._sb_version(),
                    "snapshot": key if full else base, "deltas": head_deltas,
                    "objects": objects, "time": now, "host": socket.gethostname(),
                    "pid": os.getpid(), "complete": complete}
            sealed = self.store.seal_head(head)
            # Durable before the head: after a crash the next mount knows it wrote it.
            set_state(db, "head_pending", sealed[1])
            commit_batch(db)
            head["hash"] = await self.store.write_head(head, sealed)
            await self.store.backend.sync()
        except BaseException:
            with trio.CancelScope(shield=True), db:
                db.execute("INSERT OR IGNORE INTO journal SELECT * FROM journal_sent")
                db.execute("DELETE FROM journal_sent")
            raise
        finally:
            if reader is not None:
                reader.close()
            if self.image_path:
                remove_file(self.image_path)
        with db:
            confirm(db, head)
            set_state(db, "complete", int(complete))
            db.execute("DELETE FROM journal_sent")
            if full:
                set_state(db, "base_size", size)
                set_state(db, "delta_bytes", 0)
            else:
                set_state(db, "delta_bytes", int(get_state(db, "delta_bytes", 0)) + size)
            dead += [k for obj, k in garbage if self.blockmap.forget_if_garbage(obj) and k]
            dead += self.blockmap.take_empty_packs(garbage_packs)
        commit_batch(db)
        self.uploaded_changes = db.total_changes()
        self.last_size = size
        if self.before_delete is not None:
            await self.before_delete()
        # Followers may still read what this head no longer names: kept for the retention.
        await retention.discard(db, self.store.backend, dead, time.time(), self.retention)
        log.info("metadata %s %d committed (%d bytes, %d objects freed)",
                 "snapshot" if full else "delta", seq, size, len(dead))
        return seq


def build_delta(db: apsw.Connection, *, seq: int = 0, parent: str = "",
                now: float = 0.0) -> bytes:
    """A small database image with the current version of every row named in
    ``journal_sent``, a ``deleted`` table for the rows that no longer exist and a
    one-row ``chain`` table: the delta's *seq* and the *parent* object (the snapshot
    or delta) it applies on top of, for fsck to rebuild a lost head."""
    delta = apsw.Connection(":memory:")
    delta.execute("PRAGMA page_size=1024")
    delta.execute(DELTA_SCHEMA)
    delta.execute("CREATE TABLE deleted (tbl TEXT NOT NULL, a NOT NULL, b NOT NULL)")
    delta.execute("CREATE TABLE chain (seq INTEGER NOT NULL, parent TEXT NOT NULL,"
                  " time REAL NOT NULL)")
    with delta:
        delta.execute("INSERT INTO chain VALUES (?, ?, ?)", (seq, parent, now))
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
        apply_attached(conn, "delta", name)
    except apsw.Error as e:
        raise CorruptObject(f"metadata delta {name} cannot be applied: {e}") from None
    finally:
        conn.execute("DETACH delta")


def apply_attached(conn: apsw.Connection, schema: str, name: str) -> None:
    """Apply the delta attached to *conn* as *schema* (the object *name*)."""
    try:
        add_missing_tables(conn)  # a snapshot from before ``retained``
        present = {r[0] for r in conn.execute(
            f"SELECT name FROM {schema}.sqlite_master WHERE type='table'")}
        with conn:
            for table, cols in JOURNALED.items():
                if table not in present:  # a delta of an older schema (no damaged, heads)
                    continue
                key = ", ".join(cols)
                if len(cols) == 1:
                    conn.execute(f"DELETE FROM main.{table} WHERE {key} IN"
                                 f" (SELECT a FROM {schema}.deleted WHERE tbl=?)", (table,))
                else:
                    conn.execute(f"DELETE FROM main.{table} WHERE ({key}) IN"
                                 f" (SELECT a, b FROM {schema}.deleted WHERE tbl=?)", (table,))
                conn.execute(f"INSERT OR REPLACE INTO main.{table}"
                             f" SELECT * FROM {schema}.{table}")
    except apsw.Error as e:
        raise CorruptObject(f"metadata delta {name} cannot be applied: {e}") from None


async def load(store: ObjectStore, head: dict) -> apsw.Connection:
    """The metadata *head* names, as an in-memory database (for checks and tools)."""
    conn = apsw.Connection(":memory:")
    conn.deserialize("main", await store.get_metadata(head["snapshot"],
                                                      expect=expected(head, head["snapshot"])))
    check_version(conn)
    for name in head.get("deltas", []):
        apply_delta(conn, await store.get_metadata(name, delta=True,
                                                   expect=expected(head, name)), name)
    upgrade(conn)
    fsynced.clear(conn)  # the writer's pending blocks, if its snapshot caught any
    return conn


def begin_capture(path: str) -> apsw.Connection:
    """A new connection to the database file *path* (WAL mode) in a read transaction
    that holds its current committed state, whatever is committed after, until the
    connection is closed: what :func:`capture_image` copies."""
    reader = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        reader.execute("BEGIN")
        # In WAL mode the transaction's snapshot is taken at its first read: now.
        reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except BaseException:
        reader.close()
        raise
    return reader


def capture_image(reader: apsw.Connection, path: str) -> None:
    """Copy the state *reader* holds (:func:`begin_capture`) to a new database file
    *path* (mode 0600) with SQLite's backup API, a step at a time, never holding the
    image in memory; mark it rollback-journal mode (header bytes 18-19, as
    :func:`_portable` does). The pages are those ``serialize`` would give; SQLite sets
    the copy's change counter (header bytes 24-27, 92-95) and schema cookie (40-43)."""
    remove_file(path)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    dest = apsw.Connection(path)
    try:
        dest.execute("PRAGMA journal_mode=OFF")
        dest.execute("PRAGMA synchronous=OFF")
        dest.execute("PRAGMA cache_size=-2048")
        with dest.backup("main", reader, "main") as backup:
            while not backup.step(_BACKUP_PAGES):
                pass
    finally:
        dest.close()
    with open(path, "r+b") as f:
        if f.read(20)[18:20] == b"\x02\x02":
            f.seek(18)
            f.write(b"\x01\x01")


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def portable_parts(image: bytes) -> list:
    """:func:`_portable`'s result without copying the image: a list of parts whose
    concatenation is it (the patched first 20 bytes, then a view of the rest), which
    :func:`megafs.store.envelope.seal` takes as the payload."""
    if len(image) >= 20 and image[18:20] == b"\x02\x02":
        return [image[:18] + b"\x01\x01", memoryview(image)[20:]]
    return [image]


def _portable(image: bytes) -> bytes:
    """Mark a database image as rollback-journal mode (header bytes 18-19), so it can be
    opened in memory; :func:`download` switches the working copy back to WAL."""
    if len(image) >= 20 and image[18:20] == b"\x02\x02":
        image = image[:18] + b"\x01\x01" + image[20:]
    return image


def remove_database(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


async def download(store: ObjectStore, head: dict, path: str,
                   accept=None) -> apsw.Connection:
    """Replace the database at *path* with the state *head* names (its snapshot plus
    its deltas, in order, each checked against the size and hash the head records);
    return it opened. *accept(conn)*, if given, runs on the downloaded state before
    it replaces *path*, and may raise to keep the old database."""
    tmp = path + ".download"
    remove_database(tmp)
    # Written to the file as it is decrypted: the image is never in memory whole.
    image_size = await store.get_metadata_file(head["snapshot"], tmp,
                                               expect=expected(head, head["snapshot"]))
    with open(tmp, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            remove_database(tmp)
            raise CorruptObject(f"metadata snapshot {head['snapshot']} is not a database")
    conn = connect(tmp)
    try:
        check_version(conn)
        for name in head.get("deltas", []):
            apply_delta(conn, await store.get_metadata(name, delta=True,
                                                       expect=expected(head, name)), name)
        if accept is not None:
            accept(conn)
    except BaseException:
        conn.close()
        remove_database(tmp)
        raise
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    remove_database(path)
    os.rename(tmp, path)
    remove_database(tmp)
    conn = connect(path)
    with conn:
        confirm(conn, head)
        set_state(conn, "base_size", image_size)
        set_state(conn, "delta_bytes", 0 if not head.get("deltas") else 1 << 62)
        # Unreferenced objects in the image may already be deleted from the store.
        conn.execute("DELETE FROM objects WHERE refcount=0")
        conn.execute("DELETE FROM journal")
        conn.execute("DELETE FROM journal_sent")
    upgrade_schema(conn)
    with conn:  # blocks the writer had fsynced but not uploaded: not this cache's
        fsynced.clear(conn)
    return conn
