"""megafs on S3 against raw requests to the same SeaweedFS server: the s3-* workloads."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from dataclasses import dataclass

from .common import RAW_WORKERS, CpuWatch, drop_page_cache, log, pin
from .run import Profiler
from .targets import MegafsS3Target, Seaweed
from .workloads import Inputs, read_file, write_file


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
    S3Workload("s3-untar", "s", None,
               "untar the source tarball + unmount until uploaded, requests counted;"
               " megafs, megafs-before, rclone, S3QL (bench/s3tree.py)"),
    S3Workload("s3-coldtar", "files/s", None,
               "tar -c of that tree after remounting with an empty cache dir"),
)}
#: The s3-* workloads that compare megafs with raw requests (run_s3); the others are
#: in bench/s3tree.py.
RAW_S3_WORKLOADS = ("s3-copy", "s3-coldread")


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
        write_file(path, inputs.data, fsync=False)
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
            r["coldread_s"] = read_file(os.path.join(root, "big"), inputs.data, args.verify)
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
