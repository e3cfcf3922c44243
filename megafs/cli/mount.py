"""mount.megafs: mount a megafs filesystem (also usable as mount(8)'s helper)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from megafs.cli.common import (
    Progress,
    add_passphrase_option,
    add_retention_option,
    log_to_file,
    logging_buffered,
    parser,
    positive_size,
    read_passphrase,
    run,
    seconds,
    setup_logging,
)
from megafs.errors import CacheError, ExitCode, LocalIOError, MegafsError, UsageError
from megafs.mount import Daemon, MountConfig, check_mountpoint
from megafs.osutil import private_dir, tune_malloc

#: FUSE options passed on to libfuse (``name`` or ``name=``): any other -o is refused.
FUSE_OPTIONS = {"allow_other", "allow_root", "auto_unmount", "default_permissions", "ro",
                "dirsync", "sync", "blkdev", "debug", "fsname=", "subtype=", "max_read=",
                "blksize=", "context=", "fscontext=", "defcontext=", "rootcontext="}
#: What -o understands besides FUSE_OPTIONS (the man page and --help list them).
MEGAFS_OPTIONS = ("cache_dir=DIR", "cache_size=SIZE", "passphrase_file=F", "nonempty",
                  "noatime", "nodiratime")
DEV_FUSE = "/dev/fuse"
#: Shortest --metadata-interval: less only burns CPU in an idle daemon.
MIN_METADATA_INTERVAL = 0.1

#: mount(8) options that mean nothing to a FUSE filesystem daemon.
_IGNORED = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
            "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "atime", "relatime",
            "nonempty"}

#: Prose of the man page mount.megafs(8) (see tools/manpages.py), next to the options.
MANUAL = {
    "summary": "mount a megafs filesystem",
    "description": """\
**mount.megafs** unlocks the filesystem in the store at STORAGE_URL, brings its \
metadata up to date and mounts it on MOUNTPOINT (an empty directory). It returns \
once the mount is usable, leaving a daemon that serves it; the daemon's exit status \
is reported instead when it fails to start.

Data written to the mount lands in the local cache first and is encrypted and \
uploaded in the background, after `--upload-delay` (on S3, a full block as soon as a \
sequential writer has moved past it); metadata follows every `--metadata-interval`. Unmount with **umount.megafs**, which returns only when \
everything is in the store. Only one mount of a store writes at a time: the store \
holds a lock object while mounted, a lease the daemon renews four times per term \
(60 s). A mount with `-o ro` is a follower: it takes no lock, works while the writer \
is mounted on another machine, and shows the writer's changes within \
`--follow-interval` seconds of their upload (writes fail with EROFS). `--force` takes it over only from a mount that is provably gone (a dead \
process on this host, or a lease not renewed for longer than its term); a mount \
whose lock was taken over stops writing and refuses changes.

**mount.megafs** also works as the mount helper of mount(8): installed as \
/sbin/mount.megafs, `mount -t megafs STORAGE_URL MOUNTPOINT -o OPTIONS` and lines of \
type `megafs` in /etc/fstab work. Besides FUSE options such as `allow_other` and \
`ro`, `-o` understands `cache_dir=DIR`, `cache_size=SIZE`, `passphrase_file=F`, \
`nonempty` (mount over a non-empty directory), and `noatime` or `nodiratime` (do not \
update the access time of files and directories, or of directories only, which \
otherwise follows `relatime` for reads that reach the daemon); options that mean nothing to FUSE \
(`_netdev`, `nofail`, `noauto`, `x-*` and the like) are ignored.

Without `--fg` the daemon logs to megafs.log in the cache directory and to the \
system log (journal) when one listens on /dev/log; with `--fg` it stays in the \
foreground and logs to standard error. `--debug` adds debug messages, of every \
module or, as `--debug=MODULES`, of some; `megafs ctrl MOUNTPOINT log-level` \
changes the level of a running mount.""",
    "examples": """\
Mount, reading the passphrase from a file and bounding the cache to 8 GiB:

    mount.megafs --passphrase-file /etc/megafs/mega.passphrase --cache-size 8G \\
        local:///srv/megafs-store /srv/mega

The same as a line of /etc/fstab (mounted at boot, after the network):

    local:///srv/megafs-store /srv/mega megafs passphrase_file=/etc/megafs/mega.passphrase,cache_size=8G,_netdev 0 0

Debug messages of the block cache only, in the foreground:

    mount.megafs --fg --debug=megafs.core.cache local:///srv/megafs-store /srv/mega""",
    "environment": ["MEGAFS_PASSPHRASE", "XDG_CACHE_HOME", "MEGAFS_LOCK_TERM", "MEGAFS_RETENTION",
                    "MEGAFS_AUTHINFO",
                    "AWS_ACCESS_KEY_ID"],
    "files": ["CACHE_DIR", "LOG", "FSTAB", "AUTHINFO"],
}


def build_parser():
    p = parser("mount.megafs", "Mount the megafs filesystem in STORAGE_URL on MOUNTPOINT.")
    add_passphrase_option(p)
    p.add_argument("--fg", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="local cache directory of this store (default"
                        " ~/.cache/megafs/STORE_ID); made private (mode 0700)")
    p.add_argument("--cache-size", type=positive_size, default="4G", metavar="SIZE",
                   help="upper bound of the local block cache (default 4G)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options: " + ", ".join(MEGAFS_OPTIONS)
                        + "; FUSE options (" + ", ".join(sorted(FUSE_OPTIONS)) + "); and"
                        " mount(8) options that mean nothing here (_netdev, nofail, x-*...),"
                        " which are ignored")
    for flag in ("-n", "-s", "-v"):  # passed by mount(8); meaningless here
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--upload-delay", type=seconds(0), default=5.0, metavar="SECONDS",
                   help="upload a block once it has not been written for this long (default 5);"
                        " on S3 a full block goes as soon as the writer has moved on to the next"
                        " one")
    p.add_argument("--metadata-interval", type=seconds(MIN_METADATA_INTERVAL), default=2.0,
                   metavar="SECONDS",
                   help="upload metadata changes this often (default 2); with the upload"
                        " delay this bounds how far the store lags behind the mount")
    p.add_argument("--compact-below", type=_fraction, default=0.8, metavar="FRACTION",
                   help="rewrite a pack once its live data fills less than this fraction of"
                        " it (default 0.8: deleted data takes at most ~20%% of the space;"
                        " 0: never)")
    p.add_argument("--compact-interval", type=seconds(0, allow_lo=False), default=30.0,
                   metavar="SECONDS",
                   help="look for packs to compact this often; each round reads and writes"
                        " at most 16 MiB (default 30)")
    p.add_argument("--timeout", type=seconds(0, allow_lo=False), default=60.0,
                   metavar="SECONDS",
                   help="retry a failing storage request this long; then a read of data not in"
                        " the cache fails with EIO (uploads keep retrying; default 60)")
    p.add_argument("--follow-interval", type=seconds(MIN_METADATA_INTERVAL), default=5.0,
                   metavar="SECONDS",
                   help="with -o ro (a follower): look for the writer's changes this often"
                        " (default 5)")
    add_retention_option(p, "keep objects the metadata no longer names this long before"
                            " deleting them, for followers that have not caught up yet")
    p.add_argument("--take-over", action="store_true",
                   help="while another machine writes the store, ask it to hand the writer"
                        " role over: it uploads everything, releases the lock and follows")
    p.add_argument("--take-over-timeout", type=seconds(0, allow_lo=False), default=60.0,
                   metavar="SECONDS",
                   help="give up (nothing changes) if the writer has not handed over within"
                        " this long (default 60)")
    p.add_argument("--force", action="store_true",
                   help="take over the store's lock from a mount that is provably gone: its"
                        " lease was not renewed for longer than its term (a live mount is"
                        " never displaced)")
    p.add_argument("storage_url", metavar="STORAGE_URL", help="where the filesystem is stored")
    p.add_argument("mountpoint", metavar="MOUNTPOINT",
                   help="an empty directory to mount it on")
    return p


def _config(args) -> MountConfig:
    fuse, nonempty, atime = set(), False, {}
    for opt in ",".join(args.options).split(","):
        name, _, value = opt.strip().partition("=")
        if not name:
            continue
        if name == "cache_dir":
            args.cache_dir = value
        elif name == "cache_size":
            try:
                args.cache_size = positive_size(value)
            except argparse.ArgumentTypeError as e:
                raise UsageError(f"-o cache_size: {e}") from None
        elif name == "passphrase_file":
            args.passphrase_file = value
        elif name == "nonempty":
            nonempty = True
        elif name in ("noatime", "nodiratime"):
            atime[name[2:]] = False
        elif name in _IGNORED or name.startswith(("x-", "comment=")):
            continue
        elif (name + ("=" if _ else "")) in FUSE_OPTIONS:
            fuse.add(opt.strip())
        else:
            raise UsageError(f"unknown mount option {opt.strip()!r} in -o (see"
                             " mount.megafs --help)")
    check_dev_fuse()
    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint, nonempty_ok=nonempty)
    cache_dir = os.path.abspath(args.cache_dir) if args.cache_dir else None
    if cache_dir is not None:
        check_cache_dir(cache_dir, mountpoint)
    return MountConfig(
        url=args.storage_url, mountpoint=mountpoint,
        passphrase=read_passphrase(args.passphrase_file),
        cache_dir=cache_dir,
        cache_size=args.cache_size, fuse_options=fuse, upload_delay=args.upload_delay,
        metadata_interval=args.metadata_interval, force=args.force, timeout=args.timeout,
        compact_below=args.compact_below, compact_interval=args.compact_interval,
        follow_interval=args.follow_interval, retention=args.retention,
        take_over=args.take_over, take_over_timeout=args.take_over_timeout, **atime)


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (0: never compact)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1:  # nan fails too
        raise argparse.ArgumentTypeError(f"invalid fraction {text!r} (must be from 0 to 1)")
    return value


def check_cache_dir(cache_dir: str, mountpoint: str) -> None:
    """--cache-dir must be a writable directory (or creatable) outside the mountpoint."""
    real_cache, real_mnt = os.path.realpath(cache_dir), os.path.realpath(mountpoint)
    if os.path.commonpath([real_cache, real_mnt]) == real_mnt:
        raise UsageError(f"the cache directory {cache_dir} must not be the mountpoint or"
                         " inside it")
    existing = cache_dir
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "" if existing == cache_dir else f" ({existing})"
        raise CacheError(f"cache directory {cache_dir}{where} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = ("read-only filesystem" if os.statvfs(existing).f_flag & os.ST_RDONLY
               else "permission denied")
        where = "" if existing == cache_dir else f" (in {existing})"
        raise CacheError(f"cache directory {cache_dir}{where} is not writable: {why}")


def check_dev_fuse() -> None:
    """A clear line when this user cannot open /dev/fuse (instead of libfuse's failure)."""
    if not os.access(DEV_FUSE, os.R_OK | os.W_OK):
        why = "it does not exist" if not os.path.exists(DEV_FUSE) else "permission denied"
        raise LocalIOError(f"cannot use {DEV_FUSE} ({why}): load the fuse module, or give this"
                           " user access to it (usually mode 0666), or mount as root")


def _serve(cfg: MountConfig, ready, opened=None) -> None:
    tune_malloc()

    async def go():
        await Daemon(cfg).run(ready, opened)

    trio.run(go)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    os.umask(0o077)  # the cache directory's files (metadata, blocks, log) are private
    cfg = _config(args)
    if args.fg:
        setup_logging(args.debug, level=logging.INFO)
        _serve(cfg, lambda: None)
        return 0
    return _daemonize(cfg, args.debug)


def _daemonize(cfg: MountConfig, debug: bool) -> int:
    """Fork; the child serves the mount and reports 'ok' or an error through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:  # parent: wait for the verdict
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r, Progress("mount.megafs", "unlocking and mounting"):
            msg = r.read().decode(errors="replace")
        if msg.startswith("ok"):
            return 0
        _, waited = os.waitpid(pid, 0)
        code, _, text = msg.partition(" ")
        if not code.isdigit():
            code, text = str(int(ExitCode.FAILURE)), "the mount daemon died unexpectedly"
        print(f"mount.megafs: {text.strip()}", file=sys.stderr)
        return int(code)
    # child
    os.close(rfd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    state = {"w": os.fdopen(wfd, "wb", buffering=0)}

    def report(text: str) -> None:
        w = state.pop("w", None)
        if w is not None:
            w.write(text.encode())
            w.close()

    code = 0
    try:
        # The log goes to megafs.log in the cache directory. Without --cache-dir that
        # is known once the superblock is read: until then records wait in memory.
        logfile = os.path.join(cfg.cache_dir, "megafs.log") if cfg.cache_dir else None
        if logfile:
            private_dir(cfg.cache_dir)
        setup_logging(debug, logfile, buffer=not logfile, syslog="mount.megafs")
        _serve(cfg, lambda: report("ok"), opened=_log_in_cache_dir)
    except BaseException as e:  # noqa: BLE001 - the daemon reports and exits
        if logging_buffered():
            log_to_file(_default_log())
        leaf = e
        if isinstance(e, BaseExceptionGroup):
            from megafs.cli.common import leaf_error
            leaf = leaf_error(e)
        if isinstance(leaf, MegafsError):
            code = int(leaf.exit_code)
            report(f"{code} {leaf}")
        else:
            logging.getLogger("megafs").exception("daemon failed")
            code = int(ExitCode.FAILURE)
            report(f"{code} internal error: {leaf!r} (see the log)")
    os._exit(code)


def _log_in_cache_dir(daemon: Daemon) -> None:
    if logging_buffered():
        log_to_file(os.path.join(os.path.dirname(daemon.fs.cache.dir), "megafs.log"))


def _default_log() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    os.makedirs(os.path.join(base, "megafs"), exist_ok=True)
    return os.path.join(base, "megafs", "megafs.log")


def main(argv=None) -> int:
    return run("mount.megafs", _main, argv)
