"""megafs: the general tool (subcommands)."""

from __future__ import annotations

import os

from megafs.cli import keys
from megafs.cli.common import parser, run
from megafs.cli.umount import daemon_pid, megafs_mounts
from megafs.errors import NotMounted


def _stat(args) -> int:
    mnt = os.path.abspath(args.mountpoint)
    if mnt not in megafs_mounts():
        raise NotMounted(f"{mnt} is not a megafs mount point")
    pid = daemon_pid(mnt)
    status = os.getxattr(mnt, "megafs.status").decode()
    st = os.statvfs(mnt)
    print(f"mountpoint: {mnt}")
    print(f"daemon pid: {pid}")
    print(f"used: {(st.f_blocks - st.f_bfree) * st.f_frsize} bytes")
    for item in status.split():
        k, _, v = item.partition("=")
        print(f"{k.replace('_', ' ')}: {v}")
    return 0


def _main(argv=None) -> int:
    p = parser("megafs", "megafs: encrypted cloud storage mounted as a folder.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("stat", help="show usage and upload state of a mount")
    s.add_argument("mountpoint", metavar="MOUNTPOINT")
    s.set_defaults(fn=_stat)
    keys.add_commands(sub)
    args = p.parse_args(argv)
    return args.fn(args)


def main(argv=None) -> int:
    return run("megafs", _main, argv)
