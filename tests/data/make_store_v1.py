"""Build tests/data/store-v1: a small local store in on-storage format 1.

The store is checked in; tests/test_rollback_attacks.py mounts a copy of it on every
run to prove that format 1 stays readable and is upgraded. It must be made by a
megafs that writes format 1 (commit 610a704 or older), never by the current code::

    git worktree add /tmp/megafs-v1 610a704 && (cd /tmp/megafs-v1 && ./dev.sh test --co -q)
    /tmp/megafs-v1/.venv/bin/python tests/data/make_store_v1.py \\
        --bin /tmp/megafs-v1/.venv/bin tests/data/store-v1
    git worktree remove /tmp/megafs-v1

The store's passphrase is PASSPHRASE below (with the fast test KDF). It holds FILES,
the directory ``dir``, the symlink ``link -> dir/b.txt`` and one share of
``dir/b.txt``; the link's tail after the store URL (``s/<share id>#<key>``) is written
next to the store as ``store-v1.link`` (the URL is wherever a test copies the store).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASSPHRASE = "format one passphrase"
FILES = {
    "a.txt": b"hello from format 1\n",
    "dir/b.txt": b"b" * 70_000 + b"end\n",  # two blocks of 64 KiB
    "dir/empty": b"",
}
SYMLINK = ("link", "dir/b.txt")
SHARED = "dir/b.txt"


def build(bindir: Path, dest: Path) -> str:
    env = dict(os.environ, MEGAFS_PASSPHRASE=PASSPHRASE, MEGAFS_INSECURE_TEST_KDF="1")

    def tool(*args) -> str:
        return subprocess.run([str(bindir / args[0]), *map(str, args[1:])], env=env,
                              check=True, capture_output=True, text=True).stdout

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    url = f"local://{dest.resolve()}"
    with tempfile.TemporaryDirectory() as tmp:
        mnt, cache = Path(tmp, "mnt"), Path(tmp, "cache")
        mnt.mkdir()
        tool("mkfs.megafs", "--block-size", "64K", url)
        tool("mount.megafs", "--cache-dir", cache, url, mnt)
        try:
            (mnt / "dir").mkdir()
            for name, data in FILES.items():
                (mnt / name).write_bytes(data)
            os.symlink(SYMLINK[1], mnt / SYMLINK[0])
            link = tool("megafs", "share", mnt / SHARED).strip()
        finally:
            tool("umount.megafs", mnt)
    tail = link[len(f"megafs+{url}/"):]
    (dest.parent / (dest.name + ".link")).write_text(tail + "\n")
    return link


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", type=Path, default=Path(sys.executable).parent,
                   help="directory with the format-1 megafs tools")
    p.add_argument("dest", type=Path)
    args = p.parse_args()
    print(build(args.bin, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
