"""``megafs share|shares|unshare|get``: links that carry their own key."""

from __future__ import annotations

import errno
import json
import os
import sys

import trio

from megafs.backends import NoSuchObject, open_backend, parse_url
from megafs.errors import (
    BackendUnavailable,
    CorruptObject,
    LocalIOError,
    MegafsError,
    NoFilesystem,
    NoSuchPath,
    NotMounted,
    ShareNotFound,
    StoreNotFound,
    UsageError,
)
from megafs.store import envelope
from megafs.store import share as share_format


def add_commands(sub) -> None:
    p = sub.add_parser("share", help="print a link to a file or folder (only the link's"
                                     " holder can decrypt it)",
                       description="Print a link to PATH, a file or folder in a megafs mount:"
                                   " it carries the key of what it shares and nothing else.")
    p.add_argument("path", metavar="PATH", help="a file or folder inside a megafs mount")
    p.set_defaults(fn=_share)
    p = sub.add_parser("shares", help="list the active share links of a mount",
                       description="List the active share links of the mount on MOUNTPOINT,"
                                   " one per line: path, a tab, the link.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the filesystem is mounted")
    p.set_defaults(fn=_shares)
    p = sub.add_parser("unshare", help="revoke a link: fresh downloads of it fail",
                       description="Revoke a share link, given as the link or as the shared"
                                   " path: downloads of it started afterwards fail.")
    p.add_argument("target", metavar="LINK_OR_PATH",
                   help="the link (megafs+...), or the shared file or folder in a mount")
    p.set_defaults(fn=_unshare)
    p = sub.add_parser("get", help="download what a link shares (no passphrase needed)",
                       description="Download, decrypt and verify the file or folder a link"
                                   " shares; no passphrase and no mount are needed.")
    p.add_argument("link", metavar="LINK", help="a link printed by 'megafs share'")
    p.add_argument("dest", metavar="DEST", nargs="?",
                   help="where to put it (default: its name, in the current directory)")
    p.set_defaults(fn=_get)


def _mounts() -> dict[str, str]:
    from megafs.cli.umount import megafs_mounts

    return megafs_mounts()


def _mount_of(path: str) -> str:
    path = os.path.abspath(path)
    for mnt in sorted(_mounts(), key=len, reverse=True):
        if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
            return mnt
    raise NotMounted(f"{path} is not inside a megafs mount")


def _share(args) -> int:
    _mount_of(args.path)
    try:
        os.setxattr(args.path, "megafs.share", b"create")
        print(os.getxattr(args.path, "megafs.share").decode())
    except OSError as e:
        raise _share_error(f"cannot share {args.path}", e) from None
    return 0


def _share_error(what: str, e: OSError) -> MegafsError:
    """The error (and exit code) for a failed share control request."""
    text = f"{what}: {e.strerror}"
    if e.errno == errno.ENOENT:
        return NoSuchPath(text)
    if e.errno == errno.ENODATA:
        return ShareNotFound(f"{what}: it is not shared")
    if e.errno in (errno.EACCES, errno.EPERM):
        return LocalIOError(text)
    if e.errno == errno.EINVAL:
        return UsageError(f"{what}: only files and folders can be shared")
    if e.errno in (errno.ENOTCONN, errno.ENOTSUP):
        return NotMounted(f"{what}: the megafs daemon does not answer ({e.strerror})")
    return BackendUnavailable(text)


def _shares(args) -> int:
    mnt = _mount_of(args.mountpoint)
    try:
        listing = os.getxattr(mnt, "megafs.shares")
    except OSError as e:
        raise _share_error(f"cannot list the links of {mnt}", e) from None
    for item in json.loads(listing):
        print(f"{item['path']}\t{item['link']}")
    return 0


def _unshare(args) -> int:
    if args.target.startswith("megafs+"):
        url, share_id, _ = share_format.parse_link(args.target)
        for mnt, source in _mounts().items():
            if source.rstrip("/") == url.rstrip("/"):
                try:
                    os.setxattr(mnt, "megafs.unshare", share_id.encode())
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        raise ShareNotFound("that link was already revoked or never"
                                            " existed") from None
                    raise _share_error("cannot revoke the link", e) from None
                return 0
        raise NotMounted(f"mount {url} first: links are revoked by the mounted filesystem")
    _mount_of(args.target)
    try:
        os.setxattr(args.target, "megafs.share", b"revoke")
    except OSError as e:
        raise _share_error(f"cannot revoke the share of {args.target}", e) from None
    return 0


def _get(args) -> int:
    url, share_id, key = share_format.parse_link(args.link)
    if key is None:
        raise UsageError("the link has no key (the part after '#' is missing)")
    try:
        trio.run(download, url, share_id, key, args.dest, sys.stderr.isatty())
    except (OSError, BaseExceptionGroup) as e:  # writing here: read-only, no permission...
        error = _local_error(e)
        if error is None:
            raise
        where = error.filename or args.dest or "the download"
        raise LocalIOError(f"cannot write {where}: {error.strerror or error}") from None
    return 0


def _local_error(e: BaseException) -> OSError | None:
    """The OSError that *e* is or (from a nursery) holds, unless *e* also holds a
    MegafsError or an interruption, which then say more."""
    if isinstance(e, BaseExceptionGroup):
        if e.subgroup((MegafsError, KeyboardInterrupt)) is not None:
            return None
        e = e.subgroup(OSError)
        while isinstance(e, BaseExceptionGroup):
            e = e.exceptions[0]
    return e if isinstance(e, OSError) else None


async def _open_share_store(url: str):
    """The backend of a link's store, checked first: an unreachable endpoint or a store
    that does not exist fails at once, as in mkfs, not after a minute of retries."""
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


async def _missing_share(backend) -> MegafsError:
    """Why a link's manifest is missing: no filesystem there at all, or revoked."""
    if await backend.size("superblock") is None:
        return NoFilesystem(f"{backend.description} holds no megafs filesystem: the link"
                            " points to a store that does not exist (any more)")
    return ShareNotFound("this link was revoked or never existed")


async def download(url: str, share_id: str, key: bytes, dest: str | None,
                   progress: bool = False) -> str:
    """Fetch, verify and write what a share contains; return the destination path."""
    backend = await _open_share_store(url)
    try:
        try:
            blob = await backend.get(share_format.object_key(share_id))
        except NoSuchObject:
            raise await _missing_share(backend) from None
        manifest = share_format.open_manifest(key, share_id, blob)
        root = os.path.abspath(dest or manifest["name"])
        total = sum(e.get("size", 0) for e in manifest["entries"])
        done = 0
        limit = trio.CapacityLimiter(backend.parallelism)
        for entry in manifest["entries"]:
            path = os.path.join(root, entry["path"]) if entry["path"] else root
            if os.path.relpath(path, root).startswith(".."):
                raise CorruptObject("the share manifest names a path outside the download")
            kind = entry["type"]
            if kind == "dir":
                os.makedirs(path, exist_ok=True)
            elif kind == "symlink":
                os.symlink(entry["target"], path)
            elif kind == "file":
                await _fetch_file(backend, manifest["block_size"], entry, path, limit)
                done += entry["size"]
                if progress:
                    print(f"\rmegafs get: {done / 2**20:.1f} of {total / 2**20:.1f} MiB",
                          end="", file=sys.stderr, flush=True)
            if kind != "symlink":
                os.chmod(path, entry["mode"])
        for entry in reversed(manifest["entries"]):  # times last: writing changes dirs
            path = os.path.join(root, entry["path"]) if entry["path"] else root
            if entry["type"] != "symlink":
                os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        if progress:
            print(file=sys.stderr)
        return root
    finally:
        await backend.aclose()


async def _fetch_file(backend, block_size: int, entry: dict, path: str, limit) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, entry["size"])

        async def one(blockno: int, objkey: str, keyhex: str, plain: int) -> None:
            async with limit:
                try:
                    blob = await backend.get(objkey)
                except NoSuchObject:
                    raise CorruptObject(f"{entry['path'] or 'the file'}: block {blockno} is"
                                        " missing from the store") from None
                data = await trio.to_thread.run_sync(
                    envelope.open_, bytes.fromhex(keyhex), envelope.KIND_BLOCK, objkey, blob)
                if len(data) != plain:
                    raise CorruptObject(f"block {blockno} has the wrong length")
                os.pwrite(fd, data, blockno * block_size)

        async with trio.open_nursery() as nursery:
            for block in entry["blocks"]:
                nursery.start_soon(one, *block)
    finally:
        os.close(fd)
