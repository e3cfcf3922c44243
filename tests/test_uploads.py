"""When dirty blocks are uploaded. On a remote store (S3) a full block goes as soon as a
sequential writer has moved past it (unless it was uploaded a moment ago); on a local
store, which shares the disk with the cache, it waits like any other block for the
write-back delay. Everything goes at umount."""

from __future__ import annotations

import os
import time

BLOCK = 65536  # helpers.SMALL_BLOCK


def dirty_bytes(megafs) -> int:
    return megafs.status()["dirty_bytes"]


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


async def test_block_dropped_while_its_upload_waits_for_a_core(tmp_path):
    """A block truncated away while its upload waits for a free core is skipped: no
    storage error, no back-off, nothing to commit (in-process, no mount)."""
    import trio
    import trio.testing

    from megafs.backends.local import LocalBackend
    from megafs.core import schema
    from megafs.core.filesystem import Filesystem
    from megafs.crypto.keys import KeyRing
    from megafs.store.objects import ObjectStore

    store = ObjectStore(LocalBackend(str(tmp_path / "store")), KeyRing(os.urandom(32), b"s" * 16))
    conn = schema.connect(str(tmp_path / "meta.db"))
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    conn.execute("INSERT INTO inodes (id, mode, uid, gid, size, nlink, atime_ns, mtime_ns,"
                 " ctime_ns) VALUES (2, 33188, 0, 0, 0, 1, 1, 1, 1)")
    fs = Filesystem(conn, store, str(tmp_path / "cache"), block_size=1 << 20,
                    cache_size=64 << 20)
    try:
        await fs.write(2, 0, os.urandom(1 << 20))
        e = fs.cache.entries[(2, 0)]
        up = fs.uploader
        holders = [object() for _ in range(int(up._cpu.total_tokens))]
        for h in holders:  # every core busy
            up._cpu.acquire_on_behalf_of_nowait(h)
        e.uploading = True
        up._inflight += 1
        up._inflight_bytes += e.size
        async with trio.open_nursery() as nursery:
            nursery.start_soon(up._one, e, e.size)
            await trio.testing.wait_all_tasks_blocked()
            fs.cache.drop_inode(2)  # truncated to 0 while the upload waits
            for h in holders:
                up._cpu.release_on_behalf_of(h)
        assert (up.failures, up.last_error, up._done) == (0, None, [])
        assert up.uploaded_bytes == 0
    finally:
        fs.close()
