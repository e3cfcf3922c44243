"""readdir cookies in the core: a listing resumed from a cookie while entries are added,
removed or renamed neither repeats an entry nor skips one that survived throughout."""

from __future__ import annotations

import random

import pytest
from corelib import attr

N = 120


async def _big_dir(core, n: int = N) -> tuple[int, list[str]]:
    core.mkdir("d")
    names = [f"entry-{i:04d}-{'x' * (i % 13)}" for i in range(n)]
    rng = random.Random(7)
    rng.shuffle(names)  # creation order is not name order
    for name in names:
        core.make(f"d/{name}")
    return core.ino("d"), names


def _list_while(core, ino: int, limit: int, between) -> list[bytes]:
    """A whole listing in batches of *limit*; ``between(batch number)`` runs between
    batches (as other requests do between the kernel's readdir calls)."""
    seen, after, i = [], 0, 0
    while batch := core.fs.readdir(ino, after, limit):
        seen += [r[1] for r in batch]
        after = batch[-1][0]
        between(i)
        i += 1
    return seen


@pytest.mark.parametrize("limit", [1, 7, 256])
async def test_batches_make_one_listing(core, limit):
    ino, names = await _big_dir(core)
    seen = _list_while(core, ino, limit, lambda i: None)
    assert sorted(seen) == sorted(n.encode() for n in names)
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("limit", [1, 7, 50])
async def test_removals_during_a_listing(core, limit):
    ino, names = await _big_dir(core)
    rng = random.Random(limit)
    doomed = set(rng.sample(names, N // 2))
    order = sorted(doomed)
    removed = set()

    def between(i):
        for name in order[i * 5:i * 5 + 5]:
            core.unlink(f"d/{name}")
            removed.add(name)

    seen = _list_while(core, ino, limit, between)
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    survivors = {n.encode() for n in names if n not in doomed}
    assert survivors <= set(seen), "a surviving entry was skipped"
    assert set(seen) <= {n.encode() for n in names}
    assert len(removed) >= 15  # (removals happened while the listing went on)


@pytest.mark.parametrize("limit", [1, 7, 50])
async def test_additions_during_a_listing(core, limit):
    ino, names = await _big_dir(core)
    added = []

    def between(i):
        if i < 20:
            name = f"new-{i:02d}"
            core.make(f"d/{name}")
            added.append(name.encode())

    seen = _list_while(core, ino, limit, between)
    assert len(seen) == len(set(seen))
    assert {n.encode() for n in names} <= set(seen)
    assert set(seen) - {n.encode() for n in names} <= set(added)


async def test_renames_during_a_listing_repeat_nothing(core):
    ino, names = await _big_dir(core)
    first = core.fs.readdir(ino, 0, 30)
    listed = [r[1] for r in first]
    # rename entries already listed and not yet listed; replace one by another
    core.rename(f"d/{listed[0].decode()}", f"d/{listed[0].decode()}-renamed")
    rest = [n for n in names if n.encode() not in listed]
    core.rename(f"d/{rest[0]}", f"d/{rest[0]}-renamed")
    core.rename(f"d/{rest[1]}", f"d/{listed[1].decode()}")  # over a listed entry
    later = [(r[1], r[2]) for r in core.listing(ino) if r[0] > first[-1][0]]
    seen = [(r[1], r[2]) for r in first] + later
    # The name listed[1] may come again, but for the file renamed onto it: a new entry
    # (POSIX leaves open whether entries added during a listing are seen).
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    assert (listed[1], core.ino(f"d/{listed[1].decode()}")) in later
    seen = [name for name, _ in seen]
    untouched = {n.encode() for n in names} - {listed[0], listed[1], rest[0].encode(),
                                                rest[1].encode()}
    assert untouched <= set(seen)


async def test_cookie_of_a_removed_entry_still_resumes(core):
    ino, names = await _big_dir(core)
    first = core.fs.readdir(ino, 0, 10)
    last_name = first[-1][1].decode()
    core.unlink(f"d/{last_name}")
    rest = [r[1] for r in core.listing(ino)]
    rest_after = [r[1] for r in core.fs.readdir(ino, first[-1][0], 1000)]
    assert rest_after == [r for r in rest if r not in {x[1] for x in first}]
    assert sorted([r[1] for r in first[:-1]] + rest_after) == \
        sorted(n.encode() for n in names if n != last_name)


async def test_cookies_are_never_reused(core):
    core.mkdir("d")
    ino = core.ino("d")
    core.make("d/a")
    cookie = core.fs.readdir(ino, 0)[0][0]
    core.unlink("d/a")
    core.make("d/a")  # the same name again: a new cookie, after the old one
    rows = core.fs.readdir(ino, cookie)
    assert [r[1] for r in rows] == [b"a"] and rows[0][0] > cookie


async def test_entries_carry_the_attributes_of_getattr(core):
    await core.create("f", b"x" * 5000)
    core.mkdir("d")
    core.symlink("l", "f")
    for cookie, name, *row in core.fs.readdir(1, 0):
        assert tuple(row) == core.fs.getattr(row[0]), name
        assert cookie > 0
    assert attr(core.stat("f"), "blocks") == 16  # 5000 bytes: two 4 KiB units, not a block
