"""Packs over time: dead space after deletions, shown by ``megafs stat`` and fsck, and
reclaimed by the compactor (new pack durable, block map committed and uploaded, old
pack deleted: docs/format.md §4a, §6), on a local directory and on SeaweedFS; and
``kill -9`` while the compactor works loses nothing that was fsync'ed."""

from __future__ import annotations

import json
import os
import time

import pytest
from helpers import MegaFS

from megafs.errors import ExitCode

FILES = 48
FILE_SIZE = 400 * 1024  # random: incompressible; 48 files make 19 MiB: two packs
COMPACT_NOW = ("--compact-interval", "0.2", "--metadata-interval", "0.5")
NO_COMPACTION = ("--compact-below", "0")


def _stats(fs: MegaFS) -> dict:
    return json.loads(os.getxattr(fs.mnt, "megafs.stats"))


def _packs(fs: MegaFS) -> dict[str, int]:
    """Pack key -> size, as the store lists them."""
    return {name: len(blob) for name, blob in fs.store.objects()
            if name.startswith("p/")}


def _write_and_delete_half(fs: MegaFS) -> dict[str, bytes]:
    """Write FILES files (fsync'ed), delete every other one once they are in the store;
    return the survivors' contents."""
    files = {f"f{i:02d}": os.urandom(FILE_SIZE) for i in range(FILES)}
    for name, data in files.items():
        with open(fs.mnt / name, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
    fs.flush()
    for i, name in enumerate(sorted(files)):
        if i % 2:
            os.unlink(fs.mnt / name)
            del files[name]
    fs.flush()
    return files


def _wait_until(what: str, check, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.2)


def _this_mount(fs: MegaFS) -> str:
    """The log of the running daemon (after the last clean exit of an earlier one)."""
    text = (fs.cache_dir / "megafs.log").read_text(errors="replace")
    return text[text.rfind("clean exit"):]


def _assert_files(fs: MegaFS, files: dict[str, bytes]) -> None:
    assert sorted(os.listdir(fs.mnt)) == sorted(files)
    for name, data in files.items():
        assert (fs.mnt / name).read_bytes() == data, name


def test_compaction_reclaims_dead_space(megafs):
    fs = megafs
    fs.mkfs()
    fs.mount(args=NO_COMPACTION)
    files = _write_and_delete_half(fs)
    stats = _stats(fs)
    assert stats["packs"] >= 2 and stats["compacted_packs"] == 0
    # half of what the packs hold is deleted data, counted as used until compacted
    assert 0.4 * stats["stored_bytes"] < stats["dead_bytes"] < 0.6 * stats["stored_bytes"]
    assert "dead space" in fs.run("megafs", "stat", fs.mnt).stdout
    fs.umount()
    before = _packs(fs)
    r = fs.fsck()
    assert f"{len(before)} packs" in r.stdout and "bytes of dead space" in r.stdout, r.stdout

    fs.mount(args=COMPACT_NOW)
    _wait_until("compaction", lambda: _stats(fs)["compacted_packs"] >= len(before))
    stats = _stats(fs)
    assert stats["dead_bytes"] < 0.2 * stats["stored_bytes"], stats
    _assert_files(fs, files)
    fs.umount()
    after = _packs(fs)
    assert not set(after) & set(before), "old packs deleted once the new map was uploaded"
    assert sum(after.values()) < sum(before.values())
    fs.mount(fresh_cache=True)
    _assert_files(fs, files)
    fs.umount()
    r = fs.fsck()
    assert r.stdout.strip().endswith("no problems"), r.stdout


#: When to kill the daemon: (line its log must show first, then seconds to wait).
KILL_POINTS = {
    "while-reading-live-blocks": ("compacting ", 0.3),
    "new-pack-committed-not-uploaded": ("compacted ", 0.0),
    "after-upload-of-the-new-map": ("compacted ", 0.5),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_kill9_during_compaction_loses_nothing(megafs, point):
    fs = megafs
    line, after = KILL_POINTS[point]
    fs.mkfs()
    fs.mount(args=NO_COMPACTION)
    files = _write_and_delete_half(fs)
    fs.umount()
    fs.env["MEGAFS_FAULTS"] = "latency=0.02"  # every request 20 ms: compaction takes a while
    fs.mount(args=("--compact-interval", "0.1"))
    _wait_until(f"'{line}' in the log", lambda: line in _this_mount(fs))
    head = fs.store.read("head")
    if point == "after-upload-of-the-new-map":  # the map naming the new pack is up
        _wait_until("a new head", lambda: fs.store.read("head") != head)
    time.sleep(after)
    if point == "while-reading-live-blocks":
        assert "compacted " not in _this_mount(fs), "compaction ended before the kill"
    if point == "new-pack-committed-not-uploaded":
        assert fs.store.read("head") == head, "the new map was up before the kill"
    fs.kill9()
    del fs.env["MEGAFS_FAULTS"]
    fs.mount()  # the same cache directory
    _assert_files(fs, files)
    fs.umount()
    fs.mount(fresh_cache=True)
    _assert_files(fs, files)
    fs.umount()
    r = fs.fsck(check=False)
    # at worst a pack stored by the killed round that nothing names (garbage, removed)
    assert r.returncode in (0, ExitCode.FSCK_REPAIRED), r.stdout + r.stderr
    problems = [line for line in r.stdout.splitlines() if "not referenced by anything" in line]
    assert r.returncode == 0 or problems, r.stdout
    r = fs.fsck()
    assert r.stdout.strip().endswith("no problems"), r.stdout
