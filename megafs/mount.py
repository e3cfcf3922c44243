"""Mount lifecycle: open the store, bring the metadata up to date, serve FUSE, and
on the way out upload everything before exiting.

The daemon reports readiness (or a one-line error and an exit code) to the
process that started it through a pipe, so ``mount.megafs`` returns only once
the mount is usable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
from dataclasses import dataclass, field

import apsw
import pyfuse3
import trio

from megafs.core.filesystem import Filesystem
from megafs.core.localcopy import open_local_metadata
from megafs.core.shares import Shares
from megafs.core.snapshot import (
    Snapshotter,
    set_state,
)
from megafs.errors import (
    BadMountpoint,
    CacheError,
    LockLost,
    MegafsError,
)
from megafs.fs import control
from megafs.fs.operations import Operations
from megafs.osutil import private_dir, set_fuse_readahead
from megafs.store import lifecycle
from megafs.store import lock as store_lock
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
DEFAULT_CAPACITY = 1 << 50  # what df shows without a quota: 1 PiB
READAHEAD_KIB = 1024  # kernel readahead for the mount: matches the 1 MiB request size
FAULT_TASK_ENV = "MEGAFS_FAULT_TASK"  #: names a daemon task that fails at once (tests)


@dataclass
class MountConfig:
    url: str
    mountpoint: str
    passphrase: bytes
    cache_dir: str | None = None
    cache_size: int = 4 << 30
    fuse_options: set[str] = field(default_factory=set)
    upload_delay: float = 5.0
    metadata_interval: float = 2.0
    compact_below: float = 0.8  #: rewrite packs whose live blocks fill less than this
    compact_interval: float = 30.0  #: seconds between compaction rounds
    force: bool = False
    timeout: float = 60.0  #: give up on a storage request after this long (reads: EIO)
    atime: bool = True  #: relatime updates of atime (-o noatime: none)
    diratime: bool = True  #: ... of directories too (-o nodiratime: files only)


def default_cache_dir(store_id: str) -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "megafs", store_id)


def check_mountpoint(path: str, *, nonempty_ok: bool = False) -> None:
    if not os.path.isdir(path):
        raise BadMountpoint(f"mountpoint {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise BadMountpoint(f"{path} is already a mount point")
    if not nonempty_ok and os.listdir(path):
        raise BadMountpoint(f"mountpoint {path} is not empty")


class Control:
    """Answers the control channel on the mount's root (see megafs.fs.operations).

    ``getxattr``: ``megafs.pid``, ``megafs.status``. ``setxattr("megafs.ctrl", ACTION)`` with ACTION one of
    ``flush``, ``dropcache``, ``log-level LEVEL [MODULES]``, ``cachesize BYTES``
    (``megafs ctrl``); anything else fails with EINVAL.
    """

    LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def getxattr(self, name: bytes) -> bytes:
        if name == control.PID.encode():
            return str(os.getpid()).encode()
        if name == control.STATUS.encode():
            return control.encode(self.status())
        raise pyfuse3.FUSEError(errno.ENODATA)

    def status(self) -> dict:
        """The ``megafs.status`` fields (:data:`megafs.fs.control.STATUS_FIELDS`)."""
        fs = self.daemon.fs
        return {
            "dirty_bytes": fs.cache.dirty_bytes,
            "cache_bytes": fs.cache.total,
            "cache_max": fs.cache.max_bytes,
            "log_level": logging.getLevelName(logging.getLogger().level).lower(),
            "upload_error": (fs.uploader.last_error
                             or getattr(fs.store.backend, "failing", None) or ""),
            "lock_lost": bool(self.daemon.lease.lost),
        }

    async def setxattr(self, name: bytes, value: bytes) -> None:
        try:
            is_ctrl = name == control.CTRL.encode()
            action, *args = value.decode("ascii").split() if is_ctrl else [""]
        except (UnicodeDecodeError, ValueError):
            action, args = "", []
        if action == "flush" and not args:
            await self.daemon.flush()
        elif action == "dropcache" and not args:
            self.daemon.fs.cache.evict(0)
            log.info("control: dropped the clean cached blocks")
        elif action == "log-level" and 1 <= len(args) <= 2:
            self._log_level(*args)
        elif action == "cachesize" and len(args) == 1 and args[0].isdigit() and int(args[0]):
            self._cache_size(int(args[0]))
        else:
            raise pyfuse3.FUSEError(errno.EINVAL)

    def _log_level(self, level: str, modules: str | None = None) -> None:
        number = self.LEVELS.get(level.lower())
        if number is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        names = [m for m in (modules or "").split(",") if m] or [""]
        for name in names:
            logging.getLogger(name or None).setLevel(number)
        log.warning("control: log level %s for %s", level.lower(), modules or "every module")

    def _cache_size(self, size: int) -> None:
        cache = self.daemon.fs.cache
        cache.max_bytes = size
        cache.max_dirty = max(size * 3 // 4, 2 * cache.bs)
        cache.mem_limit = min(64 << 20, size // 8)
        cache.evict()
        log.info("control: cache size %d bytes", size)

    def capacity(self) -> int:
        return self.daemon.fs.quota or DEFAULT_CAPACITY


class Daemon:
    """One mount, from unlocking the store to the clean exit.

    Every resource the daemon takes registers its own release on an
    :class:`contextlib.AsyncExitStack` as soon as it is taken (cache-dir flock, store
    lock, metadata and cache, FUSE session, backend connections), so they are
    released in reverse order however the daemon ends: a clean unmount, an error
    while opening, or a failing task. The tasks run in one nursery under names;
    ``$MEGAFS_FAULT_TASK=<name>`` makes the task of that name fail (for tests).
    """

    def __init__(self, cfg: MountConfig):
        self.cfg = cfg
        self.fs: Filesystem | None = None
        self.snap: Snapshotter | None = None
        self.lease: store_lock.Lease | None = None
        self.ops: Operations | None = None
        self._snap_lock = trio.Lock()
        self._lock_lost = trio.Event()
        self.unmount_requested = False

    async def run(self, ready, opened=None) -> None:
        """Open, serve until unmounted, flush; release everything whatever happens."""
        async with contextlib.AsyncExitStack() as stack:
            await self.open(stack)
            if opened is not None:
                opened(self)
            await self.serve(stack, ready)

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        """Everything before the kernel mount; raises MegafsError with a clear message."""
        cfg = self.cfg
        backend = await lifecycle.connect(cfg.url, retry_deadline=cfg.timeout)
        stack.push_async_callback(_shielded, backend.aclose)
        store, sb = await lifecycle.unlock(backend, passphrase=cfg.passphrase)
        cache_dir = cfg.cache_dir or default_cache_dir(sb["store_id"])
        try:
            private_dir(cache_dir)
            lockfile = stack.enter_context(open(os.path.join(cache_dir, "lock"), "w"))
        except OSError as e:
            raise CacheError(f"cache directory {cache_dir}: {e.strerror}") from None
        try:
            fcntl.flock(lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"cache directory {cache_dir} is in use by another mount") from None
        self.lease = await store_lock.acquire(store, force=cfg.force)
        stack.push_async_callback(_shielded, self.lease.release)
        store.head_guard = self.lease.check
        self.store = store
        stack.callback(self._close_metadata)
        await self._open_metadata(store, sb, cache_dir)

    async def _open_metadata(self, store: ObjectStore, sb: dict, cache_dir: str) -> None:
        cfg = self.cfg
        conn = await self._metadata(store, sb, cache_dir)
        self.fs = Filesystem(conn, store, cache_dir, block_size=sb["block_size"],
                             cache_size=cfg.cache_size, upload_delay=cfg.upload_delay,
                             timeout=cfg.timeout, quota=sb.get("quota"), atime=cfg.atime,
                             diratime=cfg.diratime)
        # a read-only mount writes nothing to the store: no compaction either
        self.fs.compactor.live_fraction = 0.0 if "ro" in cfg.fuse_options else cfg.compact_below
        self.fs.compactor.interval = cfg.compact_interval
        dirty = self.fs.recover()
        if dirty:
            log.warning("recovered %d blocks not yet uploaded by an earlier run", dirty)
        with conn:
            set_state(conn, "mounted", 1)
        cache = self.fs.cache
        self.shares = Shares(conn, self.fs.ns, store, cfg.url, sb["block_size"],
                             self.fs.uploader.flush,
                             lambda ino: any(cache.entries[(ino, b)].dirty
                                             for b in cache.by_ino.get(ino, ())))
        self.snap = Snapshotter(conn, store, self.fs.blockmap,
                                before_delete=self.shares.republish)

    async def _metadata(self, store: ObjectStore, sb: dict, cache_dir: str):
        return await open_local_metadata(store, sb, cache_dir)

    def _close_metadata(self) -> None:
        if self.fs is None:
            return
        conn = self.fs.db
        if not self.lease.lost:
            with conn:
                set_state(conn, "mounted", 0)
        self.fs.close()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _lost_lock(self) -> None:
        """The lock was taken over: stop every upload, refuse writes from now on."""
        self._lock_lost.set()
        self._uploads.cancel()
        self.ops.refuse_writes = self.lease.lost
        self.fs.uploader.last_error = self.lease.lost
        self.fs.compactor.live_fraction = 0.0  # no more compaction rounds

    async def flush(self) -> None:
        """Upload all dirty blocks, then a metadata snapshot if anything changed.

        Waits through storage outages (the status channel reports the error); raises
        LockLost once the store's lock was taken over."""
        failures = 0
        while True:
            async with trio.open_nursery() as nursery:  # uploads stop when the lock goes
                nursery.start_soon(_cancel_when, self._lock_lost, nursery.cancel_scope)
                if not self.lease.lost:
                    await self.fs.uploader.flush()
                nursery.cancel_scope.cancel()
            if self.lease.lost:
                raise LockLost(f"{self.lease.lost}; this mount stopped writing")
            try:
                async with self._snap_lock:
                    if self.snap.changed():
                        await self.snap.upload()
                return
            except LockLost:
                self._lost_lock()
                raise
            except MegafsError as e:
                failures += 1
                self.fs.uploader.last_error = f"metadata upload: {e}"
                log.error("metadata upload failed (attempt %d): %s", failures, e)
                await trio.sleep(min(30.0, 0.5 * 2**failures))

    async def _periodic_snapshots(self) -> None:
        """Ship metadata changes (usually as small deltas) every metadata_interval."""
        while not self.lease.lost:
            await trio.sleep(self.cfg.metadata_interval)
            if self.snap.changed() and not self._snap_lock.locked():
                async with self._snap_lock:
                    try:
                        await self.snap.upload()
                    except LockLost:
                        self._lost_lock()
                    except (MegafsError, OSError, apsw.Error) as e:
                        log.error("metadata upload failed: %s", e)

    async def _keep_lock(self) -> None:
        await self.lease.keep()
        if self.lease.lost:
            self._lost_lock()

    async def _uploader(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        with self._uploads:
            await self.fs.uploader.run(task_status=task_status)

    async def _commits(self) -> None:
        while True:
            await trio.sleep(1)
            try:
                with contextlib.suppress(CacheError):  # room for the log (Uploader._commit)
                    self.fs.cache.ensure_space(0)
                self.fs.commit()
                self.fs.refresh_usage()
            except apsw.Error as e:  # e.g. the cache disk is full: retried next second
                log.error("committing metadata to the cache directory failed: %s", e)

    async def _tune_readahead(self, initialized: trio.Event) -> None:
        # The kernel's answer to INIT sets the readahead, so this must come after it.
        await initialized.wait()
        if not set_fuse_readahead(self.cfg.mountpoint, READAHEAD_KIB):
            log.debug("could not raise the kernel readahead of the mount (not root?)")

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                log.info("signal %d: unmounting", sig)
                self.unmount_requested = True
                pyfuse3.terminate()

    def _close_session(self) -> None:
        """End the FUSE session once. Ended by the kernel (umount, fusermount3 -u) it
        only closes; asked to by a signal, or when a task failed, it also unmounts:
        a mount nobody serves would hang every caller."""
        if not self._session_open:
            return
        self._session_open = False
        pyfuse3.close(unmount=self.unmount_requested or not self._served)

    async def serve(self, stack: contextlib.AsyncExitStack, ready) -> None:
        """Mount, call ``ready()``, serve until unmounted, then flush everything."""
        cfg = self.cfg
        options = {"fsname=" + cfg.url, "subtype=megafs", "default_permissions"}
        options |= cfg.fuse_options
        self.ops = Operations(self.fs, Control(self), self.shares)
        try:
            pyfuse3.init(self.ops, cfg.mountpoint, options)
        except RuntimeError as e:
            raise BadMountpoint(f"cannot mount on {cfg.mountpoint}: {e}") from None
        self._session_open, self._served = True, False
        stack.callback(self._close_session)
        self._uploads = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            tasks = {"signals": self._signals, "snapshots": self._periodic_snapshots,
                     "commits": self._commits, "lock": self._keep_lock,
                     "compactor": self.fs.compactor.run,
                     "readahead": lambda: self._tune_readahead(self.ops.initialized)}
            await nursery.start(_task, "uploader", self._uploader, name="uploader")
            self.fs.cache.nursery = nursery
            for name, fn in tasks.items():
                nursery.start_soon(_task, name, fn, name=name)
            ready()
            await pyfuse3.main(min_tasks=1, max_tasks=64)
            self._served = True
            self._close_session()
            log.info("unmounted: uploading remaining data")
            if self.lease.lost:
                log.error("%s: the changes not yet uploaded stay in the cache directory",
                          self.lease.lost)
            else:
                await self.flush()
            nursery.cancel_scope.cancel()
        log.info("clean exit")


async def _task(name: str, fn, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run one named daemon task; ``$MEGAFS_FAULT_TASK=name`` makes it fail (tests)."""
    if os.environ.get(FAULT_TASK_ENV) == name:
        task_status.started()
        await trio.sleep(0.5)
        raise RuntimeError(f"injected failure of task {name} ({FAULT_TASK_ENV})")
    if name == "uploader":
        await fn(task_status=task_status)
    else:
        task_status.started()
        await fn()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _shielded(fn) -> None:
    """Run a release step even while the daemon is being cancelled."""
    with trio.CancelScope(shield=True):
        await fn()
