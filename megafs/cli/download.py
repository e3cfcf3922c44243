"""``megafs get``: write what a share link names, treating its manifest as hostile.

Whoever holds a link key can write a manifest (:mod:`megafs.store.manifest` checks
its fields). Here everything is created relative to directory file descriptors
below the destination, never following a symlink (``O_NOFOLLOW``, ``dir_fd``):
folders first, then files, symlinks last. Each file is written under a temporary
name in its folder (``.NAME.megafs-part-<random>``), verified block by block,
fsynced and only then renamed to its name; a new folder is built under such a
name too. Whatever fails or is interrupted removes its temporary file or folder,
so nothing that looks complete is left behind.

Destinations work like ``cp``: an existing folder receives the share inside it
under the share's name; an existing file is replaced only with ``--force``;
existing identical folders and symlinks are fine (a folder downloaded again).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import sys

import trio

from megafs.backends import NoSuchObject, open_backend, parse_url
from megafs.backends.anon import AnonymousBackend, Forbidden
from megafs.errors import (
    AlreadyExists,
    CorruptObject,
    LocalIOError,
    MegafsError,
    NoFilesystem,
    NoSuchPath,
    ShareNotFound,
    StoreNotFound,
    UsageError,
)
from megafs.store import envelope
from megafs.store import manifest as manifest_format
from megafs.store import share as share_format
from megafs.store.manifest import Block, Entry, Manifest

PART_MARK = ".megafs-part-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_PART_NAME_BYTES = 200  #: of the name kept in a temporary name (NAME_MAX is 255)
UNSIGNED_WARNING = ("warning: this link is unsigned (made by an older megafs): what it"
                    " downloads cannot be checked against its owner; ask for a new link")


def _part_name(name: str) -> bytes:
    return (b"." + os.fsencode(name)[:_PART_NAME_BYTES] + PART_MARK.encode()
            + os.urandom(6).hex().encode())


def _lstat(dir_fd: int, name: str | bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _current_umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _open_parent(dest: str | None, share_name: str) -> tuple[int, str, str]:
    """(descriptor of the folder that receives the share, name in it, path to show)."""
    if dest is None:
        parent, leaf = ".", share_name
    elif os.path.isdir(dest):
        parent, leaf = dest, share_name
    else:
        head, leaf = os.path.split(dest.rstrip("/") or dest)
        parent = head or "."
        if leaf in ("", ".", ".."):
            raise UsageError(f"{dest}: not a file or folder name")
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NoSuchPath(f"{parent}: no such folder") from None
    except OSError as e:
        raise LocalIOError(f"{parent}: {e.strerror}") from None
    return fd, leaf, os.path.join(parent, leaf) if dest is not None else leaf


class _Writer:
    """Writes one validated manifest below (parent_fd, name)."""

    def __init__(self, backend, manifest: Manifest, parent_fd: int, name: str, shown: str,
                 *, force: bool, progress: bool):
        self.backend = backend
        self.m = manifest
        self.parent_fd = parent_fd
        self.name = name
        self.shown = shown
        self.force = force
        self.progress = progress
        self.umask = _current_umask()
        self.limit = trio.CapacityLimiter(max(1, backend.parallelism))
        self.done = 0
        self.current = shown  # the path an OSError is about

    def _show(self, entry: Entry) -> str:
        return os.path.join(self.shown, *entry.path)

    def _mode(self, entry: Entry) -> int:
        return entry.mode & 0o777 & ~self.umask

    # -- conflicts, before anything is written ------------------------------------
    def _conflict(self, dir_fd: int, name: str, entry: Entry) -> None:
        st = _lstat(dir_fd, name)
        if st is None:
            return
        shown = self._show(entry)
        if entry.type == "dir":
            if not stat.S_ISDIR(st.st_mode):
                raise AlreadyExists(f"{shown} exists and is not a folder")
        elif stat.S_ISDIR(st.st_mode):
            raise AlreadyExists(f"{shown} exists and is a folder")
        elif entry.type == "symlink" and stat.S_ISLNK(st.st_mode) and \
                os.readlink(name, dir_fd=dir_fd) == entry.target:
            return
        elif not self.force:
            raise AlreadyExists(f"{shown} exists (--force replaces it)")

    def _check_tree(self, root_fd: int) -> None:
        for entry in self.m.entries[1:]:
            fd = self._dir(root_fd, entry.path[:-1], missing_ok=True)
            if fd is not None:
                try:
                    self._conflict(fd, entry.path[-1], entry)
                finally:
                    os.close(fd)

    @staticmethod
    def _dir(root_fd: int, parts: tuple[str, ...], missing_ok: bool = False) -> int | None:
        """A new descriptor of the folder *parts* below *root_fd*, no symlink followed."""
        fd = os.dup(root_fd)
        try:
            for part in parts:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if missing_ok:
                        return None
                    raise
                os.close(fd)
                fd = nxt
            fd, result = -1, fd
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    # -- writing --------------------------------------------------------------------
    async def run(self) -> None:
        root = self.m.entries[0]
        if self.m.kind == "file":
            self._conflict(self.parent_fd, self.name, root)
            await self._file(self.parent_fd, self.name, root)
            return
        st = _lstat(self.parent_fd, self.name)
        if st is not None:
            self._conflict(self.parent_fd, self.name, root)
            root_fd = os.open(self.name, _DIR_FLAGS, dir_fd=self.parent_fd)
            try:
                self._check_tree(root_fd)
                await self._tree(root_fd)
            finally:
                os.close(root_fd)
            return
        part = _part_name(self.name)
        os.mkdir(part, 0o700, dir_fd=self.parent_fd)
        try:
            root_fd = os.open(part, _DIR_FLAGS, dir_fd=self.parent_fd)
            try:
                await self._tree(root_fd)
            finally:
                os.close(root_fd)
            self.current = self.shown
            os.rename(part, self.name, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd)
        except BaseException:
            shutil.rmtree(part, dir_fd=self.parent_fd, ignore_errors=True)
            raise

    async def _tree(self, root_fd: int) -> None:
        entries = self.m.entries
        for entry in entries[1:]:
            if entry.type == "dir":
                self._in_dir(root_fd, entry, self._mkdir)
        for entry in entries:
            if entry.type == "file":
                fd = self._dir(root_fd, entry.path[:-1])
                try:
                    await self._file(fd, entry.path[-1], entry)
                finally:
                    os.close(fd)
        for entry in entries:  # last: nothing is ever written through them
            if entry.type == "symlink":
                self._in_dir(root_fd, entry, self._symlink)
        for entry in reversed(entries):  # modes and times last: writing changes folders
            if entry.type == "dir":
                self.current = self._show(entry)
                fd = self._dir(root_fd, entry.path)
                try:
                    os.fchmod(fd, self._mode(entry))
                    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                finally:
                    os.close(fd)

    def _in_dir(self, root_fd: int, entry: Entry, action) -> None:
        self.current = self._show(entry)
        fd = self._dir(root_fd, entry.path[:-1])
        try:
            action(fd, entry.path[-1], entry)
        finally:
            os.close(fd)

    def _mkdir(self, dir_fd: int, name: str, entry: Entry) -> None:
        self._conflict(dir_fd, name, entry)
        if _lstat(dir_fd, name) is None:
            os.mkdir(name, 0o700, dir_fd=dir_fd)

    def _symlink(self, dir_fd: int, name: str, entry: Entry) -> None:
        self._conflict(dir_fd, name, entry)
        st = _lstat(dir_fd, name)
        if st is None:
            os.symlink(entry.target, name, dir_fd=dir_fd)
        elif not stat.S_ISLNK(st.st_mode) or os.readlink(name, dir_fd=dir_fd) != entry.target:
            part = _part_name(name)  # --force: replace it atomically
            os.symlink(entry.target, part, dir_fd=dir_fd)
            try:
                os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=dir_fd)
                raise

    async def _file(self, dir_fd: int, name: str, entry: Entry) -> None:
        self.current = shown = self._show(entry)
        part, fd = _part_name(name), -1
        try:
            fd = os.open(part, _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)  # O_EXCL: ours
            try:
                os.ftruncate(fd, entry.size)
                await self._blocks(fd, entry, shown)
                os.fchmod(fd, self._mode(entry))
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._place(dir_fd, part, name, shown)
        except BaseException:
            if fd >= 0:  # created by us (O_EXCL), so ours to remove
                with contextlib.suppress(OSError):
                    os.unlink(part, dir_fd=dir_fd)
            raise

    def _place(self, dir_fd: int, part: bytes, name: str, shown: str) -> None:
        """Give the finished file its name: never over an existing one without --force."""
        if self.force:
            os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        try:
            os.link(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise AlreadyExists(f"{shown} exists (--force replaces it)") from None
        except OSError as e:  # no hard links here: check, then rename
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
                raise
            if _lstat(dir_fd, name) is not None:
                raise AlreadyExists(f"{shown} exists (--force replaces it)") from None
            os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
        os.unlink(part, dir_fd=dir_fd)

    async def _blocks(self, fd: int, entry: Entry, shown: str) -> None:
        async def one(block: Block) -> None:
            async with self.limit:
                try:
                    if block.stored_length is None:
                        blob = await self.backend.get(block.object_key)
                    else:  # version 3: the envelope's range of the object holding it
                        blob = await self.backend.get_range(block.holder, block.offset,
                                                            block.stored_length)
                except NoSuchObject:
                    raise CorruptObject(f"{shown}: block {block.number} is missing from the"
                                        " store") from None
                await trio.to_thread.run_sync(_verify_and_write, fd, block,
                                              self.m.block_size, blob, shown)
            self.done += block.length
            if self.progress:
                print(f"\rmegafs get: {self.done / 2**20:.1f} of"
                      f" {self.m.total_bytes / 2**20:.1f} MiB", end="", file=sys.stderr,
                      flush=True)

        async with trio.open_nursery() as nursery:
            for block in entry.blocks:
                nursery.start_soon(one, block)


def _verify_and_write(fd: int, block: Block, block_size: int, blob: bytes, shown: str) -> None:
    """(In a worker thread.) Check the stored object against the manifest's hash, open
    it with its key and write its bytes where they belong."""
    if block.stored_length is not None and len(blob) != block.stored_length:
        raise CorruptObject(f"{shown}: block {block.number} is missing from the store"
                            " (its object is too short)")
    if block.sha256 is not None and hashlib.sha256(blob).digest() != block.sha256:
        raise CorruptObject(f"{shown}: block {block.number} is not what the owner shared"
                            " (tampered)")
    try:
        data = envelope.open_(block.key, envelope.KIND_BLOCK, block.object_key, blob)
    except CorruptObject as e:
        raise CorruptObject(f"{shown}: {e}") from None
    if len(data) != block.length:
        raise CorruptObject(f"{shown}: block {block.number} has the wrong length")
    view, offset = memoryview(data), block.number * block_size
    try:
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    except OSError as e:
        raise LocalIOError(f"cannot write {shown}: {e.strerror}") from None


async def _open_share_store(url: str):
    """The backend of a link's store, checked first: an unreachable endpoint or a store
    that does not exist fails at once, as in mkfs, not after a minute of retries. A
    browser link's store (``https://``) is read with plain unauthenticated GETs."""
    if url.startswith(("https://", "http://")):
        return AnonymousBackend(url)
    backend = open_backend(url)
    try:
        scheme, location = parse_url(url)
        if scheme != "local":
            await backend.check()
        elif not os.path.isdir(location):  # (a download needs no write access: no check())
            raise StoreNotFound(f"store directory {location} does not exist")
    except BaseException:
        await backend.aclose()
        raise
    return backend


async def _missing_share(backend, error: NoSuchObject) -> MegafsError:
    """Why a link's manifest is missing: no filesystem there at all, or revoked."""
    if isinstance(backend, AnonymousBackend):  # the superblock is not readable anonymously
        if isinstance(error, Forbidden):
            return ShareNotFound("this link was revoked or never existed, or the store does"
                                 " not allow anonymous reading (HTTP 403)")
        return ShareNotFound("this link was revoked or never existed")
    if await backend.size("superblock") is None:
        return NoFilesystem(f"{backend.description} holds no megafs filesystem: the link"
                            " points to a store that does not exist (any more)")
    return ShareNotFound("this link was revoked or never existed")


async def download(link: share_format.Link, dest: str | None, *, force: bool = False,
                   progress: bool = False, warn=None) -> str:
    """Fetch, verify and write what a share contains; return the path written."""
    backend = await _open_share_store(link.url)
    try:
        try:
            blob = await backend.get(share_format.object_key(link.share_id))
        except NoSuchObject as e:
            raise await _missing_share(backend, e) from None
        raw = share_format.open_manifest(link.key, link.share_id, blob, link.public_key)
        manifest = manifest_format.parse(raw)
        if link.public_key is None and warn is not None:
            warn(UNSIGNED_WARNING)
        parent_fd, name, shown = _open_parent(dest, manifest.name)
        writer = _Writer(backend, manifest, parent_fd, name, shown, force=force,
                         progress=progress)
        try:
            await writer.run()
        except OSError as e:
            raise LocalIOError(f"cannot write {writer.current}: {e.strerror}") from None
        finally:
            os.close(parent_fd)
            if progress:
                print(file=sys.stderr)
        return shown
    finally:
        await backend.aclose()
