"""Build tests/data/store-v3: a small local store in on-storage format 3 (packs) with
metadata schema 4, made before the table ``unsent`` (schema 5) existed.

The store is checked in; tests/test_old_formats.py mounts and checks a copy of it on
every run to prove that schema 4 stays readable and is upgraded. It must be made by a
megafs that writes schema 4 (commit 22e03c8), never by the current code: unpack that
commit's sources anywhere (no install needed) and run this script with them first on
the module path, from outside the repository::

    git archive 22e03c8 | tar -x -C SRC
    cd / && PYTHONPATH=SRC REPO/.venv/bin/python REPO/tests/data/make_store_v3.py \\
        --src SRC REPO/tests/data/store-v3

The store's passphrase is PASSPHRASE below (with the fast test KDF). It holds FILES,
the directory ``dir``, the symlink ``link -> dir/b.txt`` and one share of ``dir/b.txt``;
the link's tail after the store URL (``s/<share id>#<key>``) is written next to the
store as ``store-v3.link`` (the URL is wherever a test copies the store).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import make_store_v2  # noqa: E402 - the same build, with this store's contents

PASSPHRASE = "format three schema four passphrase"
FILES = {**make_store_v2.FILES, "a.txt": b"hello from format 3, schema 4\n"}
SYMLINK = make_store_v2.SYMLINK
SHARED = make_store_v2.SHARED


def build(src: Path, dest: Path) -> str:
    return make_store_v2.build(src, dest, passphrase=PASSPHRASE, files=FILES,
                               symlink=SYMLINK, shared=SHARED)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, required=True,
                   help="the sources of a megafs that writes schema 4 (format 3)")
    p.add_argument("dest", type=Path)
    args = p.parse_args()
    print(build(args.src.resolve(), args.dest.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
