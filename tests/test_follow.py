"""Several machines: read-only mounts that follow the writer (issue "Many devices").

Two real mounts of one store with two cache directories: the writer A on ``megafs.mnt``
and the follower B (``-o ro``) on a second mountpoint. B must only ever show a state A
actually had, never go back, show A's last state within the follow interval + 2 s of
its upload, refuse rolled-back or forged heads, and never return wrong bytes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    DAMAGED_READ,
    PASSPHRASE,
    MegaFS,
    rows_expecting_log_errors,
    with_unlocked_store,
)

from megafs.store import followers as store_followers

WRITER_ARGS = ("--metadata-interval", "0.3", "--upload-delay", "0.1")
VISIBLE_WITHIN = 2.0  # seconds after the follow interval (the bound)
STEPS = 40
KEPT = 6  # files in kept/ at most


def start(megafs: MegaFS, interval: float) -> Path:
    """mkfs, mount the writer on megafs.mnt and a follower; return the follower's mountpoint."""
    megafs.mkfs()
    megafs.mount(args=WRITER_ARGS)
    return mount_follower(megafs, interval)


def mount_follower(megafs: MegaFS, interval: float, name: str = "follower") -> Path:
    mnt = megafs.tmp / name
    mnt.mkdir(exist_ok=True)
    writer_cache = megafs.cache_dir
    megafs.follower_cache = megafs.new_cache_dir()
    megafs.mount(cache_dir=megafs.follower_cache, mnt=mnt,
                 args=("-o", "ro", "--follow-interval", str(interval)))
    megafs.cache_dir = writer_cache  # megafs.log() and later mounts: the writer's
    return mnt


def content(step: int) -> bytes:
    """The bytes of ``current`` after *step*: a header naming the step, then 1..100 KiB of
    bytes that depend on it (one read request: a torn read would show)."""
    size = 1 + (step * 7919) % (100 * 1024)
    seed = hashlib.sha256(str(step).encode()).digest()
    body = (seed * (size // len(seed) + 1))[:size]
    return f"step {step:06d}\n".encode() + body


def step_of(data: bytes) -> int:
    step = int(data[5:11])
    assert data == content(step), f"wrong bytes: header says step {step}, body differs"
    return step


class Writer(threading.Thread):
    """Runs STEPS steps on A, each an atomic operation (rename or unlink), and records the
    state after each: (names in kept/, step of current)."""

    def __init__(self, mnt: Path, pause: float):
        super().__init__(daemon=True)
        self.mnt = mnt
        self.pause = pause
        self.states: list[tuple[frozenset, int]] = []
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            kept = self.mnt / "kept"
            kept.mkdir()
            names: set[str] = set()
            self.states.append((frozenset(), -1))
            (self.mnt / ".tmp").write_bytes(content(0))
            os.rename(self.mnt / ".tmp", self.mnt / "current")
            current = 0
            self.states.append((frozenset(names), current))
            for i in range(1, STEPS):
                (self.mnt / ".tmp").write_bytes(content(i))
                os.rename(self.mnt / ".tmp", self.mnt / "current")
                current = i
                self.states.append((frozenset(names), current))
                (self.mnt / ".tmp2").write_bytes(b"kept %d" % i)
                os.rename(self.mnt / ".tmp2", kept / f"k{i:04d}")
                names.add(f"k{i:04d}")
                self.states.append((frozenset(names), current))
                if i > KEPT:  # kept/ stays small: one readdir reply (a listing that
                    # takes several can mix states, as readdir(3) on any filesystem)
                    os.unlink(kept / f"k{i - KEPT:04d}")
                    names.discard(f"k{i - KEPT:04d}")
                    self.states.append((frozenset(names), current))
                time.sleep(self.pause)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.done.set()


def observe(mnt: Path) -> tuple[frozenset, int] | None:
    """(names in kept/, step of current) as the follower shows them; None while the
    writer has not got that far or the file was replaced under the reader (an error,
    never wrong bytes)."""
    try:
        names = frozenset(os.listdir(mnt / "kept"))
        with open(mnt / "current", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:  # the inode was replaced and removed while open
        assert e.errno in (errno.EIO, errno.ENOENT, errno.ESTALE), e
        return None
    return names, step_of(data)


@pytest.mark.parametrize("interval", [
    pytest.param(1.0, id="new-deltas"),
    pytest.param(3.0, id="whole-state"),  # > 8 deltas between two looks: loads the head
])
def test_follower_shows_only_states_the_writer_had(megafs: MegaFS, interval):
    b = start(megafs, interval)
    writer = Writer(megafs.mnt, pause=3 * interval / STEPS)  # a few looks of the follower
    writer.start()
    seen_index, seen_step, looks = -1, -1, 0
    while not writer.done.is_set():
        got = observe(b)
        if got is not None:
            names, step = got
            matches = [i for i, (n, s) in enumerate(writer.states) if n == names]
            assert matches, f"the follower shows kept/ = {sorted(names)}, a state A never had"
            index = max(i for i in matches if writer.states[i][1] <= step) \
                if any(writer.states[i][1] <= step for i in matches) else None
            assert index is not None, (
                f"kept/ = {sorted(names)} with current from step {step}: not a state of A")
            assert index >= seen_index and step >= seen_step, "the follower went back"
            seen_index, seen_step = index, step
            looks += 1
        time.sleep(0.02)
    assert writer.error is None, writer.error
    assert looks > 3, "the follower never showed the writer's changes while it wrote"
    megafs.flush()  # the last state is in the store when this returns
    uploaded = time.monotonic()
    final = writer.states[-1]
    deadline = uploaded + interval + VISIBLE_WITHIN
    while observe(b) != final:
        assert time.monotonic() < deadline, (
            f"the follower did not show the last state within {interval} + {VISIBLE_WITHIN} s:"
            f" {observe(b)} != {final}")
        time.sleep(0.05)
    print(f"follower lag (interval {interval:g} s): the last state showed"
          f" {time.monotonic() - uploaded:.2f}s after its upload")
    assert (b / "current").read_bytes() == content(STEPS - 1)
    assert sorted(os.listdir(b / "kept")) == sorted(final[0])
    # Writes get EROFS; the writer's lock is untouched.
    for fn, args in ((Path.write_bytes, (b / "new", b"x")), (os.mkdir, (b / "d",)),
                     (os.unlink, (b / "current",))):
        with pytest.raises(OSError) as e:
            fn(*args)
        assert e.value.errno == errno.EROFS
    stat = megafs.run("megafs", "stat", b).stdout
    assert "role:" in stat and "follower" in stat and "writer:" in stat, stat
    megafs.umount(b)
    megafs.umount()


def megafs_stats(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "megafs.stats"))


def test_follower_without_writer_and_stat(megafs: MegaFS):
    """A follower mounts while nobody writes (no lock taken: a writer mounts beside it),
    and stat names the roles."""
    megafs.mkfs()
    b = mount_follower(megafs, 0.5)
    megafs.mount(args=WRITER_ARGS)  # the lock is free: the follower did not take it
    (megafs.mnt / "f").write_bytes(b"hello")
    megafs.flush()
    deadline = time.monotonic() + 0.5 + VISIBLE_WITHIN
    while not (b / "f").exists():
        assert time.monotonic() < deadline, "the follower did not show the new file"
        time.sleep(0.05)
    assert (b / "f").read_bytes() == b"hello"
    s = megafs_stats(b)
    assert s["role"] == "follower" and s["seq"] == s["store_seq"] and s["writer"], s
    writer = megafs_stats(megafs.mnt)
    assert writer["role"] == "writer" and len(writer["followers"]) == 1, writer
    assert writer["followers"][0]["pid"] == int(os.getxattr(b, "megafs.pid"))
    out = megafs.run("megafs", "stat", megafs.mnt).stdout
    assert re.search(r"^followers: +1$", out, re.M) and re.search(r"^follower: +\S+ pid", out,
                                                                   re.M), out
    out = megafs.run("megafs", "stat", b).stdout
    assert re.search(r"^role: +follower", out, re.M) and re.search(r"^lag: ", out, re.M), out
    megafs.umount(b)
    megafs.umount()


def test_follower_reads_fresh_data_after_overwrite(megafs: MegaFS):
    """The kernel's page cache and the follower's block cache never keep old bytes: a file
    overwritten in place on A reads as its new contents on B."""
    b = start(megafs, 0.5)
    f = megafs.mnt / "f"
    f.write_bytes(b"a" * 200_000)
    megafs.flush()
    deadline = time.monotonic() + 0.5 + VISIBLE_WITHIN
    while not (b / "f").exists() or (b / "f").stat().st_size != 200_000:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with open(b / "f", "rb") as reader:  # cached pages and blocks on B
        assert reader.read() == b"a" * 200_000
        with open(f, "r+b") as w:
            w.seek(70_000)
            w.write(b"b" * 1000)
            w.seek(0, os.SEEK_END)
            w.write(b"c" * 5000)
        megafs.flush()
        expected = b"a" * 70_000 + b"b" * 1000 + b"a" * 129_000 + b"c" * 5000
        deadline = time.monotonic() + 0.5 + VISIBLE_WITHIN
        while True:
            reader.seek(0)
            got = reader.read()
            if got == expected:
                break
            assert got == b"a" * 200_000, "the follower showed bytes A never had"
            assert time.monotonic() < deadline, "the overwrite did not reach the follower"
            time.sleep(0.05)
    assert (b / "f").stat().st_size == 205_000
    megafs.umount(b)
    megafs.umount()


def test_follower_shows_xattrs_set_after_it_mounted(megafs: MegaFS):
    """Extended attributes A sets or removes after B mounted show on B: B answers
    getxattr from its set of the inodes that have some, which following keeps current."""
    b = start(megafs, 0.5)
    f = megafs.mnt / "f"
    f.write_bytes(b"x")
    os.setxattr(megafs.mnt, "user.dir", b"d")
    megafs.flush()

    def on_b(name: str, path: Path) -> bytes | None:
        try:
            return os.getxattr(path, name)
        except FileNotFoundError:
            return None
        except OSError as e:
            assert e.errno == errno.ENODATA, e
            return None

    def wait_for(name: str, path: Path, value: bytes | None) -> None:
        deadline = time.monotonic() + 0.5 + VISIBLE_WITHIN
        while on_b(name, path) != value:
            assert time.monotonic() < deadline, f"{name} of {path} did not become {value!r}"
            time.sleep(0.05)

    wait_for("user.dir", b, b"d")
    os.setxattr(f, "user.colour", b"blue")
    megafs.flush()
    wait_for("user.colour", b / "f", b"blue")
    assert os.listxattr(b / "f") == ["user.colour"]
    os.removexattr(f, "user.colour")
    megafs.flush()
    wait_for("user.colour", b / "f", None)
    assert os.listxattr(b / "f") == []
    megafs.umount(b)
    megafs.umount()


BEHIND_ROWS = ["inside-retention",  # the old state, whole: its objects are still there
               "past-retention"]  # EIO: the objects are gone; then the new state


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("row", rows_expecting_log_errors(BEHIND_ROWS, {
    "past-retention": (DAMAGED_READ,)}))
def test_follower_behind_recovers(megafs: MegaFS, row):
    """A follower that looks rarely still names objects the writer no longer needs. Inside
    the retention it reads the old state (a state the writer had); past it the read fails
    with EIO (never wrong bytes), the follower looks at once, and the retry reads the new
    contents."""
    megafs.mkfs()
    megafs.mount(args=(*WRITER_ARGS, "--retention", "60"))
    (megafs.mnt / "f").write_bytes(b"1" * 100_000)
    megafs.flush()
    old = {k for k, _ in megafs.store.objects() if k.startswith("p/")}  # f's pack
    b = mount_follower(megafs, 600)  # looks again only when a read fails or it is told to
    (megafs.mnt / "f").write_bytes(b"2" * 100_000)  # the old blocks become garbage
    megafs.flush()
    megafs.flush()  # a second upload: the garbage of the first is discarded for sure
    if row == "inside-retention":
        assert (b / "f").read_bytes() == b"1" * 100_000
        look_now(b)
        assert (b / "f").read_bytes() == b"2" * 100_000
        megafs.umount(b)
        megafs.umount()
        return
    # The retention passed (a laptop asleep for longer): the writer deleted the old pack.
    # (It keeps them for 10 follow intervals of any follower it sees, 6000 s here: they
    # are deleted as it would have.)
    for key in old:
        (megafs.store.path / key).unlink()
    deadline = time.monotonic() + 30
    while True:  # the kernel may retry a failed read itself, after the follower caught up
        try:
            got = (b / "f").read_bytes()
            break
        except OSError as err:
            assert err.errno == errno.EIO
            assert time.monotonic() < deadline, "the follower did not catch up"
            time.sleep(0.1)
    assert got == b"2" * 100_000, "the follower returned bytes of a deleted state"
    log = (megafs.follower_cache / "megafs.log").read_text()
    assert re.search(r"read of /f .* failed: data block b/\w+ \(pack p/\w+\) is missing from"
                     r" the store", log), \
        "the follower was not behind: the test proves nothing"
    assert megafs_stats(b)["seq"] == megafs_stats(b)["store_seq"]
    megafs.umount(b)
    megafs.umount()


FSCK_ROWS = {
    # MEGAFS_RETENTION of fsck, its options, the follow interval of a follower announced
    # meanwhile -> fsck's exit code and what it says of the discarded objects
    "inside-retention": ("600", (), None, 0,
                         "pending deletion (inside the retention period): kept"),
    "past-retention": ("0", (), None, 25,
                       "1 objects in the store are not referenced by anything; removed"),
    "past-the-retention-option": ("600", ("--retention", "0"), None, 25,
                                  "1 objects in the store are not referenced by anything;"
                                  " removed"),
    "inside-10-intervals-of-a-follower": ("0", (), 120.0, 0,
                                          "pending deletion (inside the retention period):"
                                          " kept"),
}


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("row", list(FSCK_ROWS))
def test_fsck_keeps_objects_inside_the_retention(megafs: MegaFS, row, monkeypatch):
    retention, options, interval, code, says = FSCK_ROWS[row]
    megafs.mkfs()
    megafs.mount(args=(*WRITER_ARGS, "--retention", "600"))
    (megafs.mnt / "f").write_bytes(b"1" * 100_000)
    megafs.flush()
    (megafs.mnt / "f").write_bytes(b"2" * 100_000)
    megafs.umount()
    packs = {k for k, _ in megafs.store.objects() if k.startswith("p/")}
    assert len(packs) == 2, "the writer deleted the old pack inside its retention"
    if interval is not None:  # a follower looking every 2 minutes announced itself
        monkeypatch.setenv("MEGAFS_INSECURE_TEST_KDF", megafs.env["MEGAFS_INSECURE_TEST_KDF"])
        with_unlocked_store(megafs.url, lambda store: store_followers.Announcement(
            store, interval).renew(1), PASSPHRASE)
    megafs.env["MEGAFS_RETENTION"] = retention
    r = megafs.run("fsck.megafs", *options, megafs.url, check=False)
    assert r.returncode == code, r.stdout + r.stderr
    assert says in r.stdout + r.stderr, r.stdout + r.stderr
    left = {k for k, _ in megafs.store.objects() if k.startswith("p/")}
    assert len(left) == (1 if code else 2)
    megafs.mount(fresh_cache=True)
    assert (megafs.mnt / "f").read_bytes() == b"2" * 100_000
    megafs.umount()


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_writer_deletes_what_it_no_longer_needs_after_the_retention(megafs: MegaFS):
    """The writer itself keeps an overwritten pack for --retention seconds, then deletes
    it (at a metadata upload after that)."""
    megafs.mkfs()
    megafs.mount(args=(*WRITER_ARGS, "--retention", "3"))
    (megafs.mnt / "f").write_bytes(b"1" * 100_000)
    megafs.flush()
    first = {k for k, _ in megafs.store.objects() if k.startswith("p/")}
    overwritten = time.monotonic()  # (the pack becomes garbage after this)
    (megafs.mnt / "f").write_bytes(b"2" * 100_000)
    megafs.flush()
    packs = {k for k, _ in megafs.store.objects() if k.startswith("p/")}
    assert len(first) == 1 and first < packs, "the old pack went inside the retention"
    deadline = overwritten + 30
    while first & {k for k, _ in megafs.store.objects() if k.startswith("p/")}:
        assert time.monotonic() < deadline, "the writer never deleted the old pack"
        (megafs.mnt / "touch").write_bytes(b"t")  # a change: a metadata upload
        megafs.flush()
        time.sleep(0.5)
    assert time.monotonic() - overwritten >= 3, "deleted before its retention ended"
    assert (megafs.mnt / "f").read_bytes() == b"2" * 100_000
    megafs.umount()


# -- what a provider can do to a follower ------------------------------------------------


def object_path(megafs: MegaFS, key: str) -> Path:
    prefix, _, name = key.partition("/")
    return megafs.store.path / prefix / name[:2] / name


def look_now(mnt: Path) -> None:
    """Make the follower look at the store's head now (SIGUSR1) and wait until it has."""
    looks = megafs_stats(mnt)["looks"]
    os.kill(int(os.getxattr(mnt, "megafs.pid")), signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while megafs_stats(mnt)["looks"] <= looks:
        assert time.monotonic() < deadline, "the follower did not look"
        time.sleep(0.05)


def metadata_objects(megafs: MegaFS) -> dict[str, float]:
    """m/ key -> modification time of every metadata object of a local store."""
    top = megafs.store.path / "m"
    return {f"m/{p.name}": p.stat().st_mtime for d in top.iterdir() for p in d.iterdir()}


def rolled_back_head(megafs, old_head, new_head, new_delta):
    megafs.store.write("head", old_head)
    return lambda: megafs.store.write("head", new_head)


def forged_head(megafs, old_head, new_head, new_delta):
    megafs.store.write("head", new_head[:-40] + bytes(b ^ 1 for b in new_head[-40:]))
    return lambda: megafs.store.write("head", new_head)


def swapped_delta(megafs, old_head, new_head, new_delta):
    path = object_path(megafs, new_delta)
    data = path.read_bytes()
    path.write_bytes(data[:60] + bytes(b ^ 0xFF for b in data[60:80]) + data[80:])
    return lambda: path.write_bytes(data)


def deleted_delta(megafs, old_head, new_head, new_delta):
    path = object_path(megafs, new_delta)
    data = path.read_bytes()
    path.unlink()
    return lambda: path.write_bytes(data)


def forked_store(megafs, old_head, new_head, new_delta):
    """Rolled back, then written past by a machine that cannot tell (a fresh cache)."""
    megafs.store.write("head", old_head)
    megafs.mount(fresh_cache=True, args=WRITER_ARGS)
    (megafs.mnt / "f").write_bytes(b"fork")
    (megafs.mnt / "g").write_bytes(b"more")
    megafs.umount()
    return None


FOLLOWER_ERROR = r"megafs.core.follow ERROR: follower: the store serves metadata version"
ATTACKS = {"rolled-back-head": rolled_back_head, "forged-head": forged_head,
           "swapped-delta": swapped_delta, "deleted-delta": deleted_delta,
           "forked-store": forked_store}


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("attack", rows_expecting_log_errors(ATTACKS, {
    "rolled-back-head": (FOLLOWER_ERROR,), "forked-store": (FOLLOWER_ERROR,)}))
def test_follower_refuses_what_the_provider_serves(megafs: MegaFS, attack):
    """The follower keeps showing the last state it accepted, says why in megafs stat, and
    follows again once the store serves the writer's real head."""
    megafs.mkfs()
    megafs.mount(args=WRITER_ARGS)
    (megafs.mnt / "f").write_bytes(b"v1")
    megafs.flush()
    old_head = megafs.store.read("head")
    (megafs.mnt / "f").write_bytes(b"v2")
    megafs.flush()
    b = mount_follower(megafs, 600)  # looks only when told to
    assert (b / "f").read_bytes() == b"v2"
    before = metadata_objects(megafs)
    (megafs.mnt / "f").write_bytes(b"v3")
    megafs.umount()
    new_head = megafs.store.read("head")
    written = {k: t for k, t in metadata_objects(megafs).items() if k not in before}
    assert written, "the writer uploaded no metadata for v3"
    newest = max(written, key=written.get)  # what the last head names
    restore = ATTACKS[attack](megafs, old_head, new_head, newest)
    look_now(b)
    assert (b / "f").read_bytes() == b"v2", "the follower accepted what the provider served"
    assert not (b / "g").exists()
    problem = megafs_stats(b)["problem"]
    assert problem, "megafs stat does not say why the follower stopped following"
    if restore is None:
        assert "does not descend" in problem, problem
    else:
        restore()
        look_now(b)
        assert (b / "f").read_bytes() == b"v3", "the follower did not follow again"
        assert megafs_stats(b)["problem"] is None
    megafs.umount(b)


def _names_until_end(libc, dirp) -> list[str]:
    """readdir(3) until it returns NULL (the kernel asked the daemon past the last entry)."""
    import ctypes

    names = []
    while True:
        ent = libc.readdir(dirp)
        if not ent:
            return names
        name = ctypes.string_at(ent + 19).decode()  # glibc's struct dirent64: d_name at 19
        if name not in (".", ".."):
            names.append(name)


def test_a_listing_that_reached_its_end_does_not_grow_until_rewound(megafs: MegaFS):
    """The end of a listing is the end of the state it read: the kernel's request past the
    last entry gets no entry added since (which let a follower's listing mix two states:
    its first reply from one, the request for the end from the next). rewinddir(3) reads
    the directory anew."""
    import ctypes

    megafs.mkfs()
    megafs.mount()
    d = megafs.mnt / "d"
    d.mkdir()
    (d / "a").write_bytes(b"")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.opendir.argtypes = [ctypes.c_char_p]
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.rewinddir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    dirp = libc.opendir(bytes(d))
    assert dirp
    try:
        assert _names_until_end(libc, dirp) == ["a"]
        (d / "b").write_bytes(b"")
        assert _names_until_end(libc, dirp) == []
        libc.rewinddir(dirp)
        assert sorted(_names_until_end(libc, dirp)) == ["a", "b"]
    finally:
        libc.closedir(dirp)
