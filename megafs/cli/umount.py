"""umount.megafs: unmount, returning only when everything is in the store."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from megafs.cli.common import parser, run
from megafs.errors import MegafsError, NotMounted


def megafs_mounts() -> dict[str, str]:
    """Mountpoint -> source for every megafs mount in /proc/mounts."""
    out = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            src, mnt, fstype = line.split()[:3]
            if fstype == "fuse.megafs":
                out[mnt.replace("\\040", " ")] = src
    return out


def daemon_pid(mountpoint: str) -> int:
    try:
        return int(os.getxattr(mountpoint, "megafs.pid"))
    except OSError as e:
        raise NotMounted(f"{mountpoint}: the megafs daemon does not answer ({e.strerror})") from None


def _main(argv=None) -> int:
    p = parser("umount.megafs", "Unmount a megafs filesystem after uploading all its data.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    args = p.parse_args(argv)
    mnt = os.path.abspath(args.mountpoint)
    if mnt not in megafs_mounts():
        raise NotMounted(f"{mnt} is not a megafs mount point")
    pid = daemon_pid(mnt)
    tty = sys.stderr.isatty()
    if tty:
        print("umount.megafs: uploading data and metadata...", file=sys.stderr)
    try:
        os.setxattr(mnt, "megafs.ctrl", b"flush")
    except OSError as e:
        raise MegafsError(f"{mnt}: flushing failed ({e.strerror}); see the daemon log") from None
    r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
    if r.returncode != 0:
        msg = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "fusermount3 failed"
        raise MegafsError(msg)
    # The daemon uploads whatever changed since the flush, then exits.
    last = time.monotonic()
    while os.path.exists(f"/proc/{pid}"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        except OSError:
            break
        time.sleep(0.05)
        if tty and time.monotonic() - last > 5:
            print("umount.megafs: waiting for the daemon to finish uploading...", file=sys.stderr)
            last = time.monotonic()
    return 0


def main(argv=None) -> int:
    return run("umount.megafs", _main, argv)
