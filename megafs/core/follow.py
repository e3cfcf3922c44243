"""A follower: a read-only mount that keeps its working copy of the metadata up to date
with the head another machine (the writer) uploads (docs/format.md §5c).

Every ``interval`` seconds :class:`Follower` reads the store's head. It accepts only a
head the descent rule accepts (:func:`megafs.core.descent.relate`): the same state, or a
newer one whose history contains the head it holds. A newer head over the same snapshot
is applied as its new deltas (:func:`megafs.core.descent.follow_plan`); otherwise the
follower loads the head's snapshot and deltas and replaces its rows with them. Every
snapshot and delta is checked against the size and SHA-256 the head records before it
is opened. The whole change is one savepoint of the local database, taken after every
download has finished: a request of the kernel sees the old state or the new one, never
a mix, and a head that turns out not to descend leaves the old state untouched.

What changed (:class:`Changes`) is handed to ``on_change``: the mount drops the cached
blocks of those inodes and invalidates the kernel's entries and inodes. Invalidating an
entry takes the kernel's lock of its directory, which a request in progress may hold
until this process answers it: a look asked for by a request (``poll(wait=False)``)
therefore does not wait for the kernel, and only one look applies a state at a time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import apsw
import trio

from megafs.core.descent import Relation, follow_plan, refusal, relate, short
from megafs.core.localcopy import history_of, seen_in
from megafs.core.schema import JOURNALED, commit_batch
from megafs.core.snapshot import apply_attached, confirm, expected, get_state, load
from megafs.errors import CorruptObject, MegafsError, RollbackDetected
from megafs.store import lock as store_lock
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
DEFAULT_INTERVAL = 5.0  #: seconds between two looks at the store's head
MAX_NEW_DELTAS = 8  #: more new deltas than this: load the head's whole state instead
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass
class Changes:
    """What one catch-up changed in the working copy."""

    inodes: set[int] = field(default_factory=set)  #: rows changed or removed
    entries: set[tuple[int, bytes]] = field(default_factory=set)  #: (parent, name) changed
    data: set[int] = field(default_factory=set)  #: inodes whose block map changed

    def __bool__(self) -> bool:
        return bool(self.inodes or self.entries or self.data)


def _collect(conn: apsw.Connection, schema: str, changes: Changes) -> None:
    """Add to *changes* the rows of the delta attached as *schema* (before it is applied:
    the old names of the entries it changes or removes are still in ``main``)."""
    q = conn.execute
    changes.inodes |= {r[0] for r in q(f"SELECT id FROM {schema}.inodes")}
    changes.inodes |= {r[0] for r in q(f"SELECT a FROM {schema}.deleted WHERE tbl='inodes'")}
    changes.inodes |= {r[0] for r in q(f"SELECT inode FROM {schema}.xattrs")}
    changes.inodes |= {r[0] for r in q(f"SELECT a FROM {schema}.deleted WHERE tbl='xattrs'")}
    changes.entries |= {(r[0], r[1]) for r in q(f"SELECT parent, name FROM {schema}.dentries")}
    changes.entries |= {(r[0], r[1]) for r in q(
        f"SELECT parent, name FROM main.dentries WHERE id IN (SELECT id FROM {schema}.dentries"
        f" UNION SELECT a FROM {schema}.deleted WHERE tbl='dentries')")}
    changes.data |= {r[0] for r in q(f"SELECT inode FROM {schema}.blocks")}
    changes.data |= {r[0] for r in q(f"SELECT a FROM {schema}.deleted WHERE tbl='blocks'"
                                     " OR tbl='unsent'")}
    if _has_table(conn, schema, "unsent"):  # newer data than the block map names
        changes.data |= {r[0] for r in q(f"SELECT inode FROM {schema}.unsent")}


def _has_table(conn: apsw.Connection, schema: str, table: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {schema}.sqlite_master WHERE type='table' AND name=?",
                        (table,)).fetchone() is not None


def _replace_all(conn: apsw.Connection, schema: str, changes: Changes) -> None:
    """Replace every journaled table of ``main`` with the rows of the database attached as
    *schema*, recording in *changes* the rows that differ."""
    q = conn.execute
    for a, b in (("main", schema), (schema, "main")):
        changes.inodes |= {r[0] for r in q(
            f"SELECT id FROM (SELECT * FROM {a}.inodes EXCEPT SELECT * FROM {b}.inodes)")}
        changes.inodes |= {r[0] for r in q(
            f"SELECT inode FROM (SELECT * FROM {a}.xattrs EXCEPT SELECT * FROM {b}.xattrs)")}
        changes.entries |= {(r[0], r[1]) for r in q(
            f"SELECT parent, name FROM (SELECT * FROM {a}.dentries"
            f" EXCEPT SELECT * FROM {b}.dentries)")}
        changes.data |= {r[0] for r in q(
            f"SELECT inode FROM (SELECT * FROM {a}.blocks EXCEPT SELECT * FROM {b}.blocks)")}
        if _has_table(conn, schema, "unsent"):
            changes.data |= {r[0] for r in q(
                f"SELECT inode FROM (SELECT * FROM {a}.unsent EXCEPT SELECT * FROM {b}.unsent)")}
    for table in JOURNALED:
        q(f"DELETE FROM main.{table}")
        if _has_table(conn, schema, table):  # (an older image may lack a newer table)
            q(f"INSERT INTO main.{table} SELECT * FROM {schema}.{table}")


async def catch_up(conn: apsw.Connection, store: ObjectStore, head: dict) -> Changes:
    """Bring the working copy *conn* to the store's *head*; return what changed.
    Raises RollbackDetected (nothing changed) for a head the descent rule refuses, and
    CorruptObject when an object the head names is missing or does not match."""
    seen = seen_in(conn)
    relation = relate(seen, head)
    changes = Changes()
    if relation.keeps_local:
        if relation is not Relation.EQUAL:
            with conn:
                confirm(conn, head)
        return changes
    if not relation.accepted and relation is not Relation.NEEDS_HISTORY:
        raise refusal(seen, head, relation)
    plan = follow_plan(get_state(conn, "snapshot"), json.loads(get_state(conn, "deltas", "[]")),
                       seen.objects, head)
    if plan is not None and len(plan) > MAX_NEW_DELTAS:
        plan = None
    # Every download happens before the working copy changes, in one synchronous step.
    if plan is None:
        new = await load(store, head)
        try:
            images = [(head["snapshot"], new.serialize("main"))]
        finally:
            new.close()
    else:
        images = [(name, await store.get_metadata(name, delta=True, expect=expected(head, name)))
                  for name in plan]
    commit_batch(conn, reopen=False)  # ATTACH and DETACH need no open transaction
    attached: list[str] = []
    try:
        for i, (name, image) in enumerate(images):
            if not image.startswith(SQLITE_MAGIC):
                raise CorruptObject(f"metadata object {name} is not a database")
            attached.append(f"incoming{i}")
            conn.execute(f"ATTACH ':memory:' AS {attached[-1]}")
            conn.deserialize(attached[-1], image)
        with conn:
            if plan is None:
                _replace_all(conn, attached[0], changes)
            else:
                for schema, (name, _) in zip(attached, images, strict=True):
                    _collect(conn, schema, changes)
                    apply_attached(conn, schema, name)
            final = relate(seen, head, history_of(conn))
            if not final.accepted:
                raise refusal(seen, head, final)
            # Unreferenced objects may already be deleted from the store: never reuse them.
            conn.execute("DELETE FROM objects WHERE refcount=0")
            conn.execute("DELETE FROM journal")  # a follower uploads nothing
            confirm(conn, head)
    except apsw.Error as e:
        raise CorruptObject(f"metadata version {head['seq']} cannot be applied: {e}") from None
    finally:
        for schema in attached:
            conn.execute(f"DETACH {schema}")
        commit_batch(conn)
    return changes


def writer_alive(holder: dict | None) -> bool:
    """True if *holder* (the lock's record) is a writer that may still complete its state;
    a state whose writer is gone (no lock, an expired lease) is shown as it is, as a
    mount after that writer's crash would."""
    return holder is not None and not store_lock.is_expired(holder)


class Follower:
    """Polls the store's head every *interval* seconds and applies newer states.

    ``await on_change(changes, wait)`` runs after each applied state; *wait* is false
    when the look was asked for by a request the kernel waits on (see the module doc).
    :meth:`wake` makes it look now (a read found an object gone: the writer moved on).
    :meth:`status` is what ``megafs stat`` shows: the version held, the lag, the writer.
    """

    def __init__(self, conn: apsw.Connection, store: ObjectStore, interval: float,
                 on_change: Callable[[Changes, bool], Awaitable[None]]):
        self.db = conn
        self.store = store
        self.interval = interval
        self.on_change = on_change
        self._wake = trio.Event()
        self.current_since = time.time()  #: when this copy was last known current
        self.store_seq: int | None = None  #: the seq of the store's head at the last look
        self.writer: str | None = None  #: the lock holder at the last look
        self.problem: str | None = None  #: why the last look did not bring it up to date
        self.looks = 0  #: looks at the store so far
        self._applying = trio.Lock()  #: one look applies a state at a time

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()
            await self.poll()

    async def poll(self, *, wait: bool = True) -> bool:
        """One look at the store; True if the working copy is its head afterwards.

        With *wait* false (a request asked for it), returns before the kernel has
        dropped its caches of what changed."""
        try:
            async with self._applying:
                changes = await self._poll()
            if changes:  # no checkpoint since the apply: on_change drops caches first
                await self.on_change(changes, wait)
            return changes is not None
        finally:
            self.looks += 1

    async def _poll(self) -> Changes | None:
        """Apply the store's head if it is newer; the changes (empty if none), or None if
        the working copy is not the head afterwards."""
        try:
            holder = await store_lock.read(self.store)
            self.writer = store_lock.describe(holder) if holder else None
            head = await self.store.read_head()
            if head is None:
                raise MegafsError("the store has no metadata head")
            self.store_seq = head["seq"]
            if not head.get("complete", True) and head.get("hash") != get_state(
                    self.db, "head_hash") and writer_alive(holder):
                # Some file's data was still on the writer's machine: wait for the next.
                self.problem = "waiting for a state whose data is all in the store"
                return None
            changes = await catch_up(self.db, self.store, head)
        except RollbackDetected as e:  # never accepted: keep serving the state held
            if self.problem != str(e):
                log.error("follower: %s; keeping metadata version %s", e,
                          get_state(self.db, "seq"))
            self.problem = str(e)
            return None
        except MegafsError as e:
            if self.problem != str(e):
                log.warning("follower: could not catch up: %s", e)
            self.problem = str(e)
            return None
        except (OSError, apsw.Error) as e:
            log.warning("follower: could not catch up: %s", e)
            self.problem = str(e)
            return None
        self.problem = None
        self.current_since = time.time()
        if changes:
            log.info("follower: now at metadata version %d (head %s): %d inodes, %d entries"
                     " changed", head["seq"], short(head.get("hash")), len(changes.inodes),
                     len(changes.entries))
        return changes

    def status(self) -> dict:
        return {"role": "follower", "seq": int(get_state(self.db, "seq", 0)),
                "store_seq": self.store_seq, "lag": round(time.time() - self.current_since, 1),
                "writer": self.writer, "problem": self.problem,
                "interval": self.interval, "looks": self.looks}
