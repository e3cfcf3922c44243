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
import tempfile
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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
         compress: bool = True, version: int = VERSION, coarse: bool = False,
         full: int | None = None) -> bytes:
    """Return the envelope of *payload* for storage under *object_key*; with *coarse*
    the whole envelope is padded to a :func:`bucket` size instead of Padme. *full* (a
    data block: the store's block size) caps Padme: a payload is never padded past a
    full block's, so a full block is not padded at all (Padme would add 3 % to 1 MiB).

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
    pad = _padding(body_len, coarse, None if full is None else INNER.size + full)
    INNER.pack_into(inner, 0, flags, length)
    inner += bytes(pad)
    nonce = os.urandom(12)
    commit = hmac.digest(key, _COMMIT_LABEL + nonce, "sha256")
    header = HEADER.pack(MAGIC, version, kind, nonce, commit)
    aad = header[:6] + object_key.encode()
    sealed = AESGCM(key).encrypt(nonce, inner, aad)
    del inner
    return header + sealed


def _padding(body_len: int, coarse: bool, cap: int | None = None) -> int:
    """Zero bytes after the inner header and payload (*body_len* bytes); Padme's never
    take the body past *cap* (when it is not past it already)."""
    if coarse:
        return max(0, bucket(body_len + HEADER.size + 16) - HEADER.size - 16 - body_len)
    padded = padme(body_len)
    if cap is not None:
        padded = min(padded, max(cap, body_len))
    return padded - body_len


def _read_pieces(f, start: int = 0):
    """The contents of the open file *f* from offset *start*, in views of one reused
    _PIECE-byte buffer (each valid until the next is taken)."""
    f.seek(start)
    buf = bytearray(_PIECE)
    view = memoryview(buf)
    while n := f.readinto(buf):
        yield view[:n]


def _sample_compressible(f, total: int) -> bool:
    """:func:`_compressible` of the payload in the open file *f* (*total* bytes), reading
    only the sample."""
    step = total // _SAMPLE_PIECES
    sample = b"".join(os.pread(f.fileno(), _SAMPLE_PIECE, i * step)
                      for i in range(_SAMPLE_PIECES))
    return len(_zstd()[0].compress(sample)) < len(sample) * 0.97


def encrypt_into(out, offset: int, key: bytes, nonce: bytes, aad: bytes, pieces) -> int:
    """AES-256-GCM of the concatenated *pieces* (bytes-like) written into *out* from
    *offset*, ciphertext then the 16-byte tag: the bytes ``AESGCM(key).encrypt(nonce,
    b"".join(pieces), aad)`` returns, without holding the plaintext or the ciphertext
    twice. Returns the offset after the tag."""
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    view = memoryview(out)
    for piece in pieces:
        n = enc.update_into(piece, view[offset:])
        if n != len(piece):  # GCM is a stream mode: all of it, at once
            raise AssertionError("AES-GCM held back ciphertext")
        offset += n
    if enc.finalize():
        raise AssertionError("AES-GCM gave ciphertext at finalize")
    view[offset:offset + 16] = enc.tag
    return offset + 16


def seal_file(key: bytes, kind: int, object_key: str, path: str, *,
              version: int = VERSION, coarse: bool = False) -> bytearray:
    """:func:`seal` of the contents of the file *path*, holding only the envelope in
    memory: the payload is read a piece at a time, compressed (when :func:`seal` would)
    into an unnamed temporary file beside it, then encrypted piece by piece into the
    envelope's buffer. The envelope opens exactly as :func:`seal`'s (same layout, flags,
    padding); the zstd frame is the one :func:`seal` makes of a list of parts."""
    with open(path, "rb") as f:
        total = os.fstat(f.fileno()).st_size
        flags = 0
        spool = None
        try:
            if total >= 64 and (total < _SAMPLE_FROM or _sample_compressible(f, total)):
                spool = tempfile.TemporaryFile(dir=os.path.dirname(path) or ".")
                cobj = _zstd()[0].compressobj(size=total)
                for piece in _read_pieces(f):
                    spool.write(cobj.compress(piece))
                spool.write(cobj.flush())
                if spool.tell() < total * 0.97:
                    flags = FLAG_ZSTD
            source = spool if flags else f
            length = source.seek(0, os.SEEK_END)
            body_len = INNER.size + length
            pad = _padding(body_len, coarse)
            nonce = os.urandom(12)
            header = HEADER.pack(MAGIC, version, kind, nonce,
                                 hmac.digest(key, _COMMIT_LABEL + nonce, "sha256"))
            out = bytearray(HEADER.size + body_len + pad + 16)
            out[:HEADER.size] = header
            zeros = bytes(max(1, min(pad, _PIECE)))

            def plaintext():
                yield INNER.pack(flags, length)
                yield from _read_pieces(source)
                for i in range(0, pad, len(zeros)):
                    yield memoryview(zeros)[:min(len(zeros), pad - i)]

            end = encrypt_into(out, HEADER.size, key, nonce, header[:6] + object_key.encode(),
                               plaintext())
        finally:
            if spool is not None:
                spool.close()
    if end != len(out):
        raise AssertionError("envelope length mismatch")
    return out


def _check_header(key: bytes, kind: int, object_key: str, blob) -> tuple[str, bytes]:
    """The checks of an envelope before its tag (length, magic, version, kind, key
    commitment): raise CorruptObject or UnsupportedFormat, else return the object's
    name for messages and the nonce."""
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
    return what, nonce


def open_to_file(key: bytes, kind: int, object_key: str, blob, path: str) -> int:
    """:func:`open_` that writes the payload to the new file *path* (mode 0600) instead
    of returning it, never holding the plaintext in memory whole; returns the payload's
    length. The ciphertext is decrypted into an unnamed temporary file beside *path*;
    only once its tag authenticates it is the payload decompressed (or copied) from
    there into *path*. On any failure *path* is not created."""
    what, nonce = _check_header(key, kind, object_key, blob)
    view = memoryview(blob)
    dec = Cipher(algorithms.AES(key), modes.GCM(nonce, bytes(view[-16:]))).decryptor()
    dec.authenticate_additional_data(bytes(view[:6]) + object_key.encode())
    ciphertext = view[HEADER.size:-16]
    with tempfile.TemporaryFile(dir=os.path.dirname(path) or ".") as spool:
        buf = bytearray(_PIECE)
        for i in range(0, len(ciphertext), _PIECE):
            n = dec.update_into(ciphertext[i:i + _PIECE], buf)
            spool.write(memoryview(buf)[:n])
        try:
            dec.finalize()
        except InvalidTag:
            raise CorruptObject(f"{what} failed authentication (tampered or damaged)") from None
        # Authenticated: from here on the bytes are the writer's.
        spool.seek(0)
        flags, length = INNER.unpack(spool.read(INNER.size))
        spool.truncate(INNER.size + length)  # the payload ends the spool (no padding)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with open(fd, "wb") as out:
                if flags & FLAG_ZSTD:
                    _, written = _zstd()[1].copy_stream(spool, out)
                else:
                    while n := spool.readinto(buf):
                        out.write(memoryview(buf)[:n])
                    written = out.tell()
        except BaseException:
            os.unlink(path)
            raise
    return written


def open_(key: bytes, kind: int, object_key: str, blob: bytes) -> bytes:
    """Verify and decrypt an envelope; raise CorruptObject on any mismatch."""
    what, nonce = _check_header(key, kind, object_key, blob)
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
