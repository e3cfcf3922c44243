"""Shares: publish a file or folder as a manifest that a link's key opens.

Each share is a row of the ``shares`` table (metadata, so it survives remounts
and moves with the store) and an object ``s/<id>`` in the store. Manifests are
rebuilt from the current metadata whenever metadata is uploaded, before
garbage objects are deleted: a link always shows the file or folder as it is
now, and never names an object that was deleted.

Manifests are signed with the filesystem's share signing key and list the
SHA-256 of every stored object they name (``objects.sha256``, recorded at upload).
Objects stored before that column existed are fetched once, verified against
their keyed dedup hash (a key no link holder has) and their hash recorded.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import stat
import time

import apsw
import trio

from megafs.core.namespace import FsError, Namespace
from megafs.core.schema import INO, MODE, MTIME_NS, SIZE
from megafs.errors import CorruptObject, MegafsError
from megafs.store import share as share_format
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
#: A manifest lists a file's blocks as [blockno, block id, block key, size, sha256,
#: object holding it, offset, length] (version 3): the positions of the block id and
#: the SHA-256 of its envelope (None until recorded).
_BLOCK_OBJKEY, _BLOCK_SHA256 = 1, 4


class Shares:
    def __init__(self, conn: apsw.Connection, ns: Namespace, store: ObjectStore,
                 storage_url: str, block_size: int, flush, is_dirty):
        self.db = conn
        self.ns = ns
        self.store = store
        self.url = storage_url
        self.bs = block_size
        self.flush = flush  # async: upload dirty blocks, so manifests can name them
        self.is_dirty = is_dirty  # inode -> True while it has blocks not yet uploaded

    def link(self, share_id: str, key: bytes) -> str:
        return share_format.make_link(self.url, share_id, key,
                                      self.store.keys.share_public_key())

    def of_inode(self, ino: int) -> str | None:
        row = self.db.execute("SELECT id, key FROM shares WHERE inode=?", (ino,)).fetchone()
        return self.link(*row) if row else None

    def listing(self) -> list[dict]:
        return [{"link": self.link(sid, key), "path": self.ns.path_of(ino),
                 "created": created}
                for sid, key, ino, created in self.db.execute(
                    "SELECT id, key, inode, created FROM shares ORDER BY created")]

    async def create(self, ino: int) -> str:
        """Share *ino* (idempotent: one link per file or folder)."""
        mode = self.ns.get(ino)[MODE]
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise FsError(errno.EINVAL)  # only files and folders
        existing = self.of_inode(ino)
        if existing:
            return existing
        await self.flush()
        share_id, key = share_format.new_share()
        with self.db:
            self.db.execute("INSERT INTO shares (id, inode, key, created) VALUES (?,?,?,?)",
                            (share_id, ino, key, int(time.time())))
        await self._publish(share_id, key, ino, None)
        return self.link(share_id, key)

    async def revoke(self, share_id: str | None = None, ino: int | None = None) -> None:
        if share_id is None:
            row = self.db.execute("SELECT id FROM shares WHERE inode=?", (ino,)).fetchone()
            if row is None:
                raise FsError(errno.ENODATA)  # not shared
            share_id = row[0]
        with self.db:
            self.db.execute("DELETE FROM shares WHERE id=?", (share_id,))
            if self.db.changes() == 0:
                raise FsError(errno.ENOENT)
        await self.store.backend.delete(share_format.object_key(share_id))

    async def republish(self) -> None:
        """Bring every manifest up to date (called before garbage objects are deleted)."""
        rows = self.db.execute("SELECT id, key, inode, digest FROM shares").fetchall()
        for share_id, key, ino, digest in rows:
            if self.db.execute("SELECT nlink FROM inodes WHERE id=?", (ino,)).fetchone() in \
                    (None, (0,)):
                log.info("shared %s was deleted: revoking its link", share_id)
                await self.revoke(share_id)
                continue
            try:
                await self._publish(share_id, key, ino, digest)
            except CorruptObject as e:  # its link keeps the last good manifest
                log.error("share %s not republished: %s", share_id, e)

    async def _publish(self, share_id: str, key: bytes, ino: int, digest) -> None:
        manifest = self.manifest(ino)
        unhashed = [block[_BLOCK_OBJKEY] for entry in manifest["entries"]
                    for block in entry.get("blocks", ()) if block[_BLOCK_SHA256] is None]
        if unhashed:
            await self._record_hashes(unhashed)
            manifest = self.manifest(ino)
        new = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).digest()
        if new == digest:
            return
        blob = share_format.seal_manifest(key, share_id, manifest,
                                          self.store.keys.share_signing)
        await self.store.backend.put(share_format.object_key(share_id), blob)
        self.db.execute("UPDATE shares SET digest=? WHERE id=?", (new, share_id))

    async def _record_hashes(self, object_keys: list[str]) -> None:
        """Fetch objects stored before their SHA-256 was recorded, check them against
        their keyed dedup hash and record the SHA-256 of what is stored."""
        limit = trio.CapacityLimiter(max(1, self.store.backend.parallelism))

        async def one(objkey: str) -> None:
            async with limit:
                pack, offset, length = self.db.execute(
                    "SELECT pack, pack_offset, stored_size FROM objects WHERE key=?",
                    (objkey,)).fetchone()
                blob = await self.store.get_envelope(
                    objkey, (pack, offset, length) if pack is not None else None)
                plain = self.store.open_block(objkey, blob)
                expected = self.db.execute("SELECT hash FROM objects WHERE key=?",
                                           (objkey,)).fetchone()
                if expected and expected[0] is not None and \
                        self.store.keys.dedup_hash(plain) != expected[0]:
                    raise CorruptObject(f"data block {objkey} does not match its hash")
                self.db.execute("UPDATE objects SET sha256=? WHERE key=?",
                                (hashlib.sha256(blob).digest(), objkey))

        try:
            async with trio.open_nursery() as nursery:
                for objkey in dict.fromkeys(object_keys):
                    nursery.start_soon(one, objkey)
        except BaseExceptionGroup as eg:
            # A damaged object (or a storage error) is reported as itself, not as a group
            # the FUSE handlers would take for a bug: the first one, when all are ours.
            ours, rest = eg.split(MegafsError)
            if ours is None or rest is not None:
                raise
            while isinstance(ours, BaseExceptionGroup):
                ours = ours.exceptions[0]
            raise ours from None

    # -- manifests ----------------------------------------------------------------
    def _file(self, row: tuple, path: str) -> dict:
        ino, mode, size, mtime = row[INO], row[MODE], row[SIZE], row[MTIME_NS]
        entry = {"path": path, "mode": stat.S_IMODE(mode), "mtime_ns": mtime}
        if stat.S_ISDIR(mode):
            entry["type"] = "dir"
        elif stat.S_ISLNK(mode):
            entry.update(type="symlink", target=self.ns.readlink(ino).decode(errors="replace"))
        elif stat.S_ISREG(mode):
            if self.is_dirty(ino):  # listed once its data is in the store
                return {}
            if self.db.execute("SELECT 1 FROM unsent WHERE inode=? LIMIT 1",
                               (ino,)).fetchone():  # its newest data never reached the store
                return {}
            keys = self.store.keys
            entry.update(type="file", size=size, blocks=[
                [blockno, objkey, keys.block_key(objkey).hex(), plain,
                 sha256.hex() if sha256 is not None else None,
                 pack or objkey, offset or 0, stored]
                for blockno, objkey, plain, sha256, pack, offset, stored in self.db.execute(
                    "SELECT b.blockno, o.key, o.size, o.sha256, o.pack, o.pack_offset,"
                    " o.stored_size FROM blocks b JOIN objects o ON o.id = b.object"
                    " WHERE b.inode=? ORDER BY b.blockno", (ino,))])
        else:
            return {}
        return entry

    def manifest(self, ino: int) -> dict:
        root = self.ns.get(ino)
        name = self.ns.path_of(ino).rsplit("/", 1)[-1] or "megafs"
        entries = []
        if stat.S_ISDIR(root[MODE]):
            entries.append(self._file(root, ""))
            todo = [(ino, "")]
            while todo:
                parent, prefix = todo.pop()
                for _cookie, child, *row in self.ns.readdir(parent, 0, 1 << 30):
                    path = f"{prefix}{child.decode(errors='surrogateescape')}"
                    entry = self._file(tuple(row), path)
                    if entry:
                        entries.append(entry)
                    if stat.S_ISDIR(row[MODE]):
                        todo.append((row[INO], path + "/"))
        else:
            entry = self._file(root, "")
            if not entry:  # (dirty ones were flushed first)
                raise CorruptObject(f"{self.ns.path_of(ino)}: its newest data never reached"
                                    " the store (its writer stopped first)")
            entries.append(entry)
        return {"v": share_format.MANIFEST_VERSION, "name": name, "block_size": self.bs,
                "kind": "dir" if stat.S_ISDIR(root[MODE]) else "file", "entries": entries}
