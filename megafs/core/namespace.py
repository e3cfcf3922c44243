"""Namespace operations on the metadata database: inodes, entries, xattrs.

Every method is synchronous and runs without awaiting, so under trio each one
is atomic with respect to every other filesystem request. Errors are raised as
:class:`FsError` carrying an errno.
"""

from __future__ import annotations

import errno
import os
import stat
import time

import apsw

from megafs.core.schema import GID, INO, INODE_COLS, MODE, NLINK

ROOT = 1
NAME_MAX = 255  # bytes in a name (Linux NAME_MAX)

#: renameat2 flags (linux/fs.h; the core does not import pyfuse3, whose
#: RENAME_NOREPLACE and RENAME_EXCHANGE a test checks these against).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
RENAME_FLAGS = RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT

#: A readdir row is (cookie, name, inode row...): positions of the cookie, the name
#: and the first column of the inode row (``row[ENTRY_ROW:]`` is the inode row).
ENTRY_COOKIE, ENTRY_NAME, ENTRY_ROW = 0, 1, 2
_READDIR_COLS = ", ".join("i." + c.strip() for c in INODE_COLS.split(","))


class FsError(Exception):
    """A filesystem error to return to the kernel as ``-errno``."""

    def __init__(self, err: int):
        super().__init__(err)
        self.errno = err


def now_ns() -> int:
    return time.time_ns()


class Namespace:
    def __init__(self, conn: apsw.Connection):
        self.db = conn
        self.ex = conn.execute
        # Inodes that may have xattrs: the kernel asks for security.capability on
        # every write, and answering "none" must not cost a query.
        self.reload_xattr_inodes()

    def reload_xattr_inodes(self) -> None:
        """Read again which inodes have xattrs (after rows came from elsewhere: a state
        a follower applied)."""
        self.xattr_inodes = {r[0] for r in self.ex("SELECT DISTINCT inode FROM xattrs")}

    # -- inodes ---------------------------------------------------------------
    def get(self, ino: int) -> tuple:
        row = self.ex(f"SELECT {INODE_COLS} FROM inodes WHERE id=?", (ino,)).fetchone()
        if row is None:
            raise FsError(errno.ENOENT)
        return row

    def lookup(self, parent: int, name: bytes) -> tuple:
        row = self.ex(
            f"SELECT {INODE_COLS} FROM inodes WHERE id="
            "(SELECT inode FROM dentries WHERE parent=? AND name=?)",
            (parent, name),
        ).fetchone()
        if row is None:
            raise FsError(errno.ENOENT)
        return row

    def _child(self, parent: int, name: bytes) -> int | None:
        row = self.ex("SELECT inode FROM dentries WHERE parent=? AND name=?",
                      (parent, name)).fetchone()
        return row[0] if row else None

    def _child_mode(self, parent: int, name: bytes) -> tuple[int | None, int | None]:
        """(inode, mode) of the entry *name* in *parent*: (None, None) without one, and
        a mode of None if the entry names an inode without a row."""
        row = self.ex("SELECT d.inode, i.mode FROM dentries d LEFT JOIN inodes i"
                      " ON i.id = d.inode WHERE d.parent=? AND d.name=?",
                      (parent, name)).fetchone()
        return row if row is not None else (None, None)

    def _check_dir(self, ino: int) -> None:
        if not stat.S_ISDIR(self.get(ino)[MODE]):
            raise FsError(errno.ENOTDIR)

    def _touch_dir(self, ino: int, t: int) -> None:
        self.ex("UPDATE inodes SET mtime_ns=?, ctime_ns=? WHERE id=?", (t, t, ino))

    def make(self, parent: int, name: bytes, mode: int, uid: int, gid: int, *,
             rdev: int = 0, target: bytes | None = None) -> tuple:
        """Create an inode and its entry (mknod, mkdir, create, symlink)."""
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        t = now_ns()
        with self.db:
            pmode = self.get(parent)[MODE]
            if not stat.S_ISDIR(pmode):
                raise FsError(errno.ENOTDIR)
            is_dir = stat.S_ISDIR(mode)
            if pmode & stat.S_ISGID:
                gid = self.get(parent)[GID]
                if is_dir:
                    mode |= stat.S_ISGID
            size = len(target) if target is not None else 0
            cur = self.ex(
                "INSERT INTO inodes (mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns,"
                " rdev, target) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (mode, uid, gid, size, 2 if is_dir else 1, t, t, t, rdev, target),
            )
            ino = self.db.last_insert_rowid()
            del cur
            try:  # UNIQUE (parent, name): an existing name rolls the savepoint back
                self.ex("INSERT INTO dentries (parent, name, inode) VALUES (?,?,?)",
                        (parent, name, ino))
            except apsw.ConstraintError:
                raise FsError(errno.EEXIST) from None
            if is_dir:
                self.ex("UPDATE inodes SET nlink=nlink+1 WHERE id=?", (parent,))
            self._touch_dir(parent, t)
        # The row as get() would read it (INODE_COLS order), without reading it back.
        return (ino, mode, uid, gid, size, 2 if is_dir else 1, t, t, t, rdev, 0)

    def link(self, ino: int, parent: int, name: bytes) -> tuple:
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        t = now_ns()
        with self.db:
            if stat.S_ISDIR(self.get(ino)[MODE]):
                raise FsError(errno.EPERM)
            self._check_dir(parent)
            if self._child(parent, name) is not None:
                raise FsError(errno.EEXIST)
            self.ex("INSERT INTO dentries (parent, name, inode) VALUES (?,?,?)",
                    (parent, name, ino))
            self.ex("UPDATE inodes SET nlink=nlink+1, ctime_ns=? WHERE id=?", (t, ino))
            self._touch_dir(parent, t)
        return self.get(ino)

    def readlink(self, ino: int) -> bytes:
        row = self.ex("SELECT target FROM inodes WHERE id=?", (ino,)).fetchone()
        if row is None or row[0] is None:
            raise FsError(errno.EINVAL)
        return row[0]

    def _is_empty_dir(self, ino: int) -> bool:
        return self.ex("SELECT 1 FROM dentries WHERE parent=? LIMIT 1", (ino,)).fetchone() is None

    def unlink(self, parent: int, name: bytes, *, rmdir: bool) -> tuple[int, int]:
        """Remove an entry; return (inode, remaining nlink)."""
        t = now_ns()
        with self.db:
            row = self.lookup(parent, name)  # ENOENT
            ino, mode, nlink = row[INO], row[MODE], row[NLINK]
            if rmdir:
                if not stat.S_ISDIR(mode):
                    raise FsError(errno.ENOTDIR)
                if not self._is_empty_dir(ino):
                    raise FsError(errno.ENOTEMPTY)
            elif stat.S_ISDIR(mode):
                raise FsError(errno.EISDIR)
            self._drop_entry(parent, name, ino, mode, t)
            self._touch_dir(parent, t)
            return ino, 0 if stat.S_ISDIR(mode) else nlink - 1

    def _drop_entry(self, parent: int, name: bytes, ino: int, mode: int, t: int) -> None:
        self.ex("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))
        if stat.S_ISDIR(mode):
            self.ex("UPDATE inodes SET nlink=0, ctime_ns=? WHERE id=?", (t, ino))
            self.ex("UPDATE inodes SET nlink=nlink-1 WHERE id=?", (parent,))
        else:
            self.ex("UPDATE inodes SET nlink=nlink-1, ctime_ns=? WHERE id=?", (t, ino))

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        """True if *anc* is *ino* or one of its ancestors."""
        while True:
            if ino == anc:
                return True
            if ino == ROOT:
                return False
            row = self.ex("SELECT parent FROM dentries WHERE inode=? LIMIT 1", (ino,)).fetchone()
            if row is None:
                return False
            ino = row[0]

    def rename(self, p_old: int, n_old: bytes, p_new: int, n_new: bytes,
               flags: int = 0, uid: int = 0, gid: int = 0) -> int | None:
        """Rename; return the inode whose entry was replaced (for nlink handling) or None.

        *flags* are renameat2's: RENAME_NOREPLACE, RENAME_EXCHANGE and
        RENAME_WHITEOUT, which leaves a whiteout at the old name as ext4 does (a
        character device 0/0 owned by *uid*/*gid*, for overlayfs)."""
        if len(n_new) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        noreplace = flags & RENAME_NOREPLACE
        exchange = flags & RENAME_EXCHANGE
        whiteout = flags & RENAME_WHITEOUT
        if flags & ~RENAME_FLAGS or (exchange and (noreplace or whiteout)):
            raise FsError(errno.EINVAL)
        t = now_ns()
        with self.db:
            src, src_mode = self._child_mode(p_old, n_old)
            if src is None:
                raise FsError(errno.ENOENT)
            if p_new != p_old:  # p_old holds an entry: it is a directory
                self._check_dir(p_new)
            dst, dst_mode = self._child_mode(p_new, n_new)
            if src_mode is None:
                raise FsError(errno.ENOENT)
            if src == dst:
                return None
            if stat.S_ISDIR(src_mode) and p_old != p_new and self._is_ancestor(src, p_new):
                raise FsError(errno.EINVAL)
            if exchange:
                if dst is None or dst_mode is None:
                    raise FsError(errno.ENOENT)
                if stat.S_ISDIR(dst_mode) and p_old != p_new and self._is_ancestor(dst, p_old):
                    raise FsError(errno.EINVAL)
                self.ex("UPDATE dentries SET inode=? WHERE parent=? AND name=?",
                        (dst, p_old, n_old))
                self.ex("UPDATE dentries SET inode=? WHERE parent=? AND name=?",
                        (src, p_new, n_new))
                if p_old != p_new and stat.S_ISDIR(src_mode) != stat.S_ISDIR(dst_mode):
                    d = 1 if stat.S_ISDIR(src_mode) else -1
                    self.ex("UPDATE inodes SET nlink=nlink+? WHERE id=?", (d, p_new))
                    self.ex("UPDATE inodes SET nlink=nlink-? WHERE id=?", (d, p_old))
                self.ex("UPDATE inodes SET ctime_ns=? WHERE id IN (?,?)", (t, src, dst))
                self._touch_dir(p_old, t)
                self._touch_dir(p_new, t)
                return None
            replaced = None
            if dst is not None:
                if noreplace:
                    raise FsError(errno.EEXIST)
                if dst_mode is None:
                    raise FsError(errno.ENOENT)
                if stat.S_ISDIR(src_mode):
                    if not stat.S_ISDIR(dst_mode):
                        raise FsError(errno.ENOTDIR)
                    if not self._is_empty_dir(dst):
                        raise FsError(errno.ENOTEMPTY)
                elif stat.S_ISDIR(dst_mode):
                    raise FsError(errno.EISDIR)
                self._drop_entry(p_new, n_new, dst, dst_mode, t)
                replaced = dst
            self.ex("UPDATE dentries SET parent=?, name=? WHERE parent=? AND name=?",
                    (p_new, n_new, p_old, n_old))
            if stat.S_ISDIR(src_mode) and p_old != p_new:
                self.ex("UPDATE inodes SET nlink=nlink-1 WHERE id=?", (p_old,))
                self.ex("UPDATE inodes SET nlink=nlink+1 WHERE id=?", (p_new,))
            if whiteout:
                self.make(p_old, n_old, stat.S_IFCHR, uid, gid)
            self.ex("UPDATE inodes SET ctime_ns=? WHERE id=?", (t, src))
            self._touch_dir(p_old, t)
            if p_new != p_old:
                self._touch_dir(p_new, t)
            return replaced

    def readdir(self, parent: int, after: int, limit: int = 256) -> list[tuple]:
        """Entries of *parent* with cookie > *after*: (cookie, name, inode row...)."""
        return self.ex(
            f"SELECT d.id, d.name, {_READDIR_COLS}"
            " FROM dentries d JOIN inodes i ON i.id = d.inode"
            " WHERE d.parent=? AND d.id>? ORDER BY d.id LIMIT ?",
            (parent, after, limit),
        ).fetchall()

    def path_of(self, ino: int) -> str:
        """A path of *ino* relative to the mount (for log messages; "?" if unlinked)."""
        parts = []
        while ino != ROOT and len(parts) < 256:
            row = self.ex("SELECT parent, name FROM dentries WHERE inode=? LIMIT 1",
                          (ino,)).fetchone()
            if row is None:
                parts.append(f"<unlinked inode {ino}>")
                break
            ino = row[0]
            parts.append(row[1].decode(errors="replace"))
        return "/" + "/".join(reversed(parts))

    def parent_of(self, ino: int) -> int:
        row = self.ex("SELECT parent FROM dentries WHERE inode=? LIMIT 1", (ino,)).fetchone()
        return row[0] if row else ROOT

    def setattr(self, ino: int, fields: dict) -> tuple:
        """Update columns in *fields* (mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns)."""
        if not fields:
            return self.get(ino)
        cols = ", ".join(f"{k}=?" for k in fields)
        row = self.ex(f"UPDATE inodes SET {cols} WHERE id=? RETURNING {INODE_COLS}",
                      (*fields.values(), ino)).fetchone()
        if row is None:
            raise FsError(errno.ENOENT)
        return row

    def purge(self, ino: int) -> None:
        """Delete an inode with no entries left, with its xattrs (blocks: see Filesystem).

        Its shares are detached (inode 0 never exists), so that a new inode that gets
        the number cannot be published under an old link; the next republish revokes
        them (:meth:`megafs.core.shares.Shares.republish`)."""
        with self.db:
            self.ex("DELETE FROM inodes WHERE id=?", (ino,))
            self.ex("DELETE FROM xattrs WHERE inode=?", (ino,))
            self.ex("UPDATE shares SET inode=0 WHERE inode=?", (ino,))
        self.xattr_inodes.discard(ino)

    def orphans(self) -> list[int]:
        return [r[0] for r in self.ex("SELECT id FROM inodes WHERE nlink=0")]

    # -- xattrs ---------------------------------------------------------------
    def getxattr(self, ino: int, name: bytes) -> bytes:
        if ino not in self.xattr_inodes:
            raise FsError(errno.ENODATA)
        row = self.ex("SELECT value FROM xattrs WHERE inode=? AND name=?", (ino, name)).fetchone()
        if row is None:
            raise FsError(errno.ENODATA)
        return row[0]

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        with self.db:
            exists = self.ex("SELECT 1 FROM xattrs WHERE inode=? AND name=?",
                             (ino, name)).fetchone()
            if flags & os.XATTR_CREATE and exists:
                raise FsError(errno.EEXIST)
            if flags & os.XATTR_REPLACE and not exists:
                raise FsError(errno.ENODATA)
            self.ex("INSERT OR REPLACE INTO xattrs (inode, name, value) VALUES (?,?,?)",
                    (ino, name, value))
            self.xattr_inodes.add(ino)
            self.ex("UPDATE inodes SET ctime_ns=? WHERE id=?", (now_ns(), ino))

    def listxattr(self, ino: int) -> list[bytes]:
        if ino not in self.xattr_inodes:
            return []
        return [r[0] for r in self.ex("SELECT name FROM xattrs WHERE inode=?", (ino,))]

    def removexattr(self, ino: int, name: bytes) -> None:
        with self.db:
            self.ex("DELETE FROM xattrs WHERE inode=? AND name=?", (ino, name))
            if self.db.changes() == 0:
                raise FsError(errno.ENODATA)
            self.ex("UPDATE inodes SET ctime_ns=? WHERE id=?", (now_ns(), ino))

    def count_inodes(self) -> int:
        return self.ex("SELECT count(*) FROM inodes").fetchone()[0]
