"""Pack objects: sealed data blocks concatenated into objects of uniform sizes.

A pack (``p/<32 hex>``, docs/format.md §4a) is the concatenation of block envelopes,
each exactly as a one-block object would be (sealed under the block's own key
``K_obj = HMAC(K_blockbase, block id)`` with the block id ``b/<32 hex>`` in its
AAD), followed by random padding up to a whole number of :data:`PACK_UNIT` plus
:data:`PACK_SLACK`. The
metadata maps each block id to (pack, offset, length); the pack itself holds no
index, so its size is all a listing of the store shows.
"""

from __future__ import annotations

import os

PACK_PREFIX = "p/"
#: Every pack's size is a whole multiple of this (1 MiB) plus :data:`PACK_SLACK`: a pack
#: holding one 1-byte block is a 1 MiB + 64 KiB object, as is one holding 900 KiB.
PACK_UNIT = 1 << 20
#: Room for the envelopes' own bytes (75 each: header, inner header, tag): 16 full
#: 1 MiB blocks fill 16 MiB + 1,200 bytes, and 256 full 64 KiB blocks 16 MiB + 19,200.
#: Packs written before this was added are whole MiB; readers take either.
PACK_SLACK = 64 << 10
#: The uploader closes a pack before its envelopes would grow past this (unless a single
#: block is larger): 16 full blocks of 1 MiB, so a pack of them wastes 0.4 % on padding
#: (6.7 % when full blocks were Padme-padded and packs whole MiB: 15 fitted).
PACK_TARGET = (16 << 20) + PACK_SLACK


def new_pack_key() -> str:
    return PACK_PREFIX + os.urandom(16).hex()


def is_pack(key: str) -> bool:
    return key.startswith(PACK_PREFIX)


def padded_size(length: int) -> int:
    """The size of a pack holding *length* bytes of envelopes: n MiB + PACK_SLACK."""
    return max(PACK_UNIT, -(-(length - PACK_SLACK) // PACK_UNIT) * PACK_UNIT) + PACK_SLACK


class PackBuilder:
    """Block envelopes gathered for one pack: :meth:`add` returns each one's offset,
    :meth:`build` the pack's bytes (envelopes, then random padding)."""

    def __init__(self):
        self.key = new_pack_key()
        self.parts: list[bytes] = []
        self.length = 0

    def add(self, blob: bytes) -> int:
        offset = self.length
        self.parts.append(blob)
        self.length += len(blob)
        return offset

    def fits(self, size: int) -> bool:
        """Whether an envelope of *size* bytes still goes into this pack."""
        return not self.parts or self.length + size <= PACK_TARGET

    def build(self) -> bytes:
        pad = padded_size(self.length) - self.length
        return b"".join((*self.parts, os.urandom(pad)))
