"""pyfuse3 ``Operations`` that translate kernel requests into core calls.

Kept deliberately thin: argument unpacking, attribute conversion and the
FsError -> FUSEError translation. Every request path is a handful of Python
calls plus one or two SQLite statements.

File handles are inode numbers. Attributes and entries, negative ones (a missing
name) included, go out with ``CACHE_TIMEOUT``: this process is the only writer, so
the kernel may cache them.

The root directory also answers a control channel that is never stored:
``getxattr(mnt, "megafs.pid")`` and ``setxattr(mnt, "megafs.ctrl", b"flush")``
(its names and formats: :mod:`megafs.fs.control`; its actions: :mod:`megafs.mount`). It, and the share attribute of every file, answer only
the mount's owner (the uid that mounted) and root: on an ``allow_other`` mount
anyone else gets EACCES.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat

import pyfuse3
import trio

from megafs.core.filesystem import Filesystem
from megafs.core.namespace import ENTRY_COOKIE, ENTRY_NAME, ENTRY_ROW, NAME_MAX, ROOT, FsError
from megafs.core.schema import INO, MODE
from megafs.errors import MegafsError
from megafs.fs import control

log = logging.getLogger(__name__)
CTRL_PREFIX = control.PREFIX
SHARE_ATTR = control.SHARE.encode()
SHARES_ATTR = control.SHARES.encode()
UNSHARE_ATTR = control.UNSHARE.encode()
STATS_ATTR = control.STATS.encode()
BLKSIZE = 128 * 1024
STATFS_BLOCK = 4096
#: Seconds the kernel may cache attributes and entries (the daemon is the only writer).
CACHE_TIMEOUT = 300.0
SYMLINK_MAX = 4095  # bytes in a symlink target: PATH_MAX (4096) less the terminating NUL


def _attrs(row: tuple) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    # Unpacked in INODE_COLS order, the last column being st_blocks (a test checks it).
    (a.st_ino, a.st_mode, a.st_uid, a.st_gid, a.st_size, a.st_nlink, a.st_atime_ns,
     a.st_mtime_ns, a.st_ctime_ns, a.st_rdev, a.st_blocks) = row
    a.generation = 0
    a.st_blksize = BLKSIZE
    a.attr_timeout = a.entry_timeout = CACHE_TIMEOUT
    return a


def _errors(fn):
    """Turn every failure into an errno for the kernel: an exception escaping a
    handler would end the whole FUSE session (pyfuse3 treats it as fatal)."""

    @functools.wraps(fn)
    async def wrapper(*args):
        try:
            return await fn(*args)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except pyfuse3.FUSEError:
            raise
        except MegafsError as e:
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(getattr(e, "errno", None) or errno.EIO) from None
        except OSError as e:
            log.error("%s: %s", fn.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed (a bug: please report it)", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _writes(fn):
    """A request that changes the filesystem: it waits while the writer decides on a
    hand-over (``hold`` is set), and gets EROFS once the mount lost its lock or handed
    its role over. ``changing`` counts those in progress."""

    @functools.wraps(fn)
    async def wrapper(self, *args):
        await self.held()
        if self.refuse_writes:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.changing += 1
        try:
            return await fn(self, *args)
        finally:
            self.changing -= 1

    return wrapper


class _OpenDir:
    """An open directory: its inode, and the cookie its listing ended after (None while
    the end has not been reached since the last request)."""

    __slots__ = ("inode", "end")

    def __init__(self, inode: int):
        self.inode = inode
        self.end: int | None = None


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = True

    def __init__(self, fs: Filesystem, control, shares=None, *, follower: bool = False):
        super().__init__()
        self.fs = fs
        self.follower = follower  #: the state may change under the kernel (docs/format.md §5c)
        if follower:  # with a writeback cache the kernel would ignore sizes changed elsewhere
            self.enable_writeback_cache = False
        fs.kernel_times = self.enable_writeback_cache  # the kernel stamps writes' mtime/ctime
        self.control = control
        self.shares = shares
        self.owner_uid = os.getuid()  # who mounted: the control channel answers them and root
        self.initialized = trio.Event()  # set once the kernel's INIT has been answered
        #: Why changes are refused (the store's lock was taken over), or None.
        self.refuse_writes: str | None = "a read-only follower" if follower else None
        #: While set, change requests wait (the writer decides on a hand-over).
        self.hold: trio.Event | None = None
        self.changing = 0  #: change requests in progress
        self._dirs: dict[int, _OpenDir] = {}  #: open directory handles
        self._dir_fhs = itertools.count(1)

    async def held(self) -> None:
        """Wait while a hand-over holds change requests (see :func:`_writes`)."""
        while self.hold is not None:
            await self.hold.wait()

    @staticmethod
    def set_timeouts(a: pyfuse3.EntryAttributes) -> None:
        """The cache timeouts every reply of this adapter carries (for the null fs)."""
        a.attr_timeout = a.entry_timeout = CACHE_TIMEOUT

    def init(self):
        # pyfuse3 calls this while answering INIT; waiters run only after the answer.
        self.initialized.set()

    @_errors
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            return _attrs(self.fs.lookup(parent_inode, name))
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
        # A negative entry: the kernel caches "no such name" as long as a name it has
        # (every change of the namespace comes through it), sparing repeated lookups.
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = CACHE_TIMEOUT
        return a

    @_errors
    async def forget(self, inode_list):
        for ino, n in inode_list:
            self.fs.forget(ino, n)

    @_errors
    async def getattr(self, inode, ctx=None):
        return _attrs(self.fs.getattr(inode))

    @_writes
    @_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        f = {}
        if fields.update_mode:
            f["mode"] = attr.st_mode
        if fields.update_uid:
            f["uid"] = attr.st_uid
        if fields.update_gid:
            f["gid"] = attr.st_gid
        if fields.update_size:
            f["size"] = attr.st_size
        if fields.update_atime:
            f["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            f["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            f["ctime_ns"] = attr.st_ctime_ns
        return _attrs(await self.fs.setattr(inode, f))

    @_errors
    async def readlink(self, inode, ctx):
        return self.fs.ns.readlink(inode)

    @_writes
    @_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return _attrs(self.fs.make(parent_inode, name, mode, ctx.uid, ctx.gid, rdev=rdev))

    @_writes
    @_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        return _attrs(self.fs.make(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_writes
    @_errors
    async def unlink(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name)

    @_writes
    @_errors
    async def rmdir(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name, rmdir=True)

    @_writes
    @_errors
    async def symlink(self, parent_inode, name, target, ctx):
        if len(target) > SYMLINK_MAX:
            raise FsError(errno.ENAMETOOLONG)
        mode = stat.S_IFLNK | 0o777
        return _attrs(self.fs.make(parent_inode, name, mode, ctx.uid, ctx.gid, target=target))

    @_writes
    @_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx.uid,
                       ctx.gid)

    @_writes
    @_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return _attrs(self.fs.link(inode, new_parent_inode, new_name))

    @_errors
    async def open(self, inode, flags, ctx):
        if self.refuse_writes and (flags & (os.O_TRUNC | os.O_ACCMODE)):
            raise FsError(errno.EROFS)
        if self.follower:  # the kernel may still hold an entry of an inode removed since
            self.fs.getattr(inode)  # ENOENT: never serve its cached pages
        if flags & os.O_TRUNC:  # libfuse asks for atomic O_TRUNC: no separate setattr comes
            await self.fs.setattr(inode, {"size": 0})
        self.fs.open(inode)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    @_writes
    @_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        row = self.fs.make(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx.uid,
                           ctx.gid)
        self.fs.open(row[INO])
        return pyfuse3.FileInfo(fh=row[INO], keep_cache=True), _attrs(row)

    @_errors
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_writes
    @_errors
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    async def flush(self, fh):
        # Nothing to do at close(2): the kernel writes cached pages back before it sends
        # FLUSH, and reports their errors itself. ENOSYS makes it stop sending FLUSH for
        # the rest of the mount: one request less per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_errors
    async def release(self, fh):
        self.fs.release(fh)

    @_errors
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @_errors
    async def opendir(self, inode, ctx):
        if not stat.S_ISDIR(self.fs.getattr(inode)[MODE]):
            raise FsError(errno.ENOTDIR)
        fh = next(self._dir_fhs)
        self._dirs[fh] = _OpenDir(inode)
        return fh

    @_errors
    async def readdir(self, fh, start_id, token):
        d = self._dirs[fh]
        if start_id and start_id == d.end:
            # The kernel asks past the last entry of a listing that already reached the
            # end: answer the end, so that a listing done in one reply shows one state,
            # not that state plus entries added since (a follower's state moves on
            # between the two requests).
            return
        d.end = None
        while True:
            rows = self.fs.readdir(d.inode, start_id)
            if not rows:
                d.end = start_id
                return
            for row in rows:
                if not pyfuse3.readdir_reply(token, row[ENTRY_NAME], _attrs(row[ENTRY_ROW:]),
                                             row[ENTRY_COOKIE]):
                    return
                self.fs.ref_entry(row[ENTRY_ROW:])
                start_id = row[ENTRY_COOKIE]

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    @_errors
    async def fsyncdir(self, fh, datasync):
        await self.fs.fsync(None)

    @_errors
    async def statfs(self, ctx):
        files, used = self.fs.usage()
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = STATFS_BLOCK
        total = max(self.control.capacity(), used) // STATFS_BLOCK
        s.f_blocks = total
        s.f_bfree = s.f_bavail = total - used // STATFS_BLOCK
        s.f_files = files + (1 << 31)
        s.f_ffree = s.f_favail = 1 << 31
        s.f_namemax = NAME_MAX
        return s

    # -- xattrs (plus the control channel on the root) --------------------------
    def _control_name(self, inode, name, ctx) -> bool:
        """True if *name* is a share or control attribute; EACCES unless *ctx* is the
        mount's owner or root."""
        if name != SHARE_ATTR and not (inode == ROOT and name.startswith(CTRL_PREFIX)):
            return False
        if ctx.uid not in (0, self.owner_uid):
            raise FsError(errno.EACCES)
        return True

    @_errors
    async def setxattr(self, inode, name, value, ctx):
        self._control_name(inode, name, ctx)
        # (share and unshare change the metadata: writes like the others)
        control = inode == ROOT and name.startswith(CTRL_PREFIX) and \
            name not in (SHARE_ATTR, UNSHARE_ATTR)
        if not control:
            await self.held()
        if self.refuse_writes and not control:
            raise FsError(errno.EROFS)
        if name == SHARE_ATTR and self.shares:  # megafs share / unshare PATH
            if value == b"revoke":
                await self.shares.revoke(ino=inode)
            else:
                await self.shares.create(inode)
            return
        if inode == ROOT and name == UNSHARE_ATTR and self.shares:  # unshare LINK
            await self.shares.revoke(value.decode(errors="replace"))
            return
        if inode == ROOT and name.startswith(CTRL_PREFIX):
            await self.control.setxattr(name, value)
            return
        if name.startswith(b"system."):
            raise FsError(errno.EOPNOTSUPP)
        # No flags: pyfuse3 (3.5) does not pass setxattr's XATTR_CREATE / XATTR_REPLACE to
        # this handler. It enforces them itself by calling getxattr first (EEXIST /
        # ENODATA), which is atomic here as neither handler awaits in between.
        self.fs.setxattr(inode, name, value, 0)

    @_errors
    async def getxattr(self, inode, name, ctx):
        self._control_name(inode, name, ctx)
        if name == SHARE_ATTR and self.shares:
            link = self.shares.of_inode(inode)
            if link is None:
                raise FsError(errno.ENODATA)
            return link.encode()
        if inode == ROOT and name == STATS_ATTR:
            return control.encode({**self.fs.stats(), **self.control.role()})
        if inode == ROOT and name == SHARES_ATTR and self.shares:
            return control.encode(self.shares.listing())
        if inode == ROOT and name.startswith(CTRL_PREFIX):
            return self.control.getxattr(name)
        return self.fs.getxattr(inode, name)

    @_errors
    async def listxattr(self, inode, ctx):
        return self.fs.listxattr(inode)

    @_writes
    @_errors
    async def removexattr(self, inode, name, ctx):
        self.fs.removexattr(inode, name)
