"""The single-writer lock: one writer at a time per store, as a lease.

The lock is the object ``lock``, an envelope of kind 4 sealed with the metadata
key, whose JSON payload names the holder and its lease (docs/format.md, §5a):
``{"host", "pid", "mount", "since", "term", "renewed", "count"}``. It is created
with a conditional write, so two machines racing for it cannot both win, renewed
by its holder every ``term / RENEWALS_PER_TERM`` seconds with a compare-and-swap
(:meth:`Backend.replace_if`) against the bytes it last wrote, and deleted at a
clean unmount. A swap that finds other bytes means the lock was taken over: the
holder has lost it (:class:`megafs.errors.LockLost`) and must stop writing.

A lock is taken over only from a holder that is provably gone: its pid is dead
on this host (automatic), or its lease was not renewed for longer than its term
(only when the user asks, ``--force``; then confirmed by watching the object
for a renewal interval and a half, so that a clock that is off cannot fool it).
A live holder is never displaced.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import trio

from megafs.backends import Backend, NoSuchObject, ObjectChanged
from megafs.errors import LockLost, MegafsError, StoreLocked
from megafs.store import envelope
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
LOCK_KEY = "lock"
DEFAULT_TERM = 60.0  #: seconds a lease stays valid without renewal
TERM_ENV = "MEGAFS_LOCK_TERM"  #: overrides DEFAULT_TERM (tests use a short term)
RENEWALS_PER_TERM = 4  #: the holder renews this often per term
CONFIRM_INTERVALS = 1.5  #: renewal intervals to watch an expired lease before taking it
UNCERTAIN_KEPT = 4  #: failed renewals (no answer) remembered as possibly stored


def lease_term() -> float:
    """The term of leases this process takes (``$MEGAFS_LOCK_TERM`` or 60 s)."""
    try:
        term = float(os.environ.get(TERM_ENV, DEFAULT_TERM))
    except ValueError:
        term = DEFAULT_TERM
    return term if 0.1 <= term <= 86400 else DEFAULT_TERM


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
    """True if the lock names a process on this host that is no longer running."""
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid", 0))


def is_expired(holder: dict, now: float | None = None) -> bool:
    """True if the lease was not renewed for longer than its term (by this clock)."""
    renewed = holder.get("renewed", holder.get("since", 0))
    return (now or time.time()) - renewed > holder.get("term", DEFAULT_TERM)


def describe(holder: dict) -> str:
    return f"{holder.get('host', '?')} pid {holder.get('pid', '?')}"


def _seal(store: ObjectStore, record: dict) -> bytes:
    return envelope.seal(store.keys.meta, envelope.KIND_LOCK, LOCK_KEY,
                         json.dumps(record).encode())


def _open(store: ObjectStore, blob: bytes) -> dict:
    return json.loads(envelope.open_(store.keys.meta, envelope.KIND_LOCK, LOCK_KEY, blob))


async def read_raw(store: ObjectStore) -> tuple[dict, bytes] | None:
    """The holder and the lock's bytes, or None when the store is not locked."""
    try:
        blob = await store.backend.get(LOCK_KEY)
    except NoSuchObject:
        return None
    return _open(store, blob), blob


async def read(store: ObjectStore) -> dict | None:
    found = await read_raw(store)
    return found[0] if found else None


class Lease:
    """The store lock as held by this process.

    :meth:`renew` extends it (a compare-and-swap against the bytes last written);
    :meth:`check` is the guard called before every ``head`` write; :meth:`keep`
    renews it in the background; :meth:`release` deletes it if it is still ours.
    Once a swap finds other bytes, :attr:`lost` names the new holder and every
    further check raises :class:`LockLost`.
    """

    def __init__(self, store: ObjectStore, record: dict, blob: bytes):
        self.store = store
        self.record = record
        self.blob = blob
        self.lost: str | None = None  #: why the lock is no longer ours
        self.took_over: dict | None = None  #: the gone holder whose lock this replaced
        self._renewing = trio.Lock()
        self._uncertain: list[bytes] = []  # renewals that may or may not have landed

    @property
    def interval(self) -> float:
        return self.record["term"] / RENEWALS_PER_TERM

    async def renew(self) -> None:
        """Extend the lease; raise LockLost if someone else holds the lock now."""
        if self.lost:
            raise LockLost(self.lost)
        async with self._renewing:
            record = dict(self.record, renewed=time.time(), count=self.record["count"] + 1)
            blob = _seal(self.store, record)
            # After a renewal that failed without an answer the store holds either
            # the bytes before it or the bytes it tried to write: both are ours.
            for expected in [self.blob, *self._uncertain]:
                try:
                    await self.store.backend.replace_if(LOCK_KEY, blob, expected)
                    break
                except ObjectChanged:
                    continue
                except BaseException:
                    self._uncertain = [*self._uncertain[1 - UNCERTAIN_KEPT:], blob]
                    raise
            else:
                self.lost = await self._who_took_it()
                log.error("%s: stopped writing", self.lost)
                raise LockLost(self.lost)
            self.record, self.blob, self._uncertain = record, blob, []

    async def _who_took_it(self) -> str:
        try:
            holder = await read(self.store)
        except MegafsError:
            holder = None
        who = describe(holder) if holder else "nobody (the lock was deleted)"
        return f"the store's lock was taken over by {who}"

    check = renew  # before a head write: a conditional write proves we still hold it

    async def keep(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Renew every :attr:`interval` until cancelled or the lock is lost."""
        task_status.started()
        while not self.lost:
            await trio.sleep(self.interval)
            try:
                await self.renew()
            except LockLost:
                return
            except (MegafsError, OSError) as e:  # storage down: the head guard still protects
                log.warning("renewing the store's lock failed: %s", e)

    async def release_handed_over(self) -> None:
        """Delete the lock while handing the writer role over (:attr:`lost` is already set,
        to stop the writer's tasks): only if it is still ours."""
        found = await read_raw(self.store)
        if found is not None and found[0].get("mount") == self.record["mount"]:
            await self.store.backend.delete(LOCK_KEY)

    async def release(self) -> None:
        """Delete the lock if it is still ours."""
        if self.lost:
            return
        try:
            found = await read_raw(self.store)
        except MegafsError:  # a damaged lock is removed either way
            found = (self.record, self.blob)
        if found is not None and found[0].get("mount") == self.record["mount"]:
            await self.store.backend.delete(LOCK_KEY)
        elif found is not None:
            log.error("the store's lock was taken over by %s while mounted", describe(found[0]))


def _record(term: float) -> dict:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "mount": os.urandom(16).hex(),
            "since": now, "term": term, "renewed": now, "count": 0}


async def _unchanged(backend: Backend, blob: bytes, wait: float, whose: str) -> bool:
    """Watch the lock for *wait* seconds: True if nobody renewed it."""
    log.info("watching the lock of %s for %.1fs to see whether it is renewed", whose, wait)
    await trio.sleep(wait)
    try:
        return await backend.get(LOCK_KEY) == blob
    except NoSuchObject:
        return True


async def _confirm_expired(store: ObjectStore, holder: dict, blob: bytes) -> bool:
    """Watch an expired lease for CONFIRM_INTERVALS renewal intervals: True if unchanged."""
    wait = holder.get("term", DEFAULT_TERM) / RENEWALS_PER_TERM * CONFIRM_INTERVALS
    return await _unchanged(store.backend, blob, wait, describe(holder))


async def ensure_unlocked(backend: Backend, store: ObjectStore | None) -> None:
    """For a tool about to destroy the store (mkfs --force): raise StoreLocked unless the
    store has no lock or its holder is provably gone. *store* opens the lock when the
    tool has the store's keys; without them, a lock that is not renewed for a whole
    term (``lease_term()``) is taken to be left over."""
    try:
        blob = await backend.get(LOCK_KEY)
    except NoSuchObject:
        return
    holder = None
    if store is not None:
        try:
            holder = _open(store, blob)
        except MegafsError:
            holder = None
    if holder is not None:
        if is_stale(holder) or (is_expired(holder)
                                and await _confirm_expired(store, holder, blob)):
            return
        raise StoreLocked(f"the store is in use by {describe(holder)} (lease renewed"
                          f" {_when(holder.get('renewed', holder.get('since', 0)))});"
                          " unmount it first")
    if not await _unchanged(backend, blob, lease_term(), "an unknown holder"):
        raise StoreLocked("the store is in use: its lock (which this passphrase cannot"
                          " open) is being renewed; unmount it first")


async def takeover_reason(store: ObjectStore, holder: dict, blob: bytes, *,
                          force: bool) -> str:
    """Why the lock of *holder* may be taken; raise StoreLocked when it may not."""
    who = describe(holder)
    if is_stale(holder):
        return f"{who} is no longer running"
    if is_expired(holder):
        if not force:
            raise StoreLocked(
                f"the store is locked by {who}, whose lease was last renewed"
                f" {_when(holder.get('renewed', holder.get('since', 0)))}; if that machine is"
                " gone, use --force")
        if await _confirm_expired(store, holder, blob):
            return f"the lease of {who} expired and was not renewed: --force given"
    raise StoreLocked(
        f"the store is in use by {who} (lease renewed"
        f" {_when(holder.get('renewed', holder.get('since', 0)))});"
        " unmount it there first: a live holder is never displaced, not even with --force")


async def acquire(store: ObjectStore, *, force: bool = False) -> Lease:
    """Take the lock for this process; raise StoreLocked naming a live holder."""
    record = _record(lease_term())
    blob = _seal(store, record)
    for _ in range(3):
        try:
            await store.backend.replace_if(LOCK_KEY, blob, None)
            return Lease(store, record, blob)
        except ObjectChanged:
            found = await read_raw(store)
        if found is None:  # released meanwhile: try again
            continue
        holder, old = found
        reason = await takeover_reason(store, holder, old, force=force)
        log.warning("taking over the lock of %s (since %s): %s", describe(holder),
                    _when(holder.get("since", 0)), reason)
        try:
            await store.backend.replace_if(LOCK_KEY, blob, old)
            lease = Lease(store, record, blob)
            lease.took_over = holder
            return lease
        except ObjectChanged:
            continue  # renewed or taken meanwhile: judge again
    raise StoreLocked("the store's lock keeps changing: another mount is racing for it")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))
