"""Small operating-system helpers that the standard library lacks."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat

_libc = ctypes.CDLL(None, use_errno=True)
#: How /proc/mounts and mountinfo escape characters of paths (see getmntent(3)).
_MOUNT_ESCAPE = re.compile(r"\\([0-7]{3})")
_UMOUNT_NOFOLLOW = 8  # as fusermount3: never follow a symlink swapped in for the path
_MNT_DETACH = 2  # lazy: detach now (a dead FUSE mount), clean up when no longer busy


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


def umount(path: str, *, lazy: bool = False) -> bool:
    """Unmount *path* with umount2(2) if we may (root): True if done; False when not
    permitted, so the caller falls back to ``fusermount3 -u``. Raises OSError otherwise
    (EBUSY: something still uses the mount). Saves spawning fusermount3 (~0.1 s)."""
    if os.geteuid() != 0:
        return False
    flags = _UMOUNT_NOFOLLOW | (_MNT_DETACH if lazy else 0)
    if _libc.umount2(os.fsencode(path), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EPERM:
        return False
    raise OSError(err, os.strerror(err), path)


def unescape_mount_field(field: str) -> str:
    """A path field of /proc/self/mounts or mountinfo as the path it names: the
    kernel writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    return _MOUNT_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def set_fuse_readahead(mountpoint: str, kib: int) -> bool:
    """Raise the kernel's readahead for the FUSE mount on *mountpoint* to *kib* KiB.

    The kernel starts FUSE mounts at 128 KiB, so a sequential reader sends one
    request per 128 KiB; with a larger window it sends up to ``max_read`` (1 MiB)
    per request. Needs root (``/sys/class/bdi``); returns False when it could
    not be set. Uses ``/proc/self/mountinfo`` rather than stat(2): the mount must
    not be touched before its request loop runs.
    """
    target = os.path.abspath(mountpoint)
    dev = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                path = unescape_mount_field(fields[4])
                if path == target and " - fuse" in line:
                    dev = fields[2]  # the last mount on a path wins
        if dev is None:
            return False
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(str(kib))
        return True
    except OSError:
        return False


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Keep glibc from handing every large buffer back to the kernel when it is freed.

    The daemon allocates and frees a few block-sized buffers per block it uploads or
    fetches (plaintext, envelope, ciphertext). With glibc's defaults these come
    from fresh ``mmap``s or a heap top that is trimmed right after, so every one of
    their pages faults in again: sealing a 1 MiB block then costs ~1.7 ms of CPU
    instead of ~0.3 ms. Serving them from the (per-thread) heaps, and trimming a
    heap only once more than *trim_threshold* bytes are free at its top, keeps the
    pages mapped. Returns False when the C library has no ``mallopt`` (not glibc).
    """
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                and mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def private_dir(path: str) -> None:
    """Make *path* a directory only its owner can enter (0700), creating it or tightening
    an existing one, and make what it holds at its top private too (files 0600, folders
    0700): a cache directory holds file names, metadata and share keys in clear.

    Refuses (CacheError) a directory that is not this user's own or has the sticky bit
    (such as /tmp): tightening a shared directory would break it for everyone else.
    """
    from megafs.errors import CacheError

    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.geteuid() or st.st_mode & stat.S_ISVTX:
        raise CacheError(f"cache directory {path} is shared (another owner, or sticky like"
                         " /tmp): give a directory of its own")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    with os.scandir(path) as entries:
        for entry in entries:
            mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
            if entry.is_dir(follow_symlinks=False) and mode & 0o077:
                os.chmod(entry.path, mode & 0o700)
            elif entry.is_file(follow_symlinks=False) and mode & 0o077:
                os.chmod(entry.path, mode & 0o600)
