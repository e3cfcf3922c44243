"""Metadata snapshots: the local database, sealed, as the filesystem's state in the store.

Write order (docs/format.md, "Write ordering"):

1. every data object the snapshot references is already durable (the uploader
   only maps blocks to objects after a write barrier);
2. the snapshot object ``m/<random>`` is written;
3. ``head`` is replaced to name it, with the next sequence number;
4. only then are the previous snapshot and the objects that were garbage at
   snapshot time deleted.

A crash anywhere leaves ``head`` naming a complete snapshot whose objects all exist.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import apsw

from megafs import FORMAT_VERSION
from megafs.core.blockmap import BlockMap
from megafs.core.schema import check_version, commit_batch, connect
from megafs.errors import CorruptObject
from megafs.store.objects import ObjectStore, new_metadata_key

log = logging.getLogger(__name__)


def get_state(conn: apsw.Connection, key: str, default=None):
    row = conn.execute("SELECT value FROM state WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_state(conn: apsw.Connection, key: str, value) -> None:
    conn.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?,?)", (key, value))


def confirm(conn: apsw.Connection, seq: int, snapshot: str) -> None:
    """Record that the store's head names *snapshot* as number *seq*."""
    set_state(conn, "seq", seq)
    set_state(conn, "snapshot", snapshot)
    conn.execute("DELETE FROM state WHERE key='seq_pending'")


class Snapshotter:
    def __init__(self, conn: apsw.Connection, store: ObjectStore, blockmap: BlockMap):
        self.db = conn
        self.store = store
        self.blockmap = blockmap
        self.uploaded_changes = -1  # total_changes() at the last snapshot

    def changed(self) -> bool:
        return self.db.total_changes() != self.uploaded_changes

    async def upload(self) -> int:
        """Commit the current metadata to the store; return the new sequence number."""
        seq = int(get_state(self.db, "seq", 0)) + 1
        previous = get_state(self.db, "snapshot")
        # Durable before head can name it: after a crash the next mount must know that
        # a head with this number came from here (see Daemon._metadata).
        set_state(self.db, "seq_pending", seq)
        # One synchronous step: the image and the garbage list agree.
        commit_batch(self.db)
        garbage = self.blockmap.garbage()
        image = _portable(self.db.serialize("main"))
        key = new_metadata_key()
        size = await self.store.put_metadata(key, image)
        await self.store.backend.sync()
        head = {"format": FORMAT_VERSION, "seq": seq, "snapshot": key, "time": time.time(),
                "host": socket.gethostname(), "pid": os.getpid()}
        await self.store.write_head(head)
        await self.store.backend.sync()
        with self.db:
            confirm(self.db, seq, key)
            dead = [k for obj, k in garbage if self.blockmap.forget_if_garbage(obj)]
        commit_batch(self.db)
        self.uploaded_changes = self.db.total_changes()
        if previous:
            dead.append(previous)
        for k in dead:
            await self.store.backend.delete(k)
        log.info("metadata snapshot %d committed (%d bytes, %d objects freed)", seq, size,
                 len(dead))
        return seq


def _portable(image: bytes) -> bytes:
    """Mark a database image as rollback-journal mode (header bytes 18-19), so it can be
    opened in memory; :func:`download` switches the working copy back to WAL."""
    if len(image) >= 20 and image[18:20] == b"\x02\x02":
        image = image[:18] + b"\x01\x01" + image[20:]
    return image


async def download(store: ObjectStore, head: dict, path: str) -> apsw.Connection:
    """Replace the database at *path* with the snapshot *head* names; return it opened."""
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
    with conn:
        confirm(conn, head["seq"], head["snapshot"])
        # Unreferenced objects in the image may already be deleted from the store.
        conn.execute("DELETE FROM objects WHERE refcount=0")
    return conn
