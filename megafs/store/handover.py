"""Handing the writer role over (docs/format.md §5a, "Handing over").

A mount that wants to write while another holds the lock writes the object
``takeover``, an envelope of kind 8 sealed with the metadata key, whose JSON payload
names it and says until when it waits: ``{"host", "pid", "mount", "since", "until"}``.
The writer looks for it every :data:`POLL` seconds; it then refuses writes, uploads
everything, deletes the lock and turns itself into a follower. The asking mount takes
the lock as soon as it is free (a compare-and-swap against "absent", as always) and
deletes the request; if the lock is still held at ``until`` it deletes the request and
gives up, and nothing changed.
"""

from __future__ import annotations

import json
import os
import socket
import time

import trio

from megafs.backends import NoSuchObject
from megafs.errors import MegafsError, StoreLocked
from megafs.store import envelope
from megafs.store import lock as store_lock
from megafs.store.objects import ObjectStore

REQUEST_KEY = "takeover"
POLL = 3.0  #: the writer looks for a request this often (it must notice within 5 s)
RETRY = 0.25  #: the asking mount tries to take the lock this often
DEFAULT_TIMEOUT = 60.0  #: --take-over-timeout


def _seal(store: ObjectStore, record: dict) -> bytes:
    return envelope.seal(store.keys.meta, envelope.KIND_TAKEOVER, REQUEST_KEY,
                         json.dumps(record).encode())


async def read_request(store: ObjectStore, now: float | None = None) -> dict | None:
    """A pending request (None if there is none, or it expired or does not open)."""
    try:
        blob = await store.backend.get(REQUEST_KEY)
        record = json.loads(envelope.open_(store.keys.meta, envelope.KIND_TAKEOVER,
                                           REQUEST_KEY, blob))
        until = float(record["until"])
    except NoSuchObject:
        return None
    except (MegafsError, ValueError, KeyError, TypeError):
        return None
    return record if until > (time.time() if now is None else now) else None


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
              "mount": os.urandom(16).hex(), "since": now, "until": now + timeout}
    await store.backend.put(REQUEST_KEY, _seal(store, record))
    try:
        with trio.move_on_after(timeout):
            while True:
                try:
                    return await store_lock.acquire(store, force=force)
                except StoreLocked:
                    await trio.sleep(RETRY)
        holder = await store_lock.read(store)
        who = store_lock.describe(holder) if holder else "its holder"
        raise StoreLocked(f"the writer {who} did not hand over within {timeout:g} s;"
                          " nothing changed (an unreachable writer: --force once its lease"
                          " expired)")
    finally:
        with trio.CancelScope(shield=True):
            try:
                await store.backend.delete(REQUEST_KEY)
            except (MegafsError, OSError):
                pass
