"""``megafs share|shares|unshare|get``: links that carry their own key."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys

import trio

from megafs.cli.download import download
from megafs.errors import MegafsError, NotMounted, UsageError
from megafs.store import share as share_format


def add_commands(sub) -> None:
    p = sub.add_parser("share", help="print a link to a file or folder (only the link's"
                                     " holder can decrypt it)")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(fn=_share)
    p = sub.add_parser("shares", help="list the active share links of a mount")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.set_defaults(fn=_shares)
    p = sub.add_parser("unshare", help="revoke a link: fresh downloads of it fail")
    p.add_argument("target", metavar="LINK_OR_PATH")
    p.set_defaults(fn=_unshare)
    p = sub.add_parser("get", help="download what a link shares (no passphrase needed)")
    p.add_argument("link", metavar="LINK")
    p.add_argument("dest", metavar="DEST", nargs="?",
                   help="where to put it: a new name, or an existing folder that receives"
                        " it under its own name (default: the current directory)")
    p.add_argument("--force", action="store_true",
                   help="replace existing files (never folders) of the same name")
    p.set_defaults(fn=_get)


def _mounts() -> dict[str, str]:
    from megafs.cli.umount import megafs_mounts

    return megafs_mounts()


def _mount_of(path: str) -> str:
    path = os.path.realpath(path)
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
        raise MegafsError(f"cannot share {args.path}: {e.strerror}") from None
    return 0


def _shares(args) -> int:
    mnt = _mount_of(args.mountpoint)
    for item in json.loads(os.getxattr(mnt, "megafs.shares")):
        print(f"{item['path']}\t{item['link']}")
    return 0


def _unshare(args) -> int:
    if args.target.startswith("megafs+"):
        url, share_id, _key, _public = share_format.parse_link(args.target)
        for mnt, source in _mounts().items():
            if source.rstrip("/") == url.rstrip("/"):
                try:
                    os.setxattr(mnt, "megafs.unshare", share_id.encode())
                except OSError as e:
                    raise MegafsError(f"cannot revoke the link: {e.strerror}") from None
                return 0
        raise NotMounted(f"mount {url} first: links are revoked by the mounted filesystem")
    _mount_of(args.target)
    try:
        os.setxattr(args.target, "megafs.share", b"revoke")
    except OSError as e:
        raise MegafsError(f"cannot revoke the share of {args.target}: {e.strerror}") from None
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

    trio.run(functools.partial(download, link, args.dest, force=args.force,
                               progress=sys.stderr.isatty(), warn=warn))
    return 0
