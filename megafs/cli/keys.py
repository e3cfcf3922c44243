"""``megafs passphrase`` and ``megafs recover``: key management without re-encryption."""

from __future__ import annotations

import getpass
import sys

import trio

from megafs.cli.common import (
    add_passphrase_option,
    env_text,
    parse_quota,
    read_passphrase,
    warn_insecure_kdf,
)
from megafs.errors import UsageError
from megafs.store import lifecycle, superblock


def add_commands(sub) -> None:
    p = sub.add_parser("passphrase", help="change the passphrase (data is not re-encrypted)",
                       description="Change the passphrase of the filesystem in STORAGE_URL:"
                                   " only the superblock is rewritten, mounted or not.")
    add_passphrase_option(p)
    p.add_argument("--new-passphrase-file", metavar="F",
                   help="read the new passphrase from F (default: $MEGAFS_NEW_PASSPHRASE,"
                        " else ask)")
    p.add_argument("storage_url", metavar="STORAGE_URL", help=URL_HELP)
    p.set_defaults(fn=_passphrase)

    p = sub.add_parser("quota", help="show or change the storage quota (next mount uses it)",
                       description="Show the quota of the filesystem in STORAGE_URL, or set"
                                   " it to SIZE (bytes stored after deduplication and"
                                   " compression); a mount uses it from its next mount.")
    add_passphrase_option(p)
    p.add_argument("storage_url", metavar="STORAGE_URL", help=URL_HELP)
    p.add_argument("size", nargs="?", metavar="SIZE|none",
                   help="new quota, 1 byte to 1024P (e.g. 50G), or 'none' for no limit;"
                        " omit to show it")
    p.set_defaults(fn=_quota)

    p = sub.add_parser("recover", help="set a new passphrase using the recovery key from mkfs",
                       description="Set a new passphrase for the filesystem in STORAGE_URL,"
                                   " unlocking it with the recovery key mkfs.megafs printed.")
    p.add_argument("--recovery-key-file", metavar="F",
                   help="read the recovery key from F (default: $MEGAFS_RECOVERY_KEY, else ask)")
    p.add_argument("--new-passphrase-file", metavar="F",
                   help="read the new passphrase from F (default: $MEGAFS_NEW_PASSPHRASE,"
                        " else ask)")
    p.add_argument("storage_url", metavar="STORAGE_URL", help=URL_HELP)
    p.set_defaults(fn=_recover)


URL_HELP = "where the filesystem is stored (local:///PATH or s3://HOST/BUCKET[/PREFIX])"


def _new_passphrase(path: str | None) -> bytes:
    import os

    if not path and "MEGAFS_NEW_PASSPHRASE" in os.environ:
        value = env_text("MEGAFS_NEW_PASSPHRASE").encode()
        if not value:
            raise UsageError("the new passphrase is empty")
        return value
    saved = os.environ.pop("MEGAFS_PASSPHRASE", None)
    try:
        return read_passphrase(path, confirm=True, prompt="New passphrase: ")
    finally:
        if saved is not None:
            os.environ["MEGAFS_PASSPHRASE"] = saved


async def _rewrap(url: str, *, passphrase: bytes | None, recovery_key: bytes | None,
                  new: bytes) -> None:
    backend = await lifecycle.connect(url)
    try:
        store, sb = await lifecycle.unlock(backend, passphrase=passphrase,
                                           recovery_key=recovery_key)
        blob = await trio.to_thread.run_sync(superblock.rewrap_passphrase, sb, store.keys, new)
        await lifecycle.rewrite_superblock(store, blob)
    finally:
        await backend.aclose()


def _quota(args) -> int:
    # new: None (show), 0 (set no limit) or the new quota in bytes
    new = None if args.size is None else (parse_quota(args.size) or 0)
    passphrase = read_passphrase(args.passphrase_file)

    async def go():
        backend = await lifecycle.connect(args.storage_url)
        try:
            store, sb = await lifecycle.unlock(backend, passphrase=passphrase)
            if new is None:
                return sb.get("quota")
            blob = superblock.set_quota(sb, store.keys, new or None)
            await lifecycle.rewrite_superblock(store, blob)
            return new or None
        finally:
            await backend.aclose()

    quota = trio.run(go)
    print(f"quota: {quota if quota else 'none'}"
          + (" (a mounted filesystem uses it from its next mount)" if new is not None else ""))
    return 0


def _passphrase(args) -> int:
    warn_insecure_kdf("megafs")
    old = read_passphrase(args.passphrase_file, prompt="Current passphrase: ")
    new = _new_passphrase(args.new_passphrase_file)
    trio.run(lambda: _rewrap(args.storage_url, passphrase=old, recovery_key=None, new=new))
    print("Passphrase changed.")
    return 0


def _recover(args) -> int:
    import os

    if args.recovery_key_file:
        try:
            with open(args.recovery_key_file) as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read {args.recovery_key_file}: {e.strerror}") from None
    elif "MEGAFS_RECOVERY_KEY" in os.environ:
        text = env_text("MEGAFS_RECOVERY_KEY")
    elif sys.stdin.isatty():
        text = getpass.getpass("Recovery key: ")
    else:
        raise UsageError("no recovery key: use --recovery-key-file or MEGAFS_RECOVERY_KEY")
    warn_insecure_kdf("megafs")
    key = superblock.parse_recovery_key(text)
    new = _new_passphrase(args.new_passphrase_file)
    trio.run(lambda: _rewrap(args.storage_url, passphrase=None, recovery_key=key, new=new))
    print("Access recovered: the filesystem now opens with the new passphrase.")
    return 0
