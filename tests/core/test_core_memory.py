"""Memory-lean structures for the scale goal (issue 18): the compact lookup counts, the
snapshot sealed from parts, whose plaintext stays byte-identical to before, and the
full snapshot copied to a file and sealed from it (never in memory whole)."""

from __future__ import annotations

import hashlib
import itertools
import os
import random

import apsw
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from megafs.backends.local import LocalBackend
from megafs.core import schema, snapshot
from megafs.core.blockmap import BlockMap
from megafs.core.lookups import LookupCounts
from megafs.core.snapshot import _portable, portable_parts
from megafs.crypto.keys import KeyRing
from megafs.store import envelope
from megafs.store.objects import ObjectStore


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


@pytest.mark.parametrize("sizes", [[], [0], [1], [15, 17, 0, 1], [4096, 100_000, 3],
                                   [(1 << 20) + 5, 7]])
def test_streamed_gcm_is_aesgcm_encrypt(sizes):
    key, nonce, aad = os.urandom(32), os.urandom(12), b"MGFS\x01\x02m/abc"
    pieces = [os.urandom(n) for n in sizes]
    plain = b"".join(pieces)
    out = bytearray(b"\xee" * 7 + bytes(len(plain) + 16) + b"\xdd" * 3)
    end = envelope.encrypt_into(out, 7, key, nonce, aad, iter(pieces))
    assert end == 7 + len(plain) + 16
    assert bytes(out[7:end]) == AESGCM(key).encrypt(nonce, plain, aad)
    assert out[:7] == b"\xee" * 7 and out[end:] == b"\xdd" * 3  # nothing else written


def _fixed_nonces(monkeypatch):
    counter = itertools.count()
    monkeypatch.setattr(envelope.os, "urandom",
                        lambda n: hashlib.sha256(b"%d" % next(counter)).digest()[:n])


@pytest.mark.parametrize("kind", ["empty", "tiny", "text", "text-big", "random", "random-big",
                                  "half"])
@pytest.mark.parametrize("coarse", [True, False])
def test_sealed_file_is_the_envelope_seal_makes(tmp_path, monkeypatch, kind, coarse):
    rng = random.Random(kind)
    payload = {
        "empty": b"", "tiny": b"x" * 40, "text": b"megafs names " * 5000,
        "text-big": b"".join(b"row %d name-%d;" % (i, rng.randrange(999))
                             for i in range(250_000)),
        "random": os.urandom(100_000), "random-big": os.urandom(3 << 20),
        # compressible sample, but the whole shrinks less than 3 %: stored plain
        "half": b"".join((bytes(4096) if i % 64 == 0 else os.urandom(4096))
                         for i in range(600)),
    }[kind]
    path = tmp_path / "image"
    path.write_bytes(payload)
    key = os.urandom(32)
    _fixed_nonces(monkeypatch)
    blob = envelope.seal_file(key, envelope.KIND_METADATA, "m/f", str(path), coarse=coarse)
    _fixed_nonces(monkeypatch)
    # the same payload as parts (compressed the way a list of parts is): the same bytes
    expected = envelope.seal(key, envelope.KIND_METADATA, "m/f", [payload, b""],
                             coarse=coarse)
    assert bytes(blob) == expected
    assert envelope.open_(key, envelope.KIND_METADATA, "m/f", bytes(blob)) == payload
    if coarse:
        assert len(blob) == envelope.bucket(len(blob))
    assert os.listdir(tmp_path) == ["image"]  # the compressed spool is gone


def _database(path: str, rows: int) -> apsw.Connection:
    conn = schema.connect(path)
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    with conn:
        conn.executemany(
            "INSERT INTO inodes (id, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns)"
            " VALUES (?, 33188, 0, 0, 0, 1, 1, 1, 1)", ((i,) for i in range(2, rows + 2)))
        conn.executemany("INSERT INTO dentries (parent, name, inode) VALUES (1, ?, ?)",
                         ((f"file-{i:07d}".encode(), i) for i in range(2, rows + 2)))
    return conn


#: Header fields of an SQLite database a backup copy gets from SQLite itself, not from
#: the source: the file change counter, the schema cookie, version-valid-for.
_COPY_SETS = [*range(24, 28), *range(40, 44), *range(92, 96)]


@pytest.mark.parametrize("rows", [0, 30_000])
def test_captured_image_is_the_state_at_capture(tmp_path, rows):
    conn = _database(str(tmp_path / "meta.db"), rows)
    schema.commit_batch(conn)
    conn.execute("UPDATE inodes SET uid=7 WHERE id=1")
    schema.commit_batch(conn)
    reader = snapshot.begin_capture(conn.filename)
    image = _portable(conn.serialize("main"))
    # committed after the capture: not in the copy
    conn.execute("UPDATE inodes SET uid=8 WHERE id=1")
    conn.execute("DELETE FROM dentries WHERE inode > 100")
    schema.commit_batch(conn)
    conn.execute("INSERT INTO xattrs VALUES (1, x'01', x'02')")  # uncommitted
    copy = str(tmp_path / "image")
    snapshot.capture_image(reader, copy)
    reader.close()
    assert os.stat(copy).st_mode & 0o777 == 0o600
    with open(copy, "rb") as f:
        data = f.read()
    assert len(data) == len(image) and data[18:20] == b"\x01\x01"
    assert {i for i in range(100) if data[i] != image[i]} <= set(_COPY_SETS)
    assert data[100:] == image[100:]  # every page as serialize gives it
    opened = apsw.Connection(":memory:")
    opened.deserialize("main", data)
    assert opened.execute("SELECT uid FROM inodes WHERE id=1").fetchone()[0] == 7
    assert opened.execute("SELECT count(*) FROM dentries").fetchone()[0] == rows
    assert opened.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_full_snapshot_holds_the_captured_state_only(tmp_path, monkeypatch):
    store = ObjectStore(LocalBackend(str(tmp_path / "store")), KeyRing(os.urandom(32), b"s" * 16))
    path = str(tmp_path / "meta.db")
    conn = _database(path, 5000)
    snap = snapshot.Snapshotter(conn, store, BlockMap(conn))
    assert snap.image_path == path + snapshot.IMAGE_SUFFIX
    real = snapshot.capture_image
    seen = []

    def capture_while_writing(reader, image_path):
        # the filesystem goes on while the image is copied (the trio thread waits here,
        # so the connection is free): a later state, which the next upload ships
        conn.execute("UPDATE inodes SET uid=99 WHERE id=1")
        conn.execute("DELETE FROM dentries WHERE inode=17")
        schema.commit_batch(conn)
        real(reader, image_path)
        seen.append(os.path.exists(image_path))

    monkeypatch.setattr(snapshot, "capture_image", capture_while_writing)
    await snap.upload(full=True)
    assert seen == [True] and not os.path.exists(snap.image_path)
    head = await store.read_head()
    assert head["deltas"] == []
    first = await snapshot.load(store, head)
    assert first.execute("SELECT uid FROM inodes WHERE id=1").fetchone()[0] == 0
    assert first.execute("SELECT count(*) FROM dentries").fetchone()[0] == 5000
    assert snapshot.get_state(first, "chain_seq") == head["seq"]
    assert snap.changed()  # the writes during the copy wait for the next upload
    monkeypatch.setattr(snapshot, "capture_image", real)
    await snap.upload()
    head = await store.read_head()
    assert len(head["deltas"]) == 1
    now = await snapshot.load(store, head)
    assert now.execute("SELECT uid FROM inodes WHERE id=1").fetchone()[0] == 99
    assert now.execute("SELECT count(*) FROM dentries").fetchone()[0] == 4999


async def test_failed_full_upload_removes_the_image_and_keeps_the_changes(tmp_path):
    backend = LocalBackend(str(tmp_path / "store"))
    store = ObjectStore(backend, KeyRing(os.urandom(32), b"s" * 16))
    conn = _database(str(tmp_path / "meta.db"), 100)
    snap = snapshot.Snapshotter(conn, store, BlockMap(conn))
    orig = backend.put

    async def failing_put(key, *args, **kwargs):
        assert os.path.exists(snap.image_path)
        raise OSError("injected failure")

    backend.put = failing_put
    with pytest.raises(OSError, match="injected"):
        await snap.upload(full=True)
    assert not os.path.exists(snap.image_path) and snap.changed()
    backend.put = orig
    await snap.upload(full=True)
    copy = await snapshot.download(store, await store.read_head(), str(tmp_path / "copy.db"))
    assert copy.execute("SELECT count(*) FROM inodes").fetchone()[0] == 101


def test_stale_image_of_a_crash_is_removed(tmp_path):
    conn = _database(str(tmp_path / "meta.db"), 1)
    stale = conn.filename + snapshot.IMAGE_SUFFIX
    with open(stale, "wb") as f:
        f.write(b"left by a crash")
    store = ObjectStore(LocalBackend(str(tmp_path / "store")), KeyRing(os.urandom(32), b"s" * 16))
    snapshot.Snapshotter(conn, store, BlockMap(conn))
    assert not os.path.exists(stale)


def test_in_memory_database_is_serialized(tmp_path):
    conn = apsw.Connection(":memory:")
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    store = ObjectStore(LocalBackend(str(tmp_path / "store")), KeyRing(os.urandom(32), b"s" * 16))
    assert snapshot.Snapshotter(conn, store, BlockMap(conn)).image_path is None


@pytest.mark.parametrize("payload", [b"", b"tiny", b"megafs names " * 300_000,
                                     os.urandom(1_500_000), bytes(5 << 20)])
def test_opened_to_a_file_as_open_returns(tmp_path, payload):
    key = os.urandom(32)
    blob = envelope.seal(key, envelope.KIND_METADATA, "m/o", payload, coarse=True)
    path = str(tmp_path / "out")
    assert envelope.open_to_file(key, envelope.KIND_METADATA, "m/o", blob, path) == len(payload)
    with open(path, "rb") as f:
        assert f.read() == payload
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["out"]  # the decrypted spool is gone


@pytest.mark.parametrize("where", ["ciphertext", "tag", "commitment", "kind", "name"])
def test_opened_to_a_file_refuses_tampering_and_writes_nothing(tmp_path, where):
    key = os.urandom(32)
    blob = bytearray(envelope.seal(key, envelope.KIND_METADATA, "m/o",
                                   b"megafs names " * 100_000, coarse=True))
    name = "m/o"
    if where == "ciphertext":
        blob[envelope.HEADER.size + 1000] ^= 1
    elif where == "tag":
        blob[-1] ^= 0x80
    elif where == "commitment":
        blob[20] ^= 4
    elif where == "kind":
        blob[5] = envelope.KIND_DELTA
    else:
        name = "m/p"
    path = str(tmp_path / "out")
    with pytest.raises(envelope.CorruptObject):
        envelope.open_to_file(key, envelope.KIND_METADATA, name, bytes(blob), path)
    assert os.listdir(tmp_path) == []
