"""The storage endpoint goes away while mounted, then comes back.

While the endpoint is unreachable: cached files stay readable, writes (and fsync) are
accepted into the cache below its limit, a read of a block that is not cached fails
with EIO after about ``mount.megafs --timeout`` seconds instead of hanging, and
``umount.megafs`` waits, saying on stderr what it waits for. Once the endpoint is back
the uploads resume, umount.megafs completes, and a mount with an empty cache directory
sees everything.

The outage lasts ``MEGAFS_TEST_OUTAGE`` seconds (default 8, enough for umount.megafs's
first "still waiting" line after 5 s, so that CI stays fast; set it to 60 to match the
issue). Three kinds of outage, all on an S3 store in the session's SeaweedFS:

* ``injected``: the backend's own fault injection (``MEGAFS_FAULTS=offline=FLAG``:
  every request fails while FLAG exists) -- deterministic, no network involved;
* ``refused``: the endpoint is reached through a TCP proxy that closes its port
  (connection refused) and resets open connections;
* ``stalled``: the proxy keeps accepting connections but forwards nothing in either
  direction (a black hole: requests hang rather than fail).

Over-the-limit writes while the storage is down (ENOSPC after --timeout) are covered
by test_full_disk.py.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from helpers import BIN, MegaFS, S3Store, assert_same_tree, pid_alive, read_file

pytestmark = pytest.mark.s3

OUTAGE = float(os.environ.get("MEGAFS_TEST_OUTAGE", "8"))
TIMEOUT = 2.0  # mount.megafs --timeout
RESUME_DEADLINE = 120.0  # s for uploads to finish once the endpoint is back
CACHE_SIZE = 16 << 20  # mount.megafs --cache-size; 3/4 of it may wait for upload
MiB = 1 << 20


class Proxy:
    """A TCP proxy in front of the S3 endpoint that can take the endpoint away.

    ``refuse()``: the port is closed (connection refused) and open connections are
    reset. ``stall()``: connections are accepted but nothing is forwarded either way
    until ``restore()``.
    """

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "up"
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._serve(self.listener)

    def url(self, server, prefix: str) -> str:
        return f"s3+http://127.0.0.1:{self.port}/{server.bucket}/{prefix}"

    def _serve(self, listener: socket.socket) -> None:
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                while self.mode == "stall":
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            self._drop(s)

    def _drop(self, s: socket.socket, reset: bool = False) -> None:
        with self.lock:
            self.conns.discard(s)
        try:
            if reset:  # RST instead of FIN
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def refuse(self) -> None:
        self.mode = "refuse"
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            self._drop(s, reset=True)

    def stall(self) -> None:
        self.mode = "stall"

    def restore(self) -> None:
        if self.mode == "refuse":
            self.listener = socket.create_server(("127.0.0.1", self.port))
            self._serve(self.listener)
        self.mode = "up"

    def close(self) -> None:
        self.mode = "closed"
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            self._drop(s)


class Outage:
    """Takes the endpoint of one or more filesystems (on one server) away and back."""

    def __init__(self, kind: str, server, tmp_path):
        self.kind = kind
        self.server = server
        self.flag = tmp_path / "offline"
        self.proxy = Proxy(server.s3_port) if kind != "injected" else None

    def attach(self, fs: MegaFS, store: S3Store) -> MegaFS:
        if self.proxy is None:
            fs.env = dict(fs.env, MEGAFS_FAULTS=f"offline={self.flag}")
        else:
            fs.url = self.proxy.url(self.server, store.prefix)
        return fs

    def start(self) -> None:
        if self.kind == "injected":
            self.flag.touch()
        elif self.kind == "refused":
            self.proxy.refuse()
        else:
            self.proxy.stall()

    def end(self) -> None:
        if self.proxy is None:
            self.flag.unlink(missing_ok=True)
        else:
            self.proxy.restore()

    def close(self) -> None:
        self.end()
        if self.proxy is not None:
            self.proxy.close()


@pytest.fixture(params=["injected", "refused", "stalled"])
def outage(request, seaweed, tmp_path):
    o = Outage(request.param, seaweed, tmp_path)
    try:
        yield o
    finally:
        o.close()


@pytest.fixture
def second_fs(seaweed, tmp_path):
    """Another filesystem (its own prefix, mount point and caches) on the same server."""
    store = S3Store(seaweed, f"t-{uuid.uuid4().hex[:12]}")
    (tmp_path / "second").mkdir()
    fs = MegaFS(store, tmp_path / "second")
    try:
        yield fs
    finally:
        fs.cleanup()
        store.close()


READER = r"""
import os, sys, time
t = time.monotonic()
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    data = os.pread(fd, int(sys.argv[3]), int(sys.argv[2]))
    print("ok", len(data), time.monotonic() - t)
except OSError as e:
    print("err", e.errno, time.monotonic() - t)
"""


def _timed_read(path, offset: int, size: int, limit: float) -> tuple[str, int, float]:
    """pread in a child process (killable if it hangs): ("ok", len, s) or ("err", errno, s)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", READER, str(path), str(offset), str(size)],
                            stdout=subprocess.PIPE, text=True)
    try:
        out = proc.communicate(timeout=limit)[0].split()
    except subprocess.TimeoutExpired:
        took = time.monotonic() - start
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel until the daemon answers: reaped by the fixtures
        proc.stdout.close()
        return "hung", 0, took
    return out[0], int(out[1]), float(out[2])


def _block_diff(want: bytes, got: bytes, bs: int = 64 << 10) -> str:
    """Which blocks of *got* differ from *want*, and what they hold instead."""
    out = []
    for off in range(0, max(len(want), len(got)), bs):
        w, g = want[off:off + bs], got[off:off + bs]
        if w == g:
            continue
        same = next((i for i in range(min(len(w), len(g))) if w[i] != g[i]), min(len(w), len(g)))
        kind = ("zeros" if not g.strip(b"\0") else
                f"another block's data (block {want.index(g) // bs})" if g in want else
                f"first {same} bytes right")
        out.append(f"block {off // bs}: {kind}")
    return f"{len(out)} blocks differ: " + ", ".join(out[:10])


class StderrLines:
    """Collects a process's stderr lines, with the time each arrived."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        with proc.stderr:
            for line in proc.stderr:
                self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


#: what umount.megafs's "still waiting" line must say about the storage error
REASONS = {"injected": r"\(storage error: .*injected: backend offline",
           "refused": r"\(storage error: .*[Cc]onnect"}
WAITING = re.compile(r"^umount\.megafs: still waiting after \d+s: \d+\.\d MiB left to upload")


@pytest.mark.slow
@pytest.mark.parametrize("store", ["s3"], indirect=True)
@pytest.mark.expect_log_errors(  # storage requests failing (or unanswered) for --timeout
    r"ERROR: read of /uncached \(inode \d+\) at offset \d+ failed: s3\+http://\S+: "
    r"GET p/[0-9a-f]+ \(bytes \d+\+\d+\) (failed|got no answer) for \d+s",
    r"ERROR: upload failed \(attempt \d+\): s3\+http://\S+: PUT p/[0-9a-f]+ "
    r"(failed|got no answer) for \d+s",
    r"ERROR: metadata upload failed: s3\+http://\S+: PUT m/[0-9a-f]+ "
    r"(failed|got no answer) for \d+s")
def test_endpoint_outage_while_mounted(megafs, store, second_fs, outage, tmp_path):
    args = ("--timeout", TIMEOUT, "--cache-size", CACHE_SIZE, "--upload-delay", "0.5")
    fs = outage.attach(megafs, store)
    other = outage.attach(second_fs, second_fs.store)

    # Before the outage. fs: files uploaded and cached.
    staging = tmp_path / "staging"
    (staging / "cached" / "sub").mkdir(parents=True)
    (staging / "cached" / "a").write_bytes(os.urandom(300_000))
    (staging / "cached" / "sub" / "b").write_bytes(b"small file\n")
    os.symlink("../a", staging / "cached" / "sub" / "link")
    fs.mkfs()
    fs.mount(args=args)
    subprocess.run(["cp", "-a", str(staging / "cached"), str(fs.mnt)], check=True)
    fs.flush()
    assert fs.status()["dirty_bytes"] == 0
    # other: a file in the store only (mounted with an empty cache directory).
    uncached = os.urandom(MiB)
    other.mkfs()
    other.mount()
    (other.mnt / "uncached").write_bytes(uncached)
    other.umount()
    other.mount(fresh_cache=True, args=args)

    outage.start()
    t0 = time.monotonic()
    umount = None
    problems: list[str] = []  # checked at the end, after the data is
    try:
        # Cached files stay readable, promptly.
        start = time.monotonic()
        assert_same_tree(staging / "cached", fs.mnt / "cached")
        assert time.monotonic() - start < TIMEOUT, "cached reads waited for the storage"

        # Writes are accepted into the cache (below its limit), fsync included.
        start = time.monotonic()
        new = staging / "new"
        new.mkdir()
        big = os.urandom(CACHE_SIZE * 5 // 8)  # the limit for data waiting: 3/4
        (new / "big").write_bytes(big)
        (new / "small").write_bytes(b"written while offline\n")
        os.utime(new / "small", ns=(1, 1_600_000_000_123_456_789))
        os.chmod(new / "small", 0o640)
        subprocess.run(["cp", "-a", str(new), str(fs.mnt)], check=True)
        fd = os.open(fs.mnt / "new" / "big", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(fs.mnt / "cached" / "sub" / "b", fs.mnt / "cached" / "b-renamed")
        os.rename(staging / "cached" / "sub" / "b", staging / "cached" / "b-renamed")
        for root in (staging, fs.mnt):
            os.utime(root / "cached" / "sub", ns=(2, 1_500_000_000_000_000_002))
        assert time.monotonic() - start < TIMEOUT, "writes waited for the storage"
        assert fs.status()["dirty_bytes"] >= len(big)
        assert read_file(fs.mnt / "new" / "big") == big

        # A block that is not cached: EIO after about --timeout, not a hang. (The kernel
        # retries a failed readahead once with a plain read, so one read() may wait twice.)
        # The metadata is local, so the file itself is there.
        assert os.stat(other.mnt / "uncached").st_size == MiB
        what, value, took = _timed_read(other.mnt / "uncached", 0, 4096,
                                        limit=4 * TIMEOUT + 10)
        if what == "hung":
            problems.append(f"a read of an uncached block hung for {took:.0f}s (killed) with the"
                            f" endpoint {outage.kind} and --timeout {TIMEOUT:g}")
        elif (what, value) != ("err", errno.EIO):
            problems.append(f"a read of an uncached block gave {what} {value}, not EIO")
        elif not TIMEOUT * 0.5 <= took <= 2 * TIMEOUT + 3:
            problems.append(f"EIO after {took:.1f}s with --timeout {TIMEOUT:g}")

        # umount.megafs waits for the uploads and says so.
        umount = subprocess.Popen([str(BIN / "umount.megafs"), str(fs.mnt)], env=fs.env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        err = StderrLines(umount)
        deadline = time.monotonic() + 15
        while not any(WAITING.match(line) for _, line in err.lines):
            assert umount.poll() is None, (
                f"umount.megafs exited {umount.returncode} while the storage was down:\n"
                f"{err.text()}\n{fs.log()}")
            assert time.monotonic() < deadline, f"no 'still waiting' line:\n{err.text()}"
            time.sleep(0.1)
        if outage.kind != "stalled":  # a stalled request has not failed yet
            # The storage has been failing for longer than --timeout: say how.
            line = next(line for _, line in err.lines if WAITING.match(line))
            if not re.search(REASONS[outage.kind], line):
                problems.append(f"umount.megafs does not say what fails: {line!r}")
        time.sleep(max(0.0, t0 + OUTAGE - time.monotonic()))
        assert umount.poll() is None, "umount.megafs finished while the storage was down"
        assert fs.is_mounted()
    except BaseException:
        # Storage back first: umount.megafs sits in a FUSE request the daemon answers only
        # once its flush is done, and SIGKILL does not end such a wait.
        outage.end()
        if umount is not None:
            umount.kill()
            try:
                umount.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        raise
    finally:
        outage.end()
    back = time.monotonic()

    # Uploads resume: umount.megafs completes. Polled with a generous deadline (how long
    # the remaining uploads take depends on the machine's load, not on megafs alone).
    deadline = back + RESUME_DEADLINE
    while (rc := umount.poll()) is None:
        if time.monotonic() > deadline:
            umount.kill()
            raise AssertionError(f"umount.megafs still waiting {RESUME_DEADLINE:g} s after the "
                                 f"storage came back:\n{err.text()}\n{fs.log()}")
        time.sleep(0.1)
    err.thread.join(5)
    resumed = time.monotonic() - back
    assert rc == 0, f"umount.megafs exited {rc}:\n{err.text()}\n{fs.log()}"
    assert not fs.is_mounted()
    assert all(not pid_alive(pid) for pid in fs.pids)
    print(f"outage {outage.kind}: {time.monotonic() - t0:.1f}s, umount done {resumed:.1f}s "
          f"after the endpoint came back")

    # The uncached block reads fine now (the EIO was not remembered).
    assert read_file(other.mnt / "uncached") == uncached
    other.umount()

    # Everything is in the store.
    fs.mount(fresh_cache=True)
    stored = read_file(fs.mnt / "new" / "big")
    assert stored == big, f"new/big differs in the store: {_block_diff(big, stored)}"
    assert_same_tree(staging / "cached", fs.mnt / "cached")
    assert_same_tree(staging / "new", fs.mnt / "new")
    fs.umount()
    assert fs.fsck().returncode == 0
    assert not problems, "\n".join(problems)
