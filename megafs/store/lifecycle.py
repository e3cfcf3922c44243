"""Creating, opening and unlocking a store (shared by mkfs, mount, fsck and megafs)."""

from __future__ import annotations

import time

import trio

from megafs.backends import Backend, NoSuchObject, open_backend
from megafs.core import schema
from megafs.errors import AlreadyExists, NoFilesystem
from megafs.store import superblock
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


async def create(backend: Backend, passphrase: bytes, *, block_size: int, force: bool,
                 uid: int, gid: int, quota: int | None = None,
                 before_commit=None) -> tuple[ObjectStore, str]:
    """Write a new, empty filesystem; return (store, printable recovery key).

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
        for k in existing:
            await backend.delete(k)
    blob, keys, recovery = await trio.to_thread.run_sync(superblock.create, passphrase, block_size,
                                                         quota)
    store = ObjectStore(backend, keys)
    # Initial metadata: an empty root directory, as snapshot 1.
    import apsw

    conn = apsw.Connection(":memory:")
    schema.create(conn, root_uid=uid, root_gid=gid, now_ns=time.time_ns())
    key = new_metadata_key()
    await store.put_metadata(key, conn.serialize("main"))
    conn.close()
    await store.write_head({"format": 1, "seq": 1, "snapshot": key, "time": time.time(),
                            "host": "", "pid": 0})
    if before_commit is not None:
        before_commit(recovery)
    await backend.put(superblock.OBJECT_KEY, blob)
    await backend.sync()
    return store, recovery
