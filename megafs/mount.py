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
import time
from dataclasses import dataclass, field

import apsw
import pyfuse3
import trio

from megafs.core import retention
from megafs.core.filesystem import Filesystem
from megafs.core.follow import DEFAULT_INTERVAL, Changes, Follower, writer_alive
from megafs.core.localcopy import open_local_metadata
from megafs.core.retention import DEFAULT_RETENTION
from megafs.core.shares import Shares
from megafs.core.snapshot import (
    Snapshotter,
    get_state,
    set_state,
)
from megafs.errors import (
    BackendUnavailable,
    BadMountpoint,
    CacheError,
    LockLost,
    MegafsError,
)
from megafs.fs import control
from megafs.fs.invalidate import invalidate
from megafs.fs.operations import Operations
from megafs.osutil import private_dir, set_fuse_readahead
from megafs.store import followers as store_followers
from megafs.store import handover, lifecycle
from megafs.store import lock as store_lock
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
DEFAULT_CAPACITY = 1 << 50  # what df shows without a quota: 1 PiB
READAHEAD_KIB = 1024  # kernel readahead for the mount: matches the 1 MiB request size
FAULT_TASK_ENV = "MEGAFS_FAULT_TASK"  #: names a daemon task that fails at once (tests)
#: FUSE options of every mount (the benchmark's null filesystem mounts with them too).
FUSE_OPTIONS = ("default_permissions",)
MIN_TASKS, MAX_TASKS = 1, 64  #: pyfuse3.main's pool of request tasks
LOOK_NOW_SIGNAL = signal.SIGUSR1  #: a follower looks at the store's head at once
FLUSH_UPLOADS = 3  #: a flush uploads metadata until nothing changed, at most this often
COMPACTION_POLL = 0.05  #: seconds between looks whether a compaction round ended
FOLLOWERS_RECHECK = 1.0  #: a writer lists the followers at most this often before uploads


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
    follow_interval: float = DEFAULT_INTERVAL  #: a follower (-o ro) looks this often
    take_over: bool = False  #: ask the writer to hand over (--take-over)
    take_over_timeout: float = handover.DEFAULT_TIMEOUT
    retention: float = DEFAULT_RETENTION  #: a writer keeps garbage this long

    @property
    def follower(self) -> bool:
        """-o ro: follow the writer without taking the lock (docs/format.md §5c)."""
        return "ro" in self.fuse_options


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
            "lock_lost": bool(self.daemon.lock_lost),
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

    def role(self) -> dict:
        """This mount's part for ``megafs stat``: a follower's version, lag and writer."""
        if self.daemon.follower is not None:  # (megafs take-over remounts with these)
            return {**self.daemon.follower.status(), "url": self.daemon.cfg.url,
                    "cache_dir": os.path.dirname(self.daemon.fs.cache.dir)}
        return {"role": "writer", "handing_over": self.daemon.handing_over, "followers": [
            {"host": f.get("host"), "pid": f.get("pid"), "seq": f.get("seq")}
            for f in self.daemon.followers]}

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
        self.lease: store_lock.Lease | None = None  #: None on a follower
        self.follower: Follower | None = None
        self.announcement: store_followers.Announcement | None = None  #: a follower's
        self.followers: list[dict] = []  #: a writer: the followers found at the last look
        self._followers_checked = float("-inf")
        self.handed_over: str | None = None  #: to whom this writer handed its role over
        self.handing_over: str | None = None  #: who asked, while this writer uploads for it
        self._nursery: trio.Nursery | None = None
        self._session_open = False  #: the FUSE session is open (the kernel may cache)
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
        if not cfg.follower:
            if cfg.take_over:
                self.lease = await handover.take_over(store, cfg.take_over_timeout,
                                                      force=cfg.force)
            else:
                self.lease = await store_lock.acquire(store, force=cfg.force)
            stack.push_async_callback(_shielded, self.lease.release)
            store.head_guard = self.lease.check
        else:  # announced before the first look at the head: the writer keeps it complete
            self.announcement = store_followers.Announcement(store, cfg.follow_interval)
            await self.announcement.renew(0)
            await wait_for_complete_head(store, cfg.follow_interval, cfg.timeout)
        self.store = store
        stack.callback(self._close_metadata)
        await self._open_metadata(store, sb, cache_dir)

    async def _open_metadata(self, store: ObjectStore, sb: dict, cache_dir: str) -> None:
        cfg = self.cfg
        conn = await self._metadata(store, sb, cache_dir)
        self.fs = Filesystem(conn, store, cache_dir, block_size=sb["block_size"],
                             cache_size=cfg.cache_size, upload_delay=cfg.upload_delay,
                             timeout=cfg.timeout, quota=sb.get("quota"),
                             atime=cfg.atime and not cfg.follower, diratime=cfg.diratime)
        # a follower writes nothing to the store: no compaction either
        self.fs.compactor.live_fraction = 0.0 if cfg.follower else cfg.compact_below
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
        if cfg.follower:
            self.follower = Follower(conn, store, cfg.follow_interval, self._followed)
            self.fs.read_failed = self.follower.wake
        else:
            self.snap.data_complete = lambda: not self.fs.cache.dirty
            self.snap.unsent_blocks = lambda: list(self.fs.cache.dirty)
            self.snap.retention = cfg.retention

    async def _followed(self, changes: Changes, wait: bool) -> None:
        """A follower applied a newer state: drop what changed from the caches. The
        kernel's are dropped in the background when *wait* is false (a request in
        progress may hold a lock the invalidation needs; core/follow.py)."""
        self.fs.blockmap.refresh_unsent()  # (a writer that died may have left some)
        for ino in changes.data | changes.inodes:
            self.fs.cache.drop_inode(ino)
        if changes.inodes:  # xattrs may have come or gone with them
            self.fs.ns.reload_xattr_inodes()
        known = {ino for ino in changes.inodes | changes.data if ino in self.fs.lookups}
        entries = changes.entries
        if self.ops.enable_writeback_cache and known:
            # A writer turned follower: the kernel keeps its own size of a cached file, so
            # the entries of changed files are dropped too (an unused inode is forgotten).
            marks = ",".join("?" * len(known))
            entries = entries | {(p, n) for p, n in self.fs.db.execute(
                f"SELECT parent, name FROM dentries WHERE inode IN ({marks})", tuple(known))}
        if not self._session_open:  # unmounted: the kernel caches nothing any more
            return
        if wait:
            await invalidate(entries, known)
        else:
            self._nursery.start_soon(invalidate, entries, known, name="invalidate")

    @property
    def lock_lost(self) -> str | None:
        """Why this mount stopped writing because its lock was taken over, or None."""
        if self.lease is None or self.handed_over:
            return None
        return self.lease.lost

    async def _metadata(self, store: ObjectStore, sb: dict, cache_dir: str):
        return await open_local_metadata(store, sb, cache_dir)

    def _close_metadata(self) -> None:
        if self.fs is None:
            return
        conn = self.fs.db
        if not self.lock_lost:
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
        LockLost once the store's lock was taken over. A follower has nothing to upload:
        it looks at the store's head now instead."""
        if self.follower is not None:  # (a control request: the kernel holds the root)
            await self.follower.poll(wait=False)
            return
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
                    # An upload that discards objects records them (retention): shipped
                    # by one more upload, so the store knows they are pending deletion.
                    for _ in range(FLUSH_UPLOADS):
                        if not self.snap.changed():
                            break
                        await self._upload_metadata()
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
                        await self._upload_metadata()
                    except LockLost:
                        self._lost_lock()
                    except (MegafsError, OSError, apsw.Error) as e:
                        log.error("metadata upload failed: %s", e)

    async def _upload_metadata(self, *, max_age: float = FOLLOWERS_RECHECK) -> None:
        """Upload the metadata (the caller holds the snapshot lock). While followers are
        announced, the state uploaded is complete: writes of data wait while the data
        waiting for upload goes first (at most --timeout), then the state is taken."""
        if not await self._look_for_followers(max_age) or not self.fs.cache.dirty:
            await self.snap.upload()
            return
        self.fs.gate = trio.Event()
        try:
            with trio.move_on_after(self.cfg.timeout):
                await self.fs.uploader.flush()
            await self.snap.upload(on_capture=self._open_gate)
        finally:
            self._open_gate()

    def _open_gate(self) -> None:
        gate, self.fs.gate = self.fs.gate, None
        if gate is not None:
            gate.set()

    async def _look_for_followers(self, max_age: float) -> list[dict]:
        """The announced followers, listed again if the last look is older than *max_age*."""
        if trio.current_time() - self._followers_checked >= max_age:
            try:
                self.followers = await store_followers.followers(self.store, clean=True)
                self._followers_checked = trio.current_time()
                self.snap.retention = retention.effective(
                    self.cfg.retention, [float(f.get("interval", 0)) for f in self.followers])
            except (MegafsError, OSError) as e:
                log.warning("listing the followers failed: %s", e)
        return self.followers

    async def _watch_followers(self) -> None:
        """A writer: look for followers every renewal interval; a new one gets a complete
        state at once if the last head was not. Delete the objects past their retention."""
        while not self.lease.lost:
            if not self._snap_lock.locked():
                async with self._snap_lock:
                    try:
                        await retention.delete_due(self.fs.db, self.store.backend, time.time(),
                                                   self.snap.retention)
                    except (MegafsError, OSError, apsw.Error) as e:
                        log.warning("deleting objects past their retention failed: %s", e)
            if (await self._look_for_followers(0) and not self._snap_lock.locked()
                    and get_state(self.fs.db, "complete", 1) == 0):
                async with self._snap_lock:
                    try:
                        await self._upload_metadata(max_age=float("inf"))
                    except LockLost:
                        self._lost_lock()
                    except (MegafsError, OSError, apsw.Error) as e:
                        log.error("metadata upload failed: %s", e)
            await trio.sleep(self.lease.interval)

    async def _watch_requests(self) -> None:
        """A writer: hand over when another mount asks (docs/format.md §5a)."""
        while not self.lease.lost:
            await trio.sleep(handover.POLL)
            try:
                # (one about to expire would be given up before the upload is done)
                request = await handover.read_request(self.store, left=handover.MARGIN)
            except (MegafsError, OSError) as e:
                log.warning("looking for a take-over request failed: %s", e)
                continue
            if request is not None and not self.lease.lost:
                if await self._hand_over(request):
                    return

    def _release_hold(self) -> None:
        hold, self.ops.hold = self.ops.hold, None
        if hold is not None:
            hold.set()

    def _resume_writing(self) -> None:
        """A hand-over that did not happen: take changes again (those held go on)."""
        self.handing_over = None
        self.ops.follower = False
        self.fs.compactor.live_fraction = self.cfg.compact_below
        self._release_hold()

    async def _hand_over(self, request: dict) -> bool:
        """Hold every change request, let those in progress end, upload everything, and
        if the asking mount still wants the role, release the lock and follow the new
        writer (the held requests get EROFS). If it no longer does (it gave up or went
        away), or the upload fails or cannot end before the request expires, the held
        requests go on and this mount keeps writing: return False, nothing changed."""
        who = store_lock.describe(request)
        log.warning("%s asks to take over: holding changes, uploading everything", who)
        started = time.monotonic()
        self.handing_over = who
        self.ops.hold = trio.Event()
        self.fs.compactor.live_fraction = 0.0  # a follower compacts nothing
        # The hold is bounded: give up in time for the asking mount to see it.
        left = float(request.get("until", 0)) - time.time() - handover.MARGIN
        with trio.move_on_after(max(0.0, left)) as in_time:
            try:
                while self.ops.changing or self.fs.compactor.busy:  # let them end
                    await trio.sleep(COMPACTION_POLL)
                await self.flush()
            except (MegafsError, OSError, apsw.Error) as e:
                if not self.lease.lost:
                    log.error("handing over to %s failed: %s; writing again", who, e)
                    self._resume_writing()
                    return False
        if in_time.cancelled_caught and not self.lease.lost:
            log.warning("the upload for %s did not end before its request expires:"
                        " writing again", who)
            self._resume_writing()
            return False
        released = None
        if not self.lease.lost:
            try:
                async with self._snap_lock:  # nothing uploads between the look and the release
                    request = await handover.still_wanted(self.store)
                    if request is not None and not self.lease.lost:
                        who = store_lock.describe(request)
                        reason = f"handed over to {who}"
                        self.ops.refuse_writes = self.fs.read_only = reason
                        self.ops.follower = True
                        self.fs.atime = self.fs.diratime = False  # (reads change nothing)
                        self.handed_over = who
                        self.lease.lost = reason  # the writer's tasks stop
                        await self.lease.release_handed_over()
                        released = True
            except (MegafsError, OSError, apsw.Error) as e:
                if not self.handed_over and not self.lease.lost:
                    log.error("handing over to %s failed: %s; writing again", who, e)
                    self._resume_writing()
                    return False
                if self.handed_over:  # the lock may be gone already: never write again
                    log.error("releasing the lock for %s failed: %s; following anyway (the"
                              " lock expires unrenewed)", who, e)
        if self.lease.lost and not self.handed_over:  # taken over meanwhile (--force)
            self.fs.read_only = self.ops.refuse_writes = self.lease.lost
            self.handing_over = None
            self._release_hold()  # (what waited gets EROFS)
            return True
        if not self.handed_over:
            log.warning("%s gave up or went away before the hand-over was complete:"
                        " writing again", who)
            self._resume_writing()
            return False
        self.handing_over = None
        self._release_hold()
        log.warning("handed the writer role over to %s in %.1fs%s: following it now", who,
                    time.monotonic() - started, "" if released else " (lock not released)")
        self.follower = Follower(self.fs.db, self.store, self.cfg.follow_interval,
                                 self._followed)
        self.fs.read_failed = self.follower.wake
        self.announcement = store_followers.Announcement(self.store, self.cfg.follow_interval)
        self._nursery.start_soon(_task, "follow", self.follower.run, name="follow")
        self._nursery.start_soon(_task, "announce", self._announce, name="announce")
        return True

    async def _announce(self) -> None:
        """A follower: renew its announcement with the version it shows; withdraw it at
        the end."""
        try:
            await self._announce_every()
        finally:
            with trio.CancelScope(shield=True):
                await self.announcement.withdraw()

    async def _announce_every(self) -> None:
        while True:
            try:
                await self.announcement.renew(int(get_state(self.fs.db, "seq", 0)))
            except (MegafsError, OSError) as e:
                log.warning("renewing this follower's announcement failed: %s", e)
            await trio.sleep(self.announcement.interval)

    async def _keep_lock(self) -> None:
        await self.lease.keep()
        if self.lease.lost and not self.handed_over:
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
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                       LOOK_NOW_SIGNAL) as sigs:
            async for sig in sigs:
                if sig == LOOK_NOW_SIGNAL:  # a follower looks at the store's head now
                    if self.follower is not None:
                        self.follower.wake()
                    continue
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
        options = {"fsname=" + cfg.url, "subtype=megafs", *FUSE_OPTIONS}
        options |= cfg.fuse_options
        self.ops = Operations(self.fs, Control(self), self.shares,
                              follower=self.follower is not None)
        try:
            pyfuse3.init(self.ops, cfg.mountpoint, options)
        except RuntimeError as e:
            raise BadMountpoint(f"cannot mount on {cfg.mountpoint}: {e}") from None
        self._session_open, self._served = True, False
        stack.callback(self._close_session)
        self._uploads = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            tasks = {"signals": self._signals, "commits": self._commits,
                     "readahead": lambda: self._tune_readahead(self.ops.initialized)}
            if self.follower is not None:
                tasks.update(follow=self.follower.run, announce=self._announce)
            else:
                tasks.update(snapshots=self._periodic_snapshots, lock=self._keep_lock,
                             followers=self._watch_followers, requests=self._watch_requests,
                             compactor=self.fs.compactor.run)
            await nursery.start(_task, "uploader", self._uploader, name="uploader")
            self.fs.cache.nursery = nursery
            self._nursery = nursery
            for name, fn in tasks.items():
                nursery.start_soon(_task, name, fn, name=name)
            ready()
            await pyfuse3.main(min_tasks=MIN_TASKS, max_tasks=MAX_TASKS)
            self._served = True
            self._close_session()
            log.info("unmounted: uploading remaining data")
            if self.lock_lost:
                log.error("%s: the changes not yet uploaded stay in the cache directory",
                          self.lock_lost)
            else:
                await self.flush()
            nursery.cancel_scope.cancel()
        log.info("clean exit")


async def wait_for_complete_head(store: ObjectStore, interval: float, timeout: float) -> None:
    """A follower at mount: wait (at most *timeout*) until the head names a complete state
    (the writer had uploaded the data of every file), so that it never shows a file whose
    data is still on the writer's machine."""
    with trio.move_on_after(timeout):
        while True:
            head = await store.read_head()
            if head is None or head.get("complete", True) or not writer_alive(
                    await store_lock.read(store)):
                return
            log.info("the writer's last state is not complete yet: waiting")
            await trio.sleep(min(interval, 1.0))
    raise BackendUnavailable(f"the writer did not upload a complete state within {timeout:g} s")


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
