"""The superblock: the only object readable without a key (docs/format.md).

It is UTF-8 JSON stored under the object key ``superblock``. It holds the
Argon2id parameters and salt, the master key wrapped once by the passphrase
key and once by the recovery key, and an HMAC (keyed from the master key) over
every other field, so that nothing in it can be changed unnoticed by anyone
who does not hold the master key.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from megafs import FORMAT_VERSION
from megafs.crypto import kdf
from megafs.crypto.keys import DEDUP_ALGORITHMS, DEDUP_BLAKE3, DEDUP_HMAC, KeyRing, hkdf
from megafs.errors import CorruptObject, UnsupportedFormat, WrongPassphrase

OBJECT_KEY = "superblock"
#: Superblock formats this megafs reads: 2 added ``version`` (absent in 1: version 0).
READABLE_FORMATS = (1, 2, 3)
LABEL_RECOVERY = b"megafs v1 recovery"

#: Bounds of what a superblock may hold, checked before Argon2id runs: a provider's
#: edit must fail at once, not exhaust memory or spin for hours (docs/format.md §3).
MAX_KDF_ITERATIONS = 16
MAX_KDF_MEMORY_KIB = 4 << 20  # 4 GiB
MAX_KDF_LANES = 64
MAX_KDF_WORK_KIB = 8 << 20  # iterations x memory: 8 GiB passes (RFC 9106's first: 2 GiB)
SALT_BYTES = (16, 64)
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 64 << 10, 64 << 20
#: Largest quota, in bytes: 1 EiB, far below what statfs's 64-bit counters overflow at.
MAX_QUOTA = 1 << 60


def _wrap_aad(store_id: bytes, slot: str) -> bytes:
    return b"megafs superblock v1|" + store_id + b"|" + slot.encode()


def _canonical(sb: dict) -> bytes:
    body = {k: v for k, v in sb.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def format_recovery_key(raw: bytes) -> str:
    text = base64.b32encode(raw).decode().rstrip("=")
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def parse_recovery_key(text: str) -> bytes:
    clean = "".join(c for c in text.upper() if c.isalnum())
    try:
        raw = base64.b32decode(clean + "=" * (-len(clean) % 8))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise WrongPassphrase("that is not a megafs recovery key")
    return raw


def _slot(kek: bytes, master: bytes, store_id: bytes, name: str) -> dict:
    nonce = os.urandom(12)
    wrapped = AESGCM(kek).encrypt(nonce, master, _wrap_aad(store_id, name))
    return {"nonce": nonce.hex(), "wrapped": wrapped.hex()}


def _unwrap(kek: bytes, slot: dict, store_id: bytes, name: str) -> bytes:
    try:
        return AESGCM(kek).decrypt(bytes.fromhex(slot["nonce"]), bytes.fromhex(slot["wrapped"]),
                                   _wrap_aad(store_id, name))
    except InvalidTag:
        if name == "recovery":
            raise WrongPassphrase("wrong recovery key (or the superblock's recovery slot was"
                                  " changed)") from None
        # The KEK depends on the passphrase, salt and KDF parameters alike: without the
        # master key a changed salt, parameter or slot looks exactly like a wrong
        # passphrase (docs/format.md §3).
        raise WrongPassphrase("wrong passphrase (or the superblock's key parameters were"
                              " changed)") from None


def create(passphrase: bytes, block_size: int,
           quota: int | None = None) -> tuple[bytes, KeyRing, str]:
    """Make a new superblock; return (serialized, keyring, printable recovery key)."""
    store_id = os.urandom(16)
    master = os.urandom(32)
    recovery = os.urandom(32)
    salt = os.urandom(16)
    params = kdf.default_params()
    kek = kdf.derive(passphrase, salt, params)
    sb = {
        "magic": "megafs",
        "format": FORMAT_VERSION,
        "store_id": store_id.hex(),
        "created": int(time.time()),
        "block_size": block_size,
        "quota": quota,
        "version": 0,
        "dedup": DEDUP_BLAKE3,
        "kdf": {**params.to_json(), "salt": salt.hex()},
        "slots": {
            "passphrase": _slot(kek, master, store_id, "passphrase"),
            "recovery": _slot(hkdf(recovery, store_id, LABEL_RECOVERY), master, store_id,
                              "recovery"),
        },
    }
    keys = KeyRing(master, store_id, DEDUP_BLAKE3)
    sb["mac"] = hmac.digest(keys.sb_mac, _canonical(sb), "sha256").hex()
    return json.dumps(sb, indent=1).encode(), keys, format_recovery_key(recovery)


def parse(blob: bytes) -> dict:
    """Parse without a key; check magic and version."""
    try:
        sb = json.loads(blob)
        magic, version = sb["magic"], sb["format"]
    except (ValueError, KeyError, TypeError):
        raise CorruptObject("the superblock is damaged (not megafs JSON)") from None
    if magic != "megafs":
        raise CorruptObject("the superblock is not a megafs superblock")
    if version not in READABLE_FORMATS:
        raise UnsupportedFormat(
            f"the store has format version {version}; this megafs reads versions"
            f" {' and '.join(map(str, READABLE_FORMATS))}"
        )
    _check_fields(sb)
    return sb


def version(sb: dict) -> int:
    """The superblock's version: raised by every rewrite (passphrase, quota) and recorded
    in each head, so that an older superblock put back is refused. Absent: 0."""
    return sb.get("version", 0)


def verified_version(blob: bytes, keys: KeyRing) -> int | None:
    """The version of the superblock *blob* if its MAC verifies under *keys*, else None
    (a running mount uses it to record a superblock rewritten meanwhile)."""
    try:
        sb = json.loads(blob)
        ok = hmac.compare_digest(bytes.fromhex(sb["mac"]),
                                 hmac.digest(keys.sb_mac, _canonical(sb), "sha256"))
        number = version(sb)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return number if ok and _valid_version(number) else None


def _valid_version(number) -> bool:
    return isinstance(number, int) and not isinstance(number, bool) and number >= 0


def _rewritten(sb: dict, keys: KeyRing, **changes) -> bytes:
    """*sb* with *changes*, the next version and a new MAC, serialized."""
    sb = dict(sb, **changes, format=FORMAT_VERSION, version=version(sb) + 1)
    sb["mac"] = hmac.digest(keys.sb_mac, _canonical(sb), "sha256").hex()
    return json.dumps(sb, indent=1).encode()
def _hex(value, nbytes: tuple[int, int] | int, what: str) -> bytes:
    lo, hi = (nbytes, nbytes) if isinstance(nbytes, int) else nbytes
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raw = None
    if raw is None or not lo <= len(raw) <= hi:
        raise CorruptObject(f"the superblock is damaged or tampered with ({what} is not"
                            f" {lo}{'' if lo == hi else f'..{hi}'} bytes of hex)")
    return raw


def _int(d: dict, name: str, lo: int, hi: int, what: str) -> int:
    value = d.get(name)
    if type(value) is not int or not lo <= value <= hi:
        raise CorruptObject(f"the superblock is damaged or tampered with ({what} {value!r}"
                            f" is not a whole number in {lo}..{hi})")
    return value


def _check_fields(sb: dict) -> None:
    """Types and bounds of every field, before any key derivation: CorruptObject (15)."""
    if not isinstance(sb, dict):
        raise CorruptObject("the superblock is damaged (not a JSON object)")
    _hex(sb.get("store_id"), 16, "store_id")
    _hex(sb.get("mac"), 32, "mac")
    _int(sb, "block_size", MIN_BLOCK_SIZE, MAX_BLOCK_SIZE, "block_size")
    if sb.get("quota") is not None:
        _int(sb, "quota", 1, MAX_QUOTA, "quota")
    k = sb.get("kdf")
    if not isinstance(k, dict) or k.get("alg") != "argon2id":
        alg = k.get("alg") if isinstance(k, dict) else k
        raise CorruptObject(f"the superblock is damaged or tampered with (unknown KDF {alg!r})")
    lanes = _int(k, "lanes", 1, MAX_KDF_LANES, "kdf lanes")
    iterations = _int(k, "iterations", 1, MAX_KDF_ITERATIONS, "kdf iterations")
    memory = _int(k, "memory_kib", 8 * lanes, MAX_KDF_MEMORY_KIB, "kdf memory_kib")
    if iterations * memory > MAX_KDF_WORK_KIB:
        raise CorruptObject("the superblock is damaged or tampered with (kdf iterations x"
                            " memory is beyond any setting megafs writes)")
    _hex(k.get("salt"), SALT_BYTES, "kdf salt")
    slots = sb.get("slots")
    for name in ("passphrase", "recovery"):
        slot = slots.get(name) if isinstance(slots, dict) else None
        if not isinstance(slot, dict):
            raise CorruptObject(f"the superblock is damaged or tampered with (no {name} slot)")
        _hex(slot.get("nonce"), 12, f"{name} slot nonce")
        _hex(slot.get("wrapped"), 48, f"{name} slot key")


def unlock(sb: dict, *, passphrase: bytes | None = None,
           recovery_key: bytes | None = None) -> KeyRing:
    """Unwrap the master key and verify the superblock's MAC; blocking (Argon2id)."""
    dedup = sb.get("dedup", DEDUP_HMAC)
    known = dedup in DEDUP_ALGORITHMS
    try:
        store_id = bytes.fromhex(sb["store_id"])
        if recovery_key is not None:
            kek = hkdf(recovery_key, store_id, LABEL_RECOVERY)
            master = _unwrap(kek, sb["slots"]["recovery"], store_id, "recovery")
        else:
            params = kdf.KdfParams.from_json(sb["kdf"])
            kek = kdf.derive(passphrase, bytes.fromhex(sb["kdf"]["salt"]), params)
            master = _unwrap(kek, sb["slots"]["passphrase"], store_id, "passphrase")
        keys = KeyRing(master, store_id, dedup if known else DEDUP_HMAC)
        ok = hmac.compare_digest(bytes.fromhex(sb["mac"]),
                                 hmac.digest(keys.sb_mac, _canonical(sb), "sha256"))
    except (KeyError, ValueError, TypeError):
        raise CorruptObject("the superblock is damaged (missing or malformed fields)") from None
    if not ok:
        raise CorruptObject("the superblock failed authentication (tampered)")
    if not _valid_version(version(sb)):
        raise CorruptObject("the superblock is damaged (malformed version)")
    if not known:  # checked after the MAC: a provider's edit is tampering, not a new version
        raise UnsupportedFormat(f"the store deduplicates with {dedup!r}, which this megafs"
                                " does not know; a newer megafs made it")
    return keys


def set_quota(sb: dict, keys: KeyRing, quota: int | None) -> bytes:
    """A new superblock with another quota (bytes stored, None: unlimited)."""
    return _rewritten(sb, keys, quota=quota)


def rewrap_passphrase(sb: dict, keys: KeyRing, new_passphrase: bytes) -> bytes:
    """A new superblock whose passphrase slot opens with *new_passphrase*; data untouched."""
    salt = os.urandom(16)
    params = kdf.default_params()
    slots = dict(sb["slots"], passphrase=_slot(kdf.derive(new_passphrase, salt, params),
                                                keys.master, keys.store_id, "passphrase"))
    return _rewritten(sb, keys, kdf={**params.to_json(), "salt": salt.hex()}, slots=slots)
