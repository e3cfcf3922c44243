"""Constants and helpers shared by the benchmark's modules: sizes, logging, the page
cache, CPU placement, the CPU time of a process, and waiting for rclone's uploads."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time

MiB = 1 << 20
CHUNK = MiB
CREATE_FILES = 3000
CREATE_SIZE = 4096
UNTAR_FILES = 2600
SAVES = 1000  # editor saves (each of a 4 KiB file: write, fsync, rename)
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


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process *pid* has used so far (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_rclone_uploads(rc_port: int, wait_s: float, poll_s: float) -> None:
    """Poll an rclone mount's remote control (``--rc-addr 127.0.0.1:rc_port``) until no
    upload is queued or running; fail if one failed or *wait_s* passed."""
    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        r = httpx.post(f"http://127.0.0.1:{rc_port}/vfs/stats", timeout=30)
        r.raise_for_status()
        disk = r.json()["diskCache"]
        if disk.get("erroredFiles"):
            raise RuntimeError(f"rclone: {disk['erroredFiles']} files failed to upload")
        if disk["uploadsInProgress"] + disk["uploadsQueued"] == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("rclone: uploads did not finish")
        time.sleep(poll_s)
