"""The local working copy of the metadata in a cache directory, brought up to date with
the store's head at mount (the engine of ``Daemon._metadata``).

The decision which state to trust is :func:`megafs.core.descent.relate`; this module
reads both sides, checks that every object the head names is in the store with its
recorded size, and keeps or replaces ``metadata.db``.
"""

from __future__ import annotations

import json
import logging
import os

import apsw
import trio

from megafs.core import fsynced, schema
from megafs.core.descent import Relation, Seen, check_superblock, refusal, relate
from megafs.core.snapshot import confirm, download, get_state, set_state, upgrade_schema
from megafs.errors import CacheError, CorruptObject
from megafs.store import superblock
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
DATABASE = "metadata.db"
_SIZE_CHECKS = 16  # concurrent size requests when checking a head's objects


def seen_in(conn: apsw.Connection) -> Seen:
    """What the working copy *conn* says this machine last saw (its ``state`` rows)."""
    objects = get_state(conn, "objects")
    pending = get_state(conn, "seq_pending")
    return Seen(seq=int(get_state(conn, "seq", 0)), hash=get_state(conn, "head_hash"),
                objects=json.loads(objects) if objects else None,
                pending_seq=int(pending) if pending is not None else None,
                pending_hash=get_state(conn, "head_pending"))


def read_seen(cache_dir: str, store_id: str) -> Seen | None:
    """What the cache directory's working copy of the store *store_id* last saw, or None
    if it has none (or holds another filesystem's metadata)."""
    path = os.path.join(cache_dir, DATABASE)
    if not os.path.exists(path):
        return None
    try:
        conn = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
        try:
            if get_state(conn, "store_id") not in (None, store_id):
                return None
            return seen_in(conn)
        finally:
            conn.close()
    except apsw.Error as e:
        raise CacheError(f"cache directory {cache_dir}: cannot read its metadata: {e}") from None


def history_of(conn: apsw.Connection):
    """``history_contains(seq, hash)`` answered by the ``heads`` table of *conn*."""
    def contains(seq: int, digest: str) -> bool:
        row = conn.execute("SELECT hash FROM heads WHERE seq=?", (seq,)).fetchone()
        return row is not None and row[0] == bytes.fromhex(digest)
    return contains


async def check_head_objects(store: ObjectStore, head: dict) -> None:
    """Every snapshot and delta *head* names exists with its recorded size (no download);
    raise CorruptObject naming the first that does not."""
    objects = head.get("objects") or {k: None for k in (head["snapshot"], *head.get("deltas", []))}
    bad: list[str] = []
    limit = trio.CapacityLimiter(_SIZE_CHECKS)

    async def one(key: str, entry) -> None:
        async with limit:
            size = await store.backend.size(key)
        if size is None:
            bad.append(f"metadata object {key} named by the head is missing from the store")
        elif entry is not None and size != entry[0]:
            bad.append(f"metadata object {key} named by the head has {size} bytes, not the"
                       f" {entry[0]} recorded (damaged or swapped)")

    async with trio.open_nursery() as nursery:
        for key, entry in objects.items():
            nursery.start_soon(one, key, entry)
    if bad:
        raise CorruptObject(sorted(bad)[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1
                                              else ""))


async def open_local_metadata(store: ObjectStore, sb: dict, cache_dir: str) -> apsw.Connection:
    """The cache directory's metadata, up to date with the store's head; raises
    RollbackDetected (22) for a head that does not descend from the one this machine
    saw or an older superblock, CorruptObject (15) if an object the head names is
    missing or damaged."""
    path = os.path.join(cache_dir, DATABASE)
    head = await store.read_head()
    if head is None:
        raise CorruptObject("the store has no metadata head (fsck.megafs rebuilds it)")
    check_superblock(superblock.version(sb), head)
    await check_head_objects(store, head)
    conn = None
    if os.path.exists(path):
        conn = schema.connect(path)
        schema.check_version(conn)
        if get_state(conn, "store_id") not in (None, sb["store_id"]):
            conn.close()
            raise CacheError(f"cache directory {cache_dir} belongs to another filesystem")
    seen = seen_in(conn) if conn is not None else None
    relation = relate(seen, head)
    if not relation.accepted and relation is not Relation.NEEDS_HISTORY:
        conn.close()
        raise refusal(seen, head, relation)
    if relation.keeps_local:
        # The store holds what this machine last saw or uploaded (perhaps right before
        # a crash), or the same metadata under a newer head: the local copy is current.
        with conn:
            confirm(conn, head)
            set_state(conn, "sb_version", superblock.version(sb))
        upgrade_schema(conn)
        return conn
    names: list[str] = []
    if conn is not None:
        blocks = os.path.join(cache_dir, "blocks")
        names = os.listdir(blocks) if os.path.isdir(blocks) else []
        dirty = len([n for n in names if n.endswith(".d")]) + fsynced.count(conn)
        unsent = schema.unsent_changes(conn)
        conn.close()
        if dirty or unsent:
            what = " and ".join(part for part in (
                f"{dirty} blocks" if dirty else "",
                f"{unsent} metadata changes" if unsent else "") if part)
            raise CacheError(
                f"cache directory {cache_dir} holds {what} never uploaded, but"
                f" the store has newer metadata (version {head['seq']}) written elsewhere;"
                " move the cache directory away to discard them")
        log.info("local metadata %d is older than the store's %d: downloading", seen.seq,
                 head["seq"])

    def accept(new: apsw.Connection) -> None:
        if relation is Relation.NEEDS_HISTORY:
            final = relate(seen, head, history_of(new))
            if not final.accepted:
                raise refusal(seen, head, final)

    conn = await download(store, head, path, accept)
    blocks = os.path.join(cache_dir, "blocks")
    for name in names:
        os.unlink(os.path.join(blocks, name))
    with conn:
        set_state(conn, "store_id", sb["store_id"])
        set_state(conn, "sb_version", superblock.version(sb))
    return conn
