"""Handing the writer role over (issue "Many devices"): ``mount.megafs --take-over``.

Two real mounts of one store with two cache directories. The writer A has data waiting
for upload and a process writing and fsyncing; B asks to take over. A refuses writes
(EROFS), uploads everything, releases the lock and follows; B continues from exactly
that state, and every fsync'ed byte is there. Then back from B to A. A writer that does
not answer makes the take-over fail after --take-over-timeout, naming it, with nothing
changed.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    PASSPHRASE,
    MegaFS,
    abort_fuse_connection,
    assert_cli_error,
    rows_expecting_log_errors,
    tool_env,
    with_unlocked_store,
)

from megafs.errors import ExitCode
from megafs.store import envelope, handover
from megafs.store import lock as store_lock

SLOW_UPLOADS = ("--upload-delay", "60")  # data stays dirty until someone asks for it


class FsyncingWriter(threading.Thread):
    """Writes files of 64 KiB into *mnt*, fsyncing each: records those acknowledged
    (fsync returned) and stops at the first EROFS."""

    def __init__(self, mnt: Path, tag: str):
        super().__init__(daemon=True)
        self.mnt, self.tag = mnt, tag
        self.acked: dict[str, bytes] = {}
        self.refused = threading.Event()
        self.stop = threading.Event()
        self.daemon_may_die = False  # kill -9 tests: a dead mount ends the writing
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for i in range(100_000):
                if self.stop.is_set():
                    return
                name = f"{self.tag}-{i:05d}"
                data = os.urandom(16) * 4096
                try:
                    with open(self.mnt / name, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                except OSError as e:
                    if self.daemon_may_die and e.errno in (errno.ECONNABORTED, errno.ENOTCONN):
                        return
                    if e.errno != errno.EROFS:
                        raise
                    self.refused.set()
                    return
                self.acked[name] = data
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def mount_second(megafs: MegaFS, cache: Path, mnt: Path, *args) -> float:
    """Mount on *mnt* with *cache*; return how long mount.megafs took."""
    mnt.mkdir(exist_ok=True)
    keep = megafs.cache_dir
    started = time.monotonic()
    megafs.mount(cache_dir=cache, mnt=mnt, args=args)
    took = time.monotonic() - started
    megafs.cache_dir = keep
    return took


def hand_over(megafs: MegaFS, old: Path, new: Path, new_cache: Path, tag: str,
              dirty: bytes) -> dict[str, bytes]:
    """The writer on *old* holds *dirty* (not uploaded) and an fsyncing writer runs;
    *new* takes over. Returns every acknowledged file, checked on *new*."""
    (old / f"{tag}-big").write_bytes(dirty)
    writer = FsyncingWriter(old, tag)
    writer.start()
    deadline = time.monotonic() + 30
    while len(writer.acked) < 5:
        assert time.monotonic() < deadline and writer.error is None, writer.error
        time.sleep(0.02)
    took = mount_second(megafs, new_cache, new, "--take-over", *SLOW_UPLOADS)
    writer.join(30)
    assert not writer.is_alive() and writer.error is None, writer.error
    assert writer.refused.is_set(), "the old writer kept accepting writes"
    with pytest.raises(OSError) as e:
        (old / "after").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    assert (new / f"{tag}-big").read_bytes() == dirty, "data waiting for upload was lost"
    for name, data in writer.acked.items():
        assert (new / name).read_bytes() == data, f"fsync'ed {name} lost in the hand-over"
    stats = json.loads(os.getxattr(old, "megafs.stats"))
    assert stats["role"] == "follower", stats
    assert json.loads(os.getxattr(new, "megafs.stats"))["role"] == "writer"
    print(f"hand-over with {len(dirty) >> 20} MiB dirty: mount.megafs --take-over took"
          f" {took:.1f}s")
    return {f"{tag}-big": dirty, **writer.acked}


def test_flush_of_a_writer_turned_follower_while_root_entries_change(megafs: MegaFS):
    """A writer turned follower is still mounted read-write, so umount's flush (a control
    request) reaches its daemon and makes it look at the head now, while the kernel
    holds the lock of the mount's root until the answer. Applying a state that changed
    entries of the root takes that same lock to invalidate them: the answer must not
    wait for the invalidation (it once did; umount hung, unkillable)."""
    megafs.mkfs()
    a, b = megafs.mnt, megafs.tmp / "b"
    megafs.mount(args=("--follow-interval", "3600"))  # only the flush below looks
    for i in range(3):
        (a / f"old{i}").write_bytes(b"x")
    mount_second(megafs, megafs.new_cache_dir(), b, "--take-over")
    assert json.loads(os.getxattr(a, "megafs.stats"))["role"] == "follower"
    for i in range(3):
        assert (a / f"old{i}").read_bytes() == b"x"  # the kernel caches these entries
    (b / "old0").unlink()
    (b / "old1").rename(b / "new1")
    (b / "new2").write_bytes(b"y")
    megafs.flush_mount(b)
    failed: list[OSError] = []

    def flush_a():
        try:
            megafs.flush_mount(a)
        except OSError as e:
            failed.append(e)

    flushed = threading.Thread(target=flush_a, daemon=True)
    flushed.start()
    flushed.join(30)
    if flushed.is_alive():
        abort_fuse_connection(a)
        pytest.fail("the follower's flush deadlocked with its own invalidation")
    assert not failed, failed
    deadline = time.monotonic() + 10
    while sorted(p.name for p in a.iterdir()) != ["new1", "new2", "old2"]:
        assert time.monotonic() < deadline, sorted(p.name for p in a.iterdir())
        time.sleep(0.05)
    assert not (a / "old0").exists() and (a / "new2").read_bytes() == b"y"
    megafs.umount(a)
    megafs.umount(b)


def test_hand_over_a_to_b_and_back(megafs: MegaFS):
    megafs.mkfs()
    a, b = megafs.mnt, megafs.tmp / "b"
    megafs.mount(args=SLOW_UPLOADS)
    cache_a, cache_b = megafs.cache_dir, megafs.new_cache_dir()
    files = hand_over(megafs, a, b, cache_b, "a", os.urandom(3 << 20))
    # A follows B now: B's changes reach it.
    (b / "from-b").write_bytes(b"b was here")
    deadline = time.monotonic() + 30
    while not (a / "from-b").exists():
        assert time.monotonic() < deadline, "the old writer does not follow the new one"
        time.sleep(0.1)
    assert (a / "from-b").read_bytes() == b"b was here"
    # ... and back: A (remounted with its cache directory) takes over from B.
    megafs.umount(a)
    files |= hand_over(megafs, b, a, cache_a, "b", os.urandom(2 << 20))
    for name, data in files.items():
        assert (a / name).read_bytes() == data, name
    assert (a / "from-b").read_bytes() == b"b was here"
    megafs.umount(b)
    megafs.umount(a)
    r = megafs.fsck(check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_hand_over_time_with_100_mib_dirty(megafs: MegaFS):
    """The measurement of the closing note (printed): 100 MiB waiting for upload."""
    megafs.mkfs()
    megafs.mount(args=SLOW_UPLOADS)
    hand_over(megafs, megafs.mnt, megafs.tmp / "b", megafs.new_cache_dir(), "a",
              os.urandom(100 << 20))
    megafs.umount(megafs.tmp / "b")
    megafs.umount()


def _with_store(megafs: MegaFS, fn):
    return with_unlocked_store(megafs.url, fn, PASSPHRASE)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_take_over_from_a_writer_that_does_not_answer(megafs: MegaFS, monkeypatch):
    """A lock whose holder is alive (renewed) but never hands over: the take-over fails
    after --take-over-timeout naming the holder, and nothing changed."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MEGAFS_INSECURE_TEST_KDF"):
        monkeypatch.setenv(name, tool_env()[name])
    megafs.mkfs()
    now = time.time()
    holder = {"host": "elsewhere.example", "pid": 4242, "mount": "f" * 32, "since": now,
              "term": 600.0, "renewed": now, "count": 7}
    blob = _with_store(megafs, lambda store: _put(store, holder))
    r = megafs.mount(check=False, args=("--take-over", "--take-over-timeout", "2"))
    text = assert_cli_error(r, "mount.megafs", ExitCode.LOCKED)
    assert "elsewhere.example pid 4242" in text and "did not hand over within 2 s" in text
    assert megafs.store.read(store_lock.LOCK_KEY) == blob, "the lock changed"
    assert megafs.store.read(handover.REQUEST_KEY) is None, "the request was left behind"
    assert not megafs.is_mounted()


async def _put(store, holder: dict) -> bytes:
    blob = envelope.seal(store.keys.meta, envelope.KIND_LOCK, store_lock.LOCK_KEY,
                         json.dumps(holder).encode())
    await store.backend.put(store_lock.LOCK_KEY, blob)
    return blob


# -- kill -9 of either side during a hand-over --------------------------------------------


def processes_using(path: Path) -> list[int]:
    """Pids of the mount.megafs processes (parent and daemon) started with *path*."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if any(b"mount.megafs" in a for a in args) and str(path).encode() in args:
                found.append(int(entry))
    return found


KILL_ROWS = {
    # who is killed -> when: seconds after the take-over was asked, or "uploading" (at a
    # random moment of the writer's upload for the hand-over, which a 0.2 s latency per
    # request stretches over seconds)
    "old-writer-early": ("old", 0.05),
    "old-writer-late": ("old", 0.6),
    "new-writer-early": ("new", 0.05),
    "new-writer-late": ("new", 0.6),
    "old-writer-while-uploading": ("old", "uploading"),
    "new-writer-while-old-uploads": ("new", "uploading"),
}


#: What a read of a file whose data died with the old writer logs (EIO, never zeros).
NEVER_UPLOADED = (r"ERROR: read of /a-\d+ \(inode \d+\) at offset \d+ failed: block \d+ is"
                  r" unreadable: its newest data was never uploaded by ")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("row", rows_expecting_log_errors(list(KILL_ROWS), {
    row: (NEVER_UPLOADED,) for row, (victim, _) in KILL_ROWS.items() if victim == "old"}))
def test_kill9_during_hand_over(megafs: MegaFS, row):
    """Killing either side at some point of a hand-over never loses what the surviving
    side acknowledged and never shows bytes nobody wrote: a file whose data died with
    a killed old writer reads as EIO, and a later --take-over works."""
    import random
    import signal
    import subprocess

    from helpers import BIN, wait_pid_gone

    victim, after = KILL_ROWS[row]
    megafs.mkfs()
    a, b = megafs.mnt, megafs.tmp / "b"
    b.mkdir()
    megafs.mountpoints.add(b)
    env = megafs.env
    if after == "uploading":
        megafs.env = dict(env, MEGAFS_FAULTS="latency=0.2")
    megafs.mount(args=SLOW_UPLOADS)
    megafs.env = env
    cache_a, cache_b = megafs.cache_dir, megafs.new_cache_dir()
    (a / "big").write_bytes(os.urandom((40 if after == "uploading" else 8) << 20))
    writer = FsyncingWriter(a, "a")
    writer.daemon_may_die = victim == "old"
    writer.start()
    while len(writer.acked) < 5:
        time.sleep(0.02)
    asking = subprocess.Popen([str(BIN / "mount.megafs"), "--cache-dir", str(cache_b),
                               "--take-over", *SLOW_UPLOADS, megafs.url, str(b)],
                              env=megafs.env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    if after == "uploading":
        deadline = time.monotonic() + 20
        while not json.loads(os.getxattr(a, "megafs.stats")).get("handing_over"):
            assert time.monotonic() < deadline, "the writer never noticed the request"
            time.sleep(0.02)
        delay = random.uniform(0, 1.5)
        print(f"killing the {victim} side {delay:.2f}s into the hand-over's upload")
        time.sleep(delay)
        assert json.loads(os.getxattr(a, "megafs.stats")).get("handing_over"), \
            "the upload was over before the kill: the row tests nothing"
    else:
        time.sleep(after)
    targets = processes_using(cache_a if victim == "old" else cache_b)
    for pid in targets:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in targets:
        wait_pid_gone(pid, 30)
    asking.wait(60)
    writer.refused.wait(5)  # the old writer handed over, or nobody asked it in time
    writer.stop.set()
    writer.join(60)
    assert not writer.is_alive() and writer.error is None, writer.error
    dead = a if victim == "old" else b
    subprocess.run(["fusermount3", "-u", "-z", str(dead)], capture_output=True)
    # Whoever survived, a new take-over gets the store's last state.
    for mnt in (a, b):
        if megafs.is_mounted(mnt):
            megafs.umount(mnt)
    megafs.mount(fresh_cache=True, mnt=a, args=("--take-over", "--take-over-timeout", "30"))
    shown, lost = {}, set()
    for name in (n for n in os.listdir(a) if n.startswith("a-")):
        try:
            shown[name] = (a / name).read_bytes()
        except OSError as e:  # its data was on the killed writer's disk only
            assert e.errno == errno.EIO and victim == "old", (name, e)
            lost.add(name)
    for name, data in shown.items():
        # A killed old writer's last uploaded state may have caught a file between its
        # creation and its one write: empty, as it was then. Any other bytes are wrong.
        assert data == writer.acked.get(name, data) or victim == "old" and data == b"", \
            f"{name}: bytes A never wrote"
    if victim == "new":  # the old writer uploaded everything before it let go (or kept it)
        missing = set(writer.acked) - set(shown)
        assert not missing, f"{len(missing)} fsync'ed files lost"
    print(f"{len(shown)} files of A shown, {len(lost)} unreadable (data never uploaded)")
    megafs.umount(a)


def test_megafs_take_over_on_a_follower(megafs: MegaFS):
    """``megafs take-over MNT`` on a follower: it becomes the writer with its cache
    directory, the old writer follows."""
    megafs.mkfs()
    a, b = megafs.mnt, megafs.tmp / "b"
    megafs.mount(args=SLOW_UPLOADS)
    mount_second(megafs, megafs.new_cache_dir(), b, "-o", "ro", "--follow-interval", "0.5")
    (a / "dirty").write_bytes(b"d" * 300_000)
    r = megafs.run("megafs", "take-over", "--take-over-timeout", "30", b)
    assert r.returncode == 0, r.stderr
    megafs.pids.add(megafs.pid(b))
    assert (b / "dirty").read_bytes() == b"d" * 300_000
    assert json.loads(os.getxattr(b, "megafs.stats"))["role"] == "writer"
    assert json.loads(os.getxattr(a, "megafs.stats"))["role"] == "follower"
    (b / "new").write_bytes(b"n")
    with pytest.raises(OSError) as e:
        (a / "x").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    megafs.umount(a)
    megafs.umount(b)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_megafs_take_over_that_times_out_keeps_the_follower(megafs: MegaFS, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MEGAFS_INSECURE_TEST_KDF"):
        monkeypatch.setenv(name, tool_env()[name])
    megafs.mkfs()
    b = megafs.tmp / "b"
    mount_second(megafs, megafs.new_cache_dir(), b, "-o", "ro")
    now = time.time()
    holder = {"host": "elsewhere.example", "pid": 4242, "mount": "f" * 32, "since": now,
              "term": 600.0, "renewed": now, "count": 7}
    blob = _with_store(megafs, lambda store: _put(store, holder))
    r = megafs.run("megafs", "take-over", "--take-over-timeout", "2", b, check=False)
    assert r.returncode == ExitCode.LOCKED, r.stderr
    assert "elsewhere.example pid 4242" in r.stderr and "Traceback" not in r.stderr
    assert megafs.store.read(store_lock.LOCK_KEY) == blob, "the lock changed"
    megafs.pids.add(megafs.pid(b))
    assert json.loads(os.getxattr(b, "megafs.stats"))["role"] == "follower"
    megafs.umount(b)


# -- an asking mount that gives up or goes away before the writer lets go ---------------

ASKER_ROWS = ["gave-up", "killed"]


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("row", ASKER_ROWS)
def test_writer_keeps_the_role_when_the_asking_mount_is_gone(megafs: MegaFS, row,
                                                            monkeypatch):
    """The writer's store goes offline while it uploads for a take-over; meanwhile the
    asking mount times out (or is killed). When the store is back, the writer finds no
    live request: it writes again, keeps the lock, and nothing is lost. (Before, it let
    go anyway, and the store was left without a writer.)"""
    import signal
    import subprocess

    from helpers import BIN, wait_pid_gone

    _store_env(monkeypatch)
    megafs.mkfs()
    a, b = megafs.mnt, megafs.tmp / "b"
    b.mkdir()
    megafs.mountpoints.add(b)
    offline = megafs.tmp / "offline"
    env = megafs.env
    megafs.env = dict(env, MEGAFS_FAULTS=f"latency=0.5,offline={offline}")
    megafs.mount(args=SLOW_UPLOADS)
    megafs.env = env
    cache_a = megafs.cache_dir
    dirty = os.urandom(40 << 20)  # three packs: the upload takes seconds at 0.5 s a request
    (a / "dirty").write_bytes(dirty)
    lock_before = megafs.store.read(store_lock.LOCK_KEY)
    timeout = "12" if row == "gave-up" else "120"
    asking = subprocess.Popen([str(BIN / "mount.megafs"), "--cache-dir",
                               str(megafs.new_cache_dir()), "--take-over",
                               "--take-over-timeout", timeout, megafs.url, str(b)],
                              env=megafs.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 20
    while megafs.store.read(handover.REQUEST_KEY) is None:
        assert time.monotonic() < deadline and asking.poll() is None, "no request written"
        time.sleep(0.02)
    asked = time.monotonic()
    while not json.loads(os.getxattr(a, "megafs.stats")).get("handing_over"):
        assert time.monotonic() < deadline, "the writer never noticed the request"
        time.sleep(0.05)
    offline.touch()  # the writer's uploads stall from here on
    noticed = time.monotonic() - asked
    assert noticed <= 5.0, f"the writer took {noticed:.1f}s to notice the request"
    shown = megafs.run("megafs", "stat", a).stdout
    assert "handing over to" in shown, shown
    # A change made meanwhile waits (no EROFS while the writer may still keep its role).
    during = threading.Thread(target=(a / "during").write_bytes, args=(b"made meanwhile",),
                              daemon=True)
    during.start()
    time.sleep(0.5)
    assert during.is_alive(), "a change went through while the writer was handing over"
    if row == "gave-up":
        _, err = asking.communicate(timeout=60)
        assert asking.returncode == ExitCode.LOCKED, err
        assert "did not hand over within 12 s" in err and "Traceback" not in err
    else:
        for pid in processes_using(b):
            os.kill(pid, signal.SIGKILL)
            wait_pid_gone(pid, 30)
        asking.communicate(timeout=30)
        time.sleep(handover.ALIVE_STALE + 1)  # its request is no longer renewed
    subprocess.run(["fusermount3", "-u", "-z", str(b)], capture_output=True)
    offline.unlink()
    deadline = time.monotonic() + 60
    while json.loads(os.getxattr(a, "megafs.stats")).get("handing_over"):
        assert time.monotonic() < deadline, "the writer never finished\n" + megafs.log()
        time.sleep(0.1)
    stats = json.loads(os.getxattr(a, "megafs.stats"))
    assert stats["role"] == "writer", stats
    during.join(30)
    assert not during.is_alive(), "the change held during the hand-over never went on"
    assert (a / "during").read_bytes() == b"made meanwhile"
    (a / "after").write_bytes(b"written after the hand-over did not happen")
    assert (a / "dirty").read_bytes() == dirty
    assert megafs.store.read(store_lock.LOCK_KEY) is not None, "the store has no writer"
    assert _lock_holder(megafs) == _lock_holder_of(megafs, lock_before)
    said = (cache_a / "megafs.log").read_text()
    assert ("gave up or went away before the hand-over was complete: writing again"
            if row == "killed" else
            "did not end before its request expires: writing again") in said, said[-3000:]
    megafs.umount(a)
    megafs.mount(fresh_cache=True, mnt=a)
    assert (a / "dirty").read_bytes() == dirty
    assert (a / "after").read_bytes() == b"written after the hand-over did not happen"
    assert (a / "during").read_bytes() == b"made meanwhile"
    megafs.umount(a)


def _store_env(monkeypatch) -> None:
    """What opening the store in this process needs (the tools' environment)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MEGAFS_INSECURE_TEST_KDF"):
        monkeypatch.setenv(name, tool_env()[name])


def _lock_holder(megafs: MegaFS) -> str:
    return _lock_holder_of(megafs, megafs.store.read(store_lock.LOCK_KEY))


def _lock_holder_of(megafs: MegaFS, blob: bytes) -> str:
    async def holder(store):
        record = json.loads(envelope.open_(store.keys.meta, envelope.KIND_LOCK,
                                           store_lock.LOCK_KEY, blob))
        return record["mount"]

    return _with_store(megafs, holder)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_request_counts_only_while_renewed_and_not_about_to_expire(megafs: MegaFS,
                                                                    monkeypatch):
    """The writer lets go only for a request renewed within ALIVE_STALE seconds with more
    than MARGIN seconds left."""
    _store_env(monkeypatch)
    megafs.mkfs()

    async def check(store):
        now = time.time()

        async def put(**fields):
            record = {"host": "h", "pid": 1, "mount": "m" * 32, "since": now - 30,
                      "until": now + 60, "alive": now, **fields}
            await store.backend.put(handover.REQUEST_KEY, handover._seal(store, record))

        await put()
        assert await handover.still_wanted(store) is not None
        await put(alive=now - handover.ALIVE_STALE - 1)
        assert await handover.read_request(store) is None, "a request nobody renews"
        await put(until=now + handover.MARGIN - 1)
        assert await handover.read_request(store) is not None
        assert await handover.still_wanted(store) is None, "a request about to expire"
        await put(until=now - 1)
        assert await handover.read_request(store) is None
        await store.backend.delete(handover.REQUEST_KEY)
        assert await handover.still_wanted(store) is None

    _with_store(megafs, check)


def test_defaults_of_the_many_devices_options():
    """The defaults the issue names: a follower looks every 5 s, a take-over waits 60 s
    (mount.megafs and megafs take-over), objects are retained for 300 s and at least 10
    intervals of the slowest follower. (That a live writer notices a request within
    5 s is measured by test_writer_keeps_the_role_when_the_asking_mount_is_gone.)"""
    from megafs.cli import mount as mount_cli
    from megafs.cli import tool
    from megafs.core import follow, retention

    args = mount_cli.build_parser().parse_args(["local:///x", "/mnt"])
    assert args.follow_interval == follow.DEFAULT_INTERVAL == 5.0
    assert args.take_over_timeout == handover.DEFAULT_TIMEOUT == 60.0
    assert retention.DEFAULT_RETENTION == 300.0 >= retention.INTERVALS_KEPT * 5.0
    assert retention.effective(300.0, [5.0, 60.0]) == 600.0  # 10 intervals of the slowest
    assert retention.effective(0.0, []) == 0.0
    take_over = tool.build_parser().parse_args(["take-over", "/mnt"])
    assert take_over.take_over_timeout == 60.0
