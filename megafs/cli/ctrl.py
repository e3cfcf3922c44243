"""``megafs ctrl MOUNTPOINT ACTION``: act on a running mount through its control channel.

The daemon answers ``setxattr(MOUNTPOINT, "megafs.ctrl", b"ACTION [ARGS]")`` on the
mount's root (see :mod:`megafs.fs.control` and :class:`megafs.mount.Control`); an
action it does not know, or a bad value, fails with EINVAL.
"""

from __future__ import annotations

import errno

from megafs.cli.common import LEVELS, Progress, positive_size
from megafs.cli.umount import flush_mount
from megafs.errors import NotMounted, UsageError
from megafs.fs import control


def add_command(sub) -> None:
    p = sub.add_parser(
        "ctrl", help="act on a running mount: flush, drop the cache, set the log level or"
                     " the cache size",
        description="Act on the daemon serving MOUNTPOINT, without unmounting.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the filesystem is mounted")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("flush", help="upload every changed block and the metadata now;"
                                     " returns when they are in the store")
    actions.add_parser("dropcache", help="drop every cached block that is already in the"
                                         " store (later reads download it again)")
    a = actions.add_parser("log-level", help="change what the daemon logs: LEVEL is one of "
                                             + ", ".join(LEVELS))
    a.add_argument("level", metavar="LEVEL", type=str.lower, choices=LEVELS,
                   help="the new level, of every module or of MODULES")
    a.add_argument("modules", metavar="MODULES", nargs="?",
                   help="comma-separated logger names, such as megafs.core.cache")
    a = actions.add_parser("cachesize", help="change the upper bound of the local block cache"
                                             " (the --cache-size of mount.megafs)")
    a.add_argument("size", metavar="SIZE", type=positive_size, help="such as 512M or 8G")
    p.set_defaults(fn=ctrl)


def ctrl(args) -> int:
    mnt = control.megafs_mountpoint(args.mountpoint)
    control.daemon_pid(mnt)  # NotMounted when the daemon does not answer
    if args.action == "flush":
        with Progress("megafs ctrl", "uploading data and metadata") as progress:
            flush_mount(mnt, progress, prog="megafs ctrl")
        return 0
    if args.action == "log-level":
        command = f"log-level {args.level}" + (f" {args.modules}" if args.modules else "")
    elif args.action == "cachesize":
        if args.size <= 0:
            raise UsageError("the cache size must be positive")
        command = f"cachesize {args.size}"
    else:
        command = args.action
    send(mnt, command)
    return 0


def send(mnt: str, command: str) -> None:
    """Hand *command* to the daemon of *mnt*; return once it is carried out."""
    try:
        control.send(mnt, command)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise UsageError(f"{mnt}: the daemon refused {command!r}") from None
        raise NotMounted(f"{mnt}: the megafs daemon does not answer ({e.strerror})") from None
