"""Names in the core: NAME_MAX counts bytes, names are arbitrary bytes, "." and ".."
in lookups. (The kernel resolves paths: it never sends a name holding "/" or NUL,
nor creates "." or "..", so the core does not check for them.)"""

from __future__ import annotations

import errno
import stat

import pytest
from corelib import DIR, FILE, GID, UID, attr, fs_errno

OK, LONG = b"n" * 255, b"n" * 256


def _make(core, name, mode=FILE, **kw):
    return core.fs.make(1, name, mode, UID, GID, **kw)


@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo", "link", "rename"])
async def test_255_bytes_work_256_do_not(core, kind):
    await core.create("src", b"source")

    def do(name):
        if kind == "file":
            row = _make(core, name)
        elif kind == "dir":
            row = _make(core, name, DIR)
        elif kind == "symlink":
            row = _make(core, name, stat.S_IFLNK | 0o777, target=b"src")
        elif kind == "fifo":
            row = _make(core, name, stat.S_IFIFO | 0o644)
        elif kind == "link":
            row = core.fs.link(core.ino("src"), 1, name)
        else:
            core.fs.rename(1, b"src", 1, name, 0)
            return
        core.fs.forget(row[0], 1)

    assert fs_errno(do, LONG) == errno.ENAMETOOLONG
    assert sorted(core.names()) == ["src"]
    do(OK)
    assert OK.decode() in core.names()
    row = core.fs.lookup(1, OK)
    core.fs.forget(row[0], 1)
    if kind in ("link", "rename"):
        assert await core.read_ino(row[0]) == b"source"


async def test_name_max_counts_bytes_not_characters(core):
    fits, too_long = "é" * 127, "é" * 128  # 254 and 256 bytes
    core.mkdir(fits)
    assert fs_errno(core.mkdir, too_long) == errno.ENAMETOOLONG
    assert core.names() == [fits]


async def test_lookup_of_256_bytes_is_enametoolong_not_enoent(core):
    assert fs_errno(core.fs.lookup, 1, LONG) == errno.ENAMETOOLONG
    assert fs_errno(core.fs.lookup, 1, OK) == errno.ENOENT
    assert core.fs.lookups == {}  # failed lookups hold nothing


@pytest.mark.parametrize("name", [b"\xff\xfe not utf-8", b" lead and trail ", b"new\nline",
                                  b"-", b"...", b".hidden", b"\x01\x7f"])
async def test_names_are_bytes(core, name):
    ino = await core.create("x", b"data")
    core.fs.rename(1, b"x", 1, name, 0)
    assert [r[1] for r in core.fs.readdir(1, 0)] == [name]
    row = core.fs.lookup(1, name)
    core.fs.forget(row[0], 1)
    assert row[0] == ino
    assert fs_errno(core.fs.lookup, 1, name + b"x") == errno.ENOENT


async def test_dot_and_dotdot(core):
    core.mkdir("a", "a/b")
    a, b = core.ino("a"), core.ino("a/b")
    for parent, name, want in [(b, b".", b), (b, b"..", a), (a, b"..", 1), (1, b"..", 1),
                               (1, b".", 1)]:
        row = core.fs.lookup(parent, name)
        assert row[0] == want and stat.S_ISDIR(attr(row, "mode"))
        assert core.fs.lookups[want] == 1
        core.fs.forget(want, 1)
    assert core.fs.lookups == {}
    # a directory moved elsewhere: ".." follows it
    core.rename("a/b", "b")
    row = core.fs.lookup(b, b"..")
    core.fs.forget(row[0], 1)
    assert row[0] == 1
    # listings hold no "." or ".." (the kernel adds them)
    assert core.names("a") == [] and core.names() == ["a", "b"]


async def test_existing_names(core):
    core.mkdir("d")
    await core.create("f", b"f")
    for path, mode in [("d", DIR), ("d", FILE), ("f", DIR), ("f", FILE)]:
        assert fs_errno(core.make, path, mode) == errno.EEXIST
    assert fs_errno(core.make, "f/x", FILE) == errno.ENOTDIR
    assert fs_errno(core.fs.make, 999, b"x", FILE, UID, GID) == errno.ENOENT
    assert core.names() == ["d", "f"]


async def test_symlink_targets(core):
    long_target = "x/" * 2000
    for name, target in [("rel", "target"), ("dangling", "nowhere/at/all"),
                         ("long", long_target), ("abs", "/etc/passwd")]:
        ino = core.symlink(name, target)
        assert core.fs.ns.readlink(ino) == target.encode()
        row = core.stat(name)
        assert stat.S_ISLNK(attr(row, "mode")) and attr(row, "size") == len(target)
    assert fs_errno(core.fs.ns.readlink, core.ino("")) == errno.EINVAL
