"""megafs: the general tool (subcommands)."""

from __future__ import annotations

from megafs.cli import ctrl, keys, share, web
from megafs.cli.common import finish, parser, run, setup_logging
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
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k + ':':<{width + 1}} {v}")
    _print_damaged(s)
    return 0


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


def build_parser():
    p = parser("megafs", "megafs: encrypted cloud storage mounted as a folder.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("stat", help="show usage, upload state and damaged files of a mount",
                       description="Show the usage and upload state of the mount on MOUNTPOINT,"
                                   " and the files with byte ranges fsck.megafs found damaged.")
    s.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the filesystem is mounted")
    s.set_defaults(fn=_stat)
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
