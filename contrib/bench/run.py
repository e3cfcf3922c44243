"""One run of the workloads on a target, with py-spy on the daemon when asked."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time

from .common import find_tool, log
from .requests import RequestCounter
from .targets import MegafsTarget, Target
from .workloads import SMALL_FILE_WORKLOADS, WORKLOADS, Ctx, Inputs


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


def run_target(cls: type[Target], base: str, run: int, inputs: Inputs,
               args: argparse.Namespace, profiler: Profiler) -> dict:
    """One run of every selected workload on a fresh instance of a target."""
    scratch = tempfile.mkdtemp(prefix=f"{cls.name}-run{run}-", dir=base)
    target = cls(scratch, args)
    result: dict = {"values": {}, "settle_s": {}, "requests": {}}
    ok = False
    try:
        root = target.start()
        target.settle()
        for name in args.workloads:
            if getattr(cls, "small_files_only", False) and name not in SMALL_FILE_WORKLOADS:
                continue
            wl = WORKLOADS[name]
            ctx = Ctx(root, target, inputs, args)
            if args.count_requests and os.path.ismount(root):
                ctx.counter = RequestCounter(root)
            profiler.start(target, name, run)
            try:
                value = wl.fn(ctx)
            finally:
                profiler.stop()
            result["values"][name] = value
            if ctx.daemon_cpu_s is not None and ctx.ops:
                result.setdefault("daemon_cpu_us_per_op", {})[name] = \
                    1e6 * ctx.daemon_cpu_s / ctx.ops
            if ctx.requests is not None:
                result["requests"][name] = {"ops": ctx.ops, "counts": ctx.requests,
                                            "seconds": ctx.request_s}
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
