"""Durability and tamper evidence: random crash points, damaged objects, rollback.

``MEGAFS_CRASH_POINTS`` sets how many random kill -9 points the crash test
visits (default 30, as CI runs it); e.g. ``MEGAFS_CRASH_POINTS=500`` runs long.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import DAMAGED_READ, LocalStore, MegaFS, assert_cli_error, oserror

from megafs.errors import ExitCode

WRITER = r'''
import hashlib, os, struct, sys
path = sys.argv[1]
rng = __import__("random").Random(int(sys.argv[2]))

def records(data):
    """Yield (end offset, seq) of each intact record."""
    pos = 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        body = data[pos + 4:pos + 4 + n]
        if n < 40 or len(body) < n or hashlib.sha256(body[:-32]).digest() != body[-32:]:
            return
        pos += 4 + n
        yield pos, struct.unpack_from("<Q", body)[0]

try:
    with open(path, "rb") as f:
        data = f.read()
except FileNotFoundError:
    data = b""
end, seq = 0, 0
for end, seq in records(data):
    pass
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
os.ftruncate(fd, end)  # drop a torn tail left by the crash
os.lseek(fd, end, os.SEEK_SET)
while True:
    seq += 1
    payload = struct.pack("<Q", seq) + os.urandom(rng.randrange(8, 70000))
    body = payload + hashlib.sha256(payload).digest()
    os.write(fd, struct.pack("<I", len(body)) + body)
    os.fsync(fd)
    print(seq, flush=True)
'''


def _verify(path: Path, acked: int) -> int:
    """Every record up to *acked* is present and intact; return the last intact seq."""
    import hashlib
    import struct

    data = path.read_bytes()
    pos, expect = 0, 1
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        body = data[pos + 4:pos + 4 + n]
        if n < 40 or len(body) < n or hashlib.sha256(body[:-32]).digest() != body[-32:]:
            break
        assert struct.unpack_from("<Q", body)[0] == expect, "records out of order"
        expect += 1
        pos += 4 + n
    assert expect - 1 >= acked, f"fsynced record {expect} of {acked} lost or damaged"
    return expect - 1


@pytest.mark.slow
def test_fsynced_records_survive_random_kill9(megafs, tmp_path):
    points = int(os.environ.get("MEGAFS_CRASH_POINTS", "30"))
    rng = random.Random(points)
    megafs.mkfs()
    args = ("--upload-delay", "0.2", "--metadata-interval", "0.5")
    megafs.mount(args=args)
    log = megafs.mnt / "journal.log"
    acked = 0
    for point in range(points):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(point)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + rng.uniform(0.05, 1.2)
        last = acked
        # Read acknowledgements until the random crash moment (at least one new record).
        while time.monotonic() < deadline or last == acked:
            line = writer.stdout.readline()
            assert line, f"writer died at point {point}:\n{megafs.log()}"
            last = int(line)
        megafs.kill9()
        with writer.stdout:
            for line in writer.stdout:  # records acknowledged before the kill landed
                last = int(line)
        writer.wait(timeout=30)
        acked = last
        megafs.mount(args=args)  # same cache dir: recovery runs automatically
        acked = _verify(log, acked)
    # And the store alone has it all after a clean unmount.
    megafs.umount()
    megafs.mount(fresh_cache=True)
    _verify(log, acked)
    megafs.umount()
    # Crashes may leave garbage (objects uploaded but never recorded): fsck removes it,
    # and finds nothing else wrong.
    r = megafs.fsck(check=False)
    lines = [line for line in r.stdout.strip().splitlines()
             if " bytes of dead space " not in line]  # the packs' accounting
    assert r.returncode in (0, ExitCode.FSCK_REPAIRED), r.stdout + r.stderr
    assert all("not referenced" in line for line in lines[:-1]), r.stdout
    assert megafs.fsck().stdout.strip().endswith("no problems")


@pytest.fixture
def local_fs(megafs: MegaFS) -> MegaFS:
    """``megafs`` on a local store (the tests using it parametrize ``store`` to local)."""
    return megafs


def _two_files(fs: MegaFS) -> dict[str, Path]:
    """Files a and b of one block each, written by two mounts: each alone in a pack;
    return {pack path in the store: file}."""
    fs.mkfs()
    fs.mount()
    before = {k for k, _ in fs.store.objects() if k.startswith("p/")}
    (fs.mnt / "a").write_bytes(b"A" * 1000 + os.urandom(2000))
    fs.umount()
    fs.mount()
    mid = {k for k, _ in fs.store.objects() if k.startswith("p/")}
    (fs.mnt / "b").write_bytes(b"B" * 1000 + os.urandom(2000))
    fs.umount()
    after = {k for k, _ in fs.store.objects() if k.startswith("p/")}
    (obj_a,) = mid - before
    (obj_b,) = after - mid
    return {obj_a: Path("a"), obj_b: Path("b")}


ENVELOPE_AT_LEAST = 2000  # bytes of each file's envelope: 2000 of them are random


def _damage(store: LocalStore, key: str, how: str, other: str) -> None:
    path = store.path / key
    data = path.read_bytes()
    if how == "flip":  # inside the block's envelope (the start of its pack)
        i = random.Random(1).randrange(ENVELOPE_AT_LEAST)
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
    elif how == "truncate":  # through the envelope
        path.write_bytes(data[: ENVELOPE_AT_LEAST // 2])
    elif how == "delete":
        path.unlink()
    elif how == "swap":
        other_path = store.path / other
        other_data = other_path.read_bytes()
        path.write_bytes(other_data)
        other_path.write_bytes(data)


@pytest.mark.expect_log_errors(DAMAGED_READ)
@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("how", ["flip", "truncate", "delete", "swap"])
def test_damaged_object_gives_eio_and_names_the_file(local_fs, how):
    objects = _two_files(local_fs)
    (victim, other) = sorted(objects)
    _damage(local_fs.store, victim, how, other)
    local_fs.mount(fresh_cache=True)  # nothing cached: reads go to the store
    damaged = {objects[victim]} | ({objects[other]} if how == "swap" else set())
    for name in objects.values():
        path = local_fs.mnt / name
        if name in damaged:
            assert oserror(path.read_bytes) == errno.EIO, f"{how}: {name} read wrong data"
            assert f"/{name}" in local_fs.log(), local_fs.log()
        else:
            assert path.read_bytes()[:1000] == name.name.upper().encode() * 1000
    assert (local_fs.mnt / "a").stat().st_size == 3000  # metadata unaffected
    local_fs.umount()
    # fsck --dry-run reports the file, the byte range and the object; changes nothing.
    r = local_fs.run("fsck.megafs", "--dry-run", local_fs.url, check=False)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    for name in damaged:
        assert f"/{name}: bytes 0-65536 unreadable" in r.stdout, r.stdout
    assert Path(victim).name in r.stdout, r.stdout
    # fsck repairs what it can, but never hides the damage: the damaged objects are moved
    # aside (q/), the ranges recorded, and fsck keeps failing while they remain.
    r = local_fs.run("fsck.megafs", local_fs.url, check=False)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    assert "repaired" in r.stdout
    r = local_fs.run("fsck.megafs", local_fs.url, check=False)
    assert r.returncode == ExitCode.FSCK_ERRORS, r.stdout + r.stderr
    for name in damaged:
        assert f"/{name}: damaged, bytes 0-65536" in r.stdout, r.stdout
    local_fs.mount(fresh_cache=True)
    for name in objects.values():
        path = local_fs.mnt / name
        assert path.stat().st_size == 3000
        if name in damaged:
            assert oserror(path.read_bytes) == errno.EIO, f"{how}: {name} read after fsck"
        else:
            assert path.read_bytes()[:1000] == name.name.upper().encode() * 1000


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_rollback_of_metadata_is_detected(local_fs, tmp_path):
    fs = local_fs
    fs.mkfs()
    fs.mount()
    (fs.mnt / "f").write_text("version 1")
    fs.umount()
    saved = tmp_path / "old-store"
    shutil.copytree(fs.store.path, saved)
    fs.mount()
    (fs.mnt / "f").write_text("version 2")
    fs.umount()
    # The provider serves the older, validly encrypted state.
    shutil.rmtree(fs.store.path)
    shutil.copytree(saved, fs.store.path)
    r = fs.mount(check=False)
    msg = assert_cli_error(r, "mount.megafs", ExitCode.ROLLBACK)
    assert "rolled back" in msg
    assert not fs.is_mounted()


@pytest.mark.slow
def test_store_alone_reflects_changes_within_ten_seconds(megafs):
    """Default settings: after activity stops, losing the cache directory loses nothing
    older than 10 s (data is uploaded after 5 s, metadata every 2 s)."""
    megafs.mkfs()
    megafs.mount()
    (megafs.mnt / "kept").write_bytes(b"k" * 200_000)
    os.chmod(megafs.mnt / "kept", 0o600)
    (megafs.mnt / "dir").mkdir()
    time.sleep(10)
    megafs.kill9()
    megafs.mount(fresh_cache=True)  # the local disk is lost: only the store is left
    assert (megafs.mnt / "kept").read_bytes() == b"k" * 200_000
    assert (megafs.mnt / "kept").stat().st_mode & 0o777 == 0o600
    assert (megafs.mnt / "dir").is_dir()
    megafs.umount()
