"""Stores written by older megafs (checked in under tests/data, made by their scripts)
stay readable: fsck finds nothing wrong, a mount reads every file and every old link
still downloads; the first upload moves the store to the current format (format 3:
new data in packs, metadata of the current schema as a full snapshot) while the old
one-block objects (or, for store-v3, packs of schema 4) stay where they are and stay
readable."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import apsw
import pytest
import trio
from helpers import LocalStore, MegaFS

from megafs import FORMAT_VERSION
from megafs.core import schema
from megafs.store import lifecycle
from megafs.store.packs import PACK_SLACK, PACK_UNIT

DATA = Path(__file__).parent / "data"
OLD_STORES = ["store-v1", "store-v2", "store-v3"]
#: Stores made before packs: their data is in one-block objects (b/), not packs (p/).
BEFORE_PACKS = {"store-v1", "store-v2"}


def _maker(name: str):
    """The script that made tests/data/<name>: its FILES, SYMLINK, SHARED, PASSPHRASE."""
    script = DATA / f"make_{name.replace('-', '_')}.py"
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _head_and_schema(fs: MegaFS, passphrase: str) -> tuple[dict, int]:
    async def go():
        backend = await lifecycle.connect(fs.url)
        try:
            store, _ = await lifecycle.unlock(backend, passphrase=passphrase.encode())
            head = await store.read_head()
            conn = apsw.Connection(":memory:")
            conn.deserialize("main", await store.get_metadata(head["snapshot"]))
            return head, conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            await backend.aclose()

    return trio.run(go)


def _data_objects(root: Path, prefix: str) -> set[str]:
    return {p.name for p in (root / prefix).rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", OLD_STORES)
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_old_store_is_checked_read_and_upgraded(store, tmp_path, name):
    old = _maker(name)
    copy = tmp_path / name
    shutil.copytree(DATA / name, copy)
    one_block = _data_objects(copy, "b")
    old_packs = _data_objects(copy, "p")
    if name in BEFORE_PACKS:
        assert one_block and not old_packs
    else:
        assert old_packs and not one_block
    fs = MegaFS(LocalStore(copy), tmp_path)
    fs.env["MEGAFS_PASSPHRASE"] = old.PASSPHRASE
    link = f"megafs+{fs.url}/" + (DATA / f"{name}.link").read_text().strip()
    try:
        r = fs.run("fsck.megafs", "--dry-run", fs.url, check=False)
        assert r.returncode == 0 and r.stdout.strip().endswith("no problems"), r.stdout
        fs.mount()
        for path, data in old.FILES.items():
            assert (fs.mnt / path).read_bytes() == data
        assert os.readlink(fs.mnt / old.SYMLINK[0]) == old.SYMLINK[1]
        # st_blocks counted from the block map (schema 1 had no nblocks): a full 64 KiB
        # block and the 4,468-byte tail in 4 KiB units
        assert os.stat(fs.mnt / "dir" / "b.txt").st_blocks == (64 * 1024 + 8192) // 512
        got = fs.run("megafs", "get", link, tmp_path / "got-before")
        assert (tmp_path / "got-before").read_bytes() == old.FILES[old.SHARED], got.stderr
        (fs.mnt / "new.bin").write_bytes(os.urandom(100_000))
        new = (fs.mnt / "new.bin").read_bytes()
        fs.umount()

        head, version = _head_and_schema(fs, old.PASSPHRASE)
        assert head["format"] == FORMAT_VERSION == 3
        assert version == schema.SCHEMA_VERSION  # the upgrade uploaded a full snapshot
        assert _data_objects(copy, "b") == one_block  # old objects stay as they were
        assert old_packs <= _data_objects(copy, "p")
        packs = [p for p in (copy / "p").rglob("*") if p.is_file() and p.name not in old_packs]
        assert len(packs) == 1 and packs[0].stat().st_size == PACK_UNIT + PACK_SLACK  # new.bin
        fs.mount(fresh_cache=True)
        for path, data in old.FILES.items():
            assert (fs.mnt / path).read_bytes() == data
        assert (fs.mnt / "new.bin").read_bytes() == new
        fs.umount()
        # the link still works: its manifest was republished (version 3) at the upload
        got = fs.run("megafs", "get", link, tmp_path / "got-after")
        assert (tmp_path / "got-after").read_bytes() == old.FILES[old.SHARED], got.stderr
        r = fs.run("fsck.megafs", fs.url, check=False)
        assert r.returncode == 0 and r.stdout.strip().endswith("no problems"), r.stdout
    finally:
        fs.cleanup()


#: The sources of the last megafs that wrote format 2 (``git archive 867b735 megafs |
#: gzip -n -9``), run as they were to see an older reader meet today's stores.
FORMAT_2_MEGAFS = DATA / "megafs-format2.tar.gz"


def _run_format_2_megafs(tmp_path: Path, env: dict, tool: str, *args: str):
    """Run fsck.megafs or mount.megafs of the format-2 megafs (unpacked in *tmp_path*)."""
    import subprocess
    import tarfile

    src = tmp_path / "megafs-format2"
    if not src.exists():
        with tarfile.open(FORMAT_2_MEGAFS) as tar:
            tar.extractall(src, filter="data")
    module = {"fsck.megafs": "fsck", "mount.megafs": "mount"}[tool]
    code = (f"import sys; sys.path.insert(0, {str(src)!r}); import megafs;"
            f" assert megafs.FORMAT_VERSION == 2, megafs.__file__;"
            f" from megafs.cli.{module} import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("made", ["mkfs", "upgraded-v2"])
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_format_2_megafs_refuses_todays_stores(store, tmp_path, made):
    """A megafs of format 2 meets a store of format 3 (new, or a format-2 store this
    megafs has written to): its fsck and its mount refuse with exit 16 and one line
    naming the versions, and change nothing."""
    if made == "mkfs":
        fs = MegaFS(store, tmp_path)
        fs.mkfs()
        mnt = fs.mnt
    else:
        old = _maker("store-v2")
        copy = tmp_path / "store-v2"
        shutil.copytree(DATA / "store-v2", copy)
        fs = MegaFS(LocalStore(copy), tmp_path)
        fs.env["MEGAFS_PASSPHRASE"] = old.PASSPHRASE
        fs.mount()
        (fs.mnt / "new.bin").write_bytes(os.urandom(10_000))
        fs.umount()
        mnt = fs.mnt
    try:
        before = sorted(fs.store.objects())
        for tool, args in (("fsck.megafs", (fs.url,)),
                           ("mount.megafs", ("--cache-dir", str(tmp_path / "old-cache"),
                                             fs.url, str(mnt)))):
            r = _run_format_2_megafs(tmp_path, fs.env, tool, *args)
            assert r.returncode == 16, (tool, r.returncode, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
            assert lines[0].startswith(f"{tool}: ") and "version 3" in lines[0] \
                and "this megafs reads" in lines[0], lines[0]
        assert not fs.is_mounted()
        assert sorted(fs.store.objects()) == before, "the older megafs changed the store"
    finally:
        fs.cleanup()
