"""Counting the FUSE requests the kernel sends a mount, and the time each takes from
sent to answered, from the kernel's own ``fuse:fuse_request_send`` and
``fuse_request_end`` tracepoints (Linux 6.13 and later) in a private tracefs
instance filtered on the mount's connection. It works for any FUSE filesystem
alike (megafs, the null fs, the peers) and costs the daemons nothing.

Needs root and tracefs (mounted on /sys/kernel/tracing if it is not)."""

from __future__ import annotations

import collections
import os
import re
import subprocess

from .common import log

TRACEFS = "/sys/kernel/tracing"
EVENT = "events/fuse/fuse_request_send"
END_EVENT = "events/fuse/fuse_request_end"
BUFFER_KB = 65536  # per CPU: room for ~1M events, enough for every small-file workload
MINOR_BITS = 20  # the kernel's dev_t: major << 20 | minor
_SEND = re.compile(r" ([\d.]+): fuse_request_send: connection \d+ req (\d+) opcode \d+"
                   r" \(FUSE_(\w+)\)")
_END = re.compile(r" ([\d.]+): fuse_request_end: connection \d+ req (\d+) ")


def available() -> bool:
    if not os.path.isdir(os.path.join(TRACEFS, "events")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], capture_output=True)
    return os.path.isdir(os.path.join(TRACEFS, EVENT))


class RequestCounter:
    """Requests sent to the FUSE mount on *mountpoint* between ``start()`` and ``stop()``."""

    def __init__(self, mountpoint: str):
        st = os.stat(mountpoint)
        self.connection = (os.major(st.st_dev) << MINOR_BITS) | os.minor(st.st_dev)
        self.dir = os.path.join(TRACEFS, "instances", f"megafs-bench-{os.getpid()}")

    def _write(self, rel: str, text: str) -> None:
        with open(os.path.join(self.dir, rel), "w") as f:
            f.write(text)

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)  # mkdir in tracefs creates an instance
        self._write("buffer_size_kb", str(BUFFER_KB))
        for event in (EVENT, END_EVENT):
            self._write(f"{event}/filter", f"connection == {self.connection}")
        self._write("trace", "")
        for event in (EVENT, END_EVENT):
            self._write(f"{event}/enable", "1")

    def stop(self) -> tuple[collections.Counter, collections.Counter]:
        """(requests by opcode, seconds from sent to answered by opcode)."""
        for event in (EVENT, END_EVENT):
            self._write(f"{event}/enable", "0")
        counts: collections.Counter = collections.Counter()
        seconds: collections.Counter = collections.Counter()
        sent: dict[str, tuple[str, float]] = {}
        with open(os.path.join(self.dir, "trace")) as f:
            for line in f:
                m = _SEND.search(line)
                if m:
                    counts[m.group(3)] += 1
                    sent[m.group(2)] = (m.group(3), float(m.group(1)))
                elif m := _END.search(line):
                    op, t = sent.pop(m.group(2), (None, 0.0))
                    if op is not None:
                        seconds[op] += float(m.group(1)) - t
        for cpu in os.listdir(os.path.join(self.dir, "per_cpu")):
            with open(os.path.join(self.dir, "per_cpu", cpu, "stats")) as f:
                if "overrun: 0" not in f.read():
                    log("warning: the trace buffer overran; request counts are low")
        os.rmdir(self.dir)
        return counts, seconds
