""":class:`MegaFS`, one filesystem driven through its command-line tools on a real FUSE
mount, and the checks of its daemon logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import weakref
from pathlib import Path

from helpers.procs import (
    BIN,
    become_subreaper,
    is_megafs_daemon,
    mounted_paths,
    pid_alive,
    reap,
    tool_env,
    wait_pid_gone,
)
from helpers.stores import Store
from megafs.fs import control

TOOL_TIMEOUT = 90  # seconds for one CLI invocation
SMALL_BLOCK = "64K"


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
        return control.daemon_pid(str(mnt or self.mnt))

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

    def status(self) -> dict:
        """The daemon's ``megafs.status`` control attribute, decoded (JSON)."""
        return control.read_status(str(self.mnt))

    def flush(self) -> None:
        """Ask the daemon to upload everything now (the control channel umount uses)."""
        self.flush_mount(self.mnt)

    @staticmethod
    def flush_mount(mnt: Path) -> None:
        """Ask the daemon of *mnt* to upload everything now, or a follower to look at the
        store's head now."""
        control.send(str(mnt), "flush")

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



def abort_fuse_connection(mnt: Path) -> None:
    """Abort the kernel's FUSE connection of *mnt* (fusectl), which ends every request
    waiting for its daemon: the way out of a deadlocked mount. Touches nothing on the
    mount itself (the device number comes from /proc/self/mountinfo)."""
    conns = Path("/sys/fs/fuse/connections")
    if not os.path.ismount(conns):
        subprocess.run(["mount", "-t", "fusectl", "none", str(conns)], check=False)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mnt):
            abort = conns / fields[2].split(":")[1] / "abort"
            if abort.exists():
                abort.write_text("1")
