"""Handing the writer role over (docs/format.md §5a, "Handing over").

A mount that wants to write while another holds the lock writes the object
``takeover``, an envelope of kind 8 sealed with the metadata key, whose JSON payload
names it, says until when it waits and when it was last alive:
``{"host", "pid", "mount", "since", "until", "alive"}``; the asking mount rewrites it
every :data:`ALIVE_EVERY` seconds while it waits. The writer looks for it every
:data:`POLL` seconds; it then refuses writes and uploads everything. Before it lets go
it reads the request again (:func:`still_wanted`): only a request that is still there,
was renewed within :data:`ALIVE_STALE` seconds and has at least :data:`MARGIN` seconds
left makes it delete the lock and turn itself into a follower. Otherwise (the asking
mount gave up, was killed or lost the store) the writer takes writes again, and nothing
changed. The asking mount takes the lock as soon as it is free (a compare-and-swap
against "absent", as always); at ``until`` it deletes the request, tries the lock one
last time (a writer that let go just before sees no request any more, so nobody can be
left without the role after that attempt, save a release slower than :data:`MARGIN`),
and gives up.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import trio

from megafs.backends import NoSuchObject
from megafs.errors import MegafsError, StoreLocked
from megafs.store import envelope
from megafs.store import lock as store_lock
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
REQUEST_KEY = "takeover"
POLL = 3.0  #: the writer looks for a request this often (it must notice within 5 s)
RETRY = 0.25  #: the asking mount tries to take the lock this often
DEFAULT_TIMEOUT = 60.0  #: --take-over-timeout
ALIVE_EVERY = 1.0  #: the asking mount renews its request this often
ALIVE_STALE = 5.0  #: a request not renewed for this long is from a mount that went away
MARGIN = 5.0  #: the writer lets go only of a request with at least this long left


def _seal(store: ObjectStore, record: dict) -> bytes:
    return envelope.seal(store.keys.meta, envelope.KIND_TAKEOVER, REQUEST_KEY,
                         json.dumps(record).encode())


async def read_request(store: ObjectStore, now: float | None = None, *,
                       left: float = 0.0) -> dict | None:
    """A pending request: None if there is none, it does not open, it was not renewed
    within ALIVE_STALE seconds, or it has *left* seconds or less before it expires."""
    try:
        blob = await store.backend.get(REQUEST_KEY)
        record = json.loads(envelope.open_(store.keys.meta, envelope.KIND_TAKEOVER,
                                           REQUEST_KEY, blob))
        until = float(record["until"])
        alive = float(record.get("alive", record["since"]))
    except NoSuchObject:
        return None
    except (MegafsError, ValueError, KeyError, TypeError):
        return None
    now = time.time() if now is None else now
    return record if until - now > left and now - alive <= ALIVE_STALE else None


async def still_wanted(store: ObjectStore) -> dict | None:
    """(The writer, after uploading everything.) The request to let go for: one still
    there, alive, and with at least MARGIN seconds left; None means write on."""
    return await read_request(store, left=MARGIN)


async def take_over(store: ObjectStore, timeout: float, *, force: bool = False
                    ) -> store_lock.Lease:
    """Ask the writer to hand over and take the lock once it is free; raise StoreLocked
    naming the holder (after deleting the request) if it is not within *timeout*."""
    try:
        return await store_lock.acquire(store, force=force)
    except StoreLocked:
        pass
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(),
              "mount": os.urandom(16).hex(), "since": now, "until": now + timeout,
              "alive": now}
    await store.backend.put(REQUEST_KEY, _seal(store, record))
    try:
        with trio.move_on_after(timeout):
            renewed = trio.current_time()
            while True:
                try:
                    return await store_lock.acquire(store, force=force)
                except StoreLocked:
                    await trio.sleep(RETRY)
                if trio.current_time() - renewed >= ALIVE_EVERY:
                    record["alive"] = time.time()
                    try:
                        await store.backend.put(REQUEST_KEY, _seal(store, record))
                    except (MegafsError, OSError) as e:  # the next renewal may get through
                        log.warning("renewing the take-over request failed: %s", e)
                    renewed = trio.current_time()
    finally:
        with trio.CancelScope(shield=True):
            try:
                await store.backend.delete(REQUEST_KEY)
            except (MegafsError, OSError):
                pass
    try:  # the request is gone: a writer that let go meanwhile left the lock free
        return await store_lock.acquire(store, force=force)
    except StoreLocked:
        pass
    holder = await store_lock.read(store)
    who = store_lock.describe(holder) if holder else "its holder"
    raise StoreLocked(f"the writer {who} did not hand over within {timeout:g} s;"
                      " nothing changed (an unreachable writer: --force once its lease"
                      " expired)")
