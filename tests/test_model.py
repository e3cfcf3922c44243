"""Randomized model test: the same random operation sequences applied to a megafs mount
and to a reference directory on the local disk, with the full state compared after
every step.

Operations: writes at random offsets and sizes (plain, O_TRUNC, O_APPEND; random,
zero and compressible data), truncate, rename (plain, RENAME_NOREPLACE,
RENAME_EXCHANGE), link, unlink, mkdir, rmdir, symlink, mkfifo, chmod, setxattr,
removexattr, fsync, writes and truncates through file descriptors held open across
renames and unlinks, dropping the kernel's page cache of the files, uploading
everything (flush), and unmount + mount with an empty cache directory. A failing
operation must fail on both sides with the same errno.

Compared after every step: the listing, file types, modes, sizes (not of
directories), link counts (directories too), contents, symlink targets, xattrs,
hard-link groups, and size, link count and contents of every descriptor held open.
Each example ends with a remount and a last comparison.

The filesystem has 64 KiB blocks, so multi-block paths are exercised.

Knobs (CI runs the defaults, about a minute):
    MEGAFS_TEST_EXAMPLES   examples (sequences) to run, default 25
    MEGAFS_MODEL_STEPS     steps per example, default 50
    MEGAFS_MODEL_SEED      default: the same sequences on every run (hypothesis'
                           derandomize, so CI is deterministic); "random": new sequences
                           each run; a number: the sequences of that seed
    MEGAFS_MODEL_SHRINK=0  report a failure as found, without shrinking it
    MEGAFS_MODEL_SHRINK_SECONDS  give up shrinking a failure after this long (default 120;
                           every shrinking attempt remounts, so shrinking is slow)
e.g. ``MEGAFS_TEST_EXAMPLES=500 MEGAFS_MODEL_STEPS=200 pytest tests/test_model.py``
(set ``--timeout`` accordingly). A failure prints the steps, as Python calls.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
import shutil
import stat

import pytest
from helpers import LocalStore, MegaFS
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine as hypothesis_engine
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

BS = 64 * 1024
EXAMPLES = int(os.environ.get("MEGAFS_TEST_EXAMPLES", "25"))
STEPS = int(os.environ.get("MEGAFS_MODEL_STEPS", "50"))
SEED = os.environ.get("MEGAFS_MODEL_SEED")
SHRINK = os.environ.get("MEGAFS_MODEL_SHRINK", "1") != "0"
SHRINK_SECONDS = int(os.environ.get("MEGAFS_MODEL_SHRINK_SECONDS", "120"))
MAX_HANDLES = 3

# A small name space, so that operations collide: top-level names, and the same names
# one and two directories down.
_NAMES = ["a", "b", "d0", "d1"]
PATHS = _NAMES + [f"{d}/{n}" for d in ("d0", "d1") for n in _NAMES] + \
    [f"d0/d1/{n}" for n in ("a", "b", "d0")] + ["d1/d0/a"]
SYMLINK_TARGETS = ["a", "b", "d0", "d1", "d0/a", "nowhere", "."]
MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o4755, 0o2750, 0o1777, 0o777]
XATTR_NAMES = ["user.a", "user.b", "user.long-name-of-an-attribute"]

paths = st.sampled_from(PATHS)
offsets = st.one_of(st.sampled_from([0, 1, BS - 1, BS, BS + 1, 2 * BS, 3 * BS - 7, 5 * BS]),
                    st.integers(0, 6 * BS))
sizes = st.one_of(st.sampled_from([0, 1, 100, BS - 1, BS, BS + 1, 2 * BS]),
                  st.integers(0, 2 * BS + 10))
contents = st.tuples(st.sampled_from(["random", "zeros", "text"]), st.integers(0, 1 << 16))
handles = st.integers(0, MAX_HANDLES - 1)

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]


def renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def make_data(kind: str, seed_: int, size: int) -> bytes:
    if kind == "zeros":
        return bytes(size)
    if kind == "text":
        line = f"line {seed_} of some compressible text\n".encode()
        return (line * (size // len(line) + 1))[:size]
    return random.Random(seed_).randbytes(size)


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def snapshot(root: str) -> dict:
    """Everything compared, keyed by path relative to *root*."""
    entries = {}
    inodes: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st_ = os.lstat(p)
            kind = stat.S_IFMT(st_.st_mode)
            info = {"type": kind, "mode": oct(stat.S_IMODE(st_.st_mode)),
                    "nlink": st_.st_nlink}
            if stat.S_ISREG(kind):
                info["size"] = st_.st_size
                info["data"] = digest(p)
            elif stat.S_ISLNK(kind):
                info["target"] = os.readlink(p)
                info["size"] = st_.st_size
            if not stat.S_ISLNK(kind):
                info["xattrs"] = {n: os.getxattr(p, n) for n in sorted(os.listxattr(p))}
            if not stat.S_ISDIR(kind):
                inodes.setdefault(st_.st_ino, []).append(rel)
            entries[rel] = info
    groups = sorted(sorted(g) for g in inodes.values() if len(g) > 1)
    return {"entries": entries, "hard-link groups": groups}


def diff(ref: dict, got: dict) -> str:
    lines = []
    re_, ge = ref["entries"], got["entries"]
    for k in sorted(set(re_) | set(ge)):
        if re_.get(k) != ge.get(k):
            lines.append(f"  {k}: reference {re_.get(k)}\n  {' ' * len(k)}  megafs    {ge.get(k)}")
    if ref["hard-link groups"] != got["hard-link groups"]:
        lines.append(f"  hard-link groups: reference {ref['hard-link groups']},"
                     f" megafs {got['hard-link groups']}")
    return "\n".join(lines)


class Model(RuleBasedStateMachine):
    fs: MegaFS  # set by the test
    ref_base: str
    counter = 0

    def __init__(self):
        super().__init__()
        Model.counter += 1
        name = f"ex{Model.counter}"
        for base in (self.ref_base, str(self.fs.mnt)):
            for old in os.listdir(base):  # the previous example's tree
                shutil.rmtree(os.path.join(base, old))
            os.mkdir(os.path.join(base, name))
        self.roots = [os.path.join(self.ref_base, name), os.path.join(self.fs.mnt, name)]
        self.handles: list[tuple[int, int] | None] = [None] * MAX_HANDLES

    # -- plumbing ---------------------------------------------------------------------
    def both(self, fn, *args):
        """Apply fn(side, root, *args) to the reference (side 0) and megafs (side 1):
        same result or same errno, then the same state."""
        results = []
        for side, root in enumerate(self.roots):
            try:
                results.append(("ok", fn(side, root, *args)))
            except OSError as e:
                results.append(("error", errno.errorcode.get(e.errno, e.errno)))
        assert results[0] == results[1], (
            f"{fn.__name__}{args}: reference {results[0]}, megafs {results[1]}")
        self.compare()

    def compare(self) -> None:
        ref, got = snapshot(self.roots[0]), snapshot(self.roots[1])
        assert ref == got, f"state differs:\n{diff(ref, got)}"
        for i, pair in enumerate(self.handles):
            if pair is None:
                continue
            views = []
            for fd in pair:
                st_ = os.fstat(fd)
                views.append((st_.st_size, st_.st_nlink,
                              hashlib.sha256(os.pread(fd, st_.st_size + 1, 0)).hexdigest()))
            assert views[0] == views[1], (
                f"open handle {i}: reference (size, nlink, data) {views[0]}, megafs {views[1]}")

    def close_handles(self) -> None:
        for i, pair in enumerate(self.handles):
            if pair is not None:
                for fd in pair:
                    os.close(fd)
                self.handles[i] = None

    def teardown(self):
        try:
            self.compare()
            self.close_handles()
            self.fs.umount()
            self.fs.mount(fresh_cache=True)
            self.compare()
        finally:
            self.close_handles()

    @initialize(populate=st.booleans())
    def start(self, populate):
        """Most examples start from a small tree, so that most operations find something
        to work on; some start empty."""
        if populate:
            for root in self.roots:
                for d in ("d0", "d1", "d0/d1"):
                    os.mkdir(os.path.join(root, d))
                for path, size in [("a", 3 * BS + 5), ("d0/a", BS), ("d1/b", 1000),
                                   ("d0/d1/a", 2 * BS)]:
                    with open(os.path.join(root, path), "wb") as f:
                        f.write(make_data("random", size, size))
                os.symlink("a", os.path.join(root, "b"))
                os.setxattr(os.path.join(root, "d0/a"), "user.a", b"initial")
        self.compare()

    # -- data -------------------------------------------------------------------------
    WRITE = dict(path=paths, offset=offsets, size=sizes, data=contents,
                 how=st.sampled_from(["pwrite", "trunc", "append"]))

    @rule(**WRITE)
    def write(self, path, offset, size, data, how):
        buf = make_data(*data, size)

        def write(side, root, path, offset, size, data, how):
            flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK
            flags |= {"pwrite": 0, "trunc": os.O_TRUNC, "append": os.O_APPEND}[how]
            fd = os.open(os.path.join(root, path), flags, 0o644)
            try:
                if how == "append":
                    return os.write(fd, buf)
                return os.pwrite(fd, buf, offset)
            finally:
                os.close(fd)

        self.both(write, path, offset, size, data, how)

    @rule(**WRITE)
    def write_more(self, path, offset, size, data, how):
        """The same again: hypothesis picks rules uniformly, writes deserve more."""
        self.write(path, offset, size, data, how)

    @rule(path=paths, size=st.one_of(sizes, offsets, st.just(20 * BS + 3)))
    def truncate(self, path, size):
        def truncate(side, root, path, size):
            os.truncate(os.path.join(root, path), size)

        self.both(truncate, path, size)

    @rule(path=paths)
    def fsync(self, path):
        def fsync(side, root, path):
            fd = os.open(os.path.join(root, path), os.O_RDONLY | os.O_NONBLOCK)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        self.both(fsync, path)

    # -- names ------------------------------------------------------------------------
    @rule(src=paths, dst=paths, flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    def rename(self, src, dst, flags):
        def rename(side, root, src, dst, flags):
            renameat2(os.path.join(root, src), os.path.join(root, dst), flags)

        self.both(rename, src, dst, flags)

    @rule(src=paths, dst=paths)
    def link(self, src, dst):
        def link(side, root, src, dst):
            os.link(os.path.join(root, src), os.path.join(root, dst), follow_symlinks=False)

        self.both(link, src, dst)

    @rule(path=paths)
    def unlink(self, path):
        def unlink(side, root, path):
            os.unlink(os.path.join(root, path))

        self.both(unlink, path)

    @rule(path=paths, mode=st.sampled_from([0o755, 0o700, 0o2775]))
    def mkdir(self, path, mode):
        def mkdir(side, root, path, mode):
            os.mkdir(os.path.join(root, path), mode)

        self.both(mkdir, path, mode)

    @rule(path=paths)
    def rmdir(self, path):
        def rmdir(side, root, path):
            os.rmdir(os.path.join(root, path))

        self.both(rmdir, path)

    @rule(to=st.sampled_from(SYMLINK_TARGETS), path=paths)
    def symlink(self, to, path):
        def symlink(side, root, to, path):
            os.symlink(to, os.path.join(root, path))

        self.both(symlink, to, path)

    @rule(path=paths)
    def mkfifo(self, path):
        def mkfifo(side, root, path):
            os.mkfifo(os.path.join(root, path), 0o640)

        self.both(mkfifo, path)

    # -- attributes -------------------------------------------------------------------
    @rule(path=paths, mode=st.sampled_from(MODES))
    def chmod(self, path, mode):
        def chmod(side, root, path, mode):
            os.chmod(os.path.join(root, path), mode)

        self.both(chmod, path, mode)

    @rule(path=paths, name=st.sampled_from(XATTR_NAMES), value=st.binary(max_size=200),
          flags=st.sampled_from([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def setxattr(self, path, name, value, flags):
        def setxattr(side, root, path, name, value, flags):
            os.setxattr(os.path.join(root, path), name, value, flags)

        self.both(setxattr, path, name, value, flags)

    @rule(path=paths, name=st.sampled_from(XATTR_NAMES))
    def removexattr(self, path, name):
        def removexattr(side, root, path, name):
            os.removexattr(os.path.join(root, path), name)

        self.both(removexattr, path, name)

    # -- open file descriptors ----------------------------------------------------------
    @rule(i=handles, path=paths, append=st.booleans())
    def open_handle(self, i, path, append):
        if self.handles[i] is not None:
            return
        fds = []

        def open_(side, root, path, append):
            flags = os.O_RDWR | os.O_NONBLOCK | (os.O_APPEND if append else 0)
            fd = os.open(os.path.join(root, path), flags)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return "not a regular file"
            fds.append(fd)
            return "open"

        try:
            self.both(open_, path, append)
        finally:
            if len(fds) == 2:
                self.handles[i] = (fds[0], fds[1])
            else:
                for fd in fds:
                    os.close(fd)

    @rule(i=handles, offset=offsets, size=sizes, data=contents)
    def handle_write(self, i, offset, size, data):
        if self.handles[i] is None:
            return
        buf = make_data(*data, size)

        def handle_write(side, root, i, offset, size, data):
            return os.pwrite(self.handles[i][side], buf, offset)

        self.both(handle_write, i, offset, size, data)

    @rule(i=handles, size=sizes)
    def handle_truncate(self, i, size):
        if self.handles[i] is None:
            return

        def handle_truncate(side, root, i, size):
            os.ftruncate(self.handles[i][side], size)

        self.both(handle_truncate, i, size)

    @rule(i=handles)
    def close_handle(self, i):
        if self.handles[i] is not None:
            for fd in self.handles[i]:
                os.close(fd)
            self.handles[i] = None
            self.compare()

    # -- megafs only: caches and the store ------------------------------------------------
    @rule()
    def drop_page_cache(self):
        """Make the next reads of every file go to the daemon, not the kernel's cache."""
        for dirpath, _, filenames in os.walk(self.roots[1]):
            for name in filenames:
                p = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(p).st_mode):
                    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
                    try:
                        os.fsync(fd)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
        self.compare()

    @rule()
    def flush(self):
        self.fs.flush()
        self.compare()

    @rule(really=st.integers(0, 1))
    def remount(self, really):
        """Unmount (the open descriptors are closed first) and mount with an empty cache."""
        if not really:
            return
        self.close_handles()
        self.fs.umount()
        self.fs.mount(fresh_cache=True)
        self.compare()


@pytest.mark.slow
def test_model(tmp_path):
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    ref = tmp_path / "reference"
    ref.mkdir()
    try:
        fs.mkfs()  # 64 KiB blocks
        fs.mount()
        Model.fs = fs
        Model.ref_base = str(ref)
        phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
        if SHRINK:
            phases.append(Phase.shrink)
        config = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                          database=None, print_blob=True, phases=phases,
                          derandomize=SEED is None, suppress_health_check=list(HealthCheck))
        if SEED not in (None, "random"):
            seed(int(SEED))(Model)
        # Hypothesis' own limit on shrinking is 5 minutes: too long for CI.
        shrink_limit = getattr(hypothesis_engine, "MAX_SHRINKING_SECONDS", None)
        hypothesis_engine.MAX_SHRINKING_SECONDS = SHRINK_SECONDS
        try:
            run_state_machine_as_test(Model, settings=config)
        finally:
            hypothesis_engine.MAX_SHRINKING_SECONDS = shrink_limit
        fs.umount()
        assert fs.fsck().returncode == 0
    finally:
        fs.cleanup()
