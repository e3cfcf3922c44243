"""A null pyfuse3 filesystem: the ceiling of the FUSE binding for small-file workloads.

Everything lives in memory (names, attributes, file contents); nothing is stored or
encrypted. It mounts with megafs's FUSE options and answers like megafs's adapter
(``megafs.fs.operations``): the same writeback cache, ``keep_cache``, attribute and
entry timeouts, ``FLUSH`` answered ``ENOSYS``, ``ENODATA`` for every xattr, and the
same task pool in ``pyfuse3.main``. The benchmark runs the small-file workloads on it
beside megafs, so that what megafs's own handlers cost is the difference.

Run as ``python -m bench.nullfs MOUNTPOINT`` (from contrib/); it prints ``ready`` on
stdout once mounted and serves until unmounted (or SIGTERM/SIGINT).
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import sys
import time

import pyfuse3
import trio

from megafs.fs.operations import BLKSIZE, Operations
from megafs.mount import FUSE_OPTIONS, MAX_TASKS, MIN_TASKS

ROOT = pyfuse3.ROOT_INODE


class Node:
    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "atime", "mtime", "ctime", "rdev",
                 "data", "target", "entries", "lookups")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, rdev: int = 0):
        t = time.time_ns()
        self.ino, self.mode, self.uid, self.gid, self.rdev = ino, mode, uid, gid, rdev
        self.nlink = 2 if stat.S_ISDIR(mode) else 1
        self.atime = self.mtime = self.ctime = t
        self.data = bytearray()
        self.target = b""
        self.entries: dict[bytes, int] | None = {} if stat.S_ISDIR(mode) else None
        self.lookups = 0

    def attrs(self) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino, a.st_mode, a.st_uid, a.st_gid, a.st_nlink = (
            self.ino, self.mode, self.uid, self.gid, self.nlink)
        a.st_size = len(self.target) if self.target else len(self.data)
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = self.atime, self.mtime, self.ctime
        a.st_rdev = self.rdev
        a.st_blksize = BLKSIZE
        a.st_blocks = (a.st_size + 511) // 512
        Operations.set_timeouts(a)
        return a


class NullOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = Operations.enable_writeback_cache

    def __init__(self):
        super().__init__()
        self.nodes = {ROOT: Node(ROOT, stat.S_IFDIR | 0o755, os.getuid(), os.getgid())}
        self.parents = {ROOT: ROOT}
        self.next_ino = ROOT + 1

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _dir(self, ino: int) -> Node:
        n = self._node(ino)
        if n.entries is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return n

    def _child(self, parent: int, name: bytes) -> Node:
        ino = self._dir(parent).entries.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.nodes[ino]

    async def lookup(self, parent_inode, name, ctx=None):
        if name == b".":
            n = self._node(parent_inode)
        elif name == b"..":
            n = self._node(self.parents.get(parent_inode, ROOT))
        else:
            n = self._child(parent_inode, name)
        n.lookups += 1
        return n.attrs()

    async def forget(self, inode_list):
        for ino, k in inode_list:
            n = self.nodes.get(ino)
            if n is not None:
                n.lookups -= k
                if n.lookups <= 0 and n.nlink == 0:
                    del self.nodes[ino]

    async def getattr(self, inode, ctx=None):
        return self._node(inode).attrs()

    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self._node(inode)
        t = time.time_ns()
        if fields.update_mode:
            n.mode = attr.st_mode
        if fields.update_uid:
            n.uid = attr.st_uid
        if fields.update_gid:
            n.gid = attr.st_gid
        if fields.update_size:
            del n.data[attr.st_size:]
            n.data.extend(bytes(attr.st_size - len(n.data)))
            n.mtime = t
        if fields.update_atime:
            n.atime = attr.st_atime_ns
        if fields.update_mtime:
            n.mtime = attr.st_mtime_ns
        n.ctime = attr.st_ctime_ns if fields.update_ctime else t
        return n.attrs()

    def _make(self, parent: int, name: bytes, mode: int, ctx, rdev: int = 0) -> Node:
        d = self._dir(parent)
        if name in d.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        n = Node(self.next_ino, mode, ctx.uid, ctx.gid, rdev)
        self.next_ino += 1
        self.nodes[n.ino] = n
        d.entries[name] = n.ino
        if n.entries is not None:
            d.nlink += 1
            self.parents[n.ino] = parent
        d.mtime = d.ctime = n.ctime
        n.lookups += 1
        return n

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._make(parent_inode, name, mode, ctx, rdev).attrs()

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._make(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx).attrs()

    async def symlink(self, parent_inode, name, target, ctx):
        n = self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        n.target = target
        return n.attrs()

    async def readlink(self, inode, ctx):
        return self._node(inode).target

    async def link(self, inode, new_parent_inode, new_name, ctx):
        d = self._dir(new_parent_inode)
        if new_name in d.entries:
            raise pyfuse3.FUSEError(errno.EEXIST)
        n = self._node(inode)
        d.entries[new_name] = inode
        n.nlink += 1
        n.lookups += 1
        return n.attrs()

    def _drop(self, parent: int, name: bytes, rmdir: bool) -> None:
        d = self._dir(parent)
        n = self._child(parent, name)
        if rmdir:
            if n.entries is None:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            if n.entries:
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            d.nlink -= 1
            n.nlink = 0
        elif n.entries is not None:
            raise pyfuse3.FUSEError(errno.EISDIR)
        else:
            n.nlink -= 1
        del d.entries[name]
        d.mtime = d.ctime = n.ctime = time.time_ns()
        if n.nlink == 0 and n.lookups <= 0:
            del self.nodes[n.ino]

    async def unlink(self, parent_inode, name, ctx):
        self._drop(parent_inode, name, rmdir=False)

    async def rmdir(self, parent_inode, name, ctx):
        self._drop(parent_inode, name, rmdir=True)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        src = self._child(parent_inode_old, name_old)
        new_dir = self._dir(parent_inode_new)
        if name_new in new_dir.entries:
            self._drop(parent_inode_new, name_new, rmdir=src.entries is not None)
        del self.nodes[parent_inode_old].entries[name_old]
        new_dir.entries[name_new] = src.ino
        if src.entries is not None:
            self.parents[src.ino] = parent_inode_new

    async def open(self, inode, flags, ctx):
        n = self._node(inode)
        if flags & os.O_TRUNC:
            n.data.clear()
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def create(self, parent_inode, name, mode, flags, ctx):
        n = self._make(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        return pyfuse3.FileInfo(fh=n.ino, keep_cache=True), n.attrs()

    async def read(self, fh, off, size):
        return bytes(self._node(fh).data[off:off + size])

    async def write(self, fh, off, buf):
        data = self._node(fh).data
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off:off + len(buf)] = buf
        return len(buf)

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # as megafs: the kernel stops sending FLUSH

    async def release(self, fh):
        pass

    async def fsync(self, fh, datasync):
        pass

    async def opendir(self, inode, ctx):
        self._dir(inode)
        return inode

    async def readdir(self, fh, start_id, token):
        entries = list(self._dir(fh).entries.items())
        for i, (name, ino) in enumerate(entries[start_id:], start_id + 1):
            n = self.nodes[ino]
            if not pyfuse3.readdir_reply(token, name, n.attrs(), i):
                return
            n.lookups += 1

    async def releasedir(self, fh):
        pass

    async def fsyncdir(self, fh, datasync):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 31
        s.f_namemax = 255
        return s

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def listxattr(self, inode, ctx):
        return []

    async def setxattr(self, inode, name, value, ctx):
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENODATA)


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        async def on_signals():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                async for _ in sigs:
                    pyfuse3.terminate()

        nursery.start_soon(on_signals)
        print("ready", flush=True)
        await pyfuse3.main(min_tasks=MIN_TASKS, max_tasks=MAX_TASKS)
        nursery.cancel_scope.cancel()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.nullfs MOUNTPOINT", file=sys.stderr)
        return 2
    pyfuse3.init(NullOperations(), argv[0], {"fsname=nullfs", "subtype=nullfs", *FUSE_OPTIONS})
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
