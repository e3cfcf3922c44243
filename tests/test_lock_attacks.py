"""No command may destroy a store: the store lock as a renewed lease, umount, teardown.

Each row of the tables is one way a store used to be destroyed or a mount left
behind (issue "Trust at the edges"): a second writer forced in beside a live one,
mkfs --force or fsck on a mounted store, a writer that keeps writing after its lock
was taken over, umount of a read-only, dead or symlinked mount, and a daemon task
that fails. The lock rows run on the local and the S3 backend (the compare-and-swap
differs); the umount rows on local only (the backend plays no part).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import time

import pytest
import trio
from helpers import (
    PASSPHRASE,
    MegaFS,
    assert_cli_error,
    mounted_paths,
    pid_alive,
    rows_expecting_log_errors,
    tool_env,
    wait_pid_gone,
)

from megafs.backends.base import BackendWrapper
from megafs.backends.local import LocalBackend
from megafs.crypto.keys import KeyRing
from megafs.errors import BackendUnavailable, ExitCode, LockLost
from megafs.store import envelope, lifecycle
from megafs.store import lock as store_lock
from megafs.store.objects import HEAD_KEY, ObjectStore

TERM = 2.0  # the lease term of every tool here (MEGAFS_LOCK_TERM)


@pytest.fixture
def fs(megafs: MegaFS, monkeypatch) -> MegaFS:
    megafs.env["MEGAFS_LOCK_TERM"] = str(TERM)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # for plant_lock on S3
        monkeypatch.setenv(name, tool_env()[name])
    megafs.mkfs()
    return megafs


def plant_lock(fs: MegaFS, **fields) -> dict:
    """Replace the store's lock with one naming another holder (as another machine's
    mount would write it); return its record."""
    now = time.time()
    holder = {"host": "elsewhere.example", "pid": 4242, "mount": "f" * 32, "since": now,
              "term": TERM, "renewed": now, "count": 7, **fields}

    async def go():
        backend = await lifecycle.connect(fs.url)
        try:
            store, _ = await lifecycle.unlock(backend, passphrase=PASSPHRASE.encode())
            await backend.put(store_lock.LOCK_KEY, envelope.seal(
                store.keys.meta, envelope.KIND_LOCK, store_lock.LOCK_KEY,
                json.dumps(holder).encode()))
        finally:
            await backend.aclose()

    trio.run(go)
    return holder


def lock_holder(fs: MegaFS) -> dict | None:
    async def go():
        backend = await lifecycle.connect(fs.url)
        try:
            store, _ = await lifecycle.unlock(backend, passphrase=PASSPHRASE.encode())
            return await store_lock.read(store)
        finally:
            await backend.aclose()

    return trio.run(go)


def second_mountpoint(fs: MegaFS):
    mnt = fs.tmp / "mnt2"
    mnt.mkdir(exist_ok=True)
    fs.mountpoints.add(mnt)
    return mnt


def assert_store_has(fs: MegaFS, files: dict[str, bytes], absent: tuple[str, ...] = (), *,
                     leftovers: bool = False):
    """A fresh cache directory mounts the store and finds exactly what is expected; fsck
    finds nothing wrong (with *leftovers*: nothing but objects a stopped writer stored
    before it noticed, which nothing references)."""
    fs.mount(fresh_cache=True)
    for name, data in files.items():
        assert (fs.mnt / name).read_bytes() == data, name
    for name in absent:
        assert not (fs.mnt / name).exists(), name
    fs.umount()
    r = fs.fsck(check=False)
    if leftovers and r.returncode == ExitCode.FSCK_REPAIRED:
        problems = r.stdout.strip().splitlines()[:-1]
        assert problems and all("not referenced" in p for p in problems), r.stdout
    else:
        assert r.returncode == 0, r.stdout + r.stderr


def wait_for(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the lock table ---------------------------------------------------------------------


def force_beside_live_mount(fs: MegaFS):
    fs.mount()
    (fs.mnt / "first").write_bytes(b"1" * 100_000)
    r = fs.run("mount.megafs", "--force", "--cache-dir", fs.new_cache_dir(), fs.url,
               second_mountpoint(fs), check=False)
    line = assert_cli_error(r, "mount.megafs", ExitCode.LOCKED)
    assert f"{socket.gethostname()} pid {fs.pid()}" in line and "never displaced" in line
    (fs.mnt / "second").write_bytes(b"2" * 100_000)  # the first mount keeps working
    fs.umount()
    assert_store_has(fs, {"first": b"1" * 100_000, "second": b"2" * 100_000})


def force_over_dead_pid(fs: MegaFS):
    fs.mount()
    (fs.mnt / "kept").write_bytes(b"k" * 70_000)
    fs.flush()
    fs.kill9()
    assert lock_holder(fs)["host"] == socket.gethostname()  # left behind by the dead pid
    fs.mount(fresh_cache=True, args=("--force",))
    assert (fs.mnt / "kept").read_bytes() == b"k" * 70_000
    fs.umount()
    assert lock_holder(fs) is None


def force_over_expired_lease(fs: MegaFS):
    long_ago = time.time() - 100 * TERM
    plant_lock(fs, renewed=long_ago, since=long_ago)
    r = fs.mount(fresh_cache=True, check=False)  # without --force: refused, told why
    line = assert_cli_error(r, "mount.megafs", ExitCode.LOCKED)
    assert "elsewhere.example pid 4242" in line and "--force" in line
    fs.mount(fresh_cache=True, args=("--force",))
    (fs.mnt / "after").write_bytes(b"a" * 1000)
    fs.umount()
    assert lock_holder(fs) is None
    assert_store_has(fs, {"after": b"a" * 1000})


def force_over_live_lease_elsewhere(fs: MegaFS):
    planted = plant_lock(fs, term=3600.0)  # renewed just now, valid for an hour
    r = fs.mount(fresh_cache=True, check=False, args=("--force",))
    line = assert_cli_error(r, "mount.megafs", ExitCode.LOCKED)
    assert "elsewhere.example pid 4242" in line
    assert lock_holder(fs) == planted


def mkfs_force_on_mounted_store(fs: MegaFS):
    fs.mount()
    (fs.mnt / "precious").write_bytes(b"p" * 200_000)
    fs.flush()
    before = {name for name, _ in fs.store.objects()}
    r = fs.mkfs("--force", check=False)
    line = assert_cli_error(r, "mkfs.megafs", ExitCode.LOCKED)
    assert "in use" in line
    assert before <= {name for name, _ in fs.store.objects()}
    (fs.mnt / "later").write_bytes(b"l" * 10)
    fs.umount()
    assert_store_has(fs, {"precious": b"p" * 200_000, "later": b"l" * 10})


def mkfs_force_with_other_passphrase(fs: MegaFS):
    fs.mount()
    (fs.mnt / "precious").write_bytes(b"p" * 1000)
    env = dict(fs.env, MEGAFS_PASSPHRASE="another passphrase entirely")
    r = fs.run("mkfs.megafs", "--force", fs.url, check=False, env=env)
    assert_cli_error(r, "mkfs.megafs", ExitCode.LOCKED)
    fs.umount()
    assert_store_has(fs, {"precious": b"p" * 1000})


def fsck_while_mounted(fs: MegaFS):
    fs.mount()
    (fs.mnt / "f").write_bytes(b"f" * 1000)
    holder = lock_holder(fs)
    r = fs.fsck(check=False)
    line = assert_cli_error(r, "fsck.megafs", ExitCode.LOCKED)
    assert f"pid {fs.pid()}" in line
    assert lock_holder(fs)["mount"] == holder["mount"]
    fs.umount()
    assert_store_has(fs, {"f": b"f" * 1000})


def holder_that_lost_its_lock(fs: MegaFS):
    fs.mount()
    (fs.mnt / "before").write_bytes(b"b" * 100_000)
    fs.flush()
    # Another machine decides this mount is gone and takes the lock over.
    long_ago = time.time() - 100 * TERM
    plant_lock(fs, renewed=long_ago, since=long_ago)

    def refused() -> bool:
        try:
            (fs.mnt / "probe").write_bytes(b"x")
        except OSError as e:  # EIO: a write to a page the kernel had cached meanwhile
            assert e.errno in (errno.EROFS, errno.EIO), e
            return True
        return False

    wait_for(refused, "the mount to refuse writes after losing its lock")
    assert fs.status()["lock_lost"] is True
    head = fs.store.read("head")
    other = second_mountpoint(fs)
    fs.mount(fresh_cache=True, mnt=other, args=("--force",))
    (other / "theirs").write_bytes(b"t" * 100_000)
    fs.umount(other)
    assert fs.store.read("head") != head  # the other writer committed
    with pytest.raises(OSError) as e:
        (fs.mnt / "mine").write_bytes(b"m")
    assert e.value.errno == errno.EROFS
    assert (fs.mnt / "before").read_bytes() == b"b" * 100_000  # reads still work
    pid = fs.pid()
    r = fs.run("umount.megafs", fs.mnt, check=False)
    line = assert_cli_error(r, "umount.megafs", ExitCode.LOCK_LOST)
    assert "lost the store's lock" in line
    assert not fs.is_mounted()
    wait_pid_gone(pid, 30)
    assert lock_holder(fs) is None  # the other writer's clean unmount released it
    assert_store_has(fs, {"before": b"b" * 100_000, "theirs": b"t" * 100_000},
                     absent=("probe", "mine"), leftovers=True)


def old_writer_back_with_unsent_changes(fs: MegaFS):
    """A writer killed with metadata changes not yet uploaded; another machine took the
    lock (--force over the dead pid) and wrote. Mounting the old cache directory again
    is refused, saying what it holds (before: those changes were dropped silently)."""
    fs.mount(args=("--metadata-interval", "3600"))
    (fs.mnt / "f").write_bytes(b"f" * 1000)
    fs.flush()
    mode = os.stat(fs.mnt / "f").st_mode
    os.chmod(fs.mnt / "f", 0o604)
    (fs.mnt / "d").mkdir()
    time.sleep(1.5)  # the metadata batch is committed every second
    old_cache = fs.cache_dir
    fs.kill9()
    fs.mount(fresh_cache=True, args=("--force",))
    (fs.mnt / "theirs").write_bytes(b"t" * 1000)
    fs.umount()
    r = fs.mount(cache_dir=old_cache, check=False)
    line = assert_cli_error(r, "mount.megafs", ExitCode.CACHE_ERROR)
    assert "metadata changes never uploaded" in line, line
    assert "move the cache directory away to discard them" in line, line
    assert not fs.is_mounted()
    assert lock_holder(fs) is None
    fs.mount(fresh_cache=True)  # what the message says: the store's state, theirs
    assert (fs.mnt / "theirs").read_bytes() == b"t" * 1000
    assert os.stat(fs.mnt / "f").st_mode == mode and not (fs.mnt / "d").exists()
    fs.umount()


LOCK_ROWS = {
    "mount-force-beside-live-mount-same-host": force_beside_live_mount,
    "mount-force-over-dead-pid": force_over_dead_pid,
    "mount-force-over-expired-lease-other-host": force_over_expired_lease,
    "mount-force-over-live-lease-other-host": force_over_live_lease_elsewhere,
    "mkfs-force-on-mounted-store": mkfs_force_on_mounted_store,
    "mkfs-force-other-passphrase-on-mounted-store": mkfs_force_with_other_passphrase,
    "fsck-while-mounted": fsck_while_mounted,
    "holder-that-lost-its-lock-stops-writing": holder_that_lost_its_lock,
    "old-writer-back-with-unsent-metadata-changes": old_writer_back_with_unsent_changes,
}


@pytest.mark.parametrize("attack", rows_expecting_log_errors(list(LOCK_ROWS), {
    "holder-that-lost-its-lock-stops-writing": (
        r"megafs.store.lock ERROR: the store's lock was taken over by elsewhere\.example pid "
        r"4242: stopped writing$",
        r"ERROR: setxattr: the store's lock was taken over by elsewhere\.example pid 4242; "
        r"this mount stopped writing$",
        r"megafs.mount ERROR: the store's lock was taken over by elsewhere\.example pid 4242: "
        r"the changes not yet uploaded stay in the cache directory$"),
}))
def test_lock_attack(fs, attack):
    LOCK_ROWS[attack](fs)


# -- unmounting and teardown ---------------------------------------------------------------


def umount_read_only(fs: MegaFS):
    fs.mount()
    (fs.mnt / "f").write_bytes(b"f" * 1000)
    fs.umount()
    fs.mount(args=("-o", "ro"))
    assert (fs.mnt / "f").read_bytes() == b"f" * 1000
    fs.umount()  # rc 0, unmounted, daemon gone
    assert lock_holder(fs) is None


def umount_dead_mount(fs: MegaFS):
    fs.mount()
    (fs.mnt / "f").write_bytes(b"f" * 1000)
    fs.flush()
    pid = fs.pid()
    os.kill(pid, signal.SIGKILL)
    wait_pid_gone(pid, 30)
    r = fs.run("umount.megafs", fs.mnt, check=False)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 1
    assert not fs.is_mounted()
    assert_store_has(fs, {"f": b"f" * 1000})


def umount_through_symlink(fs: MegaFS):
    fs.mount()
    link = fs.tmp / "link to mnt"
    link.symlink_to(fs.mnt)
    (link / "f").write_bytes(b"f" * 1000)
    for args in (("megafs", "stat", link), ("megafs", "ctrl", link, "flush"),
                 ("megafs", "share", link / "f")):
        r = fs.run(*args, check=False)
        assert r.returncode == 0, f"{args}: {r.stderr}"
    r = fs.run("umount.megafs", link, check=False)
    assert r.returncode == 0, r.stderr
    assert not fs.is_mounted()


def umount_mountpoint_with_space(fs: MegaFS):
    mnt = fs.tmp / "my mount"
    mnt.mkdir()
    fs.mountpoints.add(mnt)
    fs.mount(mnt=mnt)
    assert fs.run("megafs", "stat", mnt, check=False).returncode == 0
    fs.umount(mnt)


def task_failure_releases_everything(fs: MegaFS):
    env = dict(fs.env, MEGAFS_FAULT_TASK="commits")
    cache = fs.new_cache_dir()
    r = fs.run("mount.megafs", "--cache-dir", cache, fs.url, fs.mnt, env=env, check=False)
    assert r.returncode == 0, r.stderr  # the task fails half a second after the mount
    pid = fs.pid()
    fs.pids.add(pid)
    wait_pid_gone(pid, 30)
    assert str(fs.mnt) not in mounted_paths()  # unmounted, not left dead
    assert lock_holder(fs) is None  # the store lock was released
    log = (cache / "megafs.log").read_text()
    assert "injected failure of task commits" in log
    fs.mount(cache_dir=cache)  # the cache directory was closed and its flock freed
    (fs.mnt / "g").write_bytes(b"g")
    fs.umount()


UMOUNT_ROWS = {
    "umount-read-only-mount": umount_read_only,
    "umount-dead-mount-after-kill-9": umount_dead_mount,
    "umount-stat-ctrl-share-through-symlink": umount_through_symlink,
    "umount-mountpoint-with-space": umount_mountpoint_with_space,
    "task-failure-releases-lock-and-cache": task_failure_releases_everything,
}


@pytest.mark.parametrize("store", ["local"], indirect=True)
@pytest.mark.parametrize("case", rows_expecting_log_errors(list(UMOUNT_ROWS), {
    # MEGAFS_FAULT_TASK: the daemon's last word on the task that failed
    "task-failure-releases-lock-and-cache": (r" megafs ERROR: daemon failed$",),
}))
def test_umount_and_teardown(fs, case):
    UMOUNT_ROWS[case](fs)


def test_lease_is_renewed_while_mounted(fs):
    fs.mount()
    first = lock_holder(fs)
    assert first["term"] == TERM and first["host"] == socket.gethostname()
    wait_for(lambda: lock_holder(fs)["count"] >= first["count"] + 2, "two renewals")
    later = lock_holder(fs)
    assert later["mount"] == first["mount"] and later["renewed"] > first["renewed"]
    assert pid_alive(fs.pid())
    fs.umount()
    assert lock_holder(fs) is None


# -- answers lost on the way back: the writer must not think it lost the lock --------------


class LandsThenFails(BackendWrapper):
    """Applies the next compare-and-swap of *key*, then reports a failure (the answer
    was lost and the retries gave up), as a flaky network can make it happen."""

    def __init__(self, inner, key: str):
        super().__init__(inner)
        self.key = key
        self.armed = False

    async def replace_if(self, key, data, expected):
        await self.inner.replace_if(key, data, expected)
        if key == self.key and self.armed:
            self.armed = False
            raise BackendUnavailable(f"injected: the answer to the swap of {key} was lost")


async def test_renewal_whose_answer_was_lost_keeps_the_lock(tmp_path):
    backend = LandsThenFails(LocalBackend(str(tmp_path)), store_lock.LOCK_KEY)
    store = ObjectStore(backend, KeyRing(os.urandom(32), b"s" * 16))
    lease = await store_lock.acquire(store)
    backend.armed = True
    with pytest.raises(BackendUnavailable):
        await lease.renew()  # landed, but the caller cannot know
    await lease.renew()
    await lease.check()
    assert lease.lost is None and lease.record["count"] == 2
    assert (await store_lock.read(store))["count"] == 2
    await lease.release()
    assert await store_lock.read(store) is None


def _head(seq: int) -> dict:
    """A well-formed (format 1) head with sequence number *seq*."""
    return {"format": 1, "seq": seq, "snapshot": "m/" + "0" * 32, "deltas": []}


async def test_head_write_whose_answer_was_lost_is_not_a_lost_lock(tmp_path):
    backend = LandsThenFails(LocalBackend(str(tmp_path)), HEAD_KEY)
    store = ObjectStore(backend, KeyRing(os.urandom(32), b"s" * 16))
    await store.write_head(_head(1))
    backend.armed = True
    with pytest.raises(BackendUnavailable):
        await store.write_head(_head(2))
    await store.write_head(_head(3))
    assert (await store.read_head())["seq"] == 3
    other = ObjectStore(backend, store.keys)  # another writer replaces head
    await other.read_head()
    await other.write_head(_head(4))
    with pytest.raises(LockLost):
        await store.write_head(_head(5))
    assert (await other.read_head())["seq"] == 4
