"""Deleting cache files off the request path.

Unlinking a block file frees its inode and data blocks, which on ext4 costs from
tens of microseconds to milliseconds; done in the trio thread it stalls every
request behind it (deleting files, and renaming one over another). A dropped
block file is therefore renamed to a garbage name in the same directory (a cheap
directory update, and its old name is free again at once) and unlinked later, in
batches, in a worker thread. A name with a suffix other than ``.d`` is garbage to
:meth:`megafs.core.cache.BlockCache.recover`, so what a crash leaves behind is
removed at the next mount; :meth:`Trash.close` empties the rest on a clean stop.
"""

from __future__ import annotations

import logging
import os

import trio

from megafs.threads import run_sync

log = logging.getLogger(__name__)
GARBAGE_SUFFIX = ".gone"


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:  # garbage: the next mount's recovery tries again
            log.warning("cache directory: cannot remove %s: %s", path, e.strerror)


class Trash:
    def __init__(self):
        self.nursery: trio.Nursery | None = None  # set by the daemon; without it: unlink now
        self.pending: list[str] = []
        self.reaping = False
        self.seq = 0

    def discard(self, path: str) -> None:
        """Remove the file *path* (FileNotFoundError is ignored)."""
        if self.nursery is None:
            _unlink_all([path])
            return
        self.seq += 1
        garbage = f"{path}{GARBAGE_SUFFIX}{self.seq}"
        try:
            os.rename(path, garbage)
        except FileNotFoundError:
            return
        self.pending.append(garbage)
        if not self.reaping:
            self.reaping = True
            self.nursery.start_soon(self._reap)

    async def _reap(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                await run_sync(_unlink_all, batch)
        finally:
            self.reaping = False

    def close(self) -> None:
        batch, self.pending = self.pending, []
        _unlink_all(batch)
