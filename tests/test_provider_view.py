"""The provider's view: what a listing of the store tells about the files in it.

A tree of files of many sizes (1 B to 3 MiB) and a known public file set (the Python
``json`` package's sources) is written with the default block size and unmounted.
Then, with nothing but the listing: every data object is a pack of a whole number of
MiB (1 to 16), their number is about the volume divided by the pack size, and the
sealed sizes a provider would predict for the known files (each block sealed alone,
as formats 1 and 2 stored it) match no object at all. Finally a cold mount reads
everything back.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from megafs.store import envelope
from megafs.store.packs import PACK_SLACK, PACK_TARGET, PACK_UNIT

MiB = 1 << 20
BLOCK = MiB  # mkfs's default block size
KNOWN = Path(json.__file__).parent  # the known public file set
SIZES = [0, 1, 2, 100, 1000, 4095, 4096, 65_536, 100_000, MiB - 1, MiB, MiB + 1,
         3 * MiB - 7, 3 * MiB]
#: Packs are closed at 16 MiB or after a pause: allow a few more than the volume needs.
EXTRA_PACKS = 3


def _predicted_sizes(data: bytes) -> set[int]:
    """Sizes of the one-block objects formats 1 and 2 stored for *data*, and of its
    envelopes with full blocks unpadded (any key: the length of an envelope depends on
    the plaintext only)."""
    key = bytes(32)
    return {len(envelope.seal(key, envelope.KIND_BLOCK, "b/" + "0" * 32,
                              data[i:i + BLOCK], full=full))
            for i in range(0, len(data), BLOCK) for full in (None, BLOCK)}


def _data_objects(store) -> dict[str, int]:
    """Key -> size of every data object (packs and one-block objects) in the listing."""
    return {name: len(blob) for name, blob in store.objects()
            if name.startswith(("p/", "b/"))}


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_listing_shows_uniform_packs_and_no_known_file(megafs):
    fs = megafs
    rng = random.Random(15)
    files: dict[str, bytes] = {}
    for size in SIZES:
        files[f"sizes/{size}"] = rng.randbytes(size)
    for i in range(150):  # log-uniform sizes from 1 B to 3 MiB
        size = int(math.exp(rng.uniform(0, math.log(3 * MiB))))
        files[f"spread/{i:03d}"] = rng.randbytes(size)
    known = {f"json/{p.relative_to(KNOWN)}": p.read_bytes() for p in KNOWN.rglob("*.py")}
    assert len(known) >= 5
    files.update(known)

    fs.mkfs(block_size=None)
    fs.mount()
    for name, data in files.items():
        path = fs.mnt / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    fs.umount()

    objects = _data_objects(fs.store)
    sizes = sorted(objects.values())
    assert all(k.startswith("p/") for k in objects), "format 3 stores no one-block object"
    allowed = {n * PACK_UNIT + PACK_SLACK for n in range(1, PACK_TARGET // PACK_UNIT + 1)}
    assert set(sizes) <= allowed, sizes
    volume = sum(len(d) for d in files.values())
    fewest = math.ceil(volume / PACK_TARGET)
    # envelopes add Padme's padding (none for full blocks, ~12 % worst case)
    assert fewest <= len(objects) <= math.ceil(volume * 1.12 / (PACK_TARGET - MiB)) \
        + EXTRA_PACKS, (volume, sizes)
    predicted = set().union(*(_predicted_sizes(d) for d in known.values() if d))
    assert len(predicted) >= 5
    assert not predicted & set(sizes), "a known file's sealed size shows in the listing"

    fs.mount(fresh_cache=True)
    for name, data in files.items():
        assert (fs.mnt / name).read_bytes() == data, name
    fs.umount()
