"""relatime in the core: a read (a listing, for directories) sets atime to now when
atime is not newer than mtime or ctime, or is at least a day old; never otherwise.
``atime=False`` (``-o noatime``) turns it off, ``diratime=False`` (``-o nodiratime``)
for listings only."""

from __future__ import annotations

import time

import pytest
from corelib import attr

H = 3600 * 10**9  # one hour in ns

# (id, atime age, mtime age, ctime age in hours, updated)
CASES = [
    ("atime older than mtime", 2, 1, 3, True),
    ("atime older than ctime", 2, 3, 1, True),
    ("atime equal to mtime", 5, 5, 6, True),
    ("atime equal to ctime", 5, 6, 5, True),
    ("atime newer, but a day old", 24, 48, 48, True),
    ("atime newer, 25 hours old", 25, 48, 48, True),
    ("atime newer and fresh", 1, 2, 2, False),
    ("atime newer, 23 hours old", 23, 48, 48, False),
]


async def _aged(core, ino: int, a: float, m: float, c: float) -> tuple[int, int, int]:
    now = time.time_ns()
    times = (now - int(a * H), now - int(m * H), now - int(c * H))
    await core.fs.setattr(ino, dict(zip(("atime_ns", "mtime_ns", "ctime_ns"), times,
                                        strict=True)))
    return times


def _times(core, ino: int) -> tuple[int, int, int]:
    row = core.fs.getattr(ino)
    return attr(row, "atime_ns"), attr(row, "mtime_ns"), attr(row, "ctime_ns")


@pytest.mark.parametrize("a, m, c, updated", [x[1:] for x in CASES], ids=[x[0] for x in CASES])
async def test_read(core, a, m, c, updated):
    ino = await core.create("f", b"some data")
    before = await _aged(core, ino, a, m, c)
    start = time.time_ns()
    assert await core.fs.read(ino, 0, 100) == b"some data"
    after = _times(core, ino)
    assert after[1:] == before[1:]  # a read changes neither mtime nor ctime
    if updated:
        assert start <= after[0] <= time.time_ns()
        # now newer than both and fresh: the next read leaves it
        await core.fs.read(ino, 0, 100)
        assert _times(core, ino) == after
    else:
        assert after == before


@pytest.mark.parametrize("a, m, c, updated", [x[1:] for x in CASES], ids=[x[0] for x in CASES])
async def test_readdir(core, a, m, c, updated):
    core.mkdir("d")
    core.make("d/x")
    ino = core.ino("d")
    before = await _aged(core, ino, a, m, c)
    start = time.time_ns()
    assert [r[1] for r in core.fs.readdir(ino, 0)] == [b"x"]
    after = _times(core, ino)
    assert after[1:] == before[1:]
    if updated:
        assert start <= after[0] <= time.time_ns()
    else:
        assert after == before


async def test_read_past_the_end_counts_as_access(core):
    ino = await core.create("f", b"abc")
    await _aged(core, ino, 48, 48, 48)
    assert await core.fs.read(ino, 100, 10) == b""
    assert _times(core, ino)[0] > time.time_ns() - H


async def test_writes_leave_atime_alone(core):
    ino = await core.create("f", b"abc")
    a, _, _ = await _aged(core, ino, 48, 48, 48)
    start = time.time_ns()
    await core.fs.write(ino, 3, b"def")
    atime, mtime, ctime = _times(core, ino)
    assert atime == a and mtime >= start and ctime >= start


@pytest.mark.parametrize("core_options", [{"kernel_times": True}], ids=["kernel_times"])
async def test_writes_leave_mtime_to_the_kernel_with_writeback_cache(core):
    ino = await core.create("f", b"abc")
    before = await _aged(core, ino, 48, 48, 48)
    await core.fs.write(ino, 3, b"def")
    assert _times(core, ino) == before
    assert await core.fs.read(ino, 0, 10) == b"abcdef"


@pytest.mark.parametrize("core_options", [{"atime": False}], ids=["noatime"])
async def test_noatime(core):
    ino = await core.create("f", b"some data")
    core.mkdir("d")
    d = core.ino("d")
    before_f = await _aged(core, ino, 48, 1, 1)
    before_d = await _aged(core, d, 48, 1, 1)
    await core.fs.read(ino, 0, 100)
    core.fs.readdir(d, 0)
    assert _times(core, ino) == before_f
    assert _times(core, d) == before_d


@pytest.mark.parametrize("core_options", [{"diratime": False}], ids=["nodiratime"])
async def test_nodiratime(core):
    ino = await core.create("f", b"some data")
    core.mkdir("d")
    d = core.ino("d")
    await _aged(core, ino, 48, 1, 1)
    before_d = await _aged(core, d, 48, 1, 1)
    await core.fs.read(ino, 0, 100)
    core.fs.readdir(d, 0)
    assert _times(core, ino)[0] > time.time_ns() - H  # files: still relatime
    assert _times(core, d) == before_d
