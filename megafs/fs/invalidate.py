"""Telling the kernel that a follower's metadata changed under it (docs/format.md §5c).

The kernel caches directory entries, attributes and file pages of a FUSE mount. When a
follower applies a newer state, :func:`invalidate` drops what changed: the entries
(parent, name) that were added, removed or repointed, and the attributes and pages of
the inodes whose rows or blocks changed, in a worker thread, since invalidating waits
for requests in progress, which this process must answer. A file opened through an
entry the kernel still had of a removed inode fails to open (see Operations.open).
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

log = logging.getLogger(__name__)


def _invalidate(entries: list[tuple[int, bytes]], inodes: list[int]) -> None:
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError as e:  # ENOENT: the kernel does not know it
            if e.errno != errno.ENOENT:
                log.warning("could not invalidate the kernel's entry %r: %s", name, e)
    for ino in inodes:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as e:  # ENOENT: the kernel forgot it meanwhile
            if e.errno != errno.ENOENT:
                log.warning("could not invalidate the kernel's cache of inode %d: %s", ino, e)


async def invalidate(entries: set[tuple[int, bytes]], inodes: set[int]) -> None:
    """Drop the kernel's cached *entries* (parent inode, name) and *inodes*; returns once
    the kernel has."""
    if entries or inodes:
        await trio.to_thread.run_sync(_invalidate, sorted(entries), sorted(inodes))
