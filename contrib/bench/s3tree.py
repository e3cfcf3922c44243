"""A source tree on S3: the s3-untar and s3-coldtar workloads (issue 15, "Packs").

On the benchmark's one SeaweedFS server, in the same run, each target

    s3-untar    extracts the source tarball of the local "untar" workload into a fresh
                mount, then unmounts and waits until everything is in the store
                (umount.megafs; umount.s3ql; for rclone: its VFS upload queue empty,
                then fusermount3 -u and the daemon's exit)                  seconds
    s3-coldtar  mounts the store again with an empty cache directory (page cache
                dropped) and reads the tree with ``tar -c`` into a pipe (GNU tar
                reads nothing when its archive is /dev/null itself)        files/s

and for both phases the S3 requests the server answered (SeaweedFS's Prometheus
counter ``SeaweedFS_s3_request_total``, by type: every client counted alike).

Targets: megafs (this tree), megafs-before (``--before-src``: the sources of an
older checkout on the same server), and the installed peers of ``--s3-peers``:
rclone (an S3 remote wrapped in crypt, ``rclone mount --vfs-cache-mode full``)
and S3QL (``mkfs.s3ql`` + ``mount.s3ql``, ``s3c://`` storage URL, its defaults).
A peer that is not installed is skipped and named. The order of the targets
rotates from run to run; each phase starts after ``sync`` and ``--s3-pause``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass

from .common import (
    DEFAULT_PASSPHRASE,
    CpuWatch,
    alive,
    drop_page_cache,
    find_tool,
    free_port,
    log,
    pin,
    wait_for_rclone_uploads,
)
from .targets import MegafsS3BeforeTarget, MegafsS3Target, Seaweed, Target
from .workloads import Inputs

MOUNT_WAIT_S = 60.0
FLUSH_WAIT_S = 900.0  # how long a peer may take to upload what it holds
POLL_S = 0.05
TREE_WORKLOADS = ("s3-untar", "s3-coldtar")


class S3PeerTarget(Target):
    """A peer filesystem on a fresh prefix of the benchmark's bucket, mounted on
    ``base/mnt`` by a daemon this process starts in the foreground (``self.proc``).

    Same interface as :class:`MegafsS3Target`: ``start()`` creates and mounts,
    ``stop()`` unmounts once everything is uploaded, ``mount(cache)`` mounts again."""

    program = ""  # the executable that must be installed

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.server = Seaweed.get()
        self.prefix = f"bench-{self.name}-{uuid.uuid4().hex[:12]}"
        self.mnt = os.path.join(base, "mnt")
        self.cache = os.path.join(base, "cache")
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.log_path = os.path.join(base, f"{self.name}.log")
        self.env = dict(os.environ)
        # rclone refuses to start when AWS_CA_BUNDLE is set ("unable to load custom CA
        # bundle"); the server speaks plain http on 127.0.0.1 anyway.
        self.env.pop("AWS_CA_BUNDLE", None)
        self.env.pop("AWS_SESSION_TOKEN", None)

    @classmethod
    def installed(cls) -> bool:
        return shutil.which(cls.program) is not None

    def mount_cmd(self, cache: str) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """mkfs of the peer, if it has one."""

    def start(self) -> str:
        os.makedirs(self.mnt)
        os.makedirs(self.cache)
        self.prepare()
        return self.mount(self.cache)

    def mount(self, cache: str) -> str:
        self.cache = cache
        os.makedirs(cache, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.mount_cmd(cache), stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=logf, env=self.env,
                                         cwd=self.base)
        self.pid = self.proc.pid
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not os.path.ismount(self.mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} failed to mount ({self.proc.returncode}):"
                                   f" {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not mount within {MOUNT_WAIT_S:.0f} s")
            time.sleep(POLL_S)
        return self.mnt

    def log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-10:]).strip()
        except OSError:
            return ""

    def wait_exit(self) -> None:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=FLUSH_WAIT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{self.name} did not exit after the unmount") from None
        self.proc = None
        self.pid = None
        if rc != 0:
            raise RuntimeError(f"{self.name} exited with status {rc}: {self.log_tail()}")

    def abort(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        log(f"{self.name}: last lines of its log:\n{self.log_tail()}")


class RcloneTarget(S3PeerTarget):
    """rclone: an S3 remote on the bucket, wrapped in a crypt remote, mounted with
    ``--vfs-cache-mode full``. Written files are uploaded as soon as they are closed
    (``--vfs-write-back 0s``; the default 5 s would only add waiting here). Its flush:
    poll the remote control's ``vfs/stats`` until no upload is queued or running, then
    ``fusermount3 -u`` and wait for the daemon to exit."""

    name = "rclone"
    program = "rclone"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        conf = os.path.join(base, "rclone.conf")
        open(conf, "w").close()  # everything is in the environment
        admin = Seaweed.module.ADMIN
        obscured = subprocess.run([self.program, "obscure", DEFAULT_PASSPHRASE], check=True,
                                  capture_output=True, text=True, env=self.env).stdout.strip()
        self.env.update({
            "RCLONE_CONFIG": conf,
            "RCLONE_CONFIG_SW_TYPE": "s3", "RCLONE_CONFIG_SW_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_SW_ENDPOINT": self.server.endpoint,
            "RCLONE_CONFIG_SW_REGION": Seaweed.module.REGION,
            "RCLONE_CONFIG_SW_ACCESS_KEY_ID": admin.access_key,
            "RCLONE_CONFIG_SW_SECRET_ACCESS_KEY": admin.secret_key,
            "RCLONE_CONFIG_SC_TYPE": "crypt",
            "RCLONE_CONFIG_SC_REMOTE": f"sw:{self.server.bucket}/{self.prefix}",
            "RCLONE_CONFIG_SC_PASSWORD": obscured,
        })
        self.rc_port = free_port()

    def mount_cmd(self, cache: str) -> list[str]:
        return [self.program, "mount", "sc:", self.mnt, "--vfs-cache-mode", "full",
                "--cache-dir", cache, "--vfs-write-back", "0s", "--rc", "--rc-no-auth",
                "--rc-addr", f"127.0.0.1:{self.rc_port}"]

    def stop(self) -> None:
        wait_for_rclone_uploads(self.rc_port, FLUSH_WAIT_S, POLL_S)
        subprocess.run(["fusermount3", "-u", self.mnt], check=True, capture_output=True)
        self.wait_exit()


class S3qlTarget(S3PeerTarget):
    """S3QL: ``mkfs.s3ql`` and ``mount.s3ql --fg`` with an ``s3c://`` storage URL
    (``no-ssl``), credentials and passphrase in an authinfo file, its defaults
    otherwise (encrypted, lzma-6 compression, deduplication). Its flush:
    ``umount.s3ql``, which returns once the daemon has uploaded everything and
    exited."""

    name = "s3ql"
    program = "mount.s3ql"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        netloc = self.server.endpoint.removeprefix("http://")
        self.url = f"s3c://{netloc}/{self.server.bucket}/{self.prefix}/"
        admin = Seaweed.module.ADMIN
        self.authfile = os.path.join(base, "authinfo2")
        fd = os.open(self.authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"[bench]\nstorage-url: s3c://{netloc}/\nbackend-login: {admin.access_key}\n"
                    f"backend-password: {admin.secret_key}\n"
                    f"fs-passphrase: {DEFAULT_PASSPHRASE}\nbackend-options: no-ssl\n")

    def tool(self, name: str) -> str:
        return find_tool(name, os.path.dirname(shutil.which(self.program) or ""))

    def prepare(self) -> None:
        # mkfs.s3ql reads the passphrase from stdin when it is not a terminal (not
        # from the authinfo file, which mount.s3ql uses).
        r = subprocess.run([self.tool("mkfs.s3ql"), "--authfile", self.authfile, "--cachedir",
                            self.cache, self.url], input=DEFAULT_PASSPHRASE + "\n", text=True,
                           capture_output=True, env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"mkfs.s3ql failed ({r.returncode}): {r.stderr.strip()}")

    def mount_cmd(self, cache: str) -> list[str]:
        return [self.program, "--fg", "--authfile", self.authfile, "--cachedir", cache,
                "--log", self.log_path, self.url, self.mnt]

    def stop(self) -> None:
        r = subprocess.run([self.tool("umount.s3ql"), self.mnt], capture_output=True, text=True,
                           env=self.env)
        if r.returncode != 0:
            raise RuntimeError(f"umount.s3ql failed ({r.returncode}): {r.stderr.strip()}")
        self.wait_exit()


#: name -> peer measured beside megafs by the s3-untar and s3-coldtar workloads.
S3_PEERS: dict[str, type[S3PeerTarget]] = {t.name: t for t in (RcloneTarget, S3qlTarget)}


def absent_s3_peers(names: list[str]) -> list[str]:
    absent = [n for n in names if not S3_PEERS[n].installed()]
    for n in absent:
        log(f"{n}: {S3_PEERS[n].program} is not installed; not measured")
    return absent


def tree_targets(args: argparse.Namespace) -> list[type[Target]]:
    """megafs, megafs-before (with --before-src) and the installed S3 peers."""
    out: list[type[Target]] = [MegafsS3Target]
    if args.before_src:
        out.append(MegafsS3BeforeTarget)
    out += [S3_PEERS[n] for n in args.s3_peers if n not in args.absent_s3_peers]
    return out


@dataclass
class Phase:
    seconds: float
    requests: dict[str, int]
    cpu_s: float | None = None


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def tar_create(root: str) -> int:
    """``tar -c`` of *root*'s "untar" directory into a pipe, read here; the bytes read."""
    proc = subprocess.Popen(["tar", "-cf", "-", "-C", root, "untar"], stdout=subprocess.PIPE)
    total = 0
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    proc.stdout.close()
    if proc.wait() != 0:
        raise RuntimeError(f"tar -c of {root}/untar failed ({proc.returncode})")
    return total


def run_one(cls: type[Target], base: str, run: int, inputs: Inputs,
            args: argparse.Namespace) -> dict:
    """Both phases on a fresh store of one target."""
    server = Seaweed.get()
    scratch = tempfile.mkdtemp(prefix=f"s3tree-{cls.name}-run{run}-", dir=base)
    target = cls(scratch, args)
    r: dict = {}
    ok = False

    def start_phase():
        os.sync()
        time.sleep(args.s3_pause)

    try:
        root = target.start()  # mkfs + mount: untimed
        d = os.path.join(root, "untar")
        os.mkdir(d)
        start_phase()
        c0 = server.s3_requests()
        cpu = CpuWatch(target.pid, f"{target.name} daemon")
        t0 = time.perf_counter()
        subprocess.run(["tar", "-xf", inputs.tarball, "-C", d], check=True)
        t1 = time.perf_counter()
        target.stop()  # every byte in the store, the daemon gone
        t2 = time.perf_counter()
        r["untar_cpu_s"] = cpu.stop()
        r["untar_s"], r["untar_write_s"], r["untar_flush_s"] = t2 - t0, t1 - t0, t2 - t1
        r["untar_requests"] = _diff(server.s3_requests(), c0)
        log(f"run {run} {target.name:<13} s3-untar {r['untar_s']:7.2f} s (tar {t1 - t0:.2f} s"
            f" + unmount {t2 - t1:.2f} s) requests {r['untar_requests']}")
        if "s3-coldtar" in args.s3_workloads:
            t0 = time.perf_counter()
            root = target.mount(os.path.join(scratch, "cold-cache"))
            r["cold_mount_s"] = time.perf_counter() - t0
            start_phase()
            drop_page_cache()
            c0 = server.s3_requests()
            cpu = CpuWatch(target.pid, f"{target.name} daemon")
            t0 = time.perf_counter()
            r["coldtar_bytes"] = tar_create(root)
            dt = time.perf_counter() - t0
            r["coldtar_cpu_s"] = cpu.stop()
            r["coldtar_requests"] = _diff(server.s3_requests(), c0)
            r["coldtar_s"] = dt
            r["coldtar_files_s"] = inputs.tar_files / dt
            log(f"run {run} {target.name:<13} s3-coldtar {r['coldtar_files_s']:7.1f} files/s"
                f" ({dt:.2f} s, {r['coldtar_bytes'] / 1e6:.1f} MB; mount"
                f" {r['cold_mount_s']:.2f} s) requests {r['coldtar_requests']}")
            target.stop()  # untimed
        ok = True
    finally:
        if not ok:
            target.abort()
            pid = getattr(target, "pid", None)
            if pid is not None and alive(pid):
                log(f"{target.name}: daemon {pid} still running after the abort")
        from .s3 import delete_prefix

        try:
            delete_prefix(server, target.prefix)
        except Exception as e:  # noqa: BLE001 - cleanup only
            log(f"warning: cleaning up {target.prefix}: {e}")
    return r


def run_s3_tree(base: str, run: int, inputs: Inputs, args: argparse.Namespace
                ) -> dict[str, dict]:
    """One run of the tree workloads on every target, their order rotated by the run."""
    targets = tree_targets(args)
    k = (run - 1) % len(targets)
    order = targets[k:] + targets[:k]
    if args.client_cpus is not None:  # the clients on one half of the CPUs, as in run_s3
        pin(os.getpid(), args.client_cpus)
    try:
        return {cls.name: run_one(cls, base, run, inputs, args) for cls in order}
    finally:
        if args.client_cpus is not None:
            pin(os.getpid(), args.all_cpus)
