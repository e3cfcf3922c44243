"""Mount lifecycle: open the store, bring the metadata up to date, serve FUSE, and
on the way out upload everything before exiting.

The daemon reports readiness (or a one-line error and an exit code) to the
process that started it through a pipe, so ``mount.megafs`` returns only once
the mount is usable.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from dataclasses import dataclass, field

import apsw
import pyfuse3
import trio

from megafs.core import schema
from megafs.core.filesystem import Filesystem
from megafs.core.shares import Shares
from megafs.core.snapshot import (
    Snapshotter,
    confirm,
    download,
    get_state,
    set_state,
    upgrade_schema,
)
from megafs.errors import BadMountpoint, CacheError, MegafsError, RollbackDetected
from megafs.fs.operations import Operations
from megafs.osutil import private_dir, set_fuse_readahead
from megafs.store import lifecycle
from megafs.store import lock as store_lock
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
DEFAULT_CAPACITY = 1 << 50  # what df shows without a quota: 1 PiB
READAHEAD_KIB = 1024  # kernel readahead for the mount: matches the 1 MiB request size


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

    ``getxattr``: ``pid``, ``status``. ``setxattr("ctrl", ACTION)`` with ACTION one of
    ``flush``, ``dropcache``, ``log-level LEVEL [MODULES]``, ``cachesize BYTES``
    (``megafs ctrl``); anything else fails with EINVAL.
    """

    EINVAL, ENODATA = 22, 61
    LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "critical": logging.CRITICAL}

    def __init__(self, daemon: Daemon):
        self.daemon = daemon

    def getxattr(self, name: bytes) -> bytes:
        if name == b"pid":
            return str(os.getpid()).encode()
        if name == b"status":
            fs = self.daemon.fs
            return (f"dirty_bytes={fs.cache.dirty_bytes} cache_bytes={fs.cache.total}"
                    f" cache_max={fs.cache.max_bytes}"
                    f" log_level={logging.getLevelName(logging.getLogger().level).lower()}"
                    f" upload_error={self._error()}").encode()
        raise pyfuse3.FUSEError(self.ENODATA)

    def _error(self) -> str:
        """The storage error uploads are stuck on, as one space-free field."""
        fs = self.daemon.fs
        text = fs.uploader.last_error or getattr(fs.store.backend, "failing", None) or ""
        return text.replace(" ", "\u00a0")

    async def setxattr(self, name: bytes, value: bytes) -> None:
        try:
            action, *args = value.decode("ascii").split() if name == b"ctrl" else [""]
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
            raise pyfuse3.FUSEError(self.EINVAL)

    def _log_level(self, level: str, modules: str | None = None) -> None:
        number = self.LEVELS.get(level.lower())
        if number is None:
            raise pyfuse3.FUSEError(self.EINVAL)
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
    def __init__(self, cfg: MountConfig):
        self.cfg = cfg
        self.fs: Filesystem | None = None
        self.snap: Snapshotter | None = None
        self._snap_lock = trio.Lock()

    async def open(self) -> None:
        """Everything before the kernel mount; raises MegafsError with a clear message."""
        cfg = self.cfg
        backend = await lifecycle.connect(cfg.url, retry_deadline=cfg.timeout)
        store, sb = await lifecycle.unlock(backend, passphrase=cfg.passphrase)
        cache_dir = cfg.cache_dir or default_cache_dir(sb["store_id"])
        try:
            private_dir(cache_dir)
            self.lockfile = open(os.path.join(cache_dir, "lock"), "w")
        except OSError as e:
            raise CacheError(f"cache directory {cache_dir}: {e.strerror}") from None
        try:
            fcntl.flock(self.lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(f"cache directory {cache_dir} is in use by another mount") from None
        self.lock = await store_lock.acquire(store, force=cfg.force)
        self.store = store
        try:
            await self._open_metadata(store, sb, cache_dir)
        except BaseException:
            with trio.CancelScope(shield=True):
                await store_lock.release(store, self.lock)
            raise

    async def _open_metadata(self, store: ObjectStore, sb: dict, cache_dir: str) -> None:
        cfg = self.cfg
        conn = await self._metadata(store, sb, cache_dir)
        self.fs = Filesystem(conn, store, cache_dir, block_size=sb["block_size"],
                             cache_size=cfg.cache_size, upload_delay=cfg.upload_delay,
                             timeout=cfg.timeout, quota=sb.get("quota"), atime=cfg.atime,
                             diratime=cfg.diratime)
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
        path = os.path.join(cache_dir, "metadata.db")
        head = await store.read_head()
        if head is None:
            raise MegafsError("the store has no metadata head (run fsck.megafs)")
        if os.path.exists(path):
            conn = schema.connect(path)
            schema.check_version(conn)
            if get_state(conn, "store_id") not in (None, sb["store_id"]):
                conn.close()
                raise CacheError(f"cache directory {cache_dir} belongs to another filesystem")
            local = int(get_state(conn, "seq", 0))
            pending = int(get_state(conn, "seq_pending", 0))
            if head["seq"] in (local, pending) and head["seq"] >= local:
                # The store holds what this machine last uploaded (perhaps right before
                # a crash): the local copy is as new or newer.
                with conn:
                    confirm(conn, head)
                upgrade_schema(conn)
                return conn
            if head["seq"] < local:
                conn.close()
                raise RollbackDetected(
                    f"the store serves metadata version {head['seq']}, but this machine has seen"
                    f" version {local}: the store was rolled back or replaced")
            blocks = os.path.join(cache_dir, "blocks")
            names = os.listdir(blocks) if os.path.isdir(blocks) else []
            dirty = [n for n in names if n.endswith(".d")]
            if dirty:
                conn.close()
                raise CacheError(
                    f"cache directory {cache_dir} holds {len(dirty)} blocks never uploaded, but"
                    f" the store has newer metadata (version {head['seq']}) written elsewhere;"
                    " move the cache directory away to discard them")
            log.info("local metadata %d is older than the store's %d: downloading", local,
                     head["seq"])
            conn.close()
            for name in names:
                os.unlink(os.path.join(blocks, name))
        conn = await download(store, head, path)
        with conn:
            set_state(conn, "store_id", sb["store_id"])
        return conn

    async def flush(self) -> None:
        """Upload all dirty blocks, then a metadata snapshot if anything changed.

        Waits through storage outages (the status channel reports the error)."""
        failures = 0
        while True:
            await self.fs.uploader.flush()
            try:
                async with self._snap_lock:
                    if self.snap.changed():
                        await self.snap.upload()
                return
            except MegafsError as e:
                failures += 1
                self.fs.uploader.last_error = f"metadata upload: {e}"
                log.error("metadata upload failed (attempt %d): %s", failures, e)
                await trio.sleep(min(30.0, 0.5 * 2**failures))

    async def _periodic_snapshots(self) -> None:
        """Ship metadata changes (usually as small deltas) every metadata_interval."""
        while True:
            await trio.sleep(self.cfg.metadata_interval)
            if self.snap.changed() and not self._snap_lock.locked():
                async with self._snap_lock:
                    try:
                        await self.snap.upload()
                    except (MegafsError, OSError, apsw.Error) as e:
                        log.error("metadata upload failed: %s", e)

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

    async def serve(self, ready) -> None:
        """Mount, call ``ready()``, serve until unmounted, then flush everything."""
        cfg = self.cfg
        options = {"fsname=" + cfg.url, "subtype=megafs", "default_permissions"}
        options |= cfg.fuse_options
        self.unmount_requested = False
        try:
            ops = Operations(self.fs, Control(self), self.shares)
            pyfuse3.init(ops, cfg.mountpoint, options)
        except RuntimeError as e:
            self.fs.close()
            await store_lock.release(self.store, self.lock)
            raise BadMountpoint(f"cannot mount on {cfg.mountpoint}: {e}") from None
        async with trio.open_nursery() as nursery:
            await nursery.start(self.fs.uploader.run)
            self.fs.cache.nursery = nursery
            nursery.start_soon(self._signals)
            nursery.start_soon(self._periodic_snapshots)
            nursery.start_soon(self._commits)
            nursery.start_soon(self._tune_readahead, ops.initialized)
            try:
                ready()
                await pyfuse3.main(min_tasks=1, max_tasks=64)
            finally:
                # Unmounted by the kernel (umount, fusermount3 -u) or asked to by a signal.
                pyfuse3.close(unmount=self.unmount_requested)
            log.info("unmounted: uploading remaining data")
            await self.flush()
            nursery.cancel_scope.cancel()
        conn = self.fs.db
        with conn:
            set_state(conn, "mounted", 0)
        self.fs.close()
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        await store_lock.release(self.store, self.lock)
        await self.fs.store.backend.aclose()
        log.info("clean exit")
