"""A backend that keeps objects as files in a local directory.

Key ``b/0123abcd...`` is stored as ``ROOT/b/01/0123abcd...`` (one level of
fan-out by the first two characters of the last component) so that no
directory grows to millions of entries. Puts write a temporary file and rename
it into place, so a reader never sees a partial object. Durability comes from
:meth:`sync`, which flushes the whole filesystem holding the store once
(``syncfs``), instead of one ``fsync`` per object. A compare-and-swap
(:meth:`LocalBackend.replace_if`) holds an exclusive ``flock`` on the store
directory while it compares and replaces, so swaps by processes on this machine
are atomic.
"""

from __future__ import annotations

import fcntl
import os

import trio

from megafs.backends.base import Backend, NoSuchObject, ObjectChanged, ObjectExists
from megafs.errors import StoreNotFound
from megafs.osutil import syncfs

_SMALL = 256 * 1024  # below this, doing the I/O inline beats a thread hop


class LocalBackend(Backend):
    parallelism = 4

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.description = f"local:{self.root}"
        self._tmp_counter = 0

    def _path(self, key: str) -> str:
        head, _, last = key.rpartition("/")
        if head:
            return os.path.join(self.root, head, last[:2], last)
        return os.path.join(self.root, last)

    async def check(self) -> None:
        if not os.path.isdir(self.root):
            raise StoreNotFound(f"store directory {self.root} does not exist")
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            raise StoreNotFound(f"store directory {self.root} is not readable and writable")

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size <= _SMALL:
                    return f.read()
                return await trio.to_thread.run_sync(f.read)
        except FileNotFoundError:
            raise NoSuchObject(key) from None

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise NoSuchObject(key) from None
        try:
            if length <= _SMALL:
                return os.pread(fd, length, offset)
            return await trio.to_thread.run_sync(os.pread, fd, length, offset)
        finally:
            os.close(fd)

    def _put_sync(self, key: str, data: bytes, if_absent: bool) -> None:
        path = self._path(key)
        self._tmp_counter += 1
        tmp = f"{path}.tmp.{os.getpid()}.{self._tmp_counter}"
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            f = open(tmp, "wb")
        try:
            with f:
                f.write(data)
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise ObjectExists(key) from None
            else:
                os.replace(tmp, path)
                tmp = None
        finally:
            if tmp is not None:
                os.unlink(tmp)

    async def put(self, key: str, data: bytes, *, if_absent: bool = False,
                  digest: str | None = None) -> None:
        if len(data) <= _SMALL:
            self._put_sync(key, data, if_absent)
        else:
            await trio.to_thread.run_sync(self._put_sync, key, data, if_absent)

    def _replace_if_sync(self, key: str, data: bytes, expected: bytes | None) -> None:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                with open(self._path(key), "rb") as f:
                    current: bytes | None = f.read()
            except FileNotFoundError:
                current = None
            if current == data:
                return  # this very swap, retried
            if current != expected:
                raise ObjectChanged(key)
            self._put_sync(key, data, False)
        finally:
            os.close(fd)  # releases the flock

    async def replace_if(self, key: str, data: bytes, expected: bytes | None) -> None:
        await trio.to_thread.run_sync(self._replace_if_sync, key, data, expected)

    async def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    async def size(self, key: str) -> int | None:
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            return None

    async def list(self, prefix: str = ""):
        keys = await trio.to_thread.run_sync(self._list_sync, prefix)
        for k in keys:
            yield k

    def _list_sync(self, prefix: str) -> list[str]:
        out = []
        top = os.path.join(self.root, prefix.rpartition("/")[0])  # only the folder it names
        for dirpath, _dirs, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            parts = [] if rel == "." else rel.split(os.sep)
            # Drop the fan-out level: ROOT/b/01/0123.. -> b/0123..
            logical = "/".join(parts[:-1]) if parts else ""
            for name in filenames:
                if ".tmp." in name:
                    continue
                if not parts:
                    key = name
                elif len(parts[-1]) == 2 and name.startswith(parts[-1]):
                    key = f"{logical}/{name}" if logical else name
                else:
                    continue
                if key.startswith(prefix):
                    out.append(key)
        return out

    async def sync(self) -> None:
        await trio.to_thread.run_sync(syncfs, self.root)
