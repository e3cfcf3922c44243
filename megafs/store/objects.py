"""ObjectStore: sealed objects on top of a backend.

Object keys (docs/format.md, "Object naming"):

* ``superblock``    the superblock (JSON, see :mod:`megafs.store.superblock`)
* ``head``          the newest metadata state: its snapshot and deltas (with their sizes
                    and SHA-256), sequence number, the previous head's hash, and
                    the superblock version it was written under (format 2)
* ``m/<32 hex>``    a metadata snapshot (random name)
* ``b/<32 hex>``    a data block (random name; its key is derived from the name)
"""

from __future__ import annotations

import hashlib
import json
import os

from megafs.backends import Backend, NoSuchObject
from megafs.crypto.keys import KeyRing
from megafs.errors import CorruptObject, UnsupportedFormat
from megafs.store import envelope
from megafs.threads import run_sync

HEAD_KEY = "head"
#: Format of the heads this megafs writes (docs/format.md §5); format 1 heads are read.
HEAD_FORMAT = 2
HEAD_FORMATS = (1, 2)
#: The fields of a head that define the state it names; its hash covers these only
#: (not ``time``, ``host``, ``pid``), so a head rebuilt by fsck for the same state
#: has the same hash as the lost one.
HEAD_CHAIN_FIELDS = ("format", "seq", "prev", "sb_version", "snapshot", "deltas", "objects")


def head_hash(head: dict) -> str:
    """SHA-256 (hex) of the canonical JSON of *head*'s chain fields (docs/format.md §5)."""
    body = {k: head[k] for k in HEAD_CHAIN_FIELDS if k in head}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()
# Keys under these prefixes are random and never reused for other bytes, so two
# copies of one PUT store the same object (the backend may hedge them).
WRITE_ONCE_PREFIXES = ("b/", "m/")
_INLINE = 128 * 1024  # objects below this are sealed/opened inline (thread hop ~84 us)


def new_block_key() -> str:
    return "b/" + os.urandom(16).hex()


def new_metadata_key() -> str:
    return "m/" + os.urandom(16).hex()


async def _run(fn, *args, size: int):
    if size < _INLINE:
        return fn(*args)
    return await run_sync(fn, *args)


class ObjectStore:
    def __init__(self, backend: Backend, keys: KeyRing):
        self.backend = backend
        self.keys = keys

    # -- data blocks ----------------------------------------------------------
    def seal_block(self, object_key: str, data: bytes) -> bytes:
        return envelope.seal(self.keys.block_key(object_key), envelope.KIND_BLOCK, object_key,
                             data)

    def open_block(self, object_key: str, blob: bytes) -> bytes:
        return envelope.open_(self.keys.block_key(object_key), envelope.KIND_BLOCK, object_key,
                              blob)

    def prepare_block(self, object_key: str, data: bytes) -> tuple[bytes, str | None]:
        """Seal a block for :meth:`put_prepared` (CPU only: may run in a worker thread)."""
        blob = self.seal_block(object_key, data)
        return blob, self.backend.payload_digest(blob)

    async def put_prepared(self, object_key: str, prepared: tuple[bytes, str | None]) -> int:
        """Store a block sealed by :meth:`prepare_block`; return the stored size."""
        blob, digest = prepared
        await self.backend.put(object_key, blob, digest=digest)
        return len(blob)

    async def put_block(self, object_key: str, data: bytes) -> int:
        """Seal and store one block; return the stored size."""
        prepared = await _run(self.prepare_block, object_key, data, size=len(data))
        return await self.put_prepared(object_key, prepared)

    async def get_block(self, object_key: str) -> bytes:
        try:
            blob = await self.backend.get(object_key)
        except NoSuchObject:
            raise CorruptObject(f"data block {object_key} is missing from the store") from None
        return await _run(self.open_block, object_key, blob, size=len(blob))

    # -- metadata -------------------------------------------------------------
    async def put_metadata(self, object_key: str, payload: bytes, *,
                           delta: bool = False) -> tuple[int, str]:
        """Seal and store a snapshot or delta; return its stored size and SHA-256 (hex),
        which the head that names it records."""
        kind = envelope.KIND_DELTA if delta else envelope.KIND_METADATA
        blob = await _run(envelope.seal, self.keys.meta, kind, object_key, payload,
                          size=len(payload))
        await self.backend.put(object_key, blob)
        return len(blob), hashlib.sha256(blob).hexdigest()

    async def get_metadata(self, object_key: str, *, delta: bool = False,
                           expect: tuple[int, str] | None = None) -> bytes:
        """A snapshot's or delta's payload; *expect* is the (size, SHA-256) its head
        records: any other object under that name is refused (damaged or swapped)."""
        kind = envelope.KIND_DELTA if delta else envelope.KIND_METADATA
        what = f"{envelope.KIND_NAMES[kind]} {object_key}"
        try:
            blob = await self.backend.get(object_key)
        except NoSuchObject:
            raise CorruptObject(f"{what} is missing from the store") from None
        if expect is not None and (len(blob), hashlib.sha256(blob).hexdigest()) != tuple(expect):
            raise CorruptObject(f"{what} does not match the size and SHA-256 its head records"
                                " (damaged or swapped)")
        return await _run(envelope.open_, self.keys.meta, kind, object_key, blob, size=len(blob))

    def seal_head(self, head: dict) -> tuple[bytes, str]:
        """The sealed ``head`` object for *head* and its hash (:func:`head_hash`: what
        the next head names as ``prev``). A format-2 head is sealed in an envelope of
        version 2, which a megafs that reads only format 1 refuses."""
        body = {k: v for k, v in head.items() if k != "hash"}
        version = 2 if body.get("format", 1) >= 2 else 1
        blob = envelope.seal(self.keys.meta, envelope.KIND_HEAD, HEAD_KEY,
                             json.dumps(body, sort_keys=True).encode(), version=version)
        return blob, head_hash(body)

    async def write_head(self, head: dict, sealed: tuple[bytes, str] | None = None) -> str:
        """Replace ``head``; return its hash. *sealed* is :meth:`seal_head`'s result when
        the caller recorded the hash before writing."""
        blob, digest = sealed or self.seal_head(head)
        await self.backend.put(HEAD_KEY, blob)
        return digest

    async def read_head(self) -> dict | None:
        """The store's head (None if there is none), with ``hash`` (:func:`head_hash`)
        added; raises CorruptObject if it is damaged or malformed."""
        try:
            blob = await self.backend.get(HEAD_KEY)
        except NoSuchObject:
            return None
        payload = envelope.open_(self.keys.meta, envelope.KIND_HEAD, HEAD_KEY, blob)
        try:
            head = json.loads(payload)
        except ValueError:
            raise CorruptObject("the head is damaged (not JSON)") from None
        _validate_head(head)
        head["hash"] = head_hash(head)
        return head


def _validate_head(head) -> None:
    """Raise CorruptObject unless *head* has the fields of its format (docs/format.md §5)."""
    if not isinstance(head, dict):
        raise CorruptObject("the head is damaged (not a JSON object)")
    fmt = head.get("format")
    if fmt not in HEAD_FORMATS:
        raise UnsupportedFormat(f"the store's head has format version {fmt}; this megafs"
                                f" reads {' and '.join(map(str, HEAD_FORMATS))}")
    ok = (isinstance(head.get("seq"), int) and isinstance(head.get("snapshot"), str)
          and isinstance(head.get("deltas", []), list))
    if ok and fmt >= 2:
        objects = head.get("objects")
        ok = (isinstance(head.get("sb_version"), int)
              and (head.get("prev") is None or isinstance(head["prev"], str))
              and isinstance(objects, dict)
              and all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], int)
                      and isinstance(v[1], str) for v in objects.values())
              and {head["snapshot"], *head["deltas"]} == set(objects))
    if not ok:
        raise CorruptObject("the head is damaged (missing or malformed fields)")
