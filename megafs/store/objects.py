"""ObjectStore: sealed objects on top of a backend.

Object keys (docs/format.md, "Object naming"):

* ``superblock``    the superblock (JSON, see :mod:`megafs.store.superblock`)
* ``head``          the newest metadata state: its snapshot and deltas (with their sizes
                    and SHA-256), sequence number, the previous head's hash, and
                    the superblock version it was written under (format 2)
* ``m/<32 hex>``    a metadata snapshot (random name)
* ``b/<32 hex>``    a data block (random name; its key is derived from the name)
* ``p/<32 hex>``    a pack: data block envelopes, each still sealed under its own
                    ``b/<32 hex>`` block id, padded to n MiB + 64 KiB (:mod:`megafs.store.packs`)
* ``q/<32 hex>``    a data block fsck found damaged, moved aside (quarantined)

Every block the owner reads is verified twice: the envelope must authenticate under
the object's key, and the plaintext must match the keyed dedup hash the metadata
recorded for it. The object key alone (which a share link hands out) can re-seal a
block so that it authenticates; only the dedup key, which is never shared, can make
the hash match.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable
from functools import partial

from megafs.backends import Backend, NoSuchObject, ObjectChanged
from megafs.crypto.keys import KeyRing
from megafs.errors import CorruptObject, LockLost, UnsupportedFormat
from megafs.store import envelope
from megafs.store.packs import PackBuilder
from megafs.threads import run_sync

HEAD_KEY = "head"
#: Format of the heads this megafs writes (docs/format.md §5); format 1 heads are read.
#: Format 3 (packs) has the fields of format 2; the number tells a megafs that reads only
#: formats 1 and 2 to refuse the store (its metadata names packs it cannot read).
HEAD_FORMAT = 3
HEAD_FORMATS = (1, 2, 3)
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
WRITE_ONCE_PREFIXES = ("b/", "m/", "p/")
BLOCK_PREFIX = "b/"
QUARANTINE_PREFIX = "q/"  # damaged blocks moved aside by fsck: kept, never garbage
_INLINE = 128 * 1024  # objects below this are sealed/opened inline (thread hop ~84 us)


def new_block_key() -> str:
    return "b/" + os.urandom(16).hex()


def quarantine_key(object_key: str) -> str:
    """Where fsck moves the damaged block *object_key* (``b/<hex>`` -> ``q/<hex>``)."""
    return QUARANTINE_PREFIX + object_key.removeprefix(BLOCK_PREFIX)


def new_metadata_key() -> str:
    return "m/" + os.urandom(16).hex()


async def _run(fn, *args, size: int):
    if size < _INLINE:
        return fn(*args)
    return await run_sync(fn, *args)


class ObjectStore:
    """Sealed objects on a backend.

    ``head`` is written with a compare-and-swap against the head last read or written
    here, after :attr:`head_guard` (the store lock's check, when a lock is held) has
    passed: a writer that lost the lock, or whose head was replaced behind its back,
    stops instead of forking the metadata (docs/format.md, §5a).
    """

    def __init__(self, backend: Backend, keys: KeyRing, block_size: int | None = None):
        self.backend = backend
        self.keys = keys
        #: Awaited before every head write; raises (LockLost) when writing is not allowed.
        self.head_guard: Callable[[], Awaitable[None]] | None = None
        #: The store's block size (from its superblock): a full block is sealed unpadded.
        self.block_size = block_size
        self._head_blob: bytes | None = None  # the head as last read or written here
        self._head_uncertain: list[bytes] = []  # head writes that failed without an answer

    # -- data blocks ----------------------------------------------------------
    def seal_block(self, object_key: str, data: bytes) -> bytes:
        return envelope.seal(self.keys.block_key(object_key), envelope.KIND_BLOCK, object_key,
                             data, full=self.block_size)

    def open_block(self, object_key: str, blob: bytes) -> bytes:
        return envelope.open_(self.keys.block_key(object_key), envelope.KIND_BLOCK, object_key,
                              blob)

    def open_verified_block(self, object_key: str, blob: bytes, digest: bytes | None) -> bytes:
        """Open a block and check its plaintext against *digest*, the keyed dedup hash the
        metadata recorded for it (CPU only: may run in a worker thread).

        A block re-sealed by someone who knows only its object key (a link holder with
        write access to the store) authenticates, but its hash does not match. An object
        without a recorded hash cannot be verified and is refused the same way (megafs
        records one for every object a block refers to)."""
        data = self.open_block(object_key, blob)
        if digest is None:
            raise CorruptObject(f"data block {object_key} has no recorded hash: it cannot"
                                " be verified")
        if not hmac.compare_digest(self.keys.dedup_hash(data), digest):
            raise CorruptObject(f"data block {object_key} does not match the hash recorded"
                                " for it (tampered: re-sealed with other contents)")
        return data

    def prepare_block(self, object_key: str, data: bytes) -> tuple[bytes, str | None, bytes]:
        """Seal a block for :meth:`put_prepared` (CPU only: may run in a worker thread):
        the sealed object, the backend's payload digest and the object's SHA-256."""
        blob = self.seal_block(object_key, data)
        digest = self.backend.payload_digest(blob)
        sha256 = bytes.fromhex(digest) if digest and len(digest) == 64 else \
            hashlib.sha256(blob).digest()
        return blob, digest, sha256

    async def put_prepared(self, object_key: str,
                           prepared: tuple[bytes, str | None, bytes]) -> tuple[int, bytes]:
        """Store a block sealed by :meth:`prepare_block`; return the stored size and the
        stored object's SHA-256 (what share manifests list)."""
        blob, digest, sha256 = prepared
        await self.backend.put(object_key, blob, digest=digest)
        return len(blob), sha256

    async def seal_packed(self, object_key: str, data: bytes) -> tuple[bytes, bytes]:
        """Seal a block for a pack: its envelope and the envelope's SHA-256."""
        blob, _digest, sha256 = await _run(self.prepare_block, object_key, data,
                                           size=len(data))
        return blob, sha256

    async def put_pack(self, pack: PackBuilder) -> int:
        """Store a pack (its envelopes and padding); return its stored size."""
        data = await _run(pack.build, size=pack.length)
        await self.backend.put(pack.key, data)
        return len(data)

    async def put_block(self, object_key: str, data: bytes) -> tuple[int, bytes]:
        """Seal and store one block; return the stored size and SHA-256."""
        prepared = await _run(self.prepare_block, object_key, data, size=len(data))
        return await self.put_prepared(object_key, prepared)

    async def get_envelope(self, object_key: str,
                           where: tuple[str, int, int] | None = None) -> bytes:
        """The sealed bytes of block *object_key*: the whole object, or for a block in a
        pack (*where* = (pack key, offset, length)) that range of the pack."""
        try:
            if where is None:
                return await self.backend.get(object_key)
            pack, offset, length = where
            blob = await self.backend.get_range(pack, offset, length)
        except NoSuchObject:
            place = object_key if where is None else f"{object_key} (pack {where[0]})"
            raise CorruptObject(f"data block {place} is missing from the store") from None
        if len(blob) != length:
            raise CorruptObject(f"data block {object_key} is cut short in pack {pack}")
        return blob

    async def get_block(self, object_key: str, digest: bytes | None,
                        where: tuple[str, int, int] | None = None) -> bytes:
        """Fetch, open and verify a block against its recorded keyed hash *digest*
        (:meth:`open_verified_block`); CorruptObject if anything is wrong. *where*:
        see :meth:`get_envelope`."""
        blob = await self.get_envelope(object_key, where)
        return await _run(self.open_verified_block, object_key, blob, digest, size=len(blob))

    # -- metadata -------------------------------------------------------------
    async def put_metadata(self, object_key: str, payload: bytes | list, *,
                           delta: bool = False) -> tuple[int, str]:
        """Seal and store a snapshot or delta; return its stored size and SHA-256 (hex),
        which the head that names it records."""
        kind = envelope.KIND_DELTA if delta else envelope.KIND_METADATA
        size = (sum(memoryview(p).nbytes for p in payload) if isinstance(payload, list)
                else len(payload))
        blob = await _run(partial(envelope.seal, coarse=True), self.keys.meta, kind,
                          object_key, payload, size=size)
        del payload  # a list of parts is empty now (see envelope.seal)
        await self.backend.put(object_key, blob)
        return len(blob), hashlib.sha256(blob).hexdigest()

    async def put_metadata_file(self, object_key: str, path: str) -> tuple[int, str]:
        """:meth:`put_metadata` of a snapshot whose payload is the file *path*, which is
        never read into memory whole (:func:`envelope.seal_file`)."""
        def seal() -> tuple[bytearray, str]:
            blob = envelope.seal_file(self.keys.meta, envelope.KIND_METADATA, object_key,
                                      path, coarse=True)
            return blob, hashlib.sha256(blob).hexdigest()

        blob, digest = await run_sync(seal)
        await self.backend.put(object_key, blob)
        return len(blob), digest

    async def get_metadata(self, object_key: str, *, delta: bool = False,
                           expect: tuple[int, str] | None = None) -> bytes:
        """A snapshot's or delta's payload; *expect* is the (size, SHA-256) its head
        records: any other object under that name is refused (damaged or swapped)."""
        kind = envelope.KIND_DELTA if delta else envelope.KIND_METADATA
        blob = await self._get_checked(object_key, kind, expect)
        return await _run(envelope.open_, self.keys.meta, kind, object_key, blob, size=len(blob))

    async def get_metadata_file(self, object_key: str, path: str, *,
                                expect: tuple[int, str] | None = None) -> int:
        """:meth:`get_metadata` of a snapshot, written to the new file *path* instead of
        returned (:func:`envelope.open_to_file`: the payload is never in memory whole);
        returns its length."""
        kind = envelope.KIND_METADATA
        blob = await self._get_checked(object_key, kind, expect)
        return await run_sync(envelope.open_to_file, self.keys.meta, kind, object_key, blob,
                              path)

    async def _get_checked(self, object_key: str, kind: int,
                           expect: tuple[int, str] | None) -> bytes:
        """The sealed object *object_key*, refused unless it has the (size, SHA-256)
        *expect* (when given) that its head records."""
        what = f"{envelope.KIND_NAMES[kind]} {object_key}"
        try:
            blob = await self.backend.get(object_key)
        except NoSuchObject:
            raise CorruptObject(f"{what} is missing from the store") from None
        if expect is not None and (len(blob), hashlib.sha256(blob).hexdigest()) != tuple(expect):
            raise CorruptObject(f"{what} does not match the size and SHA-256 its head records"
                                " (damaged or swapped)")
        return blob

    def seal_head(self, head: dict) -> tuple[bytes, str]:
        """The sealed ``head`` object for *head* and its hash (:func:`head_hash`: what
        the next head names as ``prev``). A format-2 head is sealed in an envelope of
        version 2, which a megafs that reads only format 1 refuses."""
        body = {k: v for k, v in head.items() if k != "hash"}
        version = 2 if body.get("format", 1) >= 2 else 1
        blob = envelope.seal(self.keys.meta, envelope.KIND_HEAD, HEAD_KEY,
                             json.dumps(body, sort_keys=True).encode(), version=version,
                             coarse=True)
        return blob, head_hash(body)

    async def write_head(self, head: dict, sealed: tuple[bytes, str] | None = None) -> str:
        """Replace ``head``; return its hash. *sealed* is :meth:`seal_head`'s result when
        the caller recorded the hash before writing. The lock is checked first
        (:attr:`head_guard`), and the head is swapped only if it is still the one last
        seen here (LockLost otherwise)."""
        blob, digest = sealed or self.seal_head(head)
        if self.head_guard is not None:
            await self.head_guard()
        if self._head_blob is None:
            await self.backend.put(HEAD_KEY, blob)
        else:
            await self._swap_head(blob)
        self._head_blob, self._head_uncertain = blob, []
        return digest

    async def _swap_head(self, blob: bytes) -> None:
        """Replace head if it is still the one last seen here, or the one a failed
        write (no answer) may have stored; LockLost when another writer replaced it."""
        for expected in (self._head_blob, *self._head_uncertain):
            try:
                await self.backend.replace_if(HEAD_KEY, blob, expected)
                return
            except ObjectChanged:
                continue
            except BaseException:
                self._head_uncertain = [*self._head_uncertain[-3:], blob]
                raise
        raise LockLost("the store's head was replaced by another writer: this writer stopped")

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
        self._head_blob = blob
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
