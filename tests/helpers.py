"""Helpers for the end-to-end tests on real FUSE mounts (the fixtures are in conftest.py):
stores as seen from outside (a local directory, or a prefix in a SeaweedFS bucket),
:class:`MegaFS` driving the command-line tools, tree snapshots for comparisons and the
check that a CLI failure is one clean line.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import time
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import seaweed

from megafs.backends.sigv4 import canonical_query, sign_headers, uri_quote

BIN = Path(sys.executable).parent
PASSPHRASE = "correct horse battery staple"
TOOL_TIMEOUT = 90  # seconds for one CLI invocation
SMALL_BLOCK = "64K"


# -- stores -----------------------------------------------------------------------


class Store:
    """A place a megafs filesystem is kept, as the tests see it from outside."""

    url: str

    def objects(self) -> Iterator[tuple[str, bytes]]:
        """(name, raw bytes) of every object in the store."""
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        """Raw bytes of the object named *key* (``head``, ``superblock``...), None if absent."""
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        """Put a raw object (to simulate foreign data or damage)."""
        raise NotImplementedError

    def total_bytes(self) -> int:
        return sum(len(data) for _, data in self.objects())

    def missing_url(self) -> str:
        """URL of a store location that does not exist."""
        raise NotImplementedError


class LocalStore(Store):
    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"local://{path}"

    def objects(self) -> Iterator[tuple[str, bytes]]:
        for dirpath, _, files in os.walk(self.path):
            for name in files:
                p = Path(dirpath, name)
                yield str(p.relative_to(self.path)), p.read_bytes()

    def read(self, key: str) -> bytes | None:
        try:
            return (self.path / key).read_bytes()  # top-level keys only
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        (self.path / key).write_bytes(data)

    def total_bytes(self) -> int:
        return sum(Path(d, f).stat().st_size for d, _, fs in os.walk(self.path) for f in fs)

    def missing_url(self) -> str:
        return f"local://{self.path.parent / 'no-such-store'}"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class S3Store(Store):
    """A key prefix in the bucket of a SeaweedFS server (:mod:`seaweed`).

    Seen from outside through signed requests of its own (plain httpx), not through
    megafs's S3 backend, so a bug there cannot hide itself. The tools find the
    credentials (:data:`seaweed.ADMIN`) in the environment (:func:`tool_env`).
    """

    def __init__(self, server: seaweed.SeaweedFS, prefix: str):
        self.server = server
        self.prefix = prefix
        self.url = server.url(prefix)
        self.netloc = f"127.0.0.1:{server.s3_port}"
        self._client = httpx.Client(timeout=30)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, key: str | None = None, *, query: dict | None = None,
                 body: bytes = b"") -> httpx.Response:
        path = f"/{uri_quote(self.server.bucket)}"
        if key is not None:
            path += "/" + uri_quote(f"{self.prefix}/{key}", safe="/")
        qs = canonical_query(query)
        headers = sign_headers(method, self.netloc, path, qs,
                               {"content-length": str(len(body))},
                               hashlib.sha256(body).hexdigest(), seaweed.ADMIN, seaweed.REGION)
        url = f"http://{self.netloc}{path}" + (f"?{qs}" if qs else "")
        return self._client.request(method, url, headers=headers, content=body or None)

    def _check(self, r: httpx.Response, what: str) -> httpx.Response:
        if r.status_code not in (200, 204):
            raise AssertionError(f"S3 {what}: HTTP {r.status_code} {r.text[:300]}")
        return r

    def listing(self) -> dict[str, int]:
        """Name -> size of every object under the prefix (all pages)."""
        out: dict[str, int] = {}
        token = None
        while True:
            query = {"list-type": "2", "prefix": self.prefix + "/", "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._check(self._request("GET", query=query), "LIST").content)
            fields = {_local(el.tag): el for el in root}
            for el in root:
                if _local(el.tag) == "Contents":
                    item = {_local(c.tag): c.text or "" for c in el}
                    out[item["Key"][len(self.prefix) + 1:]] = int(item["Size"])
            token = fields["NextContinuationToken"].text if "NextContinuationToken" in fields \
                else None
            if (fields["IsTruncated"].text or "").strip().lower() != "true":
                return out
            assert token, "truncated listing without a continuation token"

    def objects(self) -> Iterator[tuple[str, bytes]]:
        for name in sorted(self.listing()):
            data = self.read(name)
            if data is not None:  # deleted meanwhile
                yield name, data

    def read(self, key: str) -> bytes | None:
        r = self._request("GET", key)
        if r.status_code == 404:
            return None
        return self._check(r, f"GET {key}").content

    def write(self, key: str, data: bytes) -> None:
        self._check(self._request("PUT", key, body=data), f"PUT {key}")

    def delete(self, key: str) -> None:
        r = self._request("DELETE", key)
        if r.status_code != 404:
            self._check(r, f"DELETE {key}")

    def total_bytes(self) -> int:
        return sum(self.listing().values())

    def missing_url(self) -> str:
        return self.server.url(self.prefix, bucket="megafs-no-such-bucket")


# -- process helpers ----------------------------------------------------------------


def tool_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MEGAFS_INSECURE_TEST_KDF"] = "1"
    env["MEGAFS_PASSPHRASE"] = PASSPHRASE
    env.pop("MEGAFS_FAULTS", None)
    # Credentials for S3 stores (unused by local ones): the test server's admin.
    env.pop("AWS_SESSION_TOKEN", None)
    env["AWS_ACCESS_KEY_ID"] = seaweed.ADMIN.access_key
    env["AWS_SECRET_ACCESS_KEY"] = seaweed.ADMIN.secret_key
    env.update(extra)
    return env


def pid_alive(pid: int) -> bool:
    """True while *pid* runs (a zombie counts as gone: nobody may reap it here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def wait_pid_gone(pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still running after {timeout}s")
        time.sleep(0.02)


def become_subreaper() -> None:
    """Make daemons that mount.megafs forks off our children once it exits.

    Then the tests reap a killed daemon themselves, as a real init does at once,
    instead of depending on how quickly this machine's pid 1 reaps orphans.
    """
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap(pid: int) -> bool:
    """Collect the exit status of our (sub-reaped) child *pid*; False if it is not ours."""
    try:
        os.waitpid(pid, 0)
        return True
    except ChildProcessError:
        return False


def is_megafs_daemon(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mount.megafs" in f.read()
    except OSError:
        return False


def mounted_paths() -> set[str]:
    out = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            mnt = line.split()[1]
            out.add(mnt.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\"))
    return out


def assert_cli_error(proc: subprocess.CompletedProcess, tool: str, code: int) -> str:
    """*proc* failed with *code* and exactly one clean line ``<tool>: ...`` on stderr."""
    err = proc.stderr
    assert proc.returncode == code, (
        f"{tool}: expected exit {code}, got {proc.returncode}; stderr={err!r}")
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"{tool}: "), lines[0]
    assert len(lines[0]) > len(tool) + 10, lines[0]
    return lines[0]


# -- the filesystem under test --------------------------------------------------------


class MegaFS:
    """Drives one megafs filesystem (one store) on one mountpoint through its CLI tools."""

    def __init__(self, store: Store, tmp_path: Path):
        self.store = store
        self.url = store.url
        self.tmp = tmp_path
        self.mnt = tmp_path / "mnt"
        self.mnt.mkdir()
        self.cache_dir: Path | None = None
        self.cache_dirs: set[Path] = set()  # every one used: their megafs.log are checked
        self._caches = 0
        self.pids: set[int] = set()
        self.mountpoints: set[Path] = {self.mnt}
        self.env = tool_env(XDG_CACHE_HOME=str(tmp_path / "xdg-cache"))
        become_subreaper()
        _instances.add(self)

    # plumbing
    def run(self, tool: str, *args, check: bool = True, env: dict | None = None,
            timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True,
                              text=True, env=env or self.env, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(map(str, args))} exited "
                                 f"{proc.returncode}: {proc.stderr.strip()}"
                                 f"\n{proc.stdout.strip()[-2000:]}")
        return proc

    def new_cache_dir(self) -> Path:
        self._caches += 1
        path = self.tmp / f"cache{self._caches}"
        self.cache_dirs.add(path)
        return path

    # lifecycle
    def mkfs(self, *args, block_size: str | None = SMALL_BLOCK, check: bool = True):
        bs = ("--block-size", block_size) if block_size else ()
        return self.run("mkfs.megafs", *bs, *args, self.url, check=check)

    def mount(self, *, fresh_cache: bool = False, cache_dir: Path | None = None,
              mnt: Path | None = None, check: bool = True, args=()):
        """Mount (reusing the last cache directory unless *fresh_cache* or *cache_dir*)."""
        if cache_dir is None:
            cache_dir = self.new_cache_dir() if fresh_cache or not self.cache_dir \
                else self.cache_dir
        self.cache_dir = cache_dir
        self.cache_dirs.add(cache_dir)
        mnt = mnt or self.mnt
        self.mountpoints.add(mnt)
        proc = self.run("mount.megafs", "--cache-dir", cache_dir, *args, self.url, mnt,
                        check=False)
        if proc.returncode == 0:
            self.pids.add(self.pid(mnt))
        elif check:
            raise AssertionError(f"mount.megafs exited {proc.returncode}: "
                                 f"{proc.stderr.strip()}\n{self.log()}")
        return proc

    def pid(self, mnt: Path | None = None) -> int:
        return int(os.getxattr(mnt or self.mnt, "megafs.pid"))

    def is_mounted(self, mnt: Path | None = None) -> bool:
        return str(mnt or self.mnt) in mounted_paths()

    def umount(self, mnt: Path | None = None, check: bool = True):
        mnt = mnt or self.mnt
        pid = self.pid(mnt) if check else None
        proc = self.run("umount.megafs", mnt, check=False)
        if check:
            assert proc.returncode == 0, (
                f"umount.megafs exited {proc.returncode}: {proc.stderr.strip()}\n"
                f"daemon log:\n{self.log()}")
            assert not self.is_mounted(mnt)
            assert not pid_alive(pid), "umount.megafs returned before the daemon exited"
        return proc

    def remount(self, *, fresh_cache: bool = True) -> None:
        self.umount()
        self.mount(fresh_cache=fresh_cache)

    def status(self) -> dict[str, str]:
        """The daemon's ``megafs.status`` control attribute (dirty_bytes=... ...)."""
        text = os.getxattr(self.mnt, "megafs.status").decode()
        return dict(item.partition("=")[::2] for item in text.split())

    def flush(self) -> None:
        """Ask the daemon to upload everything now (the control channel umount uses)."""
        os.setxattr(self.mnt, "megafs.ctrl", b"flush")

    def kill9(self, *, reap_it: bool = True) -> int:
        """SIGKILL the daemon, wait for it to die, then lazily unmount the dead mount.

        The dead daemon is reaped (as init would) unless *reap_it* is false, when it
        may stay a zombie. Returns its pid.
        """
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        wait_pid_gone(pid, 30)
        if reap_it:
            reap(pid)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], check=True,
                       capture_output=True, timeout=30)
        assert not self.is_mounted()
        return pid

    def fsck(self, check: bool = True):
        return self.run("fsck.megafs", self.url, check=check)

    def log(self) -> str:
        if self.cache_dir and (self.cache_dir / "megafs.log").exists():
            return (self.cache_dir / "megafs.log").read_text(errors="replace")[-4000:]
        return ""

    def log_files(self) -> list[Path]:
        """Every daemon log this filesystem may have written: one per cache directory,
        and the default one (a daemon that failed before it knew its cache directory)."""
        return [d / "megafs.log" for d in sorted(self.cache_dirs)] + \
            [self.tmp / "xdg-cache" / "megafs" / "megafs.log"]

    def cleanup(self) -> None:
        for mnt in self.mountpoints:
            if str(mnt) in mounted_paths():
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True,
                               timeout=30)
        deadline = time.monotonic() + 10
        for pid in self.pids:
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_alive(pid) and is_megafs_daemon(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                wait_pid_gone(pid, 10)
            try:
                os.waitpid(pid, os.WNOHANG)  # collect our sub-reaped zombie
            except ChildProcessError:
                pass


# -- daemon logs ----------------------------------------------------------------------

_instances: weakref.WeakSet[MegaFS] = weakref.WeakSet()

# A record of the daemon's log file (megafs/cli/common.py _FILE_FORMAT) at level ERROR
# or above; the lines of a traceback that follow it do not match.
_ERROR_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ \d+ \S+ (?:ERROR|CRITICAL): ")
BUG_LINE = "a bug: please report it"

# What the daemon logs when a read meets a damaged, missing or forged data block (first
# time: the block's own error; later: the damage record fsck left), for
# ``@pytest.mark.expect_log_errors(DAMAGED_READ)``.
DAMAGED_READ = (r"ERROR: read of /\S+ \(inode \d+\) at offset \d+ failed: "
                r"(data block b/[0-9a-f]+ |block \d+ is recorded as damaged \(data block )")


def rows_expecting_log_errors(rows, expected: dict[str, tuple[str, ...]]) -> list:
    """Parameters for the rows *rows* (ids), those in *expected* carrying
    ``pytest.mark.expect_log_errors(*expected[row])``."""
    import pytest

    unknown = set(expected) - set(rows)
    assert not unknown, f"no such rows: {unknown}"
    return [pytest.param(row, id=row, marks=pytest.mark.expect_log_errors(*expected[row]))
            if row in expected else pytest.param(row, id=row) for row in rows]


def daemon_log_sizes() -> dict[Path, int]:
    """Size of every daemon log of the live :class:`MegaFS` instances, by path."""
    sizes = {}
    for fs in list(_instances):
        for path in fs.log_files():
            try:
                sizes[path] = path.stat().st_size
            except FileNotFoundError:
                pass
    return sizes


def daemon_log_errors(since: dict[Path, int]) -> list[str]:
    """ERROR (or worse) records and "a bug: please report it" lines written to the daemon
    logs after the sizes in *since* (all of a log that is not there)."""
    found = []
    for path in sorted(daemon_log_sizes()):
        with open(path, "rb") as f:
            f.seek(since.get(path, 0))
            text = f.read().decode(errors="replace")
        found += [line for line in text.splitlines()
                  if _ERROR_RECORD.match(line) or BUG_LINE in line]
    return found


# -- tree snapshots -------------------------------------------------------------------


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_state(root: Path) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Everything ``cp -a`` preserves, per relative path, plus the hard-link groups."""
    entries: dict[str, tuple] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            common = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                      st.st_gid, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                entries[rel] = (*common, st.st_size, st.st_nlink, _digest(path))
                inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISLNK(st.st_mode):
                entries[rel] = (*common, os.readlink(path))
            else:
                entries[rel] = common
    return entries, {frozenset(v) for v in inodes.values()}


def assert_same_tree(expected: Path, actual: Path) -> None:
    exp, exp_links = tree_state(expected)
    got, got_links = tree_state(actual)
    missing = sorted(set(exp) - set(got))
    extra = sorted(set(got) - set(exp))
    assert not missing, f"{len(missing)} entries missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected entries, e.g. {extra[:5]}"
    diff = [(k, exp[k], got[k]) for k in sorted(exp) if exp[k] != got[k]]
    assert not diff, f"{len(diff)} entries differ, e.g. (path, expected, got): {diff[:3]}"
    assert exp_links == got_links, "hard-link groups differ"


def read_file(path, offset: int = 0, size: int = -1) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def oserror(fn, *args) -> int:
    """Call *fn*; return the errno of the OSError it must raise."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__}{args} did not fail")

