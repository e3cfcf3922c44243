"""Rollback and forks (issue 13): attacks by whoever can write to the store, each a row of
a table run against a local store and a SeaweedFS S3 store (the ``megafs`` fixture),
on real mounts. Every row failed before chained heads (store format 2)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import seaweed
import trio
from helpers import PASSPHRASE, LocalStore, MegaFS, assert_cli_error

from megafs.errors import ExitCode
from megafs.store import lifecycle

DATA = Path(__file__).parent / "data"
NEW_PASSPHRASE = "a much better passphrase"


@pytest.fixture(autouse=True)
def _s3_credentials(monkeypatch):
    """The library calls below reach an S3 store with the test server's admin key."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.ADMIN.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.ADMIN.secret_key)


# -- the store as the attacker sees it ------------------------------------------------

def raw_name(fs: MegaFS, key: str) -> str:
    """Where the backend keeps object *key* (the local backend fans out one level)."""
    if isinstance(fs.store, LocalStore) and "/" in key:
        prefix, name = key.split("/", 1)
        return f"{prefix}/{name[:2]}/{name}"
    return key


def get(fs: MegaFS, key: str) -> bytes | None:
    if isinstance(fs.store, LocalStore):
        try:
            return (fs.store.path / raw_name(fs, key)).read_bytes()
        except FileNotFoundError:
            return None
    return fs.store.read(key)


def put(fs: MegaFS, key: str, data: bytes) -> None:
    if isinstance(fs.store, LocalStore):
        path = fs.store.path / raw_name(fs, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        fs.store.write(key, data)


def delete(fs: MegaFS, key: str) -> None:
    if isinstance(fs.store, LocalStore):
        (fs.store.path / raw_name(fs, key)).unlink()
    else:
        fs.store.delete(key)


def everything(fs: MegaFS) -> dict[str, bytes]:
    """Every object of the store by its raw name."""
    return dict(fs.store.objects())


def put_back(fs: MegaFS, saved: dict[str, bytes]) -> None:
    """The provider serves an older, validly encrypted state: it restores every object
    saved then (newer objects stay where they are)."""
    for name, data in saved.items():
        if isinstance(fs.store, LocalStore):
            path = fs.store.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        else:
            fs.store.write(name, data)


def read_head(fs: MegaFS, passphrase: str = PASSPHRASE) -> dict:
    async def go():
        backend = await lifecycle.connect(fs.url)
        try:
            store, _ = await lifecycle.unlock(backend, passphrase=passphrase.encode())
            return await store.read_head()
        finally:
            await backend.aclose()

    return trio.run(go)


def write_and_umount(fs: MegaFS, name: str, text: str, **mount) -> None:
    fs.mount(**mount)
    (fs.mnt / name).write_text(text)
    fs.umount()


def refused(proc, tool: str, code: int, *words: str) -> str:
    line = assert_cli_error(proc, tool, code)
    for word in words:
        assert word in line, line
    return line


@pytest.fixture
def made(megafs) -> MegaFS:
    """A filesystem with one file, written and unmounted by machine A (cache1)."""
    megafs.mkfs()
    write_and_umount(megafs, "first", "from A, version 1")
    return megafs


# -- rollback and forks -------------------------------------------------------------------

def test_rollback_then_a_fresh_machine_writes_past_the_seen_version(made):
    fs = made
    old = everything(fs)
    cache_a = fs.cache_dir
    write_and_umount(fs, "second", "from A, newer")
    seen = read_head(fs)
    put_back(fs, old)  # rolled back to an older valid state
    assert read_head(fs)["seq"] < seen["seq"]
    # Machine B (a fresh cache directory) mounts and writes until it passes A's number.
    fs.mount(fresh_cache=True)
    n = 0
    while read_head(fs)["seq"] <= seen["seq"]:
        (fs.mnt / f"b{n}").write_text("from B")
        fs.flush()
        n += 1
    fs.umount()
    forked = read_head(fs)
    r = fs.mount(cache_dir=cache_a, check=False)
    refused(r, "mount.megafs", ExitCode.ROLLBACK, f"version {forked['seq']} (head",
            f"version {seen['seq']} (head {seen['hash'][:8]})", forked["hash"][:8])
    assert not fs.is_mounted()


def test_plain_rollback_is_refused(made):
    fs = made
    old_head = get(fs, "head")
    write_and_umount(fs, "second", "newer")
    put(fs, "head", old_head)
    r = fs.mount(check=False)
    refused(r, "mount.megafs", ExitCode.ROLLBACK, "rolled back")


def test_a_machine_that_saw_an_older_head_accepts_a_descendant(made):
    """The other side of the rule: history in the metadata proves descent."""
    fs = made
    cache_a = fs.cache_dir
    for i in range(3):  # machine B writes three more heads
        write_and_umount(fs, f"b{i}", "from B", fresh_cache=(i == 0))
    fs.mount(cache_dir=cache_a)
    assert (fs.mnt / "b2").read_text() == "from B"
    fs.umount()


# -- fsck on a rolled-back store ------------------------------------------------------------

def test_fsck_on_a_rolled_back_store_deletes_nothing(made):
    fs = made
    old = everything(fs)
    cache_a = fs.cache_dir
    fs.mount()
    (fs.mnt / "big").write_bytes(os.urandom(300_000))  # new data blocks
    fs.umount()
    newer = everything(fs)
    put_back(fs, old)
    before = everything(fs)
    assert set(newer) - set(old) <= set(before)
    for args in ((), ("--dry-run",)):
        r = fs.run("fsck.megafs", "--cache-dir", cache_a, *args, fs.url, check=False)
        refused(r, "fsck.megafs", ExitCode.ROLLBACK, "changed nothing", "--force")
        assert everything(fs) == before
    # Even forced, or from a machine that never saw the newer state, metadata objects
    # (the newer deltas and snapshots) are never deleted.
    r = fs.run("fsck.megafs", "--cache-dir", cache_a, "--force", fs.url, check=False)
    assert r.returncode in (0, ExitCode.FSCK_REPAIRED), r.stdout + r.stderr
    r = fs.run("fsck.megafs", "--cache-dir", fs.tmp / "never-used", fs.url, check=False)
    assert r.returncode in (0, ExitCode.FSCK_REPAIRED), r.stdout + r.stderr
    kept = everything(fs)
    newer_meta = [k for k in newer if k.startswith("m/")]
    assert newer_meta and all(k in kept for k in newer_meta)


# -- superblock rollback ----------------------------------------------------------------------

def _passphrase(fs: MegaFS) -> None:
    fs.run("megafs", "passphrase", fs.url, env=dict(fs.env, MEGAFS_NEW_PASSPHRASE=NEW_PASSPHRASE))


def _quota(fs: MegaFS) -> None:
    fs.run("megafs", "quota", fs.url, "20M")


def _quota_while_mounted(fs: MegaFS) -> None:
    fs.mount()
    _quota(fs)
    (fs.mnt / "after-quota").write_text("x")  # the mount's next head records it
    fs.umount()


@pytest.mark.parametrize("change", [_passphrase, _quota, _quota_while_mounted],
                         ids=["after-passphrase", "after-quota", "after-quota-while-mounted"])
def test_an_older_superblock_is_refused(made, change):
    fs = made
    old_sb = get(fs, "superblock")
    change(fs)
    assert get(fs, "superblock") != old_sb
    put(fs, "superblock", old_sb)  # the old passphrase or quota would come back
    for tool, args in (("mount.megafs", None), ("fsck.megafs", ())):
        r = fs.mount(check=False) if args is None else fs.run(tool, fs.url, check=False)
        refused(r, tool, ExitCode.ROLLBACK, "superblock was rolled back")
    assert not fs.is_mounted()


# -- damaged metadata objects named by head ---------------------------------------------------

def _truncate(fs, key, other):
    put(fs, key, get(fs, key)[:-7])


def _grow(fs, key, other):
    put(fs, key, get(fs, key) + b"\0" * 16)


def _delete(fs, key, other):
    delete(fs, key)


def _swap(fs, key, other):
    a, b = get(fs, key), get(fs, other)
    put(fs, key, b)
    put(fs, other, a)


DAMAGE = [("snapshot", _truncate), ("delta", _truncate), ("delta", _grow),
          ("snapshot", _delete), ("delta", _delete), ("snapshot", _swap)]


@pytest.mark.parametrize(("target", "damage"), DAMAGE,
                         ids=[f"{t}-{d.__name__[1:]}" for t, d in DAMAGE])
def test_damaged_metadata_named_by_head_stops_the_mount(made, target, damage):
    fs = made
    write_and_umount(fs, "second", "two deltas now")
    if damage is _swap:  # a delta in another size bucket than the snapshot (§2)
        fs.mount()  # one change of 60 KB that does not compress: a delta of 128 KiB
        os.setxattr(fs.mnt / "second", "user.big", os.urandom(60_000))
        fs.umount()
    head = read_head(fs)
    assert len(head["deltas"]) >= 2, head
    key = head["snapshot"] if target == "snapshot" else head["deltas"][-1]
    other = head["deltas"][-1]  # swapped with the snapshot: another size
    assert damage is not _swap or len(get(fs, key)) != len(get(fs, other))
    damage(fs, key, other)
    head_bytes = get(fs, "head")
    r = fs.mount(check=False)  # the same machine, whose local copy is current
    line = refused(r, "mount.megafs", ExitCode.CORRUPT, "named by the head")
    assert key in line or (damage is _swap and other in line), line
    assert get(fs, "head") == head_bytes  # nothing committed on top of it
    r = fs.run("fsck.megafs", "--dry-run", fs.url, check=False)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    assert key in r.stdout or other in r.stdout, r.stdout


def _flip(fs, key, other):
    blob = bytearray(get(fs, key))
    blob[-1] ^= 1
    put(fs, key, bytes(blob))


@pytest.mark.parametrize("target", ["snapshot", "delta"])
def test_metadata_damaged_at_same_size_is_found_by_fsck_and_a_fresh_machine(made, target):
    """Same size: the mount's size check (no download) cannot see it; the SHA-256 the
    head records, checked by fsck and by every download, does."""
    fs = made
    head = read_head(fs)
    key = other = head["snapshot"] if target == "snapshot" else head["deltas"][-1]
    _flip(fs, key, other)
    r = fs.run("fsck.megafs", "--dry-run", fs.url, check=False)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    assert "SHA-256" in r.stdout and (key in r.stdout or other in r.stdout), r.stdout
    r = fs.mount(fresh_cache=True, check=False)
    line = refused(r, "mount.megafs", ExitCode.CORRUPT, "SHA-256")
    assert key in line or other in line, line


# -- a lost or damaged head -------------------------------------------------------------------

def _delete_head(fs):
    delete(fs, "head")


def _damage_head(fs):
    blob = bytearray(get(fs, "head"))
    blob[60] ^= 0x40
    put(fs, "head", bytes(blob))


@pytest.mark.parametrize("damage", [_delete_head, _damage_head], ids=["deleted", "damaged"])
def test_fsck_rebuilds_a_lost_head(made, damage):
    fs = made
    write_and_umount(fs, "second", "in a delta")
    fs.mount()
    (fs.mnt / "big").write_bytes(b"q" * 200_000)
    fs.umount()
    before = read_head(fs)
    junk = "b/" + "ab" * 16  # an unreferenced data object: kept in the rebuilding run
    put(fs, junk, b"junk")
    damage(fs)
    r = fs.mount(fresh_cache=True, check=False)
    refused(r, "mount.megafs", ExitCode.CORRUPT, "head")
    r = fs.run("fsck.megafs", fs.url, check=False)
    assert r.returncode == ExitCode.FSCK_REPAIRED, r.stdout + r.stderr
    assert "rebuilt it from snapshot" in r.stdout, r.stdout
    assert get(fs, junk) == b"junk"
    rebuilt = read_head(fs)
    assert (rebuilt["seq"], rebuilt["snapshot"], rebuilt["deltas"], rebuilt["objects"]) == \
        (before["seq"], before["snapshot"], before["deltas"], before["objects"])
    assert rebuilt["hash"] == before["hash"]  # the same state, the same head hash
    fs.mount(fresh_cache=True)
    assert (fs.mnt / "first").read_text() == "from A, version 1"
    assert (fs.mnt / "second").read_text() == "in a delta"
    assert (fs.mnt / "big").read_bytes() == b"q" * 200_000
    fs.umount()
    fs.mount(cache_dir=fs.tmp / "cache1")  # the machine that saw the lost head: same state
    fs.umount()
    r = fs.run("fsck.megafs", fs.url, check=False)  # now the junk goes
    assert r.returncode == ExitCode.FSCK_REPAIRED and get(fs, junk) is None, r.stdout


def test_an_idle_mount_writes_no_head(made):
    """Recording the head history must not make the metadata 'changed' for ever."""
    fs = made
    fs.mount()
    (fs.mnt / "one-change").write_text("x")
    fs.flush()
    head = get(fs, "head")
    time.sleep(5)  # more than two metadata intervals (2 s)
    assert get(fs, "head") == head
    fs.umount()
    assert get(fs, "head") == head


# -- the format ---------------------------------------------------------------------------

def test_new_stores_are_format_3_which_older_readers_refuse(made):
    fs = made
    # A format-1 megafs requires envelope version 1 and superblock format 1, a format-2
    # one superblock and head formats 1 and 2 (exit 16).
    assert get(fs, "head")[4] == 2
    assert json.loads(get(fs, "superblock"))["format"] == 3
    head = read_head(fs)
    assert head["format"] == 3 and head["sb_version"] == 0 and head["prev"]
    assert set(head["objects"]) == {head["snapshot"], *head["deltas"]}
    for key, (size, digest) in head["objects"].items():
        import hashlib

        blob = get(fs, key)
        assert (len(blob), hashlib.sha256(blob).hexdigest()) == (size, digest)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_format_1_store_is_read_and_upgraded(store, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_store_v1", DATA / "make_store_v1.py")
    v1 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(v1)  # the store's contents, as the script that made it wrote them

    copy = tmp_path / "store-v1"
    shutil.copytree(DATA / "store-v1", copy)
    originals = {p.name for p in (copy / "m").rglob("*") if p.is_file()}
    fs = MegaFS(LocalStore(copy), tmp_path)
    fs.env["MEGAFS_PASSPHRASE"] = v1.PASSPHRASE
    try:
        assert read_head(fs, v1.PASSPHRASE)["format"] == 1
        fs.mount()
        for name, data in v1.FILES.items():
            assert (fs.mnt / name).read_bytes() == data
        assert os.readlink(fs.mnt / v1.SYMLINK[0]) == v1.SYMLINK[1]
        assert (fs.mnt / v1.SYMLINK[0]).read_bytes() == v1.FILES[v1.SYMLINK[1]]
        shares = fs.run("megafs", "shares", fs.mnt).stdout
        assert v1.SHARED in shares and (DATA / "store-v1.link").read_text().split("#")[0] \
            in shares
        (fs.mnt / "after-upgrade").write_text("format 2")
        fs.umount()
        head = read_head(fs, v1.PASSPHRASE)
        assert head["format"] == 3 and get(fs, "head")[4] == 2
        # the upgrade's first upload is a full snapshot of the new schema (later deltas,
        # such as the share's manifest republished in the new format, build on it)
        new_objects = {head["snapshot"], *head["deltas"]}
        assert not {k.split("/")[1] for k in new_objects} & originals
        assert set(head["objects"]) == new_objects
        link = f"megafs+{fs.url}/" + (DATA / "store-v1.link").read_text().strip()
        r = fs.run("megafs", "get", link, tmp_path / "got")
        assert (tmp_path / "got").read_bytes() == v1.FILES[v1.SHARED], r.stdout
        fs.mount(fresh_cache=True)
        assert (fs.mnt / "after-upgrade").read_text() == "format 2"
        assert (fs.mnt / "a.txt").read_bytes() == v1.FILES["a.txt"]
        fs.umount()
        assert fs.run("fsck.megafs", fs.url, check=False).returncode == 0
    finally:
        fs.cleanup()
