"""fsck.megafs: check that every object the metadata references exists, authenticates and
matches its recorded hash; quarantine and record what is damaged."""

from __future__ import annotations

import sys

import trio

from megafs.cli.common import (
    Progress,
    add_passphrase_option,
    add_retention_option,
    parser,
    read_passphrase,
    run,
    setup_logging,
)
from megafs.core.check import Checker, Report, local_changes
from megafs.core.localcopy import read_seen
from megafs.errors import ExitCode, MegafsError
from megafs.mount import default_cache_dir
from megafs.store import lifecycle, superblock
from megafs.store import lock as store_lock

#: Prose of the man page fsck.megafs(8) (see tools/manpages.py), next to the options.
MANUAL = {
    "summary": "check a megafs filesystem",
    "description": """\
**fsck.megafs** unlocks the filesystem in the store at STORAGE_URL, reads its \
newest metadata and checks it against the store: the lock (a lock left by a mount \
that is gone is removed: a dead process on this host, or a lease not renewed for \
longer than its term), every data object the metadata references (it must exist, \
authenticate and have the recorded length), objects nothing references, reference \
counts, directory entries without inodes, inodes in no directory and link counts. \
It prints one line per problem, naming the file and the unreadable byte range, and \
a summary line on standard output.

Every data block is opened and its contents checked against the keyed hash the \
metadata recorded for it, so a block re-sealed by a share link holder is reported as \
tampering.

Unless --dry-run is given it repairs what it found: a damaged or missing block is \
never hidden. Its object is moved aside under q/ in the store (not deleted) and its \
byte range recorded as damaged: reading it fails (EIO) on every machine until it is \
overwritten, truncated away or the file is removed, and fsck lists such files on every \
run, with exit status 19, as does megafs stat. Unreferenced objects are deleted, counts \
are corrected and inodes in no directory move to /lost+found; the repaired metadata \
is committed as a new snapshot. To repair it holds the store's lock; it refuses \
(exit 21) while the filesystem is mounted: unmount it, or check only with --dry-run \
(which reads the last metadata uploaded). It also reports a cache directory \
that holds changes which never reached the store: mount with it to upload them.

Every snapshot and delta the head names must have the size and SHA-256 the head \
records and authenticate. Metadata objects are never deleted. A missing or damaged \
head is rebuilt from the newest snapshot and deltas that verify; no data object is \
deleted in that run. If the cache directory has seen a newer head than the store \
serves (the store was rolled back), or the superblock is older than the one the head \
was written under, fsck.megafs changes nothing and exits with 22 (--force checks and \
repairs the older state anyway).""",
    "examples": """\
    fsck.megafs --passphrase-file /etc/megafs/mega.passphrase local:///srv/megafs-store""",
    "environment": ["MEGAFS_PASSPHRASE", "MEGAFS_AUTHINFO", "AWS_ACCESS_KEY_ID"],
}


def build_parser():
    p = parser("fsck.megafs", "Check a megafs filesystem in STORAGE_URL and repair what is wrong.")
    add_passphrase_option(p)
    p.add_argument("--dry-run", "-n", action="store_true",
                   help="report problems without changing anything")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="the cache directory to look at for changes that never reached the"
                        " store (default ~/.cache/megafs/STORE_ID)")
    p.add_argument("--force", action="store_true",
                   help="check and repair even a store older than the cache directory has seen")
    add_retention_option(p, "objects the metadata no longer names are kept while younger"
                            " than this, as the writer keeps them for followers")
    p.add_argument("storage_url", metavar="STORAGE_URL", help="where the filesystem is stored")
    return p


async def check(url: str, passphrase: bytes, out, progress: Progress | None = None, *,
                repair: bool = False, cache_dir: str | None = None,
                force: bool = False, retention_s: float | None = None) -> Report:
    backend = await lifecycle.connect(url)
    try:
        store, sb = await lifecycle.unlock(backend, passphrase=passphrase)

        def say(line: str) -> None:
            if progress is not None:
                progress.print(line, file=out)
            else:
                print(line, file=out)

        cache_dir = cache_dir or default_cache_dir(sb["store_id"])
        lease = None
        if repair:  # repairs write: hold the store's lock, as a mount does
            lease = await store_lock.acquire(store, force=True)
            store.head_guard = lease.check
        try:
            checker = Checker(store, sb["block_size"], repair=repair, say=say, lease=lease,
                              progress=progress.update if progress is not None
                              else lambda t: None,
                              seen=read_seen(cache_dir, sb["store_id"]), force=force,
                              sb_version=superblock.version(sb), retention_s=retention_s)
            async with trio.open_nursery() as nursery:
                if lease is not None:
                    nursery.start_soon(lease.keep)
                report = await checker.run()
                nursery.cancel_scope.cancel()
        finally:
            if lease is not None:
                with trio.CancelScope(shield=True):
                    await lease.release()
        local = local_changes(cache_dir)
        if local:
            report.problems.append(local)
            say(local)
        verdict = ("no problems" if not report.problems else
                   f"{len(report.problems)} problem(s), repaired" if report.repaired else
                   f"{len(report.problems)} problem(s)"
                   + ("" if repair else " (run without --dry-run to repair)"))
        if report.damaged:
            verdict = (f"{verdict if report.problems else 'no other problems'};"
                       f" {len(report.damaged)} damaged file(s) remain")
        say(f"checked {url}: {verdict}")
        return report
    finally:
        await backend.aclose()


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    passphrase = read_passphrase(args.passphrase_file)
    with Progress("fsck.megafs", "unlocking the store and reading the metadata") as progress:
        report = trio.run(lambda: check(args.storage_url, passphrase, sys.stdout, progress,
                                        repair=not args.dry_run, cache_dir=args.cache_dir,
                                        force=args.force, retention_s=args.retention))
    if not report.problems and not report.damaged:
        return 0
    unrepaired = not report.repaired or report.read_only_reason or report.damaged or any(
        "cache directory" in p for p in report.problems)
    return int(ExitCode.FSCK_ERRORS if unrepaired else ExitCode.FSCK_REPAIRED)


def main(argv=None) -> int:
    return run("fsck.megafs", _main, argv)


__all__ = ["main", "check", "MegafsError"]
