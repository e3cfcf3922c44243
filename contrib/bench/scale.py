"""The scale scenario (``--scale``): N empty files in N/1000 directories on a megafs
mount with a local store, then what a large filesystem costs:

* creating them (files/s) and the daemon's peak RSS (VmHWM) while it does;
* the daemon's RSS after a ``find`` over the tree, and on a cold mount its peak RSS
  (the metadata download, then a ``find``);
* a warm mount (the same cache directory) and a cold one (an empty cache directory),
  each the time ``mount.megafs`` takes to return;
* ``find`` over the whole tree, warm and cold (page and dentry caches dropped);
* the bytes one ``chmod`` adds to the store once flushed, and the full snapshot;
* the time ``fsck.megafs --dry-run`` takes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from .common import drop_page_cache, log
from .targets import MegafsLocalTarget

FILES_PER_DIR = 1000
RSS_POLL_S = 0.5  # how often the RSS is sampled while creating


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def tree_files(root: str) -> dict[str, tuple[int, int]]:
    """path -> (size, mtime in ns) of every file under *root*."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(d, f))
            out[os.path.join(d, f)] = (st.st_size, st.st_mtime_ns)
    return out


def create_tree(mnt: str, n: int, pid: int) -> tuple[float, int]:
    """Create *n* empty files; return (seconds, highest RSS sampled, KiB)."""
    peak = 0
    last = time.monotonic()
    t0 = time.perf_counter()
    for i in range(n):
        if i % FILES_PER_DIR == 0:
            d = os.path.join(mnt, f"d{i // FILES_PER_DIR:04d}")
            os.mkdir(d)
        os.close(os.open(f"{d}/f{i % FILES_PER_DIR:04d}", os.O_WRONLY | os.O_CREAT, 0o644))
        if time.monotonic() - last > RSS_POLL_S:
            last = time.monotonic()
            peak = max(peak, status_kib(pid, "VmRSS"))
    return time.perf_counter() - t0, peak


def timed_find(mnt: str) -> tuple[float, int]:
    drop_page_cache()
    t0 = time.perf_counter()
    out = subprocess.run(["find", mnt], check=True, capture_output=True).stdout
    return time.perf_counter() - t0, out.count(b"\n")


def run_scale(base: str, args: argparse.Namespace) -> dict:
    n = args.scale_files
    target = MegafsLocalTarget(base, args)
    r: dict = {"files": n}
    mnt = target.start()
    try:
        store = os.path.join(base, "store")
        r["create_s"], rss_peak = create_tree(mnt, n, target.pid)
        r["create_rss_sampled_mb"] = rss_peak / 1024
        r["create_vmhwm_mb"] = status_kib(target.pid, "VmHWM") / 1024
        log(f"scale: {n} files in {r['create_s']:.1f} s ({n / r['create_s']:.0f}/s), daemon"
            f" VmHWM {r['create_vmhwm_mb']:.0f} MB")
        target.settle()
        r["rss_after_create_mb"] = status_kib(target.pid, "VmRSS") / 1024
        r["find_warm_s"], found = timed_find(mnt)
        r["find_entries"] = found
        r["rss_after_find_mb"] = status_kib(target.pid, "VmRSS") / 1024
        r["vmhwm_after_flush_mb"] = status_kib(target.pid, "VmHWM") / 1024
        before = tree_files(store)
        os.chmod(os.path.join(mnt, "d0000", "f0000"), 0o600)
        target.settle()
        after = tree_files(store)
        r["chmod_upload_bytes"] = sum(s for p, (s, _) in after.items()
                                      if before.get(p) != after[p])
        target.stop()
        snaps = [s for p, (s, _) in tree_files(store).items() if "/m/" in p]
        r["largest_metadata_object_bytes"] = max(snaps) if snaps else 0
        t0 = time.perf_counter()
        target.mount(target.cache)
        r["mount_warm_s"] = time.perf_counter() - t0
        target.stop()
        t0 = time.perf_counter()
        target.mount(os.path.join(base, "cache-cold"))
        r["mount_cold_s"] = time.perf_counter() - t0
        r["find_cold_s"], _ = timed_find(mnt)
        r["rss_after_cold_find_mb"] = status_kib(target.pid, "VmRSS") / 1024
        r["cold_vmhwm_mb"] = status_kib(target.pid, "VmHWM") / 1024
        target.stop()
        t0 = time.perf_counter()
        target.run_tool(target.tool("fsck.megafs"), "--dry-run", "--cache-dir",
                        os.path.join(base, "cache-fsck"), target.store_url())
        r["fsck_s"] = time.perf_counter() - t0
    except BaseException:
        target.abort()
        raise
    return r


def print_scale(r: dict, f) -> None:
    n = r["files"]
    print(f"\nscale: {n} empty files in {n // FILES_PER_DIR} directories (local store)", file=f)
    rows = [
        ("create", f"{r['create_s']:.1f} s ({n / r['create_s']:.0f} files/s)"),
        ("daemon peak RSS while creating (VmHWM)", f"{r['create_vmhwm_mb']:.0f} MB"),
        ("daemon peak RSS including the flush after", f"{r['vmhwm_after_flush_mb']:.0f} MB"),
        ("daemon RSS after creating / after a find", f"{r['rss_after_create_mb']:.0f} MB /"
                                                     f" {r['rss_after_find_mb']:.0f} MB"),
        ("find, warm / cold mount", f"{r['find_warm_s']:.2f} s / {r['find_cold_s']:.2f} s"
                                    f" ({r['find_entries']} entries)"),
        ("mount, warm / cold cache", f"{r['mount_warm_s']:.2f} s / {r['mount_cold_s']:.2f} s"),
        ("daemon RSS after find on the cold mount", f"{r['rss_after_cold_find_mb']:.0f} MB"),
        ("cold mount's peak RSS (download, find)", f"{r['cold_vmhwm_mb']:.0f} MB"),
        ("store bytes written by one chmod", f"{r['chmod_upload_bytes']:,}"),
        ("largest metadata object (snapshot)", f"{r['largest_metadata_object_bytes']:,} bytes"),
        ("fsck.megafs --dry-run", f"{r['fsck_s']:.2f} s"),
    ]
    for name, value in rows:
        print(f"  {name:<42} {value}", file=f)
