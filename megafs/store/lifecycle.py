"""Creating, opening and unlocking a store (shared by mkfs, mount, fsck and megafs)."""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from megafs.backends import Backend, NoSuchObject, open_backend
from megafs.errors import AlreadyExists, MegafsError, NoFilesystem
from megafs.store import lock, superblock
from megafs.store.objects import WRITE_ONCE_PREFIXES, ObjectStore, new_metadata_key


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
    return ObjectStore(backend, keys), sb


async def _old_store(backend: Backend, passphrase: bytes) -> ObjectStore | None:
    """The filesystem being overwritten, if *passphrase* opens it (to read its lock)."""
    try:
        store, _ = await unlock(backend, passphrase=passphrase)
    except MegafsError:
        return None
    return store


async def create(backend: Backend, passphrase: bytes, *, block_size: int, force: bool,
                 initial_metadata: Callable[[], bytes],
                 quota: int | None = None) -> tuple[ObjectStore, str]:
    """Write a new, empty filesystem whose first metadata snapshot is
    *initial_metadata()* (an image from the core); return (store, printable recovery key)."""
    existing = [k async for k in backend.list("")]
    if existing:
        if not force:
            if superblock.OBJECT_KEY in existing:
                raise AlreadyExists(f"{backend.description} already holds a megafs filesystem"
                                    " (use --force to overwrite it)")
            raise AlreadyExists(f"{backend.description} is not empty (use --force to overwrite it)")
        if lock.LOCK_KEY in existing:
            await lock.ensure_unlocked(backend, await _old_store(backend, passphrase))
        for k in existing:
            await backend.delete(k)
    blob, keys, recovery = await trio.to_thread.run_sync(superblock.create, passphrase, block_size,
                                                         quota)
    store = ObjectStore(backend, keys)
    key = new_metadata_key()
    await store.put_metadata(key, initial_metadata())
    await store.write_head({"format": 1, "seq": 1, "snapshot": key, "time": time.time(),
                            "host": "", "pid": 0})
    await backend.put(superblock.OBJECT_KEY, blob)
    await backend.sync()
    return store, recovery
