"""Many concurrent writers -- threads and processes -- on different files and on the same
file, with uploads racing the writes (``--upload-delay 0``), then a remount with an
empty cache and fsck.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from helpers import MegaFS

BS = 64 * 1024


pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


@pytest.fixture
def mount_args():
    """Blocks uploaded as soon as they are written."""
    return ("--upload-delay", "0")


@pytest.fixture
def fs(mounted: MegaFS) -> MegaFS:
    """Local store, 64 KiB blocks, blocks uploaded as soon as they are written."""
    return mounted


def remount(fs: MegaFS) -> None:
    fs.umount()
    fs.mount(fresh_cache=True, args=("--upload-delay", "0"))


def run_threads(fn, n: int) -> None:
    errors: list[BaseException] = []

    def wrap(k):
        try:
            fn(k)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    ts = [threading.Thread(target=wrap, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_threads_writing_different_files(fs):
    size = 5 * BS + 1234
    expect: dict[int, bytes] = {}

    def writer(k):
        rnd = random.Random(k)
        data = bytearray(size)
        fd = os.open(fs.mnt / f"file{k}", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            for i in range(60):
                off = rnd.randrange(size)
                chunk = rnd.randbytes(rnd.randrange(1, min(2 * BS, size - off) + 1))
                os.pwrite(fd, chunk, off)
                data[off:off + len(chunk)] = chunk
                if i % 20 == 19:
                    os.fsync(fd)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        expect[k] = bytes(data)

    run_threads(writer, 8)
    for k, data in expect.items():
        assert (fs.mnt / f"file{k}").read_bytes() == data, k
    remount(fs)
    for k, data in expect.items():
        assert (fs.mnt / f"file{k}").read_bytes() == data, k


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "fetched"])
def test_threads_writing_disjoint_stripes_of_one_file(fs, cached):
    """Neighbouring stripes share blocks: every write is a read-modify-write of a block
    another thread is writing too (with *fetched*, of a block only in the store)."""
    p = fs.mnt / "shared"
    nthreads, stripe, rounds = 6, 10_007, 4
    size = nthreads * stripe * 12
    base = pattern(0, size)
    p.write_bytes(base)
    if not cached:
        remount(fs)
    expect = bytearray(base)
    for k in range(nthreads):
        for s in range(k, size // stripe, nthreads):
            expect[s * stripe:(s + 1) * stripe] = pattern(1000 * k + s, stripe)

    def writer(k):
        fd = os.open(p, os.O_WRONLY)
        try:
            stripes = list(range(k, size // stripe, nthreads))
            for r in range(rounds):
                random.Random(k * 100 + r).shuffle(stripes)
                for s in stripes:
                    data = pattern(1000 * k + s, stripe) if r == rounds - 1 else \
                        pattern(-(1000 * k + s) - r, stripe)
                    os.pwrite(fd, data, s * stripe)
        finally:
            os.close(fd)

    run_threads(writer, nthreads)
    assert p.read_bytes() == bytes(expect)
    remount(fs)
    assert p.read_bytes() == bytes(expect)


def test_overlapping_writes_are_not_torn(fs):
    """Threads overwrite the same records; each write(2) lands whole, so every record
    ends up as one writer's record (records straddle pages and blocks)."""
    p = fs.mnt / "records"
    rec, nrec, nthreads = 5000, 60, 6
    p.write_bytes(bytes(rec * nrec))

    def writer(k):
        rnd = random.Random(k)
        fd = os.open(p, os.O_WRONLY)
        try:
            for i in range(300):
                r = rnd.randrange(nrec)
                os.pwrite(fd, bytes([k + 1]) * rec, r * rec)
                if i % 100 == 0:
                    os.fsync(fd)
        finally:
            os.close(fd)

    run_threads(writer, nthreads)

    def check():
        data = p.read_bytes()
        assert len(data) == rec * nrec
        for r in range(nrec):
            chunk = data[r * rec:(r + 1) * rec]
            assert chunk == chunk[:1] * rec, f"record {r} is torn: {set(chunk)}"
        return data

    before = check()
    remount(fs)
    assert check() == before


APPENDER = textwrap.dedent("""
    import os, sys
    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for i in range(n):
        line = f"{who} {i:05d} " + "x" * (i % 300) + "\\n"
        assert os.write(fd, line.encode()) == len(line)
        if i % 200 == 0:
            os.fsync(fd)
    os.close(fd)
""")


def test_processes_appending_to_one_log(fs):
    log = fs.mnt / "log"
    n, writers = 1500, 4
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(log), f"w{k}", str(n)])
             for k in range(writers)]
    for p in procs:
        assert p.wait(timeout=300) == 0

    def check():
        lines = log.read_text().splitlines()
        assert len(lines) == n * writers
        per = {}
        for line in lines:
            who, i, pad = line.split(" ")
            assert pad == "x" * (int(i) % 300), line
            per.setdefault(who, []).append(int(i))
        assert per == {f"w{k}": list(range(n)) for k in range(writers)}

    check()
    remount(fs)
    check()


CHURNER = textwrap.dedent("""
    import hashlib, os, random, sys
    root, who, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rnd = random.Random(who)
    mine = {}  # name -> content, in root/shared
    os.makedirs(os.path.join(root, "private", who))
    for i in range(steps):
        op = rnd.random()
        if op < 0.4 or not mine:
            name = f"{who}-{i}"
            data = rnd.randbytes(rnd.choice([0, 10, 5000, 70000, 200000]))
            tmp = os.path.join(root, "shared", "." + name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.rename(tmp, os.path.join(root, "shared", name))
            mine[name] = data
        elif op < 0.55:
            name = rnd.choice(sorted(mine))
            os.unlink(os.path.join(root, "shared", name))
            del mine[name]
        elif op < 0.7:
            name = rnd.choice(sorted(mine))
            new = f"{who}-r{i}"
            os.rename(os.path.join(root, "shared", name), os.path.join(root, "shared", new))
            mine[new] = mine.pop(name)
        elif op < 0.8:
            d = os.path.join(root, "private", who, f"d{i}")
            os.mkdir(d)
            os.link(os.path.join(root, "shared", rnd.choice(sorted(mine))), d + "-link")
            if rnd.random() < 0.5:
                os.rmdir(d)
        elif op < 0.9:
            name = rnd.choice(sorted(mine))
            with open(os.path.join(root, "shared", name), "r+b") as f:
                data = bytearray(mine[name])
                off = rnd.randrange(len(data) + 1)
                chunk = rnd.randbytes(rnd.randrange(1, 100000))
                f.seek(off)
                f.write(chunk)
                data[off:off + len(chunk)] = chunk
                mine[name] = bytes(data)
        else:
            os.listdir(os.path.join(root, "shared"))
    for name, data in sorted(mine.items()):
        print(name, hashlib.sha256(data).hexdigest())
""")


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for nm in filenames:
            p = os.path.join(dirpath, nm)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
        for nm in dirnames:
            out[os.path.relpath(os.path.join(dirpath, nm), root) + "/"] = "dir"
    return out


def test_processes_churning_one_directory(fs):
    (fs.mnt / "shared").mkdir()
    (fs.mnt / "private").mkdir()
    nproc, steps = 4, 400
    procs = [subprocess.Popen([sys.executable, "-c", CHURNER, str(fs.mnt), f"p{k}", str(steps)],
                              stdout=subprocess.PIPE, text=True) for k in range(nproc)]
    expect = {}
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0
        for line in out.splitlines():
            nm, digest = line.split()
            expect[os.path.join("shared", nm)] = digest
    got = {k: v for k, v in tree_digest(fs.mnt).items() if k.startswith("shared/") and v != "dir"}
    assert got == expect
    everything = tree_digest(fs.mnt)
    nlinks = {p: os.lstat(fs.mnt / p).st_nlink for p in everything}
    remount(fs)
    assert tree_digest(fs.mnt) == everything
    assert {p: os.lstat(fs.mnt / p).st_nlink for p in everything} == nlinks
    fs.umount()
    assert fs.fsck().returncode == 0


def test_writes_racing_flushes_and_fsyncs(fs):
    """Writers keep rewriting blocks while other threads flush the whole filesystem and
    fsync: what was written last is what survives."""
    files = [fs.mnt / f"f{k}" for k in range(4)]
    size = 6 * BS
    final: dict[Path, bytes] = {}
    stop = threading.Event()

    def writer(k):
        p = files[k]
        rnd = random.Random(k)
        data = bytearray(size)
        fd = os.open(p, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.ftruncate(fd, size)
            for _ in range(150):
                off = rnd.randrange(0, size - 1)
                chunk = rnd.randbytes(rnd.randrange(1, min(BS + 3, size - off)))
                os.pwrite(fd, chunk, off)
                data[off:off + len(chunk)] = chunk
                if rnd.random() < 0.1:
                    os.fsync(fd)
        finally:
            os.close(fd)
        final[p] = bytes(data)

    def flusher():
        while not stop.is_set():
            fs.flush()

    fl = threading.Thread(target=flusher)
    fl.start()
    try:
        run_threads(writer, len(files))
    finally:
        stop.set()
        fl.join()
    for p, data in final.items():
        assert p.read_bytes() == data, p.name
    remount(fs)
    for p, data in final.items():
        assert p.read_bytes() == data, p.name
    fs.umount()
    assert fs.fsck().returncode == 0
