"""Direct I/O (``O_DIRECT``) for whole blocks of cache files.

Large block writes and the upload's read-back bypass the page cache: the kernel
copies straight between the disk and a page-aligned buffer. The page cache gains
nothing from a second copy of a block the kernel already caches for the mounted
file, and filling it is what costs: on a virtual machine that returns freed memory
to its host (free page reporting), every newly touched page of page cache faults
on the host, and writing 1 GiB through the page cache took 2.3-2.6 s of CPU here
against 0.13 s with ``O_DIRECT`` (docs/performance.md).

Only the page-aligned middle of a request goes direct; a partial page at either
end (at the end of a file) goes through the page cache. Linux keeps the two
coherent: a direct write first writes back and drops the cached pages it covers,
a direct read first writes back the dirty ones.

A file system that refuses ``O_DIRECT`` (``EINVAL``: tmpfs before Linux 6.6, some
FUSE file systems) makes :func:`supported` false and everything goes through the
page cache as before. All functions here block: call them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading

ALIGN = 4096  # offsets, lengths and buffer addresses: the page size covers every device
_local = threading.local()


def _buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of at least *size* bytes, one per thread, reused."""
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = _local.buf = mmap.mmap(-1, max(size, 1 << 20))
    return buf


def supported(directory: str) -> bool:
    """Whether files in *directory* can be written and read with ``O_DIRECT`` the way
    :func:`pwrite` and :func:`pread` do it (reopened through ``/proc/self/fd``)."""
    if not getattr(os, "O_DIRECT", 0):
        return False
    path = os.path.join(directory, ".directio-probe")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError:
        return False
    try:
        probe = bytes(range(256)) * (ALIGN // 256)
        pwrite(fd, probe, 0)
        return pread(fd, ALIGN, 0) == probe
    except OSError:
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)


def _reopen(fd: int, mode: int) -> int:
    # A new open file description of the same file: O_DIRECT set on it leaves *fd*
    # alone, and a rename of the file meanwhile does not matter.
    return os.open(f"/proc/self/fd/{fd}", mode | os.O_DIRECT)


def pwrite(fd: int, data, offset: int) -> None:
    """Write all of *data* at *offset* of the file open as *fd*; the page-aligned
    middle with ``O_DIRECT``. Raises OSError(ENOSPC) on a short write."""
    view = memoryview(data)
    start = -offset % ALIGN  # bytes before the first aligned offset
    n = (len(view) - start) // ALIGN * ALIGN if len(view) > start else 0
    if n:
        buf = _buffer(n)
        buf[:n] = view[start:start + n]
        dfd = _reopen(fd, os.O_WRONLY)
        try:
            done = os.pwrite(dfd, memoryview(buf)[:n], offset + start)
        finally:
            os.close(dfd)
        if done != n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    else:
        start = len(view)  # nothing aligned: all through the page cache
    for lo, hi in ((0, start), (start + n, len(view))):
        if hi > lo and os.pwrite(fd, view[lo:hi], offset + lo) != hi - lo:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def pread(fd: int, size: int, offset: int) -> bytes:
    """Read *size* bytes at *offset* (fewer at the end of the file), page-aligned
    ranges with ``O_DIRECT``."""
    if offset % ALIGN or size < ALIGN:
        return os.pread(fd, size, offset)
    n = (size + ALIGN - 1) // ALIGN * ALIGN
    buf = _buffer(n)
    dfd = _reopen(fd, os.O_RDONLY)
    try:
        got = os.preadv(dfd, [memoryview(buf)[:n]], offset)
    finally:
        os.close(dfd)
    return buf[:min(got, size)]
