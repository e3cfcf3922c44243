"""Build tests/data/store-v3: a small local store in on-storage format 3 (packs) with
metadata schema 4, made before the table ``unsent`` (schema 5) existed.

Made and checked in as make_store_v2.py says for store-v2, but by the sources of commit
22e03c8 (the last megafs that writes schema 4) and into ``store-v3``; the same build,
with this store's passphrase and ``a.txt``.
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
