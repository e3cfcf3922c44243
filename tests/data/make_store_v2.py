"""Build tests/data/store-v2: a small local store in on-storage format 2 (one object per
block, metadata schema 3), made before packs (format 3) existed.

The store is checked in; tests/test_old_formats.py mounts and checks a copy of it on
every run to prove that format 2 stays readable and is upgraded. It must be made by a
megafs that writes format 2 (commit 867b735), never by the current code: unpack that
commit's sources anywhere (no install needed) and run this script with them first on
the module path, from outside the repository::

    git archive 867b735 | tar -x -C SRC
    cd / && PYTHONPATH=SRC REPO/.venv/bin/python REPO/tests/data/make_store_v2.py \\
        --src SRC REPO/tests/data/store-v2

The store's passphrase is PASSPHRASE below (with the fast test KDF). It holds FILES,
the directory ``dir``, the symlink ``link -> dir/b.txt`` and one share of ``dir/b.txt``;
the link's tail after the store URL (``s/<share id>#<key>``) is written next to the
store as ``store-v2.link`` (the URL is wherever a test copies the store).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PASSPHRASE = "format two passphrase"
FILES = {
    "a.txt": b"hello from format 2\n",
    "dir/b.txt": b"b" * 70_000 + b"end\n",  # two blocks of 64 KiB
    "dir/c.bin": bytes(range(256)) * 300,  # 76,800 bytes, compressible
    "dir/empty": b"",
}
SYMLINK = ("link", "dir/b.txt")
SHARED = "dir/b.txt"


def build(src: Path, dest: Path, *, passphrase: str = PASSPHRASE, files: dict = FILES,
          symlink: tuple = SYMLINK, shared: str = SHARED) -> str:
    """Make the store *dest* with the megafs whose sources are *src* (make_store_v3.py
    uses this too, with its own contents); return the share link."""
    env = dict(os.environ, MEGAFS_PASSPHRASE=passphrase, MEGAFS_INSECURE_TEST_KDF="1",
               PYTHONPATH=str(src))

    def tool(*args) -> str:
        launcher = src / "megafs" / "cli" / "launchers" / args[0]
        return subprocess.run([sys.executable, str(launcher), *map(str, args[1:])], env=env,
                              check=True, capture_output=True, text=True, cwd="/").stdout

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
            for name, data in files.items():
                (mnt / name).write_bytes(data)
            os.symlink(symlink[1], mnt / symlink[0])
            link = tool("megafs", "share", mnt / shared).strip()
        finally:
            tool("umount.megafs", mnt)
    tail = link[len(f"megafs+{url}/"):]
    (dest.parent / (dest.name + ".link")).write_text(tail + "\n")
    return link


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True,
                   help="the sources of a megafs that writes format 2")
    p.add_argument("dest", type=Path)
    args = p.parse_args()
    print(build(args.src.resolve(), args.dest.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
