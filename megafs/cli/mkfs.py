"""mkfs.megafs: create an encrypted filesystem in a store."""

from __future__ import annotations

import os
import sys

import trio

from megafs.cli.common import (
    Progress,
    add_passphrase_option,
    parse_size,
    parser,
    read_passphrase,
    run,
    setup_logging,
)
from megafs.core.snapshot import initial_image
from megafs.errors import UsageError
from megafs.store import lifecycle

DEFAULT_BLOCK_SIZE = 1 << 20

#: Prose of the man page mkfs.megafs(8) (see megafs.cli.manpage), next to the options.
MANUAL = {
    "summary": "create an encrypted megafs filesystem in a store",
    "description": """\
**mkfs.megafs** creates a new, empty megafs filesystem in the store at STORAGE_URL. \
It derives a key from the passphrase with Argon2id (deliberately slow and \
memory-hungry, so that guessing passphrases is expensive), writes the superblock \
and an empty metadata snapshot, and prints a recovery key once: it restores access \
with `megafs recover` when the passphrase is lost. Keep it somewhere safe: without \
the passphrase or the recovery key the data cannot be read.

The store must be empty unless `--force` is given; `--force` destroys whatever \
the store holds, an existing filesystem included.""",
    "examples": """\
Create a filesystem in a local directory, reading the passphrase from a file:

    mkfs.megafs --passphrase-file /etc/megafs/mega.passphrase local:///srv/megafs-store""",
    "environment": ["MEGAFS_PASSPHRASE", "MEGAFS_AUTHINFO", "AWS_ACCESS_KEY_ID"],
}


def build_parser():
    p = parser("mkfs.megafs", "Create a new encrypted megafs filesystem in STORAGE_URL.")
    add_passphrase_option(p)
    p.add_argument("--block-size", type=parse_size, default=DEFAULT_BLOCK_SIZE, metavar="SIZE",
                   help="size of the blocks files are split into (default 1M, 64K..64M)")
    p.add_argument("--quota", type=parse_size, metavar="SIZE",
                   help="limit the bytes stored (after deduplication and compression), e.g."
                        " 50G; df shows it; change it with 'megafs quota'")
    p.add_argument("--force", action="store_true",
                   help="overwrite whatever the store holds (destroys an existing filesystem)")
    p.add_argument("storage_url", metavar="STORAGE_URL", help="e.g. local:///srv/megafs-store")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    if not (64 << 10) <= args.block_size <= (64 << 20):
        raise UsageError("--block-size must be between 64K and 64M")
    passphrase = read_passphrase(args.passphrase_file, confirm=True)

    async def go():
        backend = await lifecycle.connect(args.storage_url)
        try:
            return await lifecycle.create(
                backend, passphrase, block_size=args.block_size, force=args.force,
                initial_metadata=lambda: initial_image(os.getuid(), os.getgid()),
                quota=args.quota)
        finally:
            await backend.aclose()

    with Progress("mkfs.megafs", "deriving the key (Argon2id) and writing the superblock"):
        _, recovery = trio.run(go)
    print(f"Created a megafs filesystem in {args.storage_url}.")
    print("Recovery key (shown once; it restores access if you lose the passphrase):")
    print(f"    {recovery}")
    sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    return run("mkfs.megafs", _main, argv)
