"""mkfs.megafs: create an encrypted filesystem in a store."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from megafs.cli.common import (
    Progress,
    add_passphrase_option,
    parse_quota,
    parse_size,
    parser,
    read_passphrase,
    run,
    setup_logging,
    warn_insecure_kdf,
)
from megafs.core.snapshot import initial_image
from megafs.errors import UsageError
from megafs.store import lifecycle

DEFAULT_BLOCK_SIZE = 1 << 20

#: Prose of the man page mkfs.megafs(8) (see tools/manpages.py), next to the options.
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
    p.add_argument("--quota", type=quota_option, metavar="SIZE",
                   help="limit the bytes stored (after deduplication and compression), e.g."
                        " 50G (1 byte to 1024P, or 'none', the default); df shows it;"
                        " change it with 'megafs quota'")
    p.add_argument("--force", action="store_true",
                   help="overwrite whatever the store holds (destroys an existing filesystem)")
    p.add_argument("storage_url", metavar="STORAGE_URL", help="e.g. local:///srv/megafs-store")
    return p


def quota_option(text: str) -> int | None:
    try:
        return parse_quota(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("invalid quota: ")) from None


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    if not (64 << 10) <= args.block_size <= (64 << 20):
        raise UsageError("--block-size must be between 64K and 64M")
    warn_insecure_kdf("mkfs.megafs")
    passphrase = read_passphrase(args.passphrase_file, confirm=True)

    with Progress("mkfs.megafs", "deriving the key (Argon2id) and writing the superblock") as p:
        def show_recovery_key(recovery: str) -> None:
            # Before the superblock is written: from then on the filesystem exists, and
            # an interruption must not be able to lose its only recovery key.
            p.print(f"Creating a megafs filesystem in {args.storage_url}; its recovery key"
                    " (shown once; it restores access if you lose the passphrase):\n"
                    f"    {recovery}")

        async def go():
            backend = await lifecycle.connect(args.storage_url)
            try:
                return await lifecycle.create(
                    backend, passphrase, block_size=args.block_size, force=args.force,
                    initial_metadata=lambda: initial_image(os.getuid(), os.getgid()),
                    quota=args.quota, before_commit=show_recovery_key)
            finally:
                await backend.aclose()

        trio.run(go)
    sys.stdout.flush()
    return 0


def main(argv=None) -> int:
    return run("mkfs.megafs", _main, argv)
