"""Real tools working inside a mount: git, SQLite (WAL, two writers), rsync -aHAX, tar,
an editor-style safe save, cp --sparse=always, flock(1) and fcntl locks.

Each tool must be installed (dev.sh installs git, sqlite3 and rsync; tar, sed, cp, du
and flock are in every Debian base system): a missing tool fails the test.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import MegaFS, assert_same_tree

import megafs

BS = 64 * 1024
MiB = 1 << 20


pytestmark = pytest.mark.parametrize("store", ["local"], indirect=True)


@pytest.fixture
def fs(mounted: MegaFS) -> MegaFS:
    """A fresh local-store filesystem (64 KiB blocks) mounted on ``fs.mnt``."""
    return mounted


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (./dev.sh installs the tools the tests need)"
    return path


def run(*args, cwd=None, env=None, check=True, input=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([tool(str(args[0])), *map(str, args[1:])], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def xattrs_of(root: Path) -> dict[str, dict[str, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) or stat.S_ISFIFO(os.lstat(p).st_mode):
                continue
            names = os.listxattr(p, follow_symlinks=False)
            if names:
                out[os.path.relpath(p, root)] = {
                    n: os.getxattr(p, n, follow_symlinks=False) for n in names}
    return out


# -- git -----------------------------------------------------------------------------


def test_git_repository_inside_the_mount(fs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@e.st",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@e.st", "LC_ALL": "C"}
    repo = fs.mnt / "repo"

    def git(*args, check=True):
        return run("git", "-C", repo, *args, env=env, check=check).stdout

    run("git", "init", "-q", "-b", "main", repo, env=env)
    git("config", "gc.auto", "0")
    # a real tree: megafs' own source, a binary blob, an executable and a symlink
    src = Path(megafs.__file__).resolve().parent
    shutil.copytree(src, repo / "megafs", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "blob.bin").write_bytes(os.urandom(3 * BS + 5))
    (repo / "run.sh").write_text("#!/bin/sh\necho ok\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("megafs/__init__.py", repo / "link")
    git("add", "-A")
    git("commit", "-q", "-m", "initial")
    # history: edits, a rename, a deletion, a branch
    for i in range(5):
        with open(repo / "megafs" / "errors.py", "a") as f:
            f.write(f"# edit {i}\n")
        (repo / f"new-{i}.txt").write_text(f"file {i}\n" * (i * 1000 + 1))
        git("add", "-A")
        git("commit", "-q", "-m", f"edit {i}")
    git("mv", "blob.bin", "moved.bin")
    git("rm", "-q", "new-0.txt")
    git("commit", "-q", "-m", "move and delete")
    git("checkout", "-q", "-b", "topic")
    (repo / "topic.txt").write_text("only on topic\n")
    git("add", "topic.txt")
    git("commit", "-q", "-m", "topic")
    git("gc", "-q", "--prune=now")
    assert list((repo / ".git" / "objects" / "pack").glob("*.pack")), "gc made no pack"
    git("checkout", "-q", "main")
    assert not (repo / "topic.txt").exists()
    git("checkout", "-q", "HEAD~3")  # detached, an older tree
    assert (repo / "new-0.txt").exists() and (repo / "blob.bin").exists()
    git("checkout", "-q", "topic")
    assert (repo / "topic.txt").read_text() == "only on topic\n"
    assert git("status", "--porcelain") == ""
    git("fsck", "--full", "--strict")
    log = git("log", "--format=%s", "topic")
    fs.remount()  # fresh cache: everything comes from the store
    git("fsck", "--full", "--strict")
    assert git("status", "--porcelain") == ""
    assert git("log", "--format=%s", "topic") == log
    assert len(log.splitlines()) == 8
    # a clone out of the mount matches the work tree
    clone = tmp_path / "clone"
    run("git", "clone", "-q", "-b", "topic", repo, clone, env=env)
    assert_same_tree_contents(clone, repo)
    assert os.readlink(repo / "link") == "megafs/__init__.py"
    assert os.stat(repo / "run.sh").st_mode & 0o111
    git("gc", "-q", "--aggressive", "--prune=now")
    git("fsck", "--full", "--strict")


def assert_same_tree_contents(a: Path, b: Path) -> None:
    """Same names, file contents and symlink targets (ignoring .git)."""
    def listing(root: Path) -> dict[str, bytes | str]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames + dirnames:
                p = Path(dirpath, name)
                rel = str(p.relative_to(root))
                if p.is_symlink():
                    out[rel] = "-> " + os.readlink(p)
                elif p.is_file():
                    out[rel] = p.read_bytes()
                else:
                    out[rel] = "dir"
        return out

    la, lb = listing(a), listing(b)
    assert sorted(la) == sorted(lb)
    assert la == lb


# -- SQLite ----------------------------------------------------------------------------

SQLITE_WRITER = textwrap.dedent("""
    import os, random, sqlite3, sys
    db, writer, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rnd = random.Random(writer)
    con = sqlite3.connect(db, timeout=120, isolation_level=None)
    con.execute("PRAGMA busy_timeout=120000")
    for i in range(n):
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO t (writer, n, payload) VALUES (?, ?, ?)",
                    (writer, i, os.urandom(rnd.randrange(10, 20000))))
        if i % 10 == 9:
            con.execute("UPDATE t SET payload = ? WHERE writer = ? AND n = ?",
                        (os.urandom(5000), writer, i - 5))
            con.execute("DELETE FROM t WHERE writer = ? AND n = ?", (writer, i - 9))
            con.execute("INSERT INTO t (writer, n, payload) VALUES (?, ?, zeroblob(100))",
                        (writer, -(i - 9)))
        con.execute("COMMIT")
    con.close()
""")


def test_sqlite_wal_two_writers(fs):
    sqlite3 = tool("sqlite3")
    db = fs.mnt / "data" / "test.db"
    db.parent.mkdir()
    run(sqlite3, db, "PRAGMA journal_mode=WAL; PRAGMA page_size=4096;"
        " CREATE TABLE t (id INTEGER PRIMARY KEY, writer TEXT, n INTEGER, payload BLOB);"
        " CREATE INDEX t_writer ON t (writer, n);")
    n = 300
    procs = [subprocess.Popen([sys.executable, "-c", SQLITE_WRITER, str(db), w, str(n)],
                              stderr=subprocess.PIPE, text=True) for w in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err

    def check():
        out = run(sqlite3, db, "PRAGMA integrity_check;").stdout.strip()
        assert out == "ok", out
        out = run(sqlite3, db, "SELECT writer, count(*) FROM t GROUP BY writer;").stdout
        assert out.split() == [f"a|{n}", f"b|{n}"]
        out = run(sqlite3, db, "PRAGMA journal_mode;").stdout.strip()
        assert out == "wal"

    check()
    fs.remount()
    check()
    run(sqlite3, db, "PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
    check()
    fs.remount()
    check()


# -- rsync, tar -------------------------------------------------------------------------


def build_tree(root: Path) -> Path:
    """A tree with everything rsync -aHAX and tar keep: contents of many sizes, hard
    links across directories, symlinks, xattrs, special files, odd modes and owners,
    nanosecond mtimes and a sparse file."""
    root.mkdir()
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    for i, size in enumerate([0, 1, 100, BS - 1, BS, BS + 1, 3 * BS + 17, MiB + 3]):
        (root / "a" / f"file{i}").write_bytes(os.urandom(size))
    (root / "a" / "b" / "text").write_text("compressible text\n" * 5000)
    os.link(root / "a" / "file4", root / "a" / "b" / "c" / "hardlink")
    os.link(root / "a" / "file4", root / "hardlink2")
    os.link(root / "a" / "b" / "text", root / "a" / "text-link")
    os.symlink("a/file1", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("nowhere", root / "a" / "dangling")
    os.symlink("b", root / "a" / "dir-link")
    os.mkfifo(root / "a" / "fifo")
    os.mknod(root / "a" / "chardev", stat.S_IFCHR | 0o640, os.makedev(1, 7))
    os.mknod(root / "a" / "blockdev", stat.S_IFBLK | 0o600, os.makedev(8, 17))
    os.setxattr(root / "a" / "file2", "user.mime_type", b"application/octet-stream")
    os.setxattr(root / "a" / "file2", "user.binary", bytes(range(256)))
    os.setxattr(root / "a" / "b", "user.on-dir", b"directory attribute")
    os.setxattr(root / "a" / "file3", "trusted.root-only", b"trusted")
    with open(root / "sparse", "wb") as f:
        f.write(b"start")
        f.seek(20 * MiB)
        f.write(b"middle")
        f.seek(40 * MiB)
        f.write(b"end")
    for p, mode in [(root / "a" / "file5", 0o4755), (root / "a" / "file6", 0o2711),
                    (root / "a" / "b", 0o1777), (root / "a" / "file7", 0o400)]:
        os.chmod(p, mode)
    os.chown(root / "a" / "file0", 1234, 5678)
    os.chown(root / "a" / "fifo", 42, 43)
    os.chown(root / "rel-link", 77, 78, follow_symlinks=False)
    t = 1_500_000_000_123_456_789
    for i, (dirpath, dirnames, filenames) in enumerate(sorted(os.walk(root, topdown=False))):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(t, t + i * 1_000_000_007 + len(name)),
                     follow_symlinks=False)
    os.utime(root, ns=(t, t))
    return root


def itemize(src: Path, dst: Path) -> list[str]:
    """rsync's list of differences (dry run, times to the nanosecond): empty when *dst* is
    a perfect copy."""
    out = run("rsync", "-aHAX", "--modify-window=-1", "--dry-run", "--itemize-changes", "--delete",
              f"{src}/", f"{dst}/").stdout
    return [line for line in out.splitlines() if line.strip()]


def test_rsync_round_trip(fs, tmp_path):
    src = build_tree(tmp_path / "src")
    dst = fs.mnt / "copy"
    run("rsync", "-aHAX", f"{src}/", f"{dst}/")
    assert itemize(src, dst) == []
    assert_same_tree(src, dst)
    assert xattrs_of(dst) == xattrs_of(src)
    fs.remount()
    assert itemize(src, dst) == []
    back = tmp_path / "back"
    run("rsync", "-aHAX", f"{dst}/", f"{back}/")
    assert itemize(src, back) == []
    assert_same_tree(src, back)
    assert xattrs_of(back) == xattrs_of(src)
    # an incremental update: rsync's delta transfer rewrites files in place
    with open(src / "a" / "file7", "r+b") as f:
        f.seek(BS)
        f.write(b"changed in the middle")
    (src / "a" / "new").write_bytes(b"new file")
    os.unlink(src / "hardlink2")
    run("rsync", "-aHAX", "--inplace", "--delete", f"{src}/", f"{dst}/")
    # rsync -H may set a directory's time before it is done with it (on ext4 too): a
    # second pass with nanosecond times, nothing left to copy, sets it right
    assert all(line.startswith(".d..t...... ") for line in itemize(src, dst))
    run("rsync", "-aHAX", "--modify-window=-1", f"{src}/", f"{dst}/")
    assert itemize(src, dst) == []
    fs.remount()
    assert_same_tree(src, dst)


def test_tar_round_trip(fs, tmp_path):
    src = build_tree(tmp_path / "src")
    archive = fs.mnt / "archive.tar"
    flags = ["--format=posix", "--xattrs", "--xattrs-include=*", "--sparse",
             "--numeric-owner"]
    run("tar", *flags, "-cf", archive, "-C", src, ".")
    out = fs.mnt / "extracted"
    out.mkdir()
    run("tar", *flags, "-xpf", archive, "-C", out)
    run("tar", *flags, "--compare", "-f", archive, "-C", out)
    assert_same_tree(src, out)
    assert xattrs_of(out) == xattrs_of(src)
    fs.remount()
    assert_same_tree(src, out)
    # and back out of the mount: archive the extracted copy, unpack on local disk
    back_archive = tmp_path / "back.tar"
    run("tar", *flags, "-cf", back_archive, "-C", out, ".")
    back = tmp_path / "back"
    back.mkdir()
    run("tar", *flags, "-xpf", back_archive, "-C", back)
    assert_same_tree(src, back)
    assert xattrs_of(back) == xattrs_of(src)


# -- editor-style safe save ---------------------------------------------------------------


def safe_save(path: Path, data: bytes) -> None:
    """What careful editors do: keep a backup, write a temporary file, fsync it,
    rename it over the original, fsync the directory."""
    st = os.stat(path)
    backup = path.with_name(path.name + "~")
    backup.unlink(missing_ok=True)
    os.link(path, backup)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.fchown(fd, st.st_uid, st.st_gid)
        for name in os.listxattr(path):
            os.setxattr(fd, name, os.getxattr(path, name))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def test_editor_style_save(fs):
    doc = fs.mnt / "notes" / "doc.txt"
    doc.parent.mkdir()
    v1 = b"version one\n" * 10000
    v2 = b"version two, longer\n" * 12000
    doc.write_bytes(v1)
    os.chmod(doc, 0o640)
    os.chown(doc, 1000, 1000)
    os.setxattr(doc, "user.charset", b"utf-8")
    fs.flush()
    old_ino = os.stat(doc).st_ino
    reader = os.open(doc, os.O_RDONLY)  # another program has the file open
    try:
        safe_save(doc, v2)
        assert os.pread(reader, len(v1) + 1, 0) == v1  # still the old file
        assert os.fstat(reader).st_nlink == 1  # only the backup names it now
    finally:
        os.close(reader)
    backup = doc.with_name("doc.txt~")

    def check():
        assert sorted(os.listdir(doc.parent)) == ["doc.txt", "doc.txt~"]
        assert doc.read_bytes() == v2
        assert backup.read_bytes() == v1
        st = os.stat(doc)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1000, 1000)
        assert os.getxattr(doc, "user.charset") == b"utf-8"
        assert os.stat(backup).st_ino == old_ino and os.stat(backup).st_nlink == 1

    check()
    # fsync means durable: the daemon dying right after the save loses nothing
    fs.kill9()
    fs.mount()  # same cache directory: recovery
    check()
    fs.remount()
    check()
    # sed -i.bak does the same dance (rename the original away, rename the new one in)
    run("sed", "-i.bak", "s/two/three/", doc)
    assert doc.read_bytes() == v2.replace(b"two", b"three")
    assert doc.with_name("doc.txt.bak").read_bytes() == v2
    fs.remount()
    assert doc.read_bytes() == v2.replace(b"two", b"three")


# -- sparse copies --------------------------------------------------------------------------


def make_sparse(path: Path) -> bytes:
    """1 MiB of data, 30 MiB hole, 1 MiB of data, a hole to 64 MiB; returns the data."""
    a, b = os.urandom(MiB), os.urandom(MiB)
    with open(path, "wb") as f:
        f.write(a)
        f.seek(31 * MiB)
        f.write(b)
        f.truncate(64 * MiB)
    return a + bytes(30 * MiB) + b + bytes(32 * MiB)


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_cp_sparse_always(fs, tmp_path):
    local = tmp_path / "sparse"
    data = make_sparse(local)
    assert allocated(local) < 4 * MiB  # the local disk keeps holes
    fs.flush()
    before = fs.store.total_bytes()
    copy = fs.mnt / "copy"
    run("cp", "--sparse=always", local, copy)
    copy2 = fs.mnt / "copy2"
    run("cp", "--sparse=always", copy, copy2)  # inside the mount
    back = tmp_path / "back"
    run("cp", "--sparse=always", copy, back)  # out of it
    for p in (copy, copy2, back):
        assert p.read_bytes() == data, p
    assert allocated(back) < 4 * MiB
    fs.flush()
    grown = fs.store.total_bytes() - before
    assert grown < 8 * MiB, f"the store grew by {grown} bytes for two copies of 2 MiB of data"
    fs.remount()
    assert copy2.read_bytes() == data
    # what du and cp's own sparseness heuristics see
    for p in (copy, copy2):
        assert allocated(p) < 4 * MiB, f"{p.name}: st_blocks say {allocated(p)} bytes"


# -- locks ----------------------------------------------------------------------------------

LOCK_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    path, kind, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if kind == "flock":
        fcntl.flock(fd, fcntl.LOCK_EX)
    elif kind == "flock-shared":
        fcntl.flock(fd, fcntl.LOCK_SH)
    else:  # byte range 0..99, exclusive
        fcntl.lockf(fd, fcntl.LOCK_EX, 100, 0)
    print("locked", flush=True)
    time.sleep(hold)
""")


def hold_lock(path: Path, kind: str, hold: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(path), kind, str(hold)],
                         stdout=subprocess.PIPE, text=True)
    with p.stdout:  # nothing more comes from it
        assert p.stdout.readline() == "locked\n"
    return p


def getlk(fd: int, start: int, length: int) -> tuple[int, int]:
    """F_GETLK for a write lock on [start, start+length): (l_type, l_pid) of a conflict."""
    fmt = "hhqqi4x"  # struct flock on x86-64 / aarch64 Linux
    req = struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    l_type, _, _, _, l_pid = struct.unpack(fmt, fcntl.fcntl(fd, fcntl.F_GETLK, req))
    return l_type, l_pid


def test_flock_between_processes(fs):
    flock = tool("flock")
    path = fs.mnt / "lockfile"
    holder = hold_lock(path, "flock", 30)
    try:
        assert run(flock, "-n", path, "true", check=False).returncode == 1
        assert run(flock, "-n", "-s", path, "true", check=False).returncode == 1
        t0 = time.monotonic()
        assert run(flock, "-w", "0.5", path, "true", check=False).returncode == 1
        assert time.monotonic() - t0 >= 0.4
    finally:
        holder.kill()
        holder.wait()
    # the lock died with its holder
    run(flock, "-n", path, "true")
    # shared locks coexist, an exclusive one waits for them
    shared = hold_lock(path, "flock-shared", 2.0)
    try:
        run(flock, "-n", "-s", path, "true")
        assert run(flock, "-n", path, "true", check=False).returncode == 1
        t0 = time.monotonic()
        run(flock, "-w", "20", path, "true")  # granted when the holder exits
        assert time.monotonic() - t0 >= 0.3
    finally:
        shared.kill()
        shared.wait()
    # flock(1) serializing a read-modify-write counter across processes
    counter = fs.mnt / "counter"
    counter.write_text("0")
    script = f"n=$(cat {counter}); echo $((n + 1)) > {counter}"
    procs = [subprocess.Popen(["sh", "-c", f"for i in 1 2 3 4 5 6 7 8 9 10;"
                               f" do {flock} {path} sh -c '{script}'; done"])
             for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert counter.read_text().strip() == "40"


def test_fcntl_byte_range_locks_between_processes(fs):
    path = fs.mnt / "ranges"
    path.write_bytes(bytes(1000))
    holder = hold_lock(path, "range", 30)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 50)
            assert e.value.errno in (errno.EAGAIN, errno.EACCES)
            with pytest.raises(OSError):
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 99)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 100)  # next to it: fine
            assert getlk(fd, 0, 10) == (fcntl.F_WRLCK, holder.pid)
            assert getlk(fd, 500, 10)[0] == fcntl.F_UNLCK
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)  # released by the death
        assert getlk(fd, 0, 10)[0] == fcntl.F_UNLCK  # our own lock does not conflict
    finally:
        os.close(fd)
