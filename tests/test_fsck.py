"""fsck.megafs: one test per kind of damage, asserting the report and the state after
repair. Damage is made by editing the metadata through the library (as a buggy
client or a crash could leave it) or by adding objects to the store."""

from __future__ import annotations

import json
import os
import socket

import pytest
import trio
from helpers import PASSPHRASE, MegaFS, assert_cli_error

from megafs.core import snapshot
from megafs.core.blockmap import BlockMap
from megafs.errors import ExitCode
from megafs.store import envelope, lifecycle
from megafs.store import lock as store_lock

JUNK = "b/ab/ab" + "0" * 30  # where the local backend keeps object b/ab000...


pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


@pytest.fixture
def fs(mounted: MegaFS) -> MegaFS:
    """A local-store filesystem with a few files, unmounted."""
    (mounted.mnt / "dir").mkdir()
    (mounted.mnt / "dir" / "file").write_bytes(b"x" * 100_000)
    (mounted.mnt / "other").write_bytes(b"y" * 5000)
    mounted.umount()
    return mounted


def _edit(fs: MegaFS, *statements: str) -> None:
    """Apply SQL to the filesystem's metadata and commit it as a new snapshot."""

    async def go():
        backend = await lifecycle.connect(fs.url)
        store, _ = await lifecycle.unlock(backend, passphrase=PASSPHRASE.encode())
        head = await store.read_head()
        conn = await snapshot.load(store, head)
        snapshot.confirm(conn, head)
        for sql in statements:
            conn.execute(sql)
        await snapshot.Snapshotter(conn, store, BlockMap(conn)).upload(full=True)

    trio.run(go)


def _fsck(fs: MegaFS, *args: str):
    return fs.run("fsck.megafs", *args, fs.url, check=False)


def _repair(fs: MegaFS, expect: str) -> str:
    dry = _fsck(fs, "--dry-run")
    assert dry.returncode == ExitCode.FSCK_ERRORS, dry.stdout + dry.stderr
    assert expect in dry.stdout, dry.stdout
    fixed = _fsck(fs)
    assert fixed.returncode == ExitCode.FSCK_REPAIRED, fixed.stdout + fixed.stderr
    again = _fsck(fs)
    assert again.returncode == 0, again.stdout
    return fixed.stdout


def test_clean_filesystem(fs):
    r = _fsck(fs)
    assert r.returncode == 0 and r.stdout.strip().endswith("no problems")


@pytest.mark.parametrize("prefix", ["b", "p"], ids=["one-block-object", "pack"])
def test_unreferenced_objects_are_removed(fs, prefix):
    junk = prefix + JUNK[1:]
    (fs.store.path / prefix / "ab").mkdir(parents=True, exist_ok=True)
    fs.store.write(junk, b"junk")
    _repair(fs, "1 objects in the store are not referenced")
    assert not (fs.store.path / junk).exists()


def test_wrong_reference_counts(fs):
    _edit(fs, "UPDATE objects SET refcount = refcount + 2")
    _repair(fs, "reference count")
    fs.mount(fresh_cache=True)
    assert (fs.mnt / "dir" / "file").read_bytes() == b"x" * 100_000


def test_orphaned_inode_goes_to_lost_and_found(fs):
    _edit(fs, "DELETE FROM dentries WHERE name = CAST('other' AS BLOB)")
    _repair(fs, "is in no directory")
    fs.mount(fresh_cache=True)
    (found,) = os.listdir(fs.mnt / "lost+found")
    assert (fs.mnt / "lost+found" / found).read_bytes() == b"y" * 5000


def test_directory_link_counts(fs):
    _edit(fs, "UPDATE inodes SET nlink = 7 WHERE id = 1")
    _repair(fs, "/: link count 7, should be 3")
    fs.mount(fresh_cache=True)
    assert os.stat(fs.mnt).st_nlink == 3


def test_entry_without_inode(fs):
    _edit(fs, "INSERT INTO dentries (parent, name, inode) VALUES (1, CAST('ghost' AS BLOB), 999)")
    _repair(fs, "'ghost' in directory 1 points nowhere")
    fs.mount(fresh_cache=True)
    assert sorted(os.listdir(fs.mnt)) == ["dir", "other"]


def test_leftover_lock_is_removed(fs):
    async def plant():
        backend = await lifecycle.connect(fs.url)
        store, _ = await lifecycle.unlock(backend, passphrase=PASSPHRASE.encode())
        holder = {"host": socket.gethostname(), "pid": 2**22 + 12345, "since": 0,
                  "token": "x"}
        await backend.put(store_lock.LOCK_KEY, envelope.seal(
            store.keys.meta, envelope.KIND_LOCK, store_lock.LOCK_KEY,
            json.dumps(holder).encode()))

    trio.run(plant)
    _repair(fs, "leftover lock")
    assert not (fs.store.path / "lock").exists()


def test_no_repairs_while_mounted(fs):
    (fs.store.path / "b" / "ab").mkdir(parents=True, exist_ok=True)
    fs.store.write(JUNK, b"junk")
    fs.mount()
    r = _fsck(fs)
    line = assert_cli_error(r, "fsck.megafs", ExitCode.LOCKED)
    assert "unmount it" in line
    assert (fs.store.path / JUNK).exists()
    r = _fsck(fs, "--dry-run")  # a check alone runs while mounted
    assert r.returncode == ExitCode.FSCK_ERRORS and "not referenced" in r.stdout, r.stdout


def test_wrong_block_count(fs):
    _edit(fs, "UPDATE inodes SET nblocks = nblocks + 5 WHERE size = 100000")
    _repair(fs, "/dir/file: block count 7, should be 2")
    fs.mount(fresh_cache=True)
    assert os.stat(fs.mnt / "dir" / "file").st_blocks == 100_000 // 4096 * 8 + 8


@pytest.mark.parametrize("change", ["grown", "cut"])
def test_pack_of_another_size_is_reported(fs, change):
    """A pack made longer, or cut inside its padding after its last block, loses no data,
    but the provider changed it: fsck says so and records the size it found."""
    packs = [(key, data) for key, data in fs.store.objects() if key.startswith("p/")]
    assert len(packs) == 1, [k for k, _ in packs]
    path, data = packs[0]
    fs.store.write(path, data + b"\0" * 4096 if change == "grown" else data[:-4096])
    key = "p/" + path.rsplit("/", 1)[1]  # (the local store keeps p/KEY in p/XY/KEY)
    fixed = _repair(fs, f"pack {key} is {len(data) + (4096 if change == 'grown' else -4096)}"
                        f" bytes in the store, but the metadata records {len(data)}")
    assert "the size found recorded" in fixed, fixed
    fs.mount()
    assert (fs.mnt / "dir" / "file").read_bytes() == b"x" * 100_000
    assert (fs.mnt / "other").read_bytes() == b"y" * 5000
    fs.umount()
