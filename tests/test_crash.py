"""Crashes and unmounts that bypass umount.megafs lose nothing they must keep."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from helpers import assert_same_tree, read_file, reap, wait_pid_gone

BS = 64 * 1024


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path, data, offset=0):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_fsynced_data_survives_kill9(mounted):
    mnt = mounted.mnt
    # a file uploaded long ago, then partly overwritten and fsynced
    old = bytearray(os.urandom(4 * BS))
    (mnt / "old").write_bytes(old)
    mounted.flush()
    patch = os.urandom(BS + 300)
    _write_synced(mnt / "old", patch, BS - 150)
    old[BS - 150:BS - 150 + len(patch)] = patch
    # new files and directories, fsynced with their directories
    (mnt / "dir" / "sub").mkdir(parents=True)
    big = os.urandom(5 * BS + 777)
    _write_synced(mnt / "dir" / "big", big)
    _write_synced(mnt / "dir" / "sub" / "small", b"small and synced")
    _fsync_path(mnt / "dir" / "sub", directory=True)
    _fsync_path(mnt / "dir", directory=True)
    _fsync_path(mnt, directory=True)

    def check():
        assert read_file(mnt / "old") == bytes(old)
        assert read_file(mnt / "dir" / "big") == big
        assert read_file(mnt / "dir" / "sub" / "small") == b"small and synced"

    check()
    cache = mounted.cache_dir
    mounted.kill9()
    mounted.mount(cache_dir=cache)  # same cache directory: recovers what was not uploaded
    check()
    mounted.umount()
    assert mounted.fsck().returncode == 0
    mounted.mount(fresh_cache=True)  # everything made it to the store
    check()
    mounted.umount()


def test_kill9_right_after_writes_leaves_a_consistent_filesystem(mounted):
    """Unsynced writes may be lost, but the remount works and fsck is clean."""
    mnt = mounted.mnt
    (mnt / "kept").write_bytes(b"k" * 1000)
    mounted.flush()
    for i in range(20):
        (mnt / f"f{i}").write_bytes(os.urandom(BS + i))
    cache = mounted.cache_dir
    mounted.kill9()
    mounted.mount(cache_dir=cache)
    assert read_file(mnt / "kept") == b"k" * 1000
    for p in mnt.iterdir():
        p.read_bytes()
    mounted.umount()
    assert mounted.fsck().returncode == 0
    mounted.mount(fresh_cache=True)
    assert read_file(mnt / "kept") == b"k" * 1000
    mounted.umount()


def _small_tree(dst):
    src = os.path.dirname(os.__file__)
    for pkg in ("json", "email"):
        shutil.copytree(os.path.join(src, pkg), dst / pkg, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "big").write_bytes(os.urandom(7 * BS + 5))
    os.symlink("json/__init__.py", dst / "link")
    os.link(dst / "big", dst / "email" / "big-link")
    os.utime(dst / "big", ns=(5, 1_500_000_000_123_456_789))
    os.chmod(dst / "big", 0o640)
    return dst


def test_plain_fusermount_unmount_loses_nothing(mounted, tmp_path):
    staging = _small_tree(tmp_path / "staging")
    subprocess.run(["cp", "-a", str(staging), str(mounted.mnt / "tree")], check=True)
    os.setxattr(mounted.mnt / "tree" / "big", "user.k", b"v")
    pid = mounted.pid()
    subprocess.run(["fusermount3", "-u", str(mounted.mnt)], check=True, timeout=60)
    wait_pid_gone(pid, 120)
    mounted.mount(fresh_cache=True)
    assert_same_tree(staging, mounted.mnt / "tree")
    assert os.getxattr(mounted.mnt / "tree" / "big", "user.k") == b"v"
    mounted.umount()
    assert mounted.fsck().returncode == 0


def test_remount_while_killed_daemon_is_an_unreaped_zombie(mounted):
    """After kill -9 the dead daemon may linger as a zombie (e.g. in a container whose
    pid 1 does not reap orphans): it is dead, so its store lock is stale."""
    _write_synced(mounted.mnt / "f", b"synced")
    cache = mounted.cache_dir
    pid = mounted.kill9(reap_it=False)
    try:
        mounted.mount(cache_dir=cache)
        assert read_file(mounted.mnt / "f") == b"synced"
        mounted.umount()
    finally:
        reap(pid)


def _poll(cond, timeout=30.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


def test_kill9_right_after_upload_of_fsynced_data(mounted):
    """fsynced data that the daemon has just uploaded, then kill -9: nothing is lost.

    Kills within milliseconds of the upload finishing (dirty_bytes drops to 0)."""
    mnt = mounted.mnt
    mounted.umount()
    mounted.mount(args=("--upload-delay", "0.1"))
    old = os.urandom(3 * BS)
    (mnt / "f").write_bytes(old)
    mounted.flush()  # the old content is in the store
    new = os.urandom(3 * BS)
    _write_synced(mnt / "f", new)
    _write_synced(mnt / "g", new[::-1])
    _poll(lambda: mounted.status()["dirty_bytes"] == 0)
    cache = mounted.cache_dir
    mounted.kill9()
    mounted.mount(cache_dir=cache)
    assert read_file(mnt / "f") == new
    assert read_file(mnt / "g") == new[::-1]
    mounted.umount()
    mounted.mount(fresh_cache=True)
    assert read_file(mnt / "f") == new, "fsynced data lost (old or zero content)"
    assert read_file(mnt / "g") == new[::-1], "fsynced data lost"
    mounted.umount()
    assert mounted.fsck().returncode == 0


def test_kill9_right_after_metadata_snapshot(mounted, store):
    """fsynced, not yet uploaded data; a periodic metadata snapshot lands in the store;
    kill -9 within milliseconds: the remount (same cache) still has the data."""
    mnt = mounted.mnt
    mounted.umount()
    mounted.mount(args=("--upload-delay", "60", "--metadata-interval", "0.2"))
    time.sleep(0.5)  # let the mount's own first snapshot (if any) pass
    head = store.read("head")
    data = os.urandom(2 * BS + 99)
    _write_synced(mnt / "f", data)
    _fsync_path(mnt, directory=True)
    _poll(lambda: store.read("head") != head)
    cache = mounted.cache_dir
    mounted.kill9()
    mounted.mount(cache_dir=cache)
    assert read_file(mnt / "f") == data, "fsynced data lost"
    mounted.umount()
    mounted.mount(fresh_cache=True)
    assert read_file(mnt / "f") == data, "fsynced data lost"
    mounted.umount()
