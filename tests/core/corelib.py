"""Helpers of the in-process ``core`` layer: the :class:`Core` wrapper, errno helpers and
constants (the ``core`` fixture is in conftest.py)."""

from __future__ import annotations

import stat

from megafs.backends.local import LocalBackend
from megafs.core import snapshot
from megafs.core.check import Checker
from megafs.core.filesystem import Filesystem
from megafs.core.namespace import ROOT, FsError
from megafs.store import lifecycle

BS = 64 * 1024
UID, GID = 1000, 1000
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
ATTRS = ("ino", "mode", "uid", "gid", "size", "nlink", "atime_ns", "mtime_ns", "ctime_ns",
         "rdev", "blocks")
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4
XATTR_CREATE, XATTR_REPLACE = 1, 2


def attr(row: tuple, name: str):
    """A column of an inode row handed out by the core, by name."""
    return row[ATTRS.index(name)]


def fs_errno(fn, *args, **kwargs) -> int:
    """The errno of the FsError that ``fn(*args)`` raises (fails if it raises none)."""
    try:
        fn(*args, **kwargs)
    except FsError as e:
        return e.errno
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not fail")


async def async_errno(fn, *args, **kwargs) -> int:
    try:
        await fn(*args, **kwargs)
    except FsError as e:
        return e.errno
    raise AssertionError(f"{getattr(fn, '__name__', fn)} did not fail")


class Core:
    """A :class:`Filesystem` on a real store, with path helpers for the tests.

    Paths are ``/``-separated ``str`` relative to the root; every helper goes
    through the ``Filesystem``'s public methods (lookups taken by the helpers are
    forgotten again, as the kernel would).
    """

    def __init__(self, fs: Filesystem, store, block_size: int):
        self.fs = fs
        self.store = store
        self.bs = block_size

    # -- paths ---------------------------------------------------------------------
    @staticmethod
    def split(path: str) -> tuple[str, bytes]:
        parent, _, name = path.rpartition("/")
        return parent, name.encode()

    def ino(self, path: str) -> int:
        """The inode of *path* ("" is the root)."""
        ino = ROOT
        for part in filter(None, path.split("/")):
            row = self.fs.lookup(ino, part.encode())
            self.fs.forget(row[0], 1)
            ino = row[0]
        return ino

    def where(self, path: str) -> tuple[int, bytes]:
        parent, name = self.split(path)
        return self.ino(parent), name

    def stat(self, path: str) -> tuple:
        return self.fs.getattr(self.ino(path))

    def nlink(self, path: str) -> int:
        return attr(self.stat(path), "nlink")

    def names(self, path: str = "") -> list[str]:
        """Every entry of the directory *path*, sorted (a whole listing)."""
        return sorted(name.decode() for _, name, *_ in self.listing(self.ino(path)))

    def listing(self, ino: int, limit: int = 256) -> list[tuple]:
        rows, after = [], 0
        while batch := self.fs.readdir(ino, after, limit):
            rows += batch
            after = batch[-1][0]
        return rows

    # -- making things ---------------------------------------------------------------
    def make(self, path: str, mode: int = FILE, **kw) -> int:
        parent, name = self.where(path)
        row = self.fs.make(parent, name, mode, UID, GID, **kw)
        self.fs.forget(row[0], 1)
        return row[0]

    def mkdir(self, *paths: str) -> None:
        for p in paths:
            self.make(p, DIR)

    def symlink(self, path: str, target: str) -> int:
        return self.make(path, stat.S_IFLNK | 0o777, target=target.encode())

    async def create(self, path: str, data: bytes = b"") -> int:
        ino = self.make(path)
        if data:
            self.fs.open(ino)
            try:
                assert await self.fs.write(ino, 0, data) == len(data)
            finally:
                self.fs.release(ino)
        return ino

    async def read(self, path: str) -> bytes:
        return await self.read_ino(self.ino(path))

    async def read_ino(self, ino: int) -> bytes:
        self.fs.open(ino)
        try:
            return await self.fs.read(ino, 0, attr(self.fs.getattr(ino), "size") + 1)
        finally:
            self.fs.release(ino)

    def link(self, old: str, new: str) -> None:
        parent, name = self.where(new)
        row = self.fs.link(self.ino(old), parent, name)
        self.fs.forget(row[0], 1)

    def unlink(self, path: str) -> None:
        self.fs.unlink(*self.where(path))

    def rmdir(self, path: str) -> None:
        self.fs.unlink(*self.where(path), rmdir=True)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        self.fs.rename(*self.where(old), *self.where(new), flags, UID, GID)

    def rename_errno(self, old: str, new: str, flags: int = 0) -> int:
        return fs_errno(self.rename, old, new, flags)

    async def stored_block_bytes(self) -> int:
        """Bytes of the data envelopes in the store: one-block objects as the backend has
        them, and the envelopes in each pack (not its padding), after checking that every
        pack has the size the metadata records."""
        backend = self.store.backend
        alone = sum([await backend.size(k) async for k in backend.list("b/")])
        packs = dict(self.fs.db.execute("SELECT key, size FROM packs").fetchall())
        assert {k: await backend.size(k) async for k in backend.list("p/")} == packs
        return alone + self.fs.db.execute(
            "SELECT coalesce(sum(used), 0) FROM packs p WHERE EXISTS (SELECT 1 FROM objects o"
            " WHERE o.pack = p.key AND o.refcount > 0)").fetchone()[0]

    # -- the state as a whole ----------------------------------------------------------
    def tree(self, path: str = "") -> dict:
        """{path: (inode, kind)} of everything below *path* (for "nothing changed")."""
        out = {}
        for _, name, ino, mode, *_ in self.listing(self.ino(path)):
            p = f"{path}/{name.decode()}" if path else name.decode()
            out[p] = (ino, stat.S_IFMT(mode))
            if stat.S_ISDIR(mode):
                out.update(self.tree(p))
        return out

    async def check(self, *, unmount: bool = True) -> list[str]:
        """Upload everything, commit a full metadata snapshot, run the checker
        (check only); return its problems. With *unmount*, first forget every
        lookup and release every open file, as the kernel does at unmount."""
        fs = self.fs
        if unmount:
            for ino, n in list(fs.opened.items()):
                for _ in range(n):
                    fs.release(ino)
            for ino, n in list(fs.lookups.items()):
                fs.forget(ino, n)
        await fs.uploader.flush()
        fs.commit()
        await snapshot.Snapshotter(fs.db, self.store, fs.blockmap).upload(full=True)
        said: list[str] = []
        report = await Checker(self.store, self.bs, repair=False, say=said.append).run()
        assert not report.repaired
        return report.problems


async def make_core(tmp_path, nursery, *, quota: int | None = None, **fs_options):
    (tmp_path / "store").mkdir()
    backend = LocalBackend(str(tmp_path / "store"))
    await backend.check()
    store, _ = await lifecycle.create(
        backend, b"core tests", block_size=BS, force=False, quota=quota,
        initial_metadata=lambda: snapshot.initial_image(UID, GID))
    sb = await lifecycle.read_superblock(backend)
    head = await store.read_head()
    cache = tmp_path / "cache"
    cache.mkdir()
    conn = await snapshot.download(store, head, str(cache / "metadata.db"))
    options = {"cache_size": 64 << 20, "upload_delay": 0.05, "timeout": 5.0} | fs_options
    fs = Filesystem(conn, store, str(cache), block_size=sb["block_size"],
                    quota=sb.get("quota"), **options)
    await nursery.start(fs.uploader.run)
    return Core(fs, store, sb["block_size"])
