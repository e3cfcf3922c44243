"""mount.megafs: mount a megafs filesystem (also usable as mount(8)'s helper)."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from megafs.cli.common import (
    add_passphrase_option,
    parse_size,
    parser,
    read_passphrase,
    run,
    setup_logging,
)
from megafs.errors import ExitCode, MegafsError
from megafs.mount import Daemon, MountConfig, check_mountpoint

#: mount(8) options that mean nothing to a FUSE filesystem daemon.
_IGNORED = {"rw", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev",
            "exec", "noexec", "suid", "nosuid", "dev", "nodev", "async", "atime", "noatime",
            "relatime", "nonempty"}


def build_parser():
    p = parser("mount.megafs", "Mount the megafs filesystem in STORAGE_URL on MOUNTPOINT.")
    add_passphrase_option(p)
    p.add_argument("--fg", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="local cache directory (default ~/.cache/megafs/STORE_ID)")
    p.add_argument("--cache-size", type=parse_size, default="4G", metavar="SIZE",
                   help="upper bound of the local block cache (default 4G)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated mount options: FUSE options (allow_other, ro, ...)"
                        " and cache_dir=, cache_size=, passphrase_file=")
    for flag in ("-n", "-s", "-v"):  # passed by mount(8); meaningless here
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--upload-delay", type=float, default=5.0, metavar="SECONDS",
                   help="upload a block once it has not been written for this long (default 5)")
    p.add_argument("--metadata-interval", type=float, default=10.0, metavar="SECONDS",
                   help="upload changed metadata at most this long after a change (default 10)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="retry a failing storage request this long; then a read of data not in"
                        " the cache fails with EIO (uploads keep retrying; default 60)")
    p.add_argument("--force", action="store_true",
                   help="take over the store's lock from a mount on another machine that"
                        " crashed (never use it while that mount is alive)")
    p.add_argument("storage_url", metavar="STORAGE_URL")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    return p


def _config(args) -> MountConfig:
    fuse, nonempty = set(), False
    for opt in ",".join(args.options).split(","):
        name, _, value = opt.strip().partition("=")
        if not name:
            continue
        if name == "cache_dir":
            args.cache_dir = value
        elif name == "cache_size":
            args.cache_size = parse_size(value)
        elif name == "passphrase_file":
            args.passphrase_file = value
        elif name == "nonempty":
            nonempty = True
        elif name in _IGNORED or name.startswith(("x-", "comment=")):
            continue
        else:
            fuse.add(opt.strip())
    mountpoint = os.path.abspath(args.mountpoint)
    check_mountpoint(mountpoint, nonempty_ok=nonempty)
    return MountConfig(
        url=args.storage_url, mountpoint=mountpoint,
        passphrase=read_passphrase(args.passphrase_file),
        cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else None,
        cache_size=args.cache_size, fuse_options=fuse, upload_delay=args.upload_delay,
        metadata_interval=args.metadata_interval, force=args.force, timeout=args.timeout)


def _serve(cfg: MountConfig, ready) -> None:
    async def go():
        daemon = Daemon(cfg)
        await daemon.open()
        await daemon.serve(ready)

    trio.run(go)


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = _config(args)
    if args.fg:
        setup_logging(args.debug)
        _serve(cfg, lambda: None)
        return 0
    return _daemonize(cfg, args.debug)


def _daemonize(cfg: MountConfig, debug: bool) -> int:
    """Fork; the child serves the mount and reports 'ok' or an error through a pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid:  # parent: wait for the verdict
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
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
        logfile = os.path.join(cfg.cache_dir, "megafs.log") if cfg.cache_dir else None
        if logfile:
            os.makedirs(cfg.cache_dir, mode=0o700, exist_ok=True)
        setup_logging(debug, logfile or _default_log())
        _serve(cfg, lambda: report("ok"))
    except BaseException as e:  # noqa: BLE001 - the daemon reports and exits
        leaf = e
        if isinstance(e, BaseExceptionGroup):
            from megafs.cli.common import _leaf
            leaf = _leaf(e)
        if isinstance(leaf, MegafsError):
            code = int(leaf.exit_code)
            report(f"{code} {leaf}")
        else:
            import logging
            logging.getLogger("megafs").exception("daemon failed")
            code = int(ExitCode.FAILURE)
            report(f"{code} internal error: {leaf!r} (see the log)")
    os._exit(code)


def _default_log() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    os.makedirs(os.path.join(base, "megafs"), exist_ok=True)
    return os.path.join(base, "megafs", "megafs.log")


def main(argv=None) -> int:
    return run("mount.megafs", _main, argv)
