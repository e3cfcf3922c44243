"""The on-storage format: envelope, superblock and key hierarchy (no mount needed)."""

import hmac
import json
import os

import apsw
import blake3
import pytest

from megafs import FORMAT_VERSION
from megafs.core import schema, snapshot
from megafs.core.blockmap import BlockMap
from megafs.crypto.keys import KeyRing
from megafs.errors import CorruptObject, UnsupportedFormat, WrongPassphrase
from megafs.store import envelope, superblock


@pytest.fixture(autouse=True)
def _fast_kdf(monkeypatch):
    monkeypatch.setenv("MEGAFS_INSECURE_TEST_KDF", "1")


KEY = bytes(range(32))


def test_envelope_roundtrip_and_compression():
    text = b"hello world " * 1000
    blob = envelope.seal(KEY, envelope.KIND_BLOCK, "b/00", text)
    assert len(blob) < len(text) // 4  # compressed
    assert envelope.open_(KEY, envelope.KIND_BLOCK, "b/00", blob) == text
    assert text[:12] not in blob


def test_envelope_layout_is_as_documented():
    blob = envelope.seal(KEY, envelope.KIND_METADATA, "m/ab", b"x" * 10, compress=False)
    assert blob[:4] == b"MGFS"
    assert blob[4] == 1 and blob[5] == envelope.KIND_METADATA
    assert len(blob) == 4 + 1 + 1 + 12 + 32 + envelope.padme(1 + 8 + 10) + 16


@pytest.mark.parametrize("offset", [0, 4, 5, 6, 17, 18, 49, 50, 60, -1])
def test_envelope_detects_any_flipped_bit(offset):
    blob = bytearray(envelope.seal(KEY, envelope.KIND_BLOCK, "b/00", b"secret data" * 50))
    blob[offset] ^= 0x01
    with pytest.raises((CorruptObject, UnsupportedFormat)):
        envelope.open_(KEY, envelope.KIND_BLOCK, "b/00", bytes(blob))


def test_envelope_binds_name_kind_and_key():
    blob = envelope.seal(KEY, envelope.KIND_BLOCK, "b/00", b"payload")
    with pytest.raises(CorruptObject):
        envelope.open_(KEY, envelope.KIND_BLOCK, "b/01", blob)  # renamed / swapped
    with pytest.raises(CorruptObject):
        envelope.open_(KEY, envelope.KIND_METADATA, "b/00", blob)  # re-kinded
    with pytest.raises(CorruptObject):
        envelope.open_(bytes(32), envelope.KIND_BLOCK, "b/00", blob)  # other key
    with pytest.raises(CorruptObject):
        envelope.open_(KEY, envelope.KIND_BLOCK, "b/00", blob[:-1])  # truncated
    with pytest.raises(CorruptObject):
        envelope.open_(KEY, envelope.KIND_BLOCK, "b/00", b"")


def test_envelope_from_a_future_version_is_refused_clearly():
    blob = bytearray(envelope.seal(KEY, envelope.KIND_BLOCK, "b/00", b"payload"))
    blob[4] = 3
    with pytest.raises(UnsupportedFormat, match="format version 3"):
        envelope.open_(KEY, envelope.KIND_BLOCK, "b/00", bytes(blob))


def test_padme_hides_exact_sizes():
    sizes = {envelope.padme(n) for n in range(100_000, 101_000)}
    assert len(sizes) <= 2
    for n in (1, 100, 4096, 10**6, 10**7):
        assert n <= envelope.padme(n) <= n * 1.13


def test_superblock_unlock_wrong_passphrase_and_recovery():
    blob, keys, recovery = superblock.create(b"correct horse", 1 << 20)
    sb = superblock.parse(blob)
    assert superblock.unlock(sb, passphrase=b"correct horse").master == keys.master
    with pytest.raises(WrongPassphrase):
        superblock.unlock(sb, passphrase=b"wrong")
    rk = superblock.parse_recovery_key(recovery)
    assert superblock.unlock(sb, recovery_key=rk).master == keys.master
    assert b"horse" not in blob and keys.master.hex().encode() not in blob


def test_superblock_tampering_is_detected():
    blob, _, _ = superblock.create(b"pass", 1 << 20)
    sb = json.loads(blob)
    sb["block_size"] = 4096
    with pytest.raises(CorruptObject):
        superblock.unlock(superblock.parse(json.dumps(sb).encode()), passphrase=b"pass")


def test_superblock_of_another_format_version_is_refused_clearly():
    blob, _, _ = superblock.create(b"pass", 1 << 20)
    sb = json.loads(blob)
    sb["format"] = FORMAT_VERSION + 1
    with pytest.raises(UnsupportedFormat, match=f"format version {FORMAT_VERSION + 1}"):
        superblock.parse(json.dumps(sb).encode())
    with pytest.raises(CorruptObject):
        superblock.parse(b"\x00garbage")


def test_passphrase_change_keeps_master_key():
    blob, keys, _ = superblock.create(b"old", 1 << 20)
    new = superblock.rewrap_passphrase(superblock.parse(blob), keys, b"new")
    sb = superblock.parse(new)
    assert superblock.unlock(sb, passphrase=b"new").master == keys.master
    with pytest.raises(WrongPassphrase):
        superblock.unlock(sb, passphrase=b"old")


def test_sub_keys_are_distinct_and_per_object():
    ring = KeyRing(bytes(32), bytes(16))
    subkeys = {ring.block_base, ring.meta, ring.dedup, ring.sb_mac, ring.master}
    assert len(subkeys) == 5
    assert ring.block_key("b/00") != ring.block_key("b/01")
    other = KeyRing(bytes(32), b"\x01" * 16)  # another store, same master: other keys
    assert other.block_key("b/00") != ring.block_key("b/00")
    assert ring.dedup_hash(b"x") != other.dedup_hash(b"x")


def _resealed(blob: bytes, keys: KeyRing, change) -> bytes:
    """The superblock *blob* after *change(sb)*, with a valid MAC (as mkfs would write it)."""
    sb = json.loads(blob)
    change(sb)
    sb["mac"] = hmac.digest(keys.sb_mac, superblock._canonical(sb), "sha256").hex()
    return json.dumps(sb).encode()


def test_dedup_hash_is_keyed_blake3_for_new_stores_hmac_for_older_ones():
    blob, keys, _ = superblock.create(b"pass", 1 << 20)
    assert json.loads(blob)["dedup"] == "blake3"
    ring = superblock.unlock(superblock.parse(blob), passphrase=b"pass")
    data = os.urandom(100000)
    assert ring.dedup_hash(data) == blake3.blake3(data, key=ring.dedup).digest()
    assert ring.dedup_hash(data) != blake3.blake3(data).digest()  # keyed, not plain
    assert KeyRing(bytes(32), bytes(16), "blake3").dedup_hash(data) != ring.dedup_hash(data)
    # A superblock written before the field existed: HMAC-SHA256, as then.
    old = _resealed(blob, keys, lambda sb: sb.pop("dedup"))
    ring = superblock.unlock(superblock.parse(old), passphrase=b"pass")
    assert ring.dedup_alg == "hmac-sha256"
    assert ring.dedup_hash(data) == hmac.digest(ring.dedup, data, "sha256")
    # One from a newer megafs with a hash this one does not know: refused clearly.
    new = _resealed(blob, keys, lambda sb: sb.update(dedup="sha3-keyed"))
    with pytest.raises(UnsupportedFormat, match="deduplicates with 'sha3-keyed'"):
        superblock.unlock(superblock.parse(new), passphrase=b"pass")
    # The provider changing the field (no valid MAC) is tampering, whatever the value.
    for value in ("sha3-keyed", "hmac-sha256"):
        sb = json.loads(blob)
        sb["dedup"] = value
        with pytest.raises(CorruptObject, match="tampered"):
            superblock.unlock(superblock.parse(json.dumps(sb).encode()), passphrase=b"pass")


def test_metadata_schema_1_is_upgraded_and_unknown_versions_are_refused():
    conn = apsw.Connection(":memory:")
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    assert schema.check_version(conn) == schema.SCHEMA_VERSION == 5
    assert not schema.upgrade(conn)
    # a version 1 database (before inodes.nblocks, objects.sha256, objects.pack and
    # pack_offset, damaged, heads, packs and unsent) with two blocks mapped for inode 1
    conn.execute("ALTER TABLE inodes DROP COLUMN nblocks")
    conn.execute("DROP INDEX objects_pack")
    for column in ("sha256", "pack", "pack_offset"):
        conn.execute(f"ALTER TABLE objects DROP COLUMN {column}")
    for table in ("damaged", "heads", "packs", "unsent"):
        for op in ("insert", "update", "delete"):
            conn.execute(f"DROP TRIGGER {table}_{op}")
        conn.execute(f"DROP TABLE {table}")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO objects (id, key, hash, refcount, size, stored_size)"
                 " VALUES (1, 'b/00', x'00', 2, 1, 1)")
    conn.execute("INSERT INTO blocks (inode, blockno, object) VALUES (1, 0, 1), (1, 5, 1)")
    snapshot.set_state(conn, "snapshot", "m/00")
    snap = snapshot.Snapshotter(conn, None, BlockMap(conn))
    assert not snap._want_full()
    snapshot.upgrade_schema(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    assert conn.execute("SELECT nblocks FROM inodes WHERE id=1").fetchone()[0] == 2
    assert conn.execute("SELECT sha256, pack, pack_offset FROM objects").fetchall() == [
        (None, None, None)]
    # the new tables exist and are journaled like the others
    conn.execute("DELETE FROM journal")
    conn.execute("INSERT INTO heads (seq, hash) VALUES (7, x'01')")
    conn.execute("INSERT INTO damaged VALUES (1, 5, 'b/00', 'tampered', 1)")
    conn.execute("INSERT INTO packs VALUES ('p/00', 1048576, 100)")
    conn.execute("INSERT INTO unsent VALUES (1, 0, 'h pid 1')")
    assert sorted(conn.execute("SELECT tbl, a, b FROM journal")) == [
        ("damaged", 1, 5), ("heads", 7, 0), ("packs", "p/00", 0), ("unsent", 1, 0)]
    # the next upload is a full snapshot: deltas of version 5 must not follow a version 1 one
    assert snap._want_full()
    conn.execute("PRAGMA user_version = 6")
    with pytest.raises(UnsupportedFormat, match="metadata schema version 6"):
        schema.check_version(conn)
