"""Passphrase -> key-encryption key, with Argon2id.

Parameters are stored in the superblock, so a store made with any parameters
can be opened. New stores get :data:`DEFAULT_PARAMS` (RFC 9106's second
recommended setting) unless ``MEGAFS_INSECURE_TEST_KDF=1`` is set, which picks
tiny parameters so that tests do not spend seconds per mount.

Derivations are serialized with a lock: two concurrent multi-lane Argon2id
derivations from two threads have been seen to hang (cryptography 50).
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

_lock = threading.Lock()


@dataclass(frozen=True)
class KdfParams:
    iterations: int
    memory_kib: int
    lanes: int

    def to_json(self) -> dict:
        return {"alg": "argon2id", **asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> KdfParams:
        if d.get("alg") != "argon2id":
            raise ValueError(f"unknown KDF {d.get('alg')!r}")
        return cls(int(d["iterations"]), int(d["memory_kib"]), int(d["lanes"]))


DEFAULT_PARAMS = KdfParams(iterations=3, memory_kib=64 * 1024, lanes=4)
TEST_PARAMS = KdfParams(iterations=1, memory_kib=64, lanes=1)


def default_params() -> KdfParams:
    if os.environ.get("MEGAFS_INSECURE_TEST_KDF") == "1":
        return TEST_PARAMS
    return DEFAULT_PARAMS


def derive(passphrase: bytes, salt: bytes, params: KdfParams) -> bytes:
    """Return a 32-byte key from *passphrase* (blocking; run it in a thread if needed)."""
    kdf = Argon2id(
        salt=salt,
        length=32,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_kib,
    )
    with _lock:
        return kdf.derive(passphrase)
