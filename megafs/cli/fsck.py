"""fsck.megafs: check that every object the metadata references exists and authenticates."""

from __future__ import annotations

import sys

import trio

from megafs.backends import NoSuchObject
from megafs.cli.common import (
    Progress,
    add_passphrase_option,
    parser,
    read_passphrase,
    run,
    setup_logging,
)
from megafs.core import snapshot
from megafs.errors import CorruptObject, ExitCode, MegafsError, UnsupportedFormat
from megafs.store import lifecycle

#: Prose of the man page fsck.megafs(8) (see megafs.cli.manpage), next to the options.
MANUAL = {
    "summary": "check a megafs filesystem",
    "description": """\
**fsck.megafs** unlocks the filesystem in the store at STORAGE_URL, reads its \
newest metadata snapshot and downloads every data object the metadata references, \
checking that it exists, authenticates (was not tampered with or damaged) and has \
the recorded length. It prints one line per problem, naming the inodes that use the \
object, and a summary line on standard output.

It only reads: it never changes the store, and it may run while the filesystem is \
mounted (it then checks the last snapshot uploaded).""",
    "examples": """\
    fsck.megafs --passphrase-file /etc/megafs/mega.passphrase local:///srv/megafs-store""",
    "environment": ["MEGAFS_PASSPHRASE", "MEGAFS_AUTHINFO", "AWS_ACCESS_KEY_ID"],
}


def build_parser():
    p = parser("fsck.megafs", "Check a megafs filesystem in STORAGE_URL.")
    add_passphrase_option(p)
    p.add_argument("storage_url", metavar="STORAGE_URL", help="where the filesystem is stored")
    return p


async def check(url: str, passphrase: bytes, out, progress: Progress | None = None) -> int:
    backend = await lifecycle.connect(url)
    store, _ = await lifecycle.unlock(backend, passphrase=passphrase)
    head = await store.read_head()
    if head is None:
        print("no metadata head in the store", file=out)
        return 1
    conn = await snapshot.load(store, head)
    rows = conn.execute(
        "SELECT o.key, o.size, group_concat(b.inode) FROM objects o"
        " JOIN blocks b ON b.object = o.id GROUP BY o.id").fetchall()
    problems = 0
    limit = trio.CapacityLimiter(backend.parallelism * 2)
    done = 0

    async def verify(key: str, size: int, inodes: str) -> None:
        nonlocal problems, done
        async with limit:
            try:
                data = await store.get_block(key)
                if len(data) != size:
                    raise CorruptObject(f"data block {key} has the wrong length")
            except (CorruptObject, UnsupportedFormat, NoSuchObject) as e:
                problems += 1
                line = f"{e} (used by inode {inodes})"
                if progress is not None:
                    progress.print(line, file=out)
                else:
                    print(line, file=out)
            done += 1
            if progress is not None:
                progress.update(f"checked {done} of {len(rows)} data objects")

    async with trio.open_nursery() as n:
        for key, size, inodes in rows:
            n.start_soon(verify, key, size, inodes)
    print(f"checked metadata snapshot {head['seq']} and {len(rows)} data objects:"
          f" {problems} problem(s)", file=out)
    await backend.aclose()
    return problems


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    passphrase = read_passphrase(args.passphrase_file)
    with Progress("fsck.megafs", "unlocking the store and reading the metadata") as progress:
        problems = trio.run(check, args.storage_url, passphrase, sys.stdout, progress)
    return int(ExitCode.FSCK_ERRORS) if problems else 0


def main(argv=None) -> int:
    return run("fsck.megafs", _main, argv)


__all__ = ["main", "check", "MegafsError"]
