"""Direct I/O of cache files (megafs.core.directio), and whole 1 MiB blocks end to end:
the default block size takes the paths that small test blocks never reach (large
writes in worker threads, reads and hashing in the upload's worker thread, and on a
remote store ``O_DIRECT`` for the page-aligned parts)."""

from __future__ import annotations

import os
import random
import re

import pytest

from megafs.core import directio
from megafs.errors import ExitCode

MiB = 1 << 20


@pytest.fixture
def cache_file(tmp_path):
    if not directio.supported(str(tmp_path)):
        pytest.skip(f"{tmp_path} does not support O_DIRECT")
    fd = os.open(tmp_path / "blk", os.O_RDWR | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


@pytest.mark.parametrize("offset,length", [
    (0, MiB), (0, 4096), (4096, 8192), (0, 100), (100, 4096), (100, 3 * 4096),
    (4095, 4097), (8192, 4096 + 17), (12345, 200000), (0, MiB - 1),
])
def test_pwrite_then_pread_any_alignment(cache_file, offset, length):
    base = os.urandom(MiB)
    os.pwrite(cache_file, base, 0)  # existing content around the written range survives
    data = os.urandom(length)
    directio.pwrite(cache_file, data, offset)
    expect = bytearray(base)
    expect[offset:offset + length] = data
    size = max(len(base), offset + length)
    assert os.fstat(cache_file).st_size == size
    assert directio.pread(cache_file, size, 0) == bytes(expect)
    assert os.pread(cache_file, size, 0) == bytes(expect)  # the page cache agrees
    assert directio.pread(cache_file, 5000, 4096) == bytes(expect[4096:9096])


def test_pread_past_the_end_is_short(cache_file):
    data = os.urandom(3 * 4096 + 10)
    directio.pwrite(cache_file, data, 0)
    assert directio.pread(cache_file, MiB, 0) == data
    assert directio.pread(cache_file, 8192, 3 * 4096) == data[3 * 4096:]


def test_buffered_write_then_direct_read_sees_it(cache_file):
    directio.pwrite(cache_file, bytes(MiB), 0)
    os.pwrite(cache_file, b"x" * 10, 5000)  # dirty in the page cache only
    got = directio.pread(cache_file, MiB, 0)
    assert got[5000:5010] == b"x" * 10 and got.count(0) == MiB - 10


def test_unsupported_directory_falls_back(tmp_path, monkeypatch):
    def refuse(path, flags, *a):
        if flags & os.O_DIRECT:
            raise OSError(22, "Invalid argument")
        return real_open(path, flags, *a)

    real_open = os.open
    monkeypatch.setattr(os, "open", refuse)
    assert directio.supported(str(tmp_path)) is False
    assert not os.path.exists(tmp_path / ".directio-probe")


def _pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_whole_blocks_end_to_end(megafs):
    """1 MiB blocks: unaligned writes, overwrites, holes and truncation, fsync and
    kill -9, then everything read back through a fresh cache directory."""
    megafs.mkfs(block_size=None)  # default 1 MiB blocks
    megafs.mount()
    size = 5 * MiB + 12345
    expect = bytearray(_pattern(1, size))
    path = megafs.mnt / "big"
    with open(path, "wb") as f:
        pos, rng = 0, random.Random(2)
        while pos < size:  # odd chunk sizes: requests straddle pages and blocks
            n = min(rng.choice((4096, 65536 + 7, MiB, 3 * MiB + 5, 300000)), size - pos)
            f.write(expect[pos:pos + n])
            pos += n
    fd = os.open(path, os.O_RDWR)
    try:
        for off, n in ((MiB - 100, 200), (2 * MiB, MiB), (3 * MiB + 4096, 8192), (17, 5)):
            chunk = _pattern(off, n)
            os.pwrite(fd, chunk, off)
            expect[off:off + n] = chunk
        os.ftruncate(fd, 9 * MiB)  # a hole of whole blocks at the end
        expect.extend(bytes(9 * MiB - len(expect)))
        os.pwrite(fd, b"tail", 9 * MiB - 4)
        expect[-4:] = b"tail"
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(megafs.mnt / "second", "wb") as f:  # fsynced, then the daemon is killed
        f.write(_pattern(3, 2 * MiB + 1))
        f.flush()
        os.fsync(f.fileno())
    megafs.kill9()
    megafs.mount()  # the same cache directory: uploads what the kill left dirty
    assert (megafs.mnt / "big").read_bytes() == bytes(expect)
    assert (megafs.mnt / "second").read_bytes() == _pattern(3, 2 * MiB + 1)
    megafs.umount()
    megafs.mount(fresh_cache=True)
    assert (megafs.mnt / "big").read_bytes() == bytes(expect)
    assert (megafs.mnt / "second").read_bytes() == _pattern(3, 2 * MiB + 1)
    megafs.umount()
    # The killed daemon may have stored blocks it had not recorded yet: unreferenced
    # objects, the one thing a crash may leave (docs/format.md, section 6). fsck removes
    # them and finds nothing else; a second fsck is clean.
    first = megafs.fsck(check=False)
    problems = [line for line in first.stdout.splitlines()  # not the packs' summary line
                if line and not line.startswith("checked ")
                and not re.match(r"\d+ packs, \d+ bytes: ", line)]
    assert first.returncode in (0, int(ExitCode.FSCK_REPAIRED)), first.stdout + first.stderr
    assert all("not referenced by anything" in line for line in problems), first.stdout
    assert megafs.fsck().returncode == 0
