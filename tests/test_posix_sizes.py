"""POSIX conformance in the style of pjdfstest, each case on a real mount. Sizes, holes and
huge sparse files.

Every expectation here is what Linux gives on ext4. To check the suite itself,
``MEGAFS_POSIX_ON_LOCAL_DISK=1`` runs the same tests against a plain directory on
the local disk as well (test ids ``[local-disk]``); there they must all pass.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time

from helpers import oserror
from posixlib import (
    BS,
)

from megafs.store.packs import PACK_UNIT

# -- sizes, holes, huge files ---------------------------------------------------------------


def test_truncate_to_one_petabyte_costs_nothing(target):
    root = target.root
    if target.megafs is not None:
        target.megafs.flush()
        before = target.megafs.store.total_bytes()
    p = root / "huge"
    PB = 1 << 50 if target.megafs else 1 << 40  # ext4 stops at 16 TiB
    t0 = time.monotonic()
    with open(p, "wb") as f:
        f.truncate(PB)
        f.seek(PB - 4)
        f.write(b"tail")
    os.truncate(root / "huge", PB + BS + 17)
    assert time.monotonic() - t0 < 2
    assert os.stat(p).st_size == PB + BS + 17

    def check():
        with open(p, "rb") as f:
            for off in (0, 12345, BS * 1000, 1 << 40, PB - BS - 1):
                f.seek(off)
                assert f.read(100) == bytes(100), off
            f.seek(PB - 8)
            assert f.read(100) == bytes(4) + b"tail" + bytes(92)
            f.seek(PB + BS + 10)
            assert f.read(100) == bytes(7)

    check()
    if target.megafs is not None:
        target.megafs.flush()
        grown = target.megafs.store.total_bytes() - before
        # One pack (whole MiB, mostly padding) for the block of "tail": no hole is stored.
        assert grown < PACK_UNIT + 512 * 1024, f"the store grew by {grown} bytes"
    target.remount()
    assert os.stat(p).st_size == PB + BS + 17
    check()
    t0 = time.monotonic()
    os.truncate(p, 10)
    os.truncate(p, PB)
    assert time.monotonic() - t0 < 2
    with open(p, "rb") as f:
        f.seek(PB - 8)
        assert f.read() == bytes(8)
    # beyond what the filesystem supports: EFBIG, not a corrupt size
    assert oserror(os.truncate, p, (1 << 63) - 1) in (errno.EFBIG, errno.EINVAL)
    assert os.stat(p).st_size == PB
    st = os.stat(p)
    assert st.st_blocks * 512 <= 1 << 20, f"st_blocks={st.st_blocks} for an empty 1 PiB file"


def test_st_blocks_counts_allocated_data_only(target):
    """st_blocks is the space the data takes (du, cp --sparse, tar --sparse use it)."""
    root = target.root
    sparse = root / "sparse"
    with open(sparse, "wb") as f:
        f.seek(100 << 20)
        f.write(b"end")
    full = root / "full"
    full.write_bytes(os.urandom(3 * BS))
    empty = root / "empty"
    empty.write_bytes(b"")
    for _ in range(2):
        assert os.stat(full).st_blocks * 512 >= 3 * BS
        assert os.stat(empty).st_blocks == 0
        blocks = os.stat(sparse).st_blocks
        assert blocks * 512 <= 1 << 20, f"{blocks} blocks for a 100 MiB file holding 3 bytes"
        du = subprocess.run(["du", "-k", str(sparse)], capture_output=True, text=True,
                            check=True).stdout.split()[0]
        assert int(du) <= 1024, f"du says {du} KiB"
        target.remount()


def test_o_trunc_on_existing_file_survives_remount(target):
    root = target.root
    p = root / "f"
    p.write_bytes(b"a long first version of the file")
    p.write_bytes(b"short")  # open(O_WRONLY | O_CREAT | O_TRUNC)
    assert p.read_bytes() == b"short"
    big = root / "big"
    big.write_bytes(os.urandom(3 * BS))
    with open(big, "wb") as f:
        f.write(b"x" * 10)
    target.remount()
    assert p.read_bytes() == b"short"
    assert os.stat(p).st_size == 5
    assert big.read_bytes() == b"x" * 10


def test_o_trunc_of_empty_write(target):
    """open(O_TRUNC) with nothing written afterwards leaves an empty file."""
    root = target.root
    p = root / "f"
    p.write_bytes(os.urandom(2 * BS + 5))
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    assert os.stat(p).st_size == 0
    target.remount()
    assert os.stat(p).st_size == 0
    assert p.read_bytes() == b""


def test_holes_read_as_zeros_after_shrink_and_grow_in_place(target):
    root = target.root
    p = root / "f"
    data = os.urandom(2 * BS + 100)
    p.write_bytes(data)
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, BS // 2)
        os.pwrite(fd, b"z", 2 * BS + 50)  # grow by writing past the end
        expect = data[:BS // 2] + bytes(2 * BS + 50 - BS // 2) + b"z"
        assert os.pread(fd, 3 * BS, 0) == expect
    finally:
        os.close(fd)
    target.remount()
    assert p.read_bytes() == expect
