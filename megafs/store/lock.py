"""The single-writer lock: one mount at a time per store.

The lock is the object ``lock``, an envelope of kind 4 sealed with the metadata
key, whose JSON payload names the holder: ``{"host", "pid", "since", "token"}``.
It is created with a conditional write (``if_absent``), so two machines racing
to mount cannot both win, and deleted at a clean unmount.

A lock left behind by a crash is taken over automatically only when it names
this host and its pid is no longer running; a lock held by another host is
taken over only when the user says so (``mount.megafs --force``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from megafs.backends import NoSuchObject, ObjectExists
from megafs.errors import StoreLocked
from megafs.store import envelope
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
LOCK_KEY = "lock"


def _pid_alive(pid: int) -> bool:
    """True if *pid* runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True


def is_stale(holder: dict) -> bool:
    """True if the lock names a mount on this host that is no longer running."""
    return holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"])


async def read(store: ObjectStore) -> dict | None:
    try:
        blob = await store.backend.get(LOCK_KEY)
    except NoSuchObject:
        return None
    return json.loads(envelope.open_(store.keys.meta, envelope.KIND_LOCK, LOCK_KEY, blob))


async def acquire(store: ObjectStore, *, force: bool = False) -> dict:
    """Take the lock for this process; raise StoreLocked naming the holder."""
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
          "token": os.urandom(16).hex()}
    blob = envelope.seal(store.keys.meta, envelope.KIND_LOCK, LOCK_KEY,
                         json.dumps(me).encode())
    for _ in range(3):
        try:
            await store.backend.put(LOCK_KEY, blob, if_absent=True)
            return me
        except ObjectExists:
            holder = await read(store)
        if holder is None:  # released meanwhile: try again
            continue
        if holder.get("token") == me["token"]:  # our own put, retried
            return me
        stale = is_stale(holder)
        if stale or force:
            log.warning("taking over the lock of %s pid %s (since %s)%s", holder["host"],
                        holder["pid"], _when(holder["since"]),
                        "" if stale else ": --force given")
            await store.backend.put(LOCK_KEY, blob)
            return me
        raise StoreLocked(
            f"the store is mounted on {holder['host']} by pid {holder['pid']} since"
            f" {_when(holder['since'])}; unmount it there first (or, if that machine"
            " crashed, mount with --force)")
    raise StoreLocked("the store's lock keeps changing: another mount is racing for it")


async def release(store: ObjectStore, me: dict) -> None:
    """Delete the lock if it is still ours."""
    try:
        holder = await read(store)
    except Exception:  # noqa: BLE001 - a damaged lock is removed either way
        holder = me
    if holder is not None and holder.get("token") == me["token"]:
        await store.backend.delete(LOCK_KEY)
    else:
        log.error("the store's lock was taken over by %s while mounted", holder)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
