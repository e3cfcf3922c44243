"""Attacks on the data blocks of a store, and what megafs makes of them.

The attacker has write access to the store, and for the re-seal attack also a share
link's key of a block (``K_obj``, derived here from the store's KeyRing as a link
holder gets it from a manifest). Each attack is a row of :data:`ATTACKS`, run on a
local directory and on SeaweedFS. Required for every row: reads of the damaged range
fail with EIO (never other bytes) and the log names the file and the object; fsck
reports it, moves the object aside to ``q/<hex>`` instead of deleting it, records the
range, keeps failing (exit 19) and listing the file, as does ``megafs stat``; the
read keeps failing after a remount with a fresh cache; new writes of the same bytes
get a fresh object. :data:`CLEARING` lists what ends a damage record.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
from helpers import (
    DAMAGED_READ,
    PASSPHRASE,
    LocalStore,
    MegaFS,
    S3Store,
    Store,
    oserror,
    read_file,
    tool_env,
)

from megafs.core import snapshot
from megafs.core.blockmap import BlockMap, byte_ranges
from megafs.crypto.keys import KeyRing
from megafs.errors import ExitCode
from megafs.store import envelope, lifecycle

BS = 64 * 1024  # the tests' block size (MegaFS.mkfs uses 64K blocks)
TAIL = 1000  # bytes of each file's second, unshared block


# -- the store as an attacker sees it ------------------------------------------------


class Raw:
    """Raw objects of a store by their megafs key (``p/<hex>``, ``q/<hex>``), outside
    megafs, and the envelopes of blocks by their block id (``b/<hex>``): the range of
    the pack holding each (*where*: block id -> (pack, offset, length), as the owner's
    metadata says; an attacker finds them by the envelopes' magic bytes)."""

    def __init__(self, store: Store, where: dict[str, tuple[str, int, int]] | None = None):
        self.store = store
        self.where = where or {}

    def envelope(self, block: str) -> bytes | None:
        """The stored envelope of *block* (None if its pack is gone)."""
        pack, offset, length = self.where[block]
        blob = self.get(pack)
        return None if blob is None else blob[offset:offset + length]

    def put_envelope(self, block: str, data: bytes) -> None:
        """Write *data* over the envelope of *block* in its pack (same length)."""
        pack, offset, length = self.where[block]
        assert len(data) == length
        blob = bytearray(self.get(pack))
        blob[offset:offset + length] = data
        self.put(pack, bytes(blob))

    def _path(self, key: str) -> Path:
        head, _, last = key.rpartition("/")  # the local backend's fan-out (docs/format.md)
        return self.store.path / head / last[:2] / last if head else self.store.path / last

    def get(self, key: str) -> bytes | None:
        if isinstance(self.store, S3Store):
            return self.store.read(key)
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        if isinstance(self.store, S3Store):
            self.store.write(key, data)
        else:
            self._path(key).write_bytes(data)

    def delete(self, key: str) -> None:
        if isinstance(self.store, S3Store):
            self.store.delete(key)
        else:
            self._path(key).unlink()

    def keys(self, prefix: str) -> set[str]:
        if isinstance(self.store, S3Store):
            return {k for k in self.store.listing() if k.startswith(prefix)}
        assert isinstance(self.store, LocalStore)
        top = self.store.path / prefix.rstrip("/")
        return {f"{prefix}{p.name}" for p in top.glob("*/*") if ".tmp." not in p.name}


def _metadata(fs: MegaFS) -> tuple[KeyRing, dict[str, list[str]], dict]:
    """The store's KeyRing, per top-level file name the block id of each block, and
    where each block's envelope is (block id -> (pack, offset, length))."""

    async def go():
        backend = await lifecycle.connect(fs.url)
        try:
            store, _ = await lifecycle.unlock(backend, passphrase=PASSPHRASE.encode())
            head = await store.read_head()
            conn = await snapshot.load(store, head)
            files: dict[str, list[str]] = {}
            where = {}
            for name, key, pack, offset, length in conn.execute(
                    "SELECT d.name, o.key, o.pack, o.pack_offset, o.stored_size FROM dentries d"
                    " JOIN blocks b ON b.inode = d.inode JOIN objects o ON o.id = b.object"
                    " WHERE d.parent = 1 ORDER BY d.name, b.blockno"):
                files.setdefault(name.decode(), []).append(key)
                where[key] = (pack, offset, length)
            return store.keys, files, where
        finally:
            await backend.aclose()

    return trio.run(go)


def _reseal(raw: Raw, keys: KeyRing, key: str, other: str) -> None:
    """A link holder's forgery: new contents sealed under the block's own key K_obj (in
    place of the original envelope: uncompressed, so of the same length)."""
    k_obj = keys.block_key(key)  # what a share manifest hands out for this object
    plain = envelope.open_(k_obj, envelope.KIND_BLOCK, key, raw.envelope(key))
    forged = b"EVIL" * (len(plain) // 4) + plain[len(plain) // 4 * 4:]
    raw.put_envelope(key, envelope.seal(k_obj, envelope.KIND_BLOCK, key, forged,
                                        compress=False, full=BS))


def _flip(raw: Raw, keys: KeyRing, key: str, other: str) -> None:
    """One bit flipped inside the block's envelope, in the middle of its pack's range."""
    data = bytearray(raw.envelope(key))
    data[len(data) // 2] ^= 0x10
    raw.put_envelope(key, bytes(data))


def _delete(raw: Raw, keys: KeyRing, key: str, other: str) -> None:
    """The pack holding the block deleted (every block in it is gone)."""
    raw.delete(raw.where[key][0])


def _swap(raw: Raw, keys: KeyRing, key: str, other: str) -> None:
    """Two envelopes of the same length swapped within their pack."""
    a, b = raw.envelope(key), raw.envelope(other)
    raw.put_envelope(key, b)
    raw.put_envelope(other, a)


#: name -> (what the attacker does to the shared block's envelope, words fsck must use)
ATTACKS = {
    "resealed-with-link-key": (_reseal, "does not match the hash recorded"),
    "flipped-bit-in-pack": (_flip, "failed authentication"),
    "deleted-pack": (_delete, "missing from the store"),
    "swapped-envelopes-in-pack": (_swap, "failed authentication"),
}


@pytest.fixture
def s3_env(monkeypatch):
    """Credentials for the library calls of this process (the tools get them anyway)."""
    env = tool_env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])


def _fsck(fs: MegaFS, *args: str):
    r = fs.run("fsck.megafs", *args, fs.url, check=False)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _stat(fs: MegaFS) -> str:
    return fs.run("megafs", "stat", fs.mnt).stdout


@pytest.mark.expect_log_errors(DAMAGED_READ)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_attack_is_detected_and_never_hidden(megafs, s3_env, attack):
    fs = megafs
    do, words = ATTACKS[attack]
    common = os.urandom(BS)  # block 0 of "private" and "shared": one object (dedup)
    files = {"private": common + os.urandom(TAIL), "shared": common + os.urandom(TAIL),
             "other": os.urandom(BS)}
    fs.mkfs()
    fs.mount()
    for name, data in files.items():
        (fs.mnt / name).write_bytes(data)
    fs.umount()
    keys, blocks, where = _metadata(fs)
    victim = blocks["private"][0]
    assert blocks["shared"][0] == victim, "the never-shared file must dedup to the shared block"
    pack = where[victim][0]
    assert {w[0] for w in where.values()} == {pack}, "all blocks went into one pack"
    raw = Raw(fs.store, where)
    original = raw.envelope(victim)
    do(raw, keys, victim, blocks["other"][0])
    tampered = raw.envelope(victim)
    hit = {victim, blocks["other"][0]} if "swapped" in attack else {victim}
    if attack == "deleted-pack":  # every block in the pack is gone
        hit = set(where)
    damaged = {(name, n) for name, ids in blocks.items() for n, b in enumerate(ids) if b in hit}
    files_hit = sorted({name for name, _ in damaged})
    ranges = {name: ", ".join(f"{a}-{b}" for a, b in byte_ranges(
        sorted(n for f, n in damaged if f == name), BS)) for name in files_hit}

    # A fresh cache (another machine): reads go to the store. Only the ranges of the
    # blocks hit fail; every other block of the same pack stays readable.
    fs.mount(fresh_cache=True)
    for name, data in files.items():
        for n in range(len(blocks[name])):
            if (name, n) in damaged:
                assert oserror(read_file, fs.mnt / name, n * BS, 10) == errno.EIO, \
                    f"{name} read other bytes"
            else:
                assert read_file(fs.mnt / name, n * BS, BS) == data[n * BS:(n + 1) * BS]
    log = fs.log()
    assert "/private (inode" in log and victim in log, log
    fs.umount()

    r = _fsck(fs, "--dry-run")
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    for name, n in damaged:
        assert f"/{name}: bytes {n * BS}-{(n + 1) * BS} unreadable" in r.stdout, r.stdout
    assert words in r.stdout and victim in r.stdout, r.stdout
    assert raw.envelope(victim) == tampered, "--dry-run changed the store"

    # Repair quarantines (the block's envelope is copied to q/, nothing is deleted; the
    # pack stays, it holds other blocks) and records damage.
    quarantined = "q/" + victim[2:]
    moved = set() if attack == "deleted-pack" else {"q/" + k[2:] for k in hit}
    r = _fsck(fs)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    assert "recorded as damaged" in r.stdout, r.stdout
    assert all(f"copied aside to {q}" in r.stdout for q in moved), r.stdout
    assert raw.envelope(victim) == tampered  # None for the deleted pack
    assert raw.get(quarantined) == tampered  # None for the deleted pack: nothing to keep
    assert raw.keys("q/") == moved
    assert tampered != original

    # The damage stays: fsck keeps failing and naming the files, q/ is not garbage.
    r = _fsck(fs)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    for name in files_hit:
        assert f"/{name}: damaged, bytes {ranges[name]} " in r.stdout, r.stdout
    assert f"{len(files_hit)} damaged file(s) remain" in r.stdout, r.stdout
    assert "not referenced by anything" not in r.stdout, r.stdout
    assert raw.get(quarantined) == tampered

    fs.mount(fresh_cache=True)
    for name, n in damaged:
        assert oserror(read_file, fs.mnt / name, n * BS, 10) == errno.EIO, f"{name} after fsck"
    if ("private", 1) not in damaged:
        assert read_file(fs.mnt / "private", BS) == files["private"][BS:]
    out = _stat(fs)
    assert f"damaged files: {len(files_hit)}" in out, out
    for name in files_hit:
        assert f"  /{name}: bytes {ranges[name]}" in out, out
    # The same bytes written again get a fresh object, not the damaged one (dedup).
    (fs.mnt / "copy").write_bytes(common)
    fs.umount()
    _, blocks, _ = _metadata(fs)
    assert blocks["copy"][0] not in (victim, blocks["other"][0])
    fs.mount(fresh_cache=True)
    assert (fs.mnt / "copy").read_bytes() == common
    assert oserror(read_file, fs.mnt / "private", 0, BS) == errno.EIO
    fs.umount()
    assert raw.get(quarantined) == tampered  # the mount's garbage collection kept it too


def _truncate_to_first_block(path: Path) -> None:
    os.truncate(path, BS)


def _truncate_within_damaged_block(path: Path) -> None:
    os.truncate(path, BS + TAIL // 2)


def _overwrite(path: Path) -> None:
    path.write_bytes(b"new" * 1000)


#: name -> (damaged block of the two-block file, what the user does, damage remains?)
CLEARING = {
    "overwrite": (0, _overwrite, False),
    "truncate-away": (1, _truncate_to_first_block, False),
    "remove": (0, os.unlink, False),
    "truncate-within-keeps-it": (1, _truncate_within_damaged_block, True),
}


@pytest.mark.expect_log_errors(DAMAGED_READ)
@pytest.mark.parametrize("how", list(CLEARING))
def test_what_ends_a_damage_record(megafs, s3_env, how):
    fs = megafs
    blockno, act, remains = CLEARING[how]
    data = os.urandom(BS + TAIL)
    fs.mkfs()
    fs.mount()
    (fs.mnt / "victim").write_bytes(data)
    fs.umount()
    keys, blocks, where = _metadata(fs)
    victim = blocks["victim"][blockno]
    raw = Raw(fs.store, where)
    _flip(raw, keys, victim, "")
    assert _fsck(fs).returncode == ExitCode.FSCK_ERRORS

    fs.mount(fresh_cache=True)
    path = fs.mnt / "victim"
    assert oserror(read_file, path, blockno * BS, 10) == errno.EIO
    act(path)
    fs.umount()
    r = _fsck(fs)
    if remains:
        assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
        assert f"/victim: damaged, bytes {BS}-{2 * BS}" in r.stdout, r.stdout
    else:
        assert r.returncode == 0 and r.stdout.strip().endswith("no problems"), r.stdout
    assert raw.get("q/" + victim[2:]) is not None, "the quarantined object was deleted"

    fs.mount(fresh_cache=True)
    if how == "overwrite":
        assert path.read_bytes() == b"new" * 1000
    elif how == "remove":
        assert not path.exists()
    elif remains:
        assert path.stat().st_size == BS + TAIL // 2
        assert read_file(path, 0, BS) == data[:BS]
        assert oserror(read_file, path, BS, 10) == errno.EIO  # no zeros in their place
        assert "damaged files: 1" in _stat(fs)
    else:
        assert path.read_bytes() == data[:BS]
    if not remains:
        assert "damaged files" not in _stat(fs)
    fs.umount()


def test_object_without_recorded_hash_is_refused(tmp_path):
    """Every object a block names has a keyed hash (megafs always recorded one); one
    without cannot be verified and is treated as damage, never served unverified."""
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    try:
        fs.mkfs()
        fs.mount()
        (fs.mnt / "f").write_bytes(os.urandom(3000))
        fs.umount()

        async def drop_hash():
            backend = await lifecycle.connect(fs.url)
            store, _ = await lifecycle.unlock(backend, passphrase=PASSPHRASE.encode())
            head = await store.read_head()
            conn = await snapshot.load(store, head)
            conn.execute("UPDATE objects SET hash = NULL")
            await snapshot.Snapshotter(conn, store, BlockMap(conn)).upload(full=True)
            await backend.aclose()

        trio.run(drop_hash)
        fs.mount(fresh_cache=True)
        assert oserror((fs.mnt / "f").read_bytes) == errno.EIO
        assert "has no recorded hash" in fs.log()
        fs.umount()
        r = _fsck(fs, "--dry-run")
        assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout
        assert "/f: bytes 0-65536 unreadable" in r.stdout and "no recorded hash" in r.stdout
    finally:
        fs.cleanup()
