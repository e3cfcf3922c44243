"""The control channel, both ends: how megafs's tools talk to a running mount.

A megafs daemon answers extended attributes on its mount's root that are never
stored (see :class:`megafs.mount.Control` for the actions):

==================  ==========  =====================================================
attribute           call        value
==================  ==========  =====================================================
``megafs.pid``      getxattr    the daemon's process id, decimal
``megafs.status``   getxattr    upload progress, a JSON object (:data:`STATUS_FIELDS`)
``megafs.stats``    getxattr    the figures ``megafs stat`` shows, a JSON object
``megafs.shares``   getxattr    every link of the filesystem, a JSON list
``megafs.ctrl``     setxattr    an action: ``flush``, ``dropcache``, ...
``megafs.unshare``  setxattr    revoke the share with this id or link
``megafs.share``    both        on any file or folder: its link; set to share/revoke
==================  ==========  =====================================================

Only the mount's owner and root may use them. This module also holds the one way
to tell whether a path is the mountpoint of a megafs mount (``/proc/self/mounts``,
whose mountpoints are octal-escaped as getmntent(3) describes).
"""

from __future__ import annotations

import json
import os

from megafs.errors import NotMounted
from megafs.osutil import unescape_mount_field

PREFIX = b"megafs."  #: every control attribute on the root starts with this
PID = "megafs.pid"
STATUS = "megafs.status"
STATS = "megafs.stats"
SHARES = "megafs.shares"
CTRL = "megafs.ctrl"
UNSHARE = "megafs.unshare"
SHARE = "megafs.share"
FSTYPE = "fuse.megafs"  #: the filesystem type megafs mounts show in /proc/mounts

#: Fields of ``megafs.status``: name -> meaning.
STATUS_FIELDS = {
    "dirty_bytes": "bytes written but not uploaded yet",
    "cache_bytes": "bytes in the local block cache",
    "cache_max": "upper bound of the local block cache",
    "log_level": "the root logger's level (debug, info, ...)",
    "upload_error": "the storage error uploads wait on, or an empty string",
    "lock_lost": "true once another writer took the store's lock",
}


def encode(value) -> bytes:
    """A JSON attribute value (status, stats, shares), as the daemon returns it."""
    return json.dumps(value, sort_keys=True).encode()


def decode(raw: bytes):
    return json.loads(raw)


def mount_table() -> list[tuple[str, str, str, set[str]]]:
    """(source, mountpoint, filesystem type, options) of every mount, in mount order."""
    table = []
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            src, mnt, fstype, options = line.split()[:4]
            table.append((unescape_mount_field(src), unescape_mount_field(mnt), fstype,
                          set(options.split(","))))
    return table


def megafs_mounts() -> dict[str, str]:
    """Mountpoint -> source for every megafs mount."""
    return {mnt: src for src, mnt, fstype, _ in mount_table() if fstype == FSTYPE}


def megafs_mountpoint(path: str) -> str:
    """*path* as /proc/mounts names it (symlinks resolved); NotMounted if it is not the
    mountpoint of a megafs mount. Works on a dead mount too (realpath does not need to
    stat the mountpoint itself)."""
    mnt = os.path.realpath(path)
    if mnt not in megafs_mounts():
        raise NotMounted(f"{path} is not a megafs mount point")
    return mnt


def mount_options(mnt: str) -> set[str]:
    """The options (``ro``, ``rw``, ...) of the last mount on *mnt*; empty if none."""
    options: set[str] = set()
    for _, path, _, opts in mount_table():
        if path == mnt:
            options = opts
    return options


def _not_answering(mnt: str, e: OSError) -> NotMounted:
    return NotMounted(f"{mnt}: the megafs daemon does not answer ({e.strerror})")


def daemon_pid(mnt: str) -> int:
    """The pid of the daemon serving *mnt*; NotMounted if it does not answer."""
    try:
        return int(os.getxattr(mnt, PID))
    except OSError as e:
        raise _not_answering(mnt, e) from None


def read_json(mnt: str, name: str):
    """A JSON control attribute of *mnt*; NotMounted if the daemon does not answer."""
    try:
        return decode(os.getxattr(mnt, name))
    except OSError as e:
        raise _not_answering(mnt, e) from None


def read_status(mnt: str) -> dict:
    """The daemon's ``megafs.status`` (fields :data:`STATUS_FIELDS`)."""
    return read_json(mnt, STATUS)


def send(mnt: str, command: str) -> None:
    """Hand *command* to the daemon of *mnt* (``megafs.ctrl``); return once it is
    carried out. Raises OSError as setxattr does (EINVAL: refused)."""
    os.setxattr(mnt, CTRL, command.encode())
