"""mkfs -> mount -> real data -> umount -> mount elsewhere (fresh cache): all there, and
the store never sees plaintext."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from helpers import PASSPHRASE, assert_same_tree, read_file


def _staging_tree(dst):
    """The running Python's standard library (no site-packages, no __pycache__), plus
    symlinks, hard links, odd modes, owners and nanosecond mtimes of our own."""
    src = os.path.dirname(os.__file__)
    shutil.copytree(src, dst, symlinks=True,
                    ignore=shutil.ignore_patterns("site-packages", "dist-packages",
                                                  "__pycache__"))
    extra = dst / "zz-extra"
    (extra / "sub").mkdir(parents=True)
    os.symlink("../os.py", extra / "rel-link")
    os.symlink(os.path.join(dst, "json"), extra / "abs-dir-link")
    os.symlink("does/not/exist", extra / "dangling")
    os.symlink("sub", extra / "dir-link")
    os.link(dst / "os.py", extra / "os-hardlink")
    os.link(dst / "os.py", extra / "sub" / "os-hardlink-2")
    os.link(dst / "json" / "decoder.py", extra / "decoder-hardlink")
    owned = extra / "owned"
    owned.write_bytes(b"owned by someone else\n")
    os.chown(owned, 1234, 4321)
    os.chmod(owned, 0o2751)
    odd = extra / "odd-times"
    odd.write_bytes(os.urandom(3 * 65536 + 17))
    os.chmod(odd, 0o600)
    os.utime(odd, ns=(1_000_000_001, 1_234_567_890_123_456_789))
    os.mkfifo(extra / "fifo")
    return dst


@pytest.mark.slow
def test_copy_stdlib_remount_with_fresh_cache(megafs, tmp_path):
    staging = _staging_tree(tmp_path / "staging")
    megafs.mkfs(block_size=None)  # default 1 MiB blocks
    megafs.mount()
    subprocess.run(["cp", "-a", str(staging), str(megafs.mnt / "tree")], check=True)
    assert_same_tree(staging, megafs.mnt / "tree")
    megafs.umount()
    assert megafs.fsck().returncode == 0
    megafs.mount(fresh_cache=True)
    assert_same_tree(staging, megafs.mnt / "tree")
    megafs.umount()


def test_store_holds_no_plaintext(megafs, store):
    markers = {
        "compressible": b"MEGAFS-PLAINTEXT-MARKER-compressible-41f9c2",
        "random": b"MEGAFS-PLAINTEXT-MARKER-among-random-bytes-8d3e01",
        "filename": b"secret-file-name-marker-77ab3d",
        "dirname": b"secret-directory-name-marker-5c11e0",
        "symlink": b"secret-symlink-target-marker-9f0b2a",
        "xattr": b"secret-xattr-value-marker-03cd7e",
        "small": b"tiny-file-marker-6e2f",
    }
    megafs.mkfs()
    megafs.mount()
    mnt = megafs.mnt
    (mnt / "a.txt").write_bytes(markers["compressible"] * 20000 + b"\n")
    (mnt / "b.bin").write_bytes(os.urandom(100_000) + markers["random"] + os.urandom(100_000))
    (mnt / markers["filename"].decode()).write_bytes(b"x")
    (mnt / markers["dirname"].decode()).mkdir()
    os.symlink(markers["symlink"], mnt / "link")
    (mnt / "c").write_bytes(markers["small"])
    os.setxattr(mnt / "c", "user.note", markers["xattr"])
    megafs.umount()

    objects = list(store.objects())
    assert len(objects) >= 4
    for name, data in objects:
        for what, marker in markers.items():
            assert marker not in data, f"{what} marker in store object {name}"
            assert marker not in name.encode(), f"{what} marker in store object name {name}"
        assert PASSPHRASE.encode() not in data
    # and it all comes back
    megafs.mount(fresh_cache=True)
    assert (mnt / "c").read_bytes() == markers["small"]
    assert os.readlink(mnt / "link") == markers["symlink"].decode()
    assert os.getxattr(mnt / "c", "user.note") == markers["xattr"]
    assert (mnt / markers["filename"].decode()).read_bytes() == b"x"
    megafs.umount()


def test_mount_helper_form_with_o_options(megafs, tmp_path):
    """``mount.megafs SPEC DIR -o cache_dir=...,passphrase_file=...`` as mount(8) calls it."""
    megafs.mkfs()
    pwfile = tmp_path / "pass"
    pwfile.write_text(PASSPHRASE + "\n")
    cache = tmp_path / "helper-cache"
    env = dict(megafs.env)
    del env["MEGAFS_PASSPHRASE"]
    megafs.mountpoints.add(megafs.mnt)
    megafs.run("mount.megafs", megafs.url, megafs.mnt, "-o",
               f"rw,cache_dir={cache},passphrase_file={pwfile}", env=env)
    megafs.pids.add(megafs.pid())
    megafs.cache_dir = cache
    assert megafs.is_mounted()
    (megafs.mnt / "f").write_bytes(b"hello")
    assert (cache / "megafs.log").exists()
    megafs.umount()
    megafs.mount(fresh_cache=True)
    assert read_file(megafs.mnt / "f") == b"hello"
    megafs.umount()


def test_two_cache_dirs_take_turns(megafs):
    """Like two machines: each mount sees what the other wrote, never stale cached blocks."""
    megafs.mkfs()
    mnt = megafs.mnt
    megafs.mount()
    cache_a = megafs.cache_dir
    (mnt / "f").write_bytes(b"A" * 200_000)
    (mnt / "gone").write_bytes(b"x")
    megafs.umount()
    megafs.mount(fresh_cache=True)  # machine B
    cache_b = megafs.cache_dir
    assert (mnt / "f").read_bytes() == b"A" * 200_000
    with open(mnt / "f", "r+b") as f:
        f.seek(70_000)
        f.write(b"B" * 1000)
    os.unlink(mnt / "gone")
    (mnt / "new").write_bytes(b"from B")
    megafs.umount()
    megafs.mount(cache_dir=cache_a)  # back on machine A, with its old cache
    expect = b"A" * 70_000 + b"B" * 1000 + b"A" * 129_000
    assert (mnt / "f").read_bytes() == expect
    assert sorted(os.listdir(mnt)) == ["f", "new"]
    (mnt / "new").write_bytes(b"from A again")
    megafs.umount()
    megafs.mount(cache_dir=cache_b)
    assert (mnt / "new").read_bytes() == b"from A again"
    assert (mnt / "f").read_bytes() == expect
    megafs.umount()


def test_small_cache_holds_more_data_than_fits(megafs):
    """A 1 MiB cache: writes wait for uploads, reads re-fetch evicted blocks."""
    megafs.mkfs()
    megafs.mount(args=("--cache-size", "1M"))
    data = os.urandom(6 << 20)
    (megafs.mnt / "big").write_bytes(data)
    assert (megafs.mnt / "big").read_bytes() == data
    megafs.umount()
    megafs.mount(fresh_cache=True, args=("--cache-size", "1M"))
    assert (megafs.mnt / "big").read_bytes() == data
    megafs.umount()


def test_umount_of_a_busy_mount_says_so_and_leaves_it_working(mounted):
    megafs = mounted
    (megafs.mnt / "f").write_bytes(b"still here")
    busy = subprocess.Popen(["sleep", "60"], cwd=megafs.mnt)
    try:
        proc = megafs.umount(check=False)
        assert proc.returncode == 14, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "busy" in lines[0], proc.stderr
        assert megafs.is_mounted() and (megafs.mnt / "f").read_bytes() == b"still here"
    finally:
        busy.kill()
        busy.wait()
    megafs.umount()
    megafs.mount(fresh_cache=True)
    assert (megafs.mnt / "f").read_bytes() == b"still here"
