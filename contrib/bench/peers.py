"""FUSE filesystems measured beside megafs in the same run: the null pyfuse3 filesystem
(``bench.nullfs``, the binding's ceiling) and the encrypted peers Debian packages
(gocryptfs, securefs, CryFS, and rclone's crypt remote, ``rclone-crypt``), each on a
backing directory of the same disk.

A peer whose program is not installed is skipped, and the run says so
(:func:`absent_peers`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from .common import DEFAULT_PASSPHRASE, alive, free_port, log, wait_for_rclone_uploads
from .targets import Target

MOUNT_WAIT_S = 30.0  # how long a daemon may take to mount
POLL_S = 0.05
CONTRIB = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FuseTarget(Target):
    """A FUSE daemon mounted on ``base/mnt`` over a backing directory ``base/backing``."""

    program = ""  # the executable that must be installed

    def __init__(self, base: str, args):
        super().__init__(base, args)
        self.mnt = os.path.join(base, "mnt")
        self.backing = os.path.join(base, "backing")
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None  # the daemon serving the mount

    @classmethod
    def installed(cls) -> bool:
        return shutil.which(cls.program) is not None

    def mount_cmd(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the backing store (mkfs of the peer)."""

    def start(self) -> str:
        os.makedirs(self.mnt)
        os.makedirs(self.backing)
        self.prepare()
        self.proc = subprocess.Popen(self.mount_cmd(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=self.env(), cwd=CONTRIB)
        self.proc.stdin.write((DEFAULT_PASSPHRASE + "\n").encode())
        self.proc.stdin.close()
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None and not os.path.ismount(self.mnt):
                err = self.proc.stderr.read().decode(errors="replace").strip()
                if self.proc.returncode != 0:
                    raise RuntimeError(f"{self.name} failed to mount: {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount within {MOUNT_WAIT_S:.0f} s")
            time.sleep(POLL_S)
        self.pid = self.find_daemon()
        return self.mnt

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def find_daemon(self) -> int | None:
        """The pid of the process serving the mount (the one holding /dev/fuse)."""
        if self.proc.poll() is None:
            return self.proc.pid
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if cmd and os.path.basename(cmd[0]).decode(errors="replace") == self.program \
                    and self.mnt.encode() in cmd:
                return int(pid)
        return None

    def stop(self) -> None:
        subprocess.run(["fusermount3", "-u", self.mnt], check=True, capture_output=True)
        deadline = time.monotonic() + MOUNT_WAIT_S
        while self.pid is not None and alive(self.pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if self.proc is not None:
            self.proc.wait(timeout=MOUNT_WAIT_S)
            for pipe in (self.proc.stdout, self.proc.stderr):
                pipe.close()
        self.pid = self.proc = None

    def abort(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=MOUNT_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                pipe.close()
            self.proc = None


class NullTarget(FuseTarget):
    """bench.nullfs: megafs's mount options and replies, no storage."""

    name = "nullfs"
    program = sys.executable
    small_files_only = True  # keeps file contents in memory

    def mount_cmd(self) -> list[str]:
        return [sys.executable, "-m", "bench.nullfs", self.mnt]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (CONTRIB, env.get("PYTHONPATH")) if p)
        return env


class GocryptfsTarget(FuseTarget):
    name = "gocryptfs"
    program = "gocryptfs"

    def prepare(self) -> None:
        subprocess.run([self.program, "-init", "-q", "-scryptn", "10", self.backing],
                       input=(DEFAULT_PASSPHRASE + "\n").encode(), check=True,
                       capture_output=True)

    def mount_cmd(self) -> list[str]:
        return [self.program, "-q", "-fg", self.backing, self.mnt]


class SecurefsTarget(FuseTarget):
    name = "securefs"
    program = "securefs"

    def prepare(self) -> None:
        subprocess.run([self.program, "create", "--pass", DEFAULT_PASSPHRASE, "--pbkdf",
                        "pkcs5-pbkdf2-hmac-sha256", "-r", "1000", self.backing], check=True,
                       capture_output=True)

    def mount_cmd(self) -> list[str]:
        return [self.program, "mount", "--pass", DEFAULT_PASSPHRASE, self.backing, self.mnt]


class CryfsTarget(FuseTarget):
    name = "cryfs"
    program = "cryfs"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CRYFS_FRONTEND="noninteractive", CRYFS_NO_UPDATE_CHECK="true")
        env["HOME"] = self.base  # CryFS keeps its known-filesystems list there
        return env

    def mount_cmd(self) -> list[str]:
        return [self.program, "-f", "--cipher", "aes-256-gcm", self.backing, self.mnt]


class RcloneCryptTarget(FuseTarget):
    """rclone's crypt remote over the backing directory (names and contents encrypted),
    mounted with ``--vfs-cache-mode full``, rclone's mode for applications that write
    files in place, and ``--vfs-write-back 0s``: a closed file is encrypted into the
    backing directory at once (its default waits 5 s), in the background. Its fsync
    does not reach the backing directory: rclone syncs nothing. :meth:`settle` and
    :meth:`stop` wait, through rclone's remote control, until no upload is queued or
    running."""

    name = "rclone-crypt"
    program = "rclone"

    def __init__(self, base: str, args):
        super().__init__(base, args)
        self.conf = os.path.join(base, "rclone.conf")
        self.vfs_cache = os.path.join(base, "vfs-cache")
        self.password = ""  # obscured, as rclone's configuration keeps it
        self.rc_port = free_port()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(RCLONE_CONFIG=self.conf, RCLONE_CONFIG_LC_TYPE="crypt",
                   RCLONE_CONFIG_LC_REMOTE=self.backing, RCLONE_CONFIG_LC_PASSWORD=self.password)
        return env

    def prepare(self) -> None:
        open(self.conf, "w").close()  # everything is in the environment
        self.password = subprocess.run([self.program, "obscure", DEFAULT_PASSPHRASE],
                                       check=True, capture_output=True, text=True).stdout.strip()

    def mount_cmd(self) -> list[str]:
        return [self.program, "mount", "lc:", self.mnt, "--vfs-cache-mode", "full",
                "--vfs-write-back", "0s", "--cache-dir", self.vfs_cache, "--rc",
                "--rc-no-auth", "--rc-addr", f"127.0.0.1:{self.rc_port}"]

    def settle(self) -> float:
        t0 = time.perf_counter()
        wait_for_rclone_uploads(self.rc_port, MOUNT_WAIT_S, POLL_S)
        os.sync()
        return time.perf_counter() - t0

    def stop(self) -> None:
        wait_for_rclone_uploads(self.rc_port, MOUNT_WAIT_S, POLL_S)
        super().stop()


#: name -> FUSE target measured beside megafs (the null fs first).
PEERS: dict[str, type[FuseTarget]] = {t.name: t for t in (
    NullTarget, GocryptfsTarget, SecurefsTarget, CryfsTarget, RcloneCryptTarget)}


def absent_peers(names: list[str]) -> list[str]:
    """Those of *names* whose program is not installed (logged)."""
    absent = [n for n in names if not PEERS[n].installed()]
    for n in absent:
        log(f"{n}: {PEERS[n].program} is not installed; not measured")
    return absent
