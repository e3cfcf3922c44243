"""The object envelope: how every encrypted object is laid out byte by byte.

::

    offset  size  field
    0       4     magic  b"MGFS"
    4       1     format version (1; 2 for a format-2 ``head``)
    5       1     kind (see KIND_*)
    6       12    nonce, random
    18      32    key commitment = HMAC-SHA256(key, b"megafs commit v1" || nonce)
    50      n+16  AES-256-GCM(key, nonce, inner, aad) ciphertext and tag

    aad   = bytes 0..5 of the header || object key (UTF-8)
    inner = flags (1 byte, bit 0: zstd) || payload length (8 bytes, little endian)
            || payload || zero padding up to the Padme length

Binding the object key and kind into the AAD makes a renamed, swapped or
re-kinded object fail authentication. The commitment makes the ciphertext open
under exactly one key (AES-GCM alone is not key-committing).
"""

from __future__ import annotations

import hmac
import os
import struct
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from megafs.errors import CorruptObject, UnsupportedFormat

MAGIC = b"MGFS"
VERSION = 1
#: Envelope versions this megafs opens: 2 marks a format-2 head (chained, see
#: docs/format.md §5), which a megafs that reads only version 1 refuses clearly.
VERSIONS = (1, 2)
KIND_BLOCK = 1
KIND_METADATA = 2
KIND_HEAD = 3
KIND_LOCK = 4
KIND_DELTA = 5
KIND_SHARE = 6
KIND_FOLLOWER = 7
KIND_TAKEOVER = 8
KIND_NAMES = {KIND_BLOCK: "data block", KIND_METADATA: "metadata", KIND_HEAD: "head",
              KIND_LOCK: "lock", KIND_DELTA: "metadata delta", KIND_SHARE: "share manifest",
              KIND_FOLLOWER: "follower announcement", KIND_TAKEOVER: "take-over request"}

HEADER = struct.Struct("<4sBB12s32s")
INNER = struct.Struct("<BQ")
FLAG_ZSTD = 1
OVERHEAD = HEADER.size + INNER.size + 16
_COMMIT_LABEL = b"megafs commit v1"
_SAMPLE_FROM = 256 * 1024  # payloads this large are tried on a sample before zstd
_SAMPLE_PIECES, _SAMPLE_PIECE = 8, 4096

# zstandard contexts are not thread-safe and sealing runs in worker threads:
# one compressor and decompressor per thread.
_local = threading.local()


def _zstd() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
    try:
        return _local.ctx
    except AttributeError:
        _local.ctx = (zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor())
        return _local.ctx


def padme(length: int) -> int:
    """Padme padding: leaks O(log log L) bits of the length, costs at most ~12%."""
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


#: Smallest padded size of a metadata object (:func:`bucket`).
BUCKET_MIN = 16 * 1024
_MiB = 1 << 20


def bucket(length: int) -> int:
    """Coarse padding for metadata (snapshots, deltas, head): at least 16 KiB, then the
    next power of two up to 1 MiB, then whole MiB. A delta of one changed row and one of
    a hundred have the same size; the size tells the order of magnitude only."""
    if length <= BUCKET_MIN:
        return BUCKET_MIN
    if length <= _MiB:
        return 1 << (length - 1).bit_length()
    return -(-length // _MiB) * _MiB


def _compressible(payload) -> bool:
    """Whether zstd is worth trying on a large payload: a sample of 8 pieces of 4 KiB
    spread over it shrinks by 3 %. Costs ~3 % of compressing it all, which for
    incompressible data (media, archives, encrypted files) is otherwise wasted."""
    step = len(payload) // _SAMPLE_PIECES
    view = memoryview(payload)
    sample = b"".join(view[i * step:i * step + _SAMPLE_PIECE] for i in range(_SAMPLE_PIECES))
    return len(_zstd()[0].compress(sample)) < len(sample) * 0.97


_PIECE = 1 << 20  # parts are compressed this much at a time


def _compress_parts(parts, total: int) -> bytearray:
    """INNER.size placeholder bytes, then the zstd frame of the concatenated *parts*
    (content size recorded, as a one-shot compress does), grown in place: no copy of
    the payload and no second copy of the compressed data."""
    out = bytearray(INNER.size)
    cobj = _zstd()[0].compressobj(size=total)
    for part in parts:
        view = memoryview(part).cast("B")
        for i in range(0, len(view), _PIECE):
            out += cobj.compress(view[i:i + _PIECE])
    out += cobj.flush()
    return out


def seal(key: bytes, kind: int, object_key: str, payload, *,
         compress: bool = True, version: int = VERSION, coarse: bool = False) -> bytes:
    """Return the envelope of *payload* for storage under *object_key*; with *coarse*
    the whole envelope is padded to a :func:`bucket` size instead of Padme.

    *payload* is bytes-like, or a list of bytes-like parts whose concatenation is the
    payload (sealed without joining them). A list is emptied once its parts are no
    longer needed, so that the caller's copy of a large payload (a metadata snapshot)
    is freed before the encryption makes another."""
    parts = payload if isinstance(payload, list) else [payload]
    del payload
    total = sum(memoryview(p).nbytes for p in parts)
    flags = 0
    inner = None
    if compress and total >= 64 and (total < _SAMPLE_FROM
                                      or _compressible(max(parts, key=len))):
        if len(parts) == 1:
            packed = _zstd()[0].compress(parts[0])
            if len(packed) < total * 0.97:
                inner = bytearray(INNER.size)
                inner += packed
            del packed
        else:
            inner = _compress_parts(parts, total)
            if len(inner) - INNER.size >= total * 0.97:
                inner = None
        if inner is not None:
            flags = FLAG_ZSTD
    if inner is None:
        inner = bytearray(INNER.size)
        for part in parts:
            inner += part
    parts.clear()  # the caller's list: its parts are in *inner* now
    length = len(inner) - INNER.size
    body_len = INNER.size + length
    if coarse:
        pad = max(0, bucket(body_len + HEADER.size + 16) - HEADER.size - 16 - body_len)
    else:
        pad = padme(body_len) - body_len
    INNER.pack_into(inner, 0, flags, length)
    inner += bytes(pad)
    nonce = os.urandom(12)
    commit = hmac.digest(key, _COMMIT_LABEL + nonce, "sha256")
    header = HEADER.pack(MAGIC, version, kind, nonce, commit)
    aad = header[:6] + object_key.encode()
    sealed = AESGCM(key).encrypt(nonce, inner, aad)
    del inner
    return header + sealed


def open_(key: bytes, kind: int, object_key: str, blob: bytes) -> bytes:
    """Verify and decrypt an envelope; raise CorruptObject on any mismatch."""
    what = f"{KIND_NAMES.get(kind, 'object')} {object_key}"
    if len(blob) < OVERHEAD or blob[:4] != MAGIC:
        raise CorruptObject(f"{what} is damaged (not a megafs object)")
    magic, version, got_kind, nonce, commit = HEADER.unpack_from(blob)
    if version not in VERSIONS:
        raise UnsupportedFormat(f"{what} has format version {version}; this megafs reads"
                                f" {' and '.join(map(str, VERSIONS))}")
    if got_kind != kind:
        raise CorruptObject(f"{what} failed authentication (wrong object kind)")
    if not hmac.compare_digest(commit, hmac.digest(key, _COMMIT_LABEL + nonce, "sha256")):
        raise CorruptObject(f"{what} failed authentication (key commitment)")
    aad = blob[:6] + object_key.encode()
    try:
        inner = AESGCM(key).decrypt(nonce, memoryview(blob)[HEADER.size:], aad)  # no copy
    except InvalidTag:
        raise CorruptObject(f"{what} failed authentication (tampered or damaged)") from None
    flags, length = INNER.unpack_from(inner)
    payload = inner[INNER.size:INNER.size + length]
    if flags & FLAG_ZSTD:
        payload = _zstd()[1].decompress(payload)
    return payload
