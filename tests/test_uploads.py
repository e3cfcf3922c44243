"""When dirty blocks are uploaded. On a remote store (S3) a full block goes as soon as a
sequential writer has moved past it (unless it was uploaded a moment ago); on a local
store, which shares the disk with the cache, it waits like any other block for the
write-back delay. Everything goes at umount."""

from __future__ import annotations

import os
import time

BLOCK = 65536  # helpers.SMALL_BLOCK


def dirty_bytes(megafs) -> int:
    return int(megafs.status()["dirty_bytes"])


def test_full_blocks_upload_before_the_delay_partial_ones_after(megafs):
    megafs.mkfs()
    megafs.mount(args=("--upload-delay", "60"))
    data = os.urandom(4 * BLOCK + 1000)
    with open(megafs.mnt / "f", "wb") as f:
        for off in range(0, len(data), 16384):
            f.write(data[off:off + 16384])
    if megafs.url.startswith("local:"):
        time.sleep(2)  # ten looks of the uploader: nothing is due before the delay
        assert dirty_bytes(megafs) == len(data), "a local store uploaded before the delay"
        megafs.umount()
        megafs.mount(fresh_cache=True)
        assert (megafs.mnt / "f").read_bytes() == data
        megafs.umount()
        return
    deadline = time.monotonic() + 30
    while dirty_bytes(megafs) > 1000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dirty_bytes(megafs) == 1000, "the 4 full blocks were not uploaded within 30 s"
    time.sleep(1)
    assert dirty_bytes(megafs) == 1000, "the partial last block did not wait for the delay"
    # Blocks 1 and 2 rewritten in order: block 1 is full and the writer moved on, but it
    # was uploaded a moment ago (a file being rewritten), so both wait for the delay.
    with open(megafs.mnt / "f", "r+b") as f:
        f.seek(BLOCK)
        f.write(b"x" * 2 * BLOCK)
    data = data[:BLOCK] + b"x" * 2 * BLOCK + data[3 * BLOCK:]
    time.sleep(1)
    assert dirty_bytes(megafs) == 2 * BLOCK + 1000
    megafs.umount()
    megafs.mount(fresh_cache=True)
    assert (megafs.mnt / "f").read_bytes() == data
    megafs.umount()
