"""Small operating-system helpers that the standard library lacks."""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: str) -> None:
    """Flush every dirty page of the filesystem holding *path* (one syscall, not one per file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            e = ctypes.get_errno()
            if e != errno.ENOSYS:
                raise OSError(e, os.strerror(e), path)
    finally:
        os.close(fd)
