"""``megafs share|shares|unshare|get``: links that carry their own key."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import signal
import sys

import trio

from megafs.cli.download import download
from megafs.errors import (
    BackendUnavailable,
    LocalIOError,
    MegafsError,
    NoSuchPath,
    NotMounted,
    ShareNotFound,
    UsageError,
)
from megafs.fs import control
from megafs.store import share as share_format


def add_commands(sub) -> None:
    p = sub.add_parser("share", help="print a link to a file or folder (only the link's"
                                     " holder can decrypt it)",
                       description="Print a link to PATH, a file or folder in a megafs mount:"
                                   " it carries the key of what it shares and nothing else."
                                   " On an S3 store, first a browser link"
                                   " (https://HOST/BUCKET/PREFIX/megafs.html#s=ID&k=KEY, see"
                                   " 'megafs web enable'), then the megafs+ link; a warning"
                                   " with the bucket policy to apply when browsers cannot"
                                   " read it anonymously yet.")
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
                   help="the link (megafs+... or https://...), or the shared file or folder"
                        " in a mount")
    p.set_defaults(fn=_unshare)
    p = sub.add_parser("get", help="download what a link shares (no passphrase needed)",
                       description="Download, decrypt and verify the file or folder a link"
                                   " shares; no passphrase and no mount are needed.")
    p.add_argument("link", metavar="LINK", help="a link printed by 'megafs share' (a browser"
                                                " link is read without credentials)")
    p.add_argument("dest", metavar="DEST", nargs="?",
                   help="where to put it: a new name, or an existing folder that receives"
                        " it under its own name (default: the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace existing files (never folders) of the same name")
    p.set_defaults(fn=_get)


def _mount_of(path: str) -> str:
    path = os.path.realpath(path)
    for mnt in sorted(control.megafs_mounts(), key=len, reverse=True):
        if path == mnt or path.startswith(mnt.rstrip("/") + "/"):
            return mnt
    raise NotMounted(f"{path} is not inside a megafs mount")


def _share(args) -> int:
    _mount_of(args.path)
    try:
        os.setxattr(args.path, control.SHARE, b"create")
        link = os.getxattr(args.path, control.SHARE).decode()
    except OSError as e:
        raise _share_error(f"cannot share {args.path}", e) from None
    parsed = share_format.parse_link(link)
    if share_format.web_base(parsed.url) is None:
        print(link)
        print("megafs: a browser link needs the store on an S3 endpoint (this link is for"
              " megafs get; on this machine 'megafs web serve' serves it)", file=sys.stderr)
        return 0
    if parsed.key is None or parsed.public_key is None:  # (a daemon older than signing)
        print(link)
        return 0
    web = share_format.web_link(parsed.url, parsed.share_id, parsed.key, parsed.public_key)
    print(web)
    print(link, flush=True)
    trio.run(_check_anonymous, parsed)
    return 0


async def _check_anonymous(link: share_format.Link) -> None:
    """Warn (with the policy to apply) when a browser cannot read the share, the page or
    the share's blocks (a policy set before packs allowed ``b/*`` but not ``p/*``)."""
    from megafs.backends import s3web
    from megafs.backends.s3 import parse_location

    base = share_format.web_base(link.url)
    checks = [(share_format.object_key(link.share_id), "the share"),
              (share_format.WEB_PAGE, "the download page")]
    while checks:
        key, what = checks.pop(0)
        status = await s3web.anonymous_status(f"{base}/{key}")
        if status == 200:
            if what == "the share":
                block = await _first_block_object(base, link)
                if block is not None:
                    checks.append((block, "a block of the share"))
            continue
        loc = parse_location(link.url)
        shown = status if isinstance(status, str) else f"HTTP {status}"
        print(f"megafs: the browser link does not work yet: an anonymous GET of {what} got"
              f" {shown}. Run 'megafs web enable {link.url}', or apply this bucket policy"
              f" and upload the page (megafs/web/megafs.html) to {base}/{share_format.WEB_PAGE}:"
              f"\n{s3web.policy_text(loc.bucket, loc.prefix)}", file=sys.stderr)
        return


async def _first_block_object(base: str, link: share_format.Link) -> str | None:
    """The object holding the first block the share's manifest lists (a pack, or a
    block stored alone), read anonymously; None when there is none or it cannot be
    read (the link itself is then checked by whoever opens it)."""
    from megafs.backends.anon import AnonymousBackend

    backend = AnonymousBackend(base)
    try:
        blob = await backend.get(share_format.object_key(link.share_id))
        raw = share_format.open_manifest(link.key, link.share_id, blob, link.public_key)
    except (MegafsError, KeyError):  # (NoSuchObject is a KeyError)
        return None
    finally:
        await backend.aclose()
    entries = raw.get("entries")
    for entry in entries if isinstance(entries, list) else []:
        blocks = entry.get("blocks") if isinstance(entry, dict) else None
        for block in blocks if isinstance(blocks, list) else []:
            if isinstance(block, list) and len(block) in (5, 8):
                key = block[5] if len(block) == 8 else block[1]
                if isinstance(key, str) and re.fullmatch(r"[bp]/[0-9a-f]{32}", key):
                    return key
    return None


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
        listing = os.getxattr(mnt, control.SHARES)
    except OSError as e:
        raise _share_error(f"cannot list the links of {mnt}", e) from None
    for item in json.loads(listing):
        print(f"{item['path']}\t{item['link']}")
    return 0


def _unshare(args) -> int:
    if args.target.startswith(("megafs+", "https://", "http://")):
        url, share_id, _key, _public = share_format.parse_link(args.target)
        for mnt, source in control.megafs_mounts().items():
            if url.rstrip("/") in (source.rstrip("/"), share_format.web_base(source)):
                try:
                    os.setxattr(mnt, control.UNSHARE, share_id.encode())
                except OSError as e:
                    if e.errno == errno.ENOENT:
                        raise ShareNotFound("that link was already revoked or never"
                                            " existed") from None
                    raise _share_error("cannot revoke the link", e) from None
                return 0
        raise NotMounted(f"mount {url} first: links are revoked by the mounted filesystem")
    _mount_of(args.target)
    try:
        os.setxattr(args.target, control.SHARE, b"revoke")
    except OSError as e:
        raise _share_error(f"cannot revoke the share of {args.target}", e) from None
    return 0


def _get(args) -> int:
    link = share_format.parse_link(args.link)
    if link.key is None:
        raise UsageError("the link has no key (the part after '#' is missing)")
    # SIGTERM and SIGHUP end a download as Ctrl-C does: trio turns SIGINT into
    # KeyboardInterrupt at a safe point, and every temporary file is removed.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: os.kill(os.getpid(), signal.SIGINT))

    def warn(text: str) -> None:
        print(f"megafs: {text}", file=sys.stderr)

    try:
        trio.run(functools.partial(download, link, args.dest, force=args.force,
                                   progress=sys.stderr.isatty(), warn=warn))
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
