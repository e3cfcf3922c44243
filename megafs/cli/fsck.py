"""fsck.megafs: check that every object the metadata references exists and authenticates."""

from __future__ import annotations

import sys

import apsw
import trio

from megafs.backends import NoSuchObject
from megafs.cli.common import add_passphrase_option, parser, read_passphrase, run, setup_logging
from megafs.errors import CorruptObject, ExitCode, MegafsError, UnsupportedFormat
from megafs.store import lifecycle


def build_parser():
    p = parser("fsck.megafs", "Check a megafs filesystem in STORAGE_URL.")
    add_passphrase_option(p)
    p.add_argument("storage_url", metavar="STORAGE_URL")
    return p


async def check(url: str, passphrase: bytes, out) -> int:
    backend = await lifecycle.connect(url)
    store, _ = await lifecycle.unlock(backend, passphrase=passphrase)
    head = await store.read_head()
    if head is None:
        print("no metadata head in the store", file=out)
        return 1
    image = await store.get_metadata(head["snapshot"])
    conn = apsw.Connection(":memory:")
    conn.deserialize("main", image)
    rows = conn.execute(
        "SELECT o.key, o.size, group_concat(b.inode) FROM objects o"
        " JOIN blocks b ON b.object = o.id GROUP BY o.id").fetchall()
    problems = 0
    limit = trio.CapacityLimiter(backend.parallelism * 2)

    async def verify(key: str, size: int, inodes: str) -> None:
        nonlocal problems
        async with limit:
            try:
                data = await store.get_block(key)
                if len(data) != size:
                    raise CorruptObject(f"data block {key} has the wrong length")
            except (CorruptObject, UnsupportedFormat, NoSuchObject) as e:
                problems += 1
                print(f"{e} (used by inode {inodes})", file=out)

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
    problems = trio.run(check, args.storage_url, passphrase, sys.stdout)
    return int(ExitCode.FSCK_ERRORS) if problems else 0


def main(argv=None) -> int:
    return run("fsck.megafs", _main, argv)


__all__ = ["main", "check", "MegafsError"]
