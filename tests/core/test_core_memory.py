"""Memory-lean structures for the scale goal (issue 18): the compact lookup counts and
the snapshot sealed from parts, whose plaintext stays byte-identical to before."""

from __future__ import annotations

import os
import random

import apsw
import pytest
import zstandard

from megafs.core.lookups import LookupCounts
from megafs.core.snapshot import _portable, portable_parts
from megafs.store import envelope


def test_lookup_counts_up_down_and_purge_at_zero():
    c = LookupCounts()
    assert c == {} and not c and len(c) == 0 and 5 not in c
    c.add(5)
    c.add(5)
    c.add(1)
    assert c[5] == 2 and c.get(1) == 1 and 5 in c and len(c) == 2
    assert c.pop(5) == 2 and 5 not in c and c.get(5, 0) == 0
    assert c.pop(5, None) is None
    with pytest.raises(KeyError):
        c.pop(5)
    with pytest.raises(KeyError):
        c[5]
    c[1] = 7
    assert c == {1: 7} and len(c) == 1
    with pytest.raises(ValueError):
        c[1] = 0


@pytest.mark.parametrize("ino", [0, 1, 1023, 1024, 5_000_000, LookupCounts.DENSE_LIMIT - 1,
                                 LookupCounts.DENSE_LIMIT, 2**40, 2**63 - 1])
def test_lookup_counts_sparse_and_huge_inodes(ino):
    c = LookupCounts()
    c.add(ino, 3)
    c.add(2)
    assert ino in c and c[ino] == 3 and len(c) == 2
    assert dict(c.items()) == {ino: 3, 2: 1} and set(c) == {ino, 2}
    c[ino] = c.get(ino) - 2
    assert c[ino] == 1
    assert c.pop(ino) == 1 and ino not in c and len(c) == 1
    assert len(c._dense) <= LookupCounts.DENSE_LIMIT


def test_lookup_counts_beyond_32_bits_and_against_a_dict():
    c = LookupCounts()
    c.add(9, 2**32 + 5)  # a count an array slot cannot hold: kept in the dict
    assert c[9] == 2**32 + 5
    c[9] = 3  # back into the array
    assert c[9] == 3 and len(c) == 1 and 9 not in c._sparse
    rng = random.Random(18)
    ref: dict[int, int] = {9: 3}
    for _ in range(5000):
        ino = rng.choice([rng.randrange(1, 3000), rng.randrange(2**27, 2**40)])
        if ino in ref and rng.random() < 0.5:
            left = ref[ino] - rng.randrange(1, 3)
            if left > 0:
                ref[ino] = c[ino] = left
            else:
                del ref[ino]
                c.pop(ino, None)
        else:
            ref[ino] = ref.get(ino, 0) + 1
            c.add(ino)
        assert (ino in c) == (ino in ref)
    assert c == ref and len(c) == len(ref)


def _wal_image(rows: int) -> bytes:
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mem-{os.getpid()}.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    with conn:
        conn.executemany("INSERT INTO t VALUES (?, ?)",
                         ((i, f"name-{i % 97}") for i in range(rows)))
    image = conn.serialize("main")
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    return image


@pytest.mark.parametrize("rows", [0, 10, 50_000])
def test_snapshot_sealed_from_parts_is_the_portable_image(rows):
    image = _wal_image(rows)
    assert image[18:20] == b"\x02\x02"
    parts = portable_parts(image)
    assert b"".join(parts) == _portable(image)  # byte-identical plaintext
    key = os.urandom(32)
    blob = envelope.seal(key, envelope.KIND_METADATA, "m/x", parts, coarse=True)
    assert parts == []  # emptied: the caller's reference no longer holds the image
    assert envelope.open_(key, envelope.KIND_METADATA, "m/x", blob) == _portable(image)
    old = envelope.seal(key, envelope.KIND_METADATA, "m/x", _portable(image), coarse=True)
    assert len(old) == len(blob)  # the same bucket size


def test_parts_frame_records_its_content_size():
    payload = b"megafs " * 100_000
    parts = [payload[:18], memoryview(payload)[18:]]
    key = os.urandom(32)
    blob = envelope.seal(key, envelope.KIND_METADATA, "m/y", parts)
    assert envelope.open_(key, envelope.KIND_METADATA, "m/y", blob) == payload
    inner = envelope.AESGCM(key).decrypt(blob[6:18], blob[envelope.HEADER.size:],
                                         blob[:6] + b"m/y")
    flags, length = envelope.INNER.unpack_from(inner)
    frame = inner[envelope.INNER.size:envelope.INNER.size + length]
    assert flags == envelope.FLAG_ZSTD
    assert zstandard.frame_content_size(frame) == len(payload)


def test_incompressible_parts_are_stored_plain():
    payload = os.urandom(300_000)
    key = os.urandom(32)
    blob = envelope.seal(key, envelope.KIND_METADATA, "m/z", [payload[:5], payload[5:]])
    assert envelope.open_(key, envelope.KIND_METADATA, "m/z", blob) == payload
