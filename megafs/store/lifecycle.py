"""Creating, opening and unlocking a store (shared by mkfs, mount, fsck and megafs)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import trio

from megafs.backends import Backend, NoSuchObject, open_backend
from megafs.errors import AlreadyExists, MegafsError, NoFilesystem, StoreLocked
from megafs.store import lock as store_lock
from megafs.store import superblock
from megafs.store.objects import (
    HEAD_FORMAT,
    WRITE_ONCE_PREFIXES,
    ObjectStore,
    new_metadata_key,
)


async def connect(url: str, *, retry_deadline: float = 60.0) -> Backend:
    backend = open_backend(url, retry_deadline=retry_deadline, write_once=WRITE_ONCE_PREFIXES)
    await backend.check()
    return backend


async def read_superblock(backend: Backend) -> dict:
    try:
        blob = await backend.get(superblock.OBJECT_KEY)
    except NoSuchObject:
        raise NoFilesystem(f"{backend.description} holds no megafs filesystem") from None
    return superblock.parse(blob)


async def unlock(backend: Backend, *, passphrase: bytes | None = None,
                 recovery_key: bytes | None = None) -> tuple[ObjectStore, dict]:
    sb = await read_superblock(backend)
    keys = await trio.to_thread.run_sync(
        lambda: superblock.unlock(sb, passphrase=passphrase, recovery_key=recovery_key))
    return ObjectStore(backend, keys, sb["block_size"]), sb


async def _old_store(backend: Backend, passphrase: bytes) -> ObjectStore | None:
    """The filesystem being overwritten, if *passphrase* opens it (to read its lock)."""
    try:
        store, _ = await unlock(backend, passphrase=passphrase)
    except MegafsError:
        return None
    return store


async def create(backend: Backend, passphrase: bytes, *, block_size: int, force: bool,
                 initial_metadata: Callable[[], bytes], quota: int | None = None,
                 before_commit: Callable[[str], None] | None = None
                 ) -> tuple[ObjectStore, str]:
    """Write a new, empty filesystem whose first metadata snapshot is
    *initial_metadata()* (an image from the core); return (store, printable recovery key).

    ``before_commit(recovery_key)`` is called right before the superblock, which makes
    the filesystem exist, is written: mkfs prints the key there, so that no interruption
    can leave a filesystem whose recovery key was never shown.
    """
    existing = [k async for k in backend.list("")]
    if existing:
        if not force:
            if superblock.OBJECT_KEY in existing:
                raise AlreadyExists(f"{backend.description} already holds a megafs filesystem"
                                    " (use --force to overwrite it)")
            raise AlreadyExists(f"{backend.description} is not empty (use --force to overwrite it)")
        if store_lock.LOCK_KEY in existing:
            await store_lock.ensure_unlocked(backend, await _old_store(backend, passphrase))
        for k in existing:
            await backend.delete(k)
    blob, keys, recovery = await trio.to_thread.run_sync(superblock.create, passphrase, block_size,
                                                         quota)
    store = ObjectStore(backend, keys, block_size)
    now = time.time()
    key = new_metadata_key()
    size, digest = await store.put_metadata(key, initial_metadata())
    await store.write_head({"format": HEAD_FORMAT, "seq": 1, "prev": None,
                            "sb_version": superblock.version(superblock.parse(blob)),
                            "snapshot": key, "deltas": [], "objects": {key: [size, digest]},
                            "time": now, "host": "", "pid": 0})
    if before_commit is not None:
        before_commit(recovery)
    await backend.put(superblock.OBJECT_KEY, blob)
    await backend.sync()
    return store, recovery


async def rewrite_superblock(store: ObjectStore, blob: bytes) -> bool:
    """Store the rewritten superblock *blob* (``megafs passphrase``, ``megafs quota``),
    then a head recording its version, so that putting the older superblock back is
    refused. False if the store is mounted: that mount records the new version in its
    next head (the superblock is written either way)."""
    backend = store.backend
    await backend.put(superblock.OBJECT_KEY, blob)
    await backend.sync()
    try:
        lease = await store_lock.acquire(store)
    except StoreLocked:
        return False
    store.head_guard = lease.check
    try:
        head = await store.read_head()
        if head is None or head.get("format", 1) < 2:
            return True  # a format-1 store: its first metadata upload records it
        new = dict(head, seq=head["seq"] + 1, prev=head["hash"],
                   sb_version=superblock.version(superblock.parse(blob)), time=time.time(),
                   host=socket.gethostname(), pid=os.getpid())
        await store.write_head(new)
        await backend.sync()
        return True
    finally:
        await lease.release()
