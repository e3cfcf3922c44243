"""megafs: the general tool (subcommands)."""

from __future__ import annotations

import os

from megafs.cli import ctrl, keys, share, web
from megafs.cli.common import (
    add_passphrase_option,
    finish,
    parser,
    read_passphrase,
    run,
    seconds,
    setup_logging,
)
from megafs.errors import UsageError
from megafs.fs import control

#: Prose of the man page megafs(1) (see tools/manpages.py), next to the options.
MANUAL = {
    "summary": "manage megafs filesystems and running mounts",
    "description": """\
**megafs** gathers the commands that are not mkfs, mount, umount or fsck: the state \
of a mount, control of a running daemon, key management and share links. \
`python -m megafs` runs it too.

Changing the passphrase or recovering access with the recovery key rewrites only the \
superblock: no data is re-encrypted, and they work whether or not the filesystem is \
mounted.

A share link names one file or folder and carries the key that decrypts it, and \
nothing else: whoever holds the link can download it with `megafs get`, without the \
passphrase, until it is revoked with `megafs unshare`.""",
    "examples": """\
Upload everything now and free the cache space of what is in the store:

    megafs ctrl /srv/mega flush
    megafs ctrl /srv/mega dropcache

Debug messages of the uploader of a running mount, then back to normal:

    megafs ctrl /srv/mega log-level debug megafs.core.uploader
    megafs ctrl /srv/mega log-level info megafs.core.uploader

Set a new passphrase with the recovery key printed by mkfs.megafs:

    megafs recover --recovery-key-file key.txt local:///srv/megafs-store""",
    "environment": ["MEGAFS_PASSPHRASE", "MEGAFS_NEW_PASSPHRASE", "MEGAFS_RECOVERY_KEY",
                    "MEGAFS_AUTHINFO", "AWS_ACCESS_KEY_ID"],
    "files": ["LOG", "AUTHINFO"],
}


def _stat(args) -> int:
    mnt = control.megafs_mountpoint(args.mountpoint)
    pid = control.daemon_pid(mnt)
    s = control.read_json(mnt, control.STATS)

    def size(n):
        if n is None:
            return "none"
        for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or unit == "TiB":
                return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
            n /= 1024

    def saved(before, after):
        return f"{size(before - after)} ({(1 - after / before) * 100:.0f}%)" if before else "0 B"

    rows = [
        ("mountpoint", mnt), ("daemon pid", pid),
        ("used (stored)", size(s["stored_bytes"] + s["dirty_bytes"])),
        ("quota", size(s["quota"])),
        ("files", s["files"]), ("inodes", s["inodes"]),
        ("data in files", size(s["file_bytes"])),
        ("saved by holes", saved(s["file_bytes"], s["block_bytes"])),
        ("saved by deduplication", saved(s["block_bytes"], s["unique_bytes"])),
        ("saved by compression", saved(s["unique_bytes"],
                                       s["stored_bytes"] - s.get("dead_bytes", 0))
         + " (net of encryption and size padding)"),
        ("packs", f"{s.get('packs', 0)}, dead space {size(s.get('dead_bytes', 0))}"
                  f" (deleted data, counted as used until compacted), padding"
                  f" {size(s.get('padding_bytes', 0))}"),
        ("cache", f"{size(s['cache_bytes'])} of {size(s['cache_limit'])}"),
        ("waiting for upload", size(s["dirty_bytes"])),
        ("metadata", f"{size(s['metadata_local_bytes'])} local,"
                     f" {size(s['metadata_snapshot_bytes'])} snapshot in the store"),
    ]
    rows += _role_rows(s)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")
    _print_damaged(s)
    return 0


def _role_rows(s: dict) -> list[tuple[str, object]]:
    """A follower: the version it shows, how far behind it may be, the writer; a writer:
    the followers that announced themselves."""
    if s.get("role") == "follower":
        behind = (f"{s['lag']:.0f} s since it last found itself current"
                  f" (looks every {s['interval']:g} s)")
        rows = [("role", "follower (read-only)"),
                ("metadata version", f"{s['seq']} (the store's: {s['store_seq']})"),
                ("lag", behind), ("writer", s["writer"] or "none (not mounted for writing)")]
        if s.get("problem"):
            rows.append(("not following", s["problem"]))
        return rows
    if s.get("role") == "writer":
        followers = s.get("followers")
        rows = [("role", "writer")]
        if s.get("handing_over"):
            rows.append(("handing over to", f"{s['handing_over']} (uploading everything;"
                                            " writes wait)"))
        if followers is not None:
            rows.append(("followers", len(followers)))
            rows += [("follower", f"{f['host']} pid {f['pid']}, at version {f['seq']}")
                     for f in followers]
        return rows
    return []


def _print_damaged(s: dict) -> None:
    """The "damaged files" section: files whose ranges fsck found damaged (they read as
    errors until overwritten, truncated or removed)."""
    count = s.get("damaged_files", 0)
    if not count:
        return
    print(f"damaged files: {count} (reads of these byte ranges fail until they are"
          " overwritten, truncated away or the file is removed)")
    for f in s["damaged"]:
        ranges = ", ".join(f"{a}-{b}" for a, b in f["ranges"])
        print(f"  {f['path']}: bytes {ranges}")
    if count > len(s["damaged"]):
        print(f"  ... and {count - len(s['damaged'])} more (fsck.megafs lists them all)")


def _take_over(args) -> int:
    """On a follower: unmount it, mount the same store on the same mountpoint with the
    same cache directory and --take-over; if that fails, mount the follower again."""
    from megafs.cli import mount as mount_cli
    from megafs.cli.umount import main as umount_main

    mnt = control.megafs_mountpoint(args.mountpoint)
    s = control.read_json(mnt, control.STATS)
    if s.get("role") != "follower":
        raise UsageError(f"{mnt} is not a follower (mounted with -o ro): it writes already")
    os.environ["MEGAFS_PASSPHRASE"] = read_passphrase(args.passphrase_file).decode()
    code = umount_main([mnt])
    if code:
        return code
    common = ["--cache-dir", s["cache_dir"]]
    code = mount_cli.main([*common, "--take-over", "--take-over-timeout",
                           str(args.take_over_timeout), s["url"], mnt])
    if code:  # nothing changes: follow again
        mount_cli.main([*common, "-o", "ro", "--follow-interval", str(s["interval"]),
                        s["url"], mnt])
    return code


def build_parser():
    p = parser("megafs", "megafs: encrypted cloud storage mounted as a folder.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("stat", help="show usage, upload state and damaged files of a mount",
                       description="Show the usage and upload state of the mount on MOUNTPOINT,"
                                   " and the files with byte ranges fsck.megafs found damaged.")
    s.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the filesystem is mounted")
    s.set_defaults(fn=_stat)
    t = sub.add_parser("take-over", help="make a follower the writer (the writer hands over)",
                       description="On a follower (mount.megafs -o ro): ask the writer to"
                                   " hand over, and remount MOUNTPOINT as the writer with the"
                                   " same cache directory. If the writer does not answer"
                                   " within --take-over-timeout, the follower is mounted"
                                   " again and nothing changes.")
    add_passphrase_option(t)
    t.add_argument("--take-over-timeout", type=seconds(0, allow_lo=False), default=60.0,
                   metavar="SECONDS", help="give up after this long (default 60)")
    t.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the follower is mounted")
    t.set_defaults(fn=_take_over)
    ctrl.add_command(sub)
    keys.add_commands(sub)
    share.add_commands(sub)
    web.add_commands(sub)
    return finish(p)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    return args.fn(args)


def main(argv=None) -> int:
    return run("megafs", _main, argv)
