"""The workloads run on the plain directory and on megafs (write, read, create, untar),
the inputs they share, the source tarball and the warm-up."""

from __future__ import annotations

import argparse
import os
import subprocess
import sysconfig
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .common import (
    CHUNK,
    CREATE_FILES,
    CREATE_SIZE,
    SAVES,
    UNTAR_FILES,
    MiB,
    cpu_seconds,
    drop_page_cache,
    log,
)
from .requests import RequestCounter
from .targets import Target


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
    ops: int = 0  # operations the workload did (for requests per operation)
    counter: RequestCounter | None = None  # counts the FUSE requests of the timed part
    requests: dict[str, int] | None = None  # what it counted
    request_s: dict[str, float] | None = None  # seconds the kernel waited, by request
    daemon_cpu_s: float | None = None  # CPU the FUSE daemon used in the timed part
    _cpu0: float = 0.0

    def start(self) -> float:
        """Start of the timed part (and of the request count): the time."""
        if self.counter is not None:
            self.counter.start()
        pid = getattr(self.target, "pid", None)
        if pid is not None:
            self._cpu0 = cpu_seconds(pid)
        return time.perf_counter()

    def stop(self, t0: float) -> float:
        """End of the timed part: seconds since *t0*."""
        dt = time.perf_counter() - t0
        pid = getattr(self.target, "pid", None)
        if pid is not None:
            self.daemon_cpu_s = cpu_seconds(pid) - self._cpu0
        if self.counter is not None:
            counts, seconds = self.counter.stop()
            self.requests, self.request_s = dict(counts), dict(seconds)
        return dt


@dataclass
class Workload:
    name: str
    unit: str
    floor: float
    fn: Callable[[Ctx], float]  # returns a throughput (higher is better)
    description: str


def write_file(path: str, data: bytearray, fsync: bool = True) -> float:
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


def read_file(path: str, expect: bytearray, verify: bool) -> float:
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
    dt = write_file(os.path.join(ctx.root, "big"), ctx.inputs.data)
    ctx.ops = ctx.inputs.size // MiB
    return ctx.inputs.size / dt / 1e6


def wl_read(ctx: Ctx) -> float:
    path = os.path.join(ctx.root, "big")
    if not os.path.exists(path):  # "write" not selected: prepare the file, untimed
        write_file(path, ctx.inputs.data)
        ctx.target.settle()
    drop_page_cache()
    dt = read_file(path, ctx.inputs.data, ctx.args.verify)
    ctx.ops = ctx.inputs.size // MiB
    return ctx.inputs.size / dt / 1e6


def wl_create(ctx: Ctx) -> float:
    d = os.path.join(ctx.root, "create")
    os.mkdir(d)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    small = ctx.inputs.small
    t0 = ctx.start()
    for i, data in enumerate(small):
        fd = os.open(f"{d}/f{i:05d}", flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    dt = ctx.stop(t0)
    ctx.ops = len(small)
    return len(small) / dt


def _created(ctx: Ctx) -> list[str]:
    """The files of "create" (made now, untimed, if it did not run), caches dropped."""
    d = os.path.join(ctx.root, "create")
    if not os.path.isdir(d):
        wl_create(ctx)
        ctx.target.settle()
    drop_page_cache()  # also the kernel's dentries and inodes: every name is looked up
    ctx.ops = len(ctx.inputs.small)
    return [f"{d}/f{i:05d}" for i in range(len(ctx.inputs.small))]


def wl_stat(ctx: Ctx) -> float:
    paths = _created(ctx)
    t0 = ctx.start()
    for p in paths:
        os.stat(p)
    return len(paths) / ctx.stop(t0)


def wl_readsmall(ctx: Ctx) -> float:
    paths = _created(ctx)
    got = []
    t0 = ctx.start()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            got.append(os.read(fd, 2 * CREATE_SIZE))
        finally:
            os.close(fd)
    dt = ctx.stop(t0)
    if ctx.args.verify and got != ctx.inputs.small:
        raise RuntimeError("read back wrong data from the small files")
    return len(paths) / dt


def wl_delete(ctx: Ctx) -> float:
    paths = _created(ctx)
    t0 = ctx.start()
    for p in paths:
        os.unlink(p)
    return len(paths) / ctx.stop(t0)


def wl_save(ctx: Ctx) -> float:
    """An editor's save: write a new copy, fsync it, rename it over the file."""
    d = os.path.join(ctx.root, "save")
    os.mkdir(d)
    name, tmp = f"{d}/notes.txt", f"{d}/.notes.txt.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    small = ctx.inputs.small[:SAVES]
    t0 = ctx.start()
    for data in small:
        fd = os.open(tmp, flags, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name)
    dt = ctx.stop(t0)
    ctx.ops = len(small)
    return len(small) / dt


def wl_untar(ctx: Ctx) -> float:
    d = os.path.join(ctx.root, "untar")
    os.mkdir(d)
    if ctx.args.untar_tool == "tar":
        t0 = ctx.start()
        subprocess.run(["tar", "-xf", ctx.inputs.tarball, "-C", d], check=True)
        dt = ctx.stop(t0)
    else:
        t0 = ctx.start()
        with tarfile.open(ctx.inputs.tarball) as tf:
            tf.extractall(d, filter="fully_trusted")
        dt = ctx.stop(t0)
    ctx.ops = ctx.inputs.tar_files
    return ctx.inputs.tar_files / dt


def wl_rmtree(ctx: Ctx) -> float:
    d = os.path.join(ctx.root, "untar")
    if not os.path.isdir(d):
        wl_untar(ctx)
        ctx.target.settle()
    drop_page_cache()
    t0 = ctx.start()
    subprocess.run(["rm", "-r", d], check=True)
    ctx.ops = ctx.inputs.tar_files
    return ctx.inputs.tar_files / ctx.stop(t0)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("write", "MB/s", 0.8, wl_write, "SIZE incompressible, 1 MiB writes, one fsync"),
    Workload("read", "MB/s", 0.4, wl_read, "read SIZE back after dropping the page cache"),
    Workload("create", "files/s", 0.1, wl_create, f"{CREATE_FILES} new 4 KiB files, one dir"),
    Workload("stat", "files/s", 0.0, wl_stat, "stat those files, caches dropped"),
    Workload("readsmall", "files/s", 0.0, wl_readsmall, "read those files, caches dropped"),
    Workload("delete", "files/s", 0.0, wl_delete, "delete those files, caches dropped"),
    Workload("untar", "files/s", 0.12, wl_untar, f"extract a {UNTAR_FILES}-file source tarball"),
    Workload("rmtree", "files/s", 0.0, wl_rmtree, "rm -r of that tree, caches dropped"),
    Workload("save", "saves/s", 0.0, wl_save, f"{SAVES} editor saves: write 4 KiB, fsync, rename"),
)}
#: Workloads of many small requests (every target runs them; the null fs only these).
SMALL_FILE_WORKLOADS = ("create", "stat", "readsmall", "delete", "untar", "rmtree", "save")


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


def warm_up(base: str, data: bytearray, copies: int) -> None:
    """Write (fsync) and delete *copies* files of *data* before measuring anything.

    On thinly provisioned virtual disks the first write to a region is much slower
    than later ones; without this the first run's numbers depend on the layout.
    """
    log(f"warm-up: writing and deleting {copies} x {len(data) / MiB:.0f} MiB")
    paths = [os.path.join(base, f"warmup{i}") for i in range(copies)]
    try:
        for path in paths:
            write_file(path, data)
    finally:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
        os.sync()
