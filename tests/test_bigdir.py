"""One directory with 100,000 entries: ls, and readdir offsets that stay correct while
entries are added and removed in the middle of a listing.

Creating the entries takes 25-45 s on a 2-core machine (4 threads of mknod); they
are made once for the module. ``MEGAFS_BIGDIR_ENTRIES`` sets another count.
"""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import LocalStore, MegaFS

N = int(os.environ.get("MEGAFS_BIGDIR_ENTRIES", "100000"))


def name(i: int) -> str:
    return f"entry-{i:07d}"


class BigDir:
    def __init__(self, fs: MegaFS):
        self.fs = fs
        self.path = fs.mnt / "big"
        self.names: set[str] = set()  # what the directory holds now
        self.next = 0  # next unused number

    def create(self, n: int, threads: int = 4) -> list[str]:
        new = [name(i) for i in range(self.next, self.next + n)]
        self.next += n
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)

        def work(part):
            for nm in part:
                os.mknod(nm, 0o100644, dir_fd=fd)

        try:
            ts = [threading.Thread(target=work, args=(new[k::threads],)) for k in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        finally:
            os.close(fd)
        self.names.update(new)
        return new


#: the module shares one directory of N entries, whose creation takes ~25 s
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bigdir")
    fs = MegaFS(LocalStore(tmp / "store"), tmp)
    try:
        fs.mkfs()
        fs.mount()
        b = BigDir(fs)
        b.path.mkdir()
        t0 = time.monotonic()
        b.create(N)
        b.create_seconds = time.monotonic() - t0
        print(f"created {N} entries in {b.create_seconds:.1f} s")
        yield b
    finally:
        fs.cleanup()


def test_ls_and_listdir_see_every_entry(big):
    assert len(os.listdir(big.path)) == len(big.names)
    assert set(os.listdir(big.path)) == big.names
    # "." and ".." may or may not be listed (POSIX allows both; megafs omits them)
    out = subprocess.run(["ls", "-f", str(big.path)], capture_output=True, text=True,
                         check=True).stdout.split("\n")[:-1]
    out = [nm for nm in out if nm not in (".", "..")]
    assert len(out) == len(big.names) and set(out) == big.names
    out = subprocess.run(["ls", "-1", str(big.path)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == sorted(big.names)
    with os.scandir(big.path) as it:
        for e in it:
            assert e.is_file(follow_symlinks=False)
    st = os.stat(big.path)
    assert st.st_nlink == 2
    assert os.stat(big.path / name(N // 2)).st_size == 0


def test_listing_while_entries_are_added_and_removed(big):
    """No entry is returned twice, every entry that exists throughout is returned, and
    nothing is returned that never existed."""
    rnd = random.Random(1)
    stable = set(big.names)
    ever = set(big.names)
    seen: list[str] = []
    with os.scandir(big.path) as it:
        for i, e in enumerate(it):
            seen.append(e.name)
            if i % 5000 == 2500:
                victims = rnd.sample(sorted(big.names), 300)
                for v in victims:
                    os.unlink(big.path / v)
                big.names.difference_update(victims)
                stable.difference_update(victims)
                ever.update(big.create(300, threads=2))
                # and renames: the entry goes away under one name and appears under another
                for v in rnd.sample(sorted(big.names & stable), 50):
                    new = v + "-renamed"
                    os.rename(big.path / v, big.path / new)
                    big.names.discard(v)
                    big.names.add(new)
                    stable.discard(v)
                    ever.add(new)
    dups = len(seen) - len(set(seen))
    assert dups == 0, f"{dups} entries returned twice"
    missed = stable - set(seen)
    assert not missed, f"{len(missed)} entries that existed throughout were missed"
    bogus = set(seen) - ever
    assert not bogus, f"{len(bogus)} entries that never existed were returned"
    assert set(os.listdir(big.path)) == big.names


def test_listing_by_other_processes_during_churn(big):
    """ls -f in other processes while a thread creates and deletes entries."""
    stop = threading.Event()
    churned: list[str] = []
    errors: list[BaseException] = []

    def churn():
        try:
            i = 0
            while not stop.is_set():
                nm = f"churn-{i:06d}"
                os.mknod(big.path / nm, 0o100644)
                churned.append(nm)
                if i % 2:
                    os.unlink(big.path / churned[i - 1])
                i += 1
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    before = set(big.names)
    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(3):
            out = subprocess.run(["ls", "-f", str(big.path)], capture_output=True, text=True,
                                 check=True).stdout.split("\n")[:-1]
            assert len(out) == len(set(out)), "ls -f listed an entry twice"
            missing = before - set(out)
            assert not missing, f"ls -f missed {len(missing)} stable entries"
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    left = {nm for k, nm in enumerate(churned) if k % 2 == 1 or k == len(churned) - 1}
    left = {nm for nm in left if (big.path / nm).exists()}
    big.names |= left
    assert set(os.listdir(big.path)) == big.names


# -- telldir / seekdir through the C library -------------------------------------------------


class Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


libc = ctypes.CDLL(None, use_errno=True)
libc.opendir.restype = ctypes.c_void_p
libc.opendir.argtypes = [ctypes.c_char_p]
libc.readdir.restype = ctypes.POINTER(Dirent)
libc.readdir.argtypes = [ctypes.c_void_p]
libc.telldir.restype = ctypes.c_long
libc.telldir.argtypes = [ctypes.c_void_p]
libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
libc.closedir.argtypes = [ctypes.c_void_p]


class CDir:
    def __init__(self, path: Path):
        self.d = libc.opendir(os.fsencode(path))
        assert self.d, os.strerror(ctypes.get_errno())

    def read(self) -> str | None:
        ent = libc.readdir(self.d)
        return os.fsdecode(ent.contents.d_name) if ent else None

    def read_n(self, n: int) -> list[str]:
        out = []
        while len(out) < n and (nm := self.read()) is not None:
            out.append(nm)
        return out

    def tell(self) -> int:
        return libc.telldir(self.d)

    def seek(self, pos: int) -> None:
        libc.seekdir(self.d, pos)

    def close(self) -> None:
        libc.closedir(self.d)


def test_telldir_seekdir_across_changes_and_remount(big):
    big.fs.remount()  # a cold listing: everything from the downloaded metadata
    d = CDir(big.path)
    try:
        first = d.read_n(len(big.names) // 2)
        pos = d.tell()
        nxt = d.read_n(100)
        assert len(nxt) == 100
        d.seek(pos)
        assert d.read_n(100) == nxt
        # remove some entries right after the position, add new ones, seek back
        for nm in nxt[:50:2]:
            os.unlink(big.path / nm)
            big.names.discard(nm)
        added = big.create(10, threads=1)
        d.seek(pos)
        again = d.read_n(75)
        assert again == [nm for nm in nxt if nm not in nxt[:50:2]]
        rest = again + d.read_n(10 * N)
        listed = set(first) | set(rest)
        assert len(first) + len(rest) == len(listed), "an entry returned twice"
        listed -= {".", ".."}
        assert big.names - set(added) <= listed
    finally:
        d.close()
    assert set(os.listdir(big.path)) == big.names
    big.fs.umount()
    assert big.fs.fsck().returncode == 0
