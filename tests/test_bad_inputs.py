"""Bad input to every tool: one line on stderr, a distinct exit code, never a traceback.

Each row of :data:`ROWS` is one invocation: the tool and its arguments, what the store
or mount must look like first (a setup name from :data:`SETUPS`), extra environment,
the exit code expected and a fragment of the one line the tool must print. A new
option or command gets its rows here: add a ``row(...)`` line.

Placeholders in arguments and environment values (filled in by :class:`Scene`):
``{url}`` the store, ``{mnt}`` the mountpoint, ``{tmp}`` a scratch directory,
``{file}`` a regular file, ``{ro}`` a read-only filesystem, ``{link}`` a share link to
the file ``f`` of the mount, ``{nostore_link}`` / ``{empty_link}`` /
``{refused_link}`` links to a store directory that does not exist, to an empty
directory, and to an S3 endpoint that refuses connections, ``{wrong_key}`` a
well-formed recovery key of no filesystem.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import BIN, LocalStore, MegaFS, assert_cli_error, mounted_paths

from megafs.errors import ExitCode
from megafs.store import share as share_format
from megafs.store import superblock

#: No bad input may take longer than this to be refused (a hang fails the row).
ROW_TIMEOUT = 25
NOT_UTF8 = "caf\udce9"  # the bytes b"caf\xe9" (Latin-1), as os.environ holds them


@dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]
    code: ExitCode
    says: str
    setup: str = "none"
    env: dict = field(default_factory=dict)
    #: run as user nobody, in a mount namespace where /dev/fuse is root's alone
    no_dev_fuse: bool = False


def row(name: str, setup: str, *argv: str, code: ExitCode, says: str, env=None,
        no_dev_fuse: bool = False):
    return pytest.param(Row(argv, code, says, setup, env or {}, no_dev_fuse), id=name)


NOBODY = 65534
#: Runs "$@" as nobody with an inaccessible file bound over /dev/fuse ($0), whatever
#: this machine's /dev/fuse allows (root only, or everyone).
WITHOUT_DEV_FUSE = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /dev/fuse && exec setpriv'
                    f' --reuid={NOBODY} --regid={NOBODY} --clear-groups "$@"']


U, T, C = ExitCode.USAGE, ExitCode.CORRUPT, ExitCode.CACHE_ERROR
IO = ExitCode.LOCAL_IO

ROWS = [
    # mkfs.megafs
    row("mkfs-unknown-option", "none", "mkfs.megafs", "--frobnicate", "{url}", code=U,
        says="unrecognized arguments: --frobnicate"),
    row("mkfs-quota-overflow", "none", "mkfs.megafs", "--quota", "99999999999P", "{url}",
        code=U, says="too large"),
    row("mkfs-quota-0", "none", "mkfs.megafs", "--quota", "0", "{url}", code=U,
        says="more than 0"),
    row("mkfs-block-size-huge", "none", "mkfs.megafs", "--block-size", "9" * 400, "{url}",
        code=U, says="too large"),
    row("mkfs-passphrase-not-utf8", "none", "mkfs.megafs", "{url}", code=U,
        says="MEGAFS_PASSPHRASE is not valid UTF-8", env={"MEGAFS_PASSPHRASE": NOT_UTF8}),
    row("mkfs-s3-unclosed-ipv6", "none", "mkfs.megafs", "s3://[::1/bucket", code=U,
        says="bad storage URL"),
    row("mkfs-s3-bad-ipv6", "none", "mkfs.megafs", "s3://[zz]/bucket", code=U,
        says="bad storage URL"),
    row("mkfs-s3-empty-port", "none", "mkfs.megafs", "s3://host:/bucket", code=U,
        says="invalid port"),
    row("mkfs-s3+http-unclosed-ipv6", "none", "mkfs.megafs", "s3+http://[::1:8333/b", code=U,
        says="bad storage URL"),
    # mount.megafs
    row("mount-o-cache_size-abc", "mkfs", "mount.megafs", "-o", "cache_size=abc", "{url}",
        "{mnt}", code=U, says="cache_size"),
    row("mount-o-cache_size-0", "mkfs", "mount.megafs", "-o", "cache_size=0", "{url}",
        "{mnt}", code=U, says="more than 0"),
    row("mount-o-garbage", "mkfs", "mount.megafs", "-o", "ro,garbage", "{url}", "{mnt}",
        code=U, says="unknown mount option 'garbage'"),
    row("mount-cache-size-0", "mkfs", "mount.megafs", "--cache-size", "0", "{url}", "{mnt}",
        code=U, says="--cache-size"),
    row("mount-upload-delay-negative", "mkfs", "mount.megafs", "--upload-delay", "-1",
        "{url}", "{mnt}", code=U, says="--upload-delay"),
    row("mount-upload-delay-inf", "mkfs", "mount.megafs", "--upload-delay", "inf", "{url}",
        "{mnt}", code=U, says="--upload-delay"),
    row("mount-timeout-negative", "mkfs", "mount.megafs", "--timeout", "-3", "{url}",
        "{mnt}", code=U, says="--timeout"),
    row("mount-timeout-nan", "mkfs", "mount.megafs", "--timeout", "nan", "{url}", "{mnt}",
        code=U, says="--timeout"),
    row("mount-timeout-0", "mkfs", "mount.megafs", "--timeout", "0", "{url}", "{mnt}",
        code=U, says="more than 0"),
    row("mount-metadata-interval-0", "mkfs", "mount.megafs", "--metadata-interval", "0",
        "{url}", "{mnt}", code=U, says="--metadata-interval"),
    row("mount-cache-dir-is-mountpoint", "mkfs", "mount.megafs", "--cache-dir", "{mnt}",
        "{url}", "{mnt}", code=U, says="must not be the mountpoint"),
    row("mount-cache-dir-inside-mountpoint", "mkfs", "mount.megafs", "--cache-dir",
        "{mnt}/cache", "{url}", "{mnt}", code=U, says="must not be the mountpoint"),
    row("mount-cache-dir-is-a-file", "mkfs", "mount.megafs", "--cache-dir", "{file}", "{url}",
        "{mnt}", code=C, says="is not a directory"),
    row("mount-cache-dir-under-a-file", "mkfs", "mount.megafs", "--cache-dir", "{file}/c",
        "{url}", "{mnt}", code=C, says="is not a directory"),
    row("mount-cache-dir-read-only", "mkfs", "mount.megafs", "--cache-dir", "{ro}/cache",
        "{url}", "{mnt}", code=C, says="read-only filesystem"),
    row("mount-cache-dir-shared-sticky", "mkfs", "mount.megafs", "--cache-dir", "{sticky}",
        "{url}", "{mnt}", code=C, says="is shared"),
    row("mount-passphrase-not-utf8", "mkfs", "mount.megafs", "{url}", "{mnt}", code=U,
        says="not valid UTF-8", env={"MEGAFS_PASSPHRASE": NOT_UTF8}),
    row("mount-wrong-passphrase", "mkfs", "mount.megafs", "{url}", "{mnt}",
        code=ExitCode.WRONG_PASSPHRASE, says="wrong passphrase",
        env={"MEGAFS_PASSPHRASE": "not it"}),
    row("mount-without-dev-fuse", "none", "mount.megafs", "{url}", "{public_dir}", code=IO,
        says="cannot use /dev/fuse", no_dev_fuse=True),
    row("mount-s3-empty-port", "none", "mount.megafs", "s3://host:/bucket", "{mnt}", code=U,
        says="invalid port"),
    # a provider's edits of the superblock: refused before Argon2id runs
    row("mount-sb-lanes-negative", "sb:kdf.lanes=-1", "mount.megafs", "{url}", "{mnt}",
        code=T, says="kdf lanes"),
    row("mount-sb-kdf-unknown", "sb:kdf=\"x\"", "mount.megafs", "{url}", "{mnt}", code=T,
        says="unknown KDF"),
    row("mount-sb-memory-2**31", f"sb:kdf.memory_kib={2**31}", "mount.megafs", "{url}",
        "{mnt}", code=T, says="kdf memory_kib"),
    row("mount-sb-iterations-10**6", f"sb:kdf.iterations={10**6}", "mount.megafs", "{url}",
        "{mnt}", code=T, says="kdf iterations"),
    row("mount-sb-iterations-string", "sb:kdf.iterations=\"3\"", "mount.megafs", "{url}",
        "{mnt}", code=T, says="kdf iterations"),
    row("mount-sb-salt-short", "sb:kdf.salt=\"abcd\"", "mount.megafs", "{url}", "{mnt}",
        code=T, says="kdf salt"),
    row("mount-sb-wrapped-short", "sb:slots.passphrase.wrapped=\"00\"", "mount.megafs",
        "{url}", "{mnt}", code=T, says="passphrase slot key"),
    row("mount-sb-block-size-0", "sb:block_size=0", "mount.megafs", "{url}", "{mnt}",
        code=T, says="block_size"),
    row("mount-sb-quota-huge", f"sb:quota={2**70}", "mount.megafs", "{url}", "{mnt}",
        code=T, says="quota"),
    # Same-shape edits of salt, parameters or slot cannot be told from a wrong
    # passphrase without the master key (docs/format.md §3): the line says both.
    row("mount-sb-salt-changed", "sb:kdf.salt=\"" + "ab" * 16 + "\"", "mount.megafs",
        "{url}", "{mnt}", code=ExitCode.WRONG_PASSPHRASE, says="key parameters were changed"),
    row("mount-sb-iterations-changed", "sb:kdf.iterations=2", "mount.megafs", "{url}",
        "{mnt}", code=ExitCode.WRONG_PASSPHRASE, says="key parameters were changed"),
    # umount.megafs
    row("umount-unknown-option", "none", "umount.megafs", "--frobnicate", "{mnt}", code=U,
        says="unrecognized arguments"),
    row("umount-not-a-mount", "none", "umount.megafs", "{tmp}", code=ExitCode.NOT_MOUNTED,
        says="not a megafs mount"),
    # fsck.megafs
    row("fsck-unknown-option", "none", "fsck.megafs", "--frobnicate", "{url}", code=U,
        says="unrecognized arguments"),
    row("fsck-sb-lanes-negative", "sb:kdf.lanes=-1", "fsck.megafs", "{url}", code=T,
        says="kdf lanes"),
    row("fsck-sb-iterations-10**6", f"sb:kdf.iterations={10**6}", "fsck.megafs", "{url}",
        code=T, says="kdf iterations"),
    row("fsck-s3-bad-ipv6", "none", "fsck.megafs", "s3://[zz]/bucket", code=U,
        says="bad storage URL"),
    # megafs
    row("megafs-no-command", "none", "megafs", code=U, says="required: COMMAND"),
    row("megafs-unknown-command", "none", "megafs", "frobnicate", code=U,
        says="invalid choice"),
    row("quota-overflow", "mkfs", "megafs", "quota", "{url}", "99999999999P", code=U,
        says="too large"),
    row("quota-0", "mkfs", "megafs", "quota", "{url}", "0", code=U, says="'none'"),
    row("quota-abc", "mkfs", "megafs", "quota", "{url}", "abc", code=U, says="invalid size"),
    row("passphrase-not-utf8", "mkfs", "megafs", "passphrase", "{url}", code=U,
        says="not valid UTF-8", env={"MEGAFS_PASSPHRASE": NOT_UTF8}),
    row("passphrase-new-not-utf8", "mkfs", "megafs", "passphrase", "{url}", code=U,
        says="MEGAFS_NEW_PASSPHRASE is not valid UTF-8",
        env={"MEGAFS_NEW_PASSPHRASE": NOT_UTF8}),
    row("recover-wrong-key", "mkfs", "megafs", "recover", "{url}",
        code=ExitCode.WRONG_PASSPHRASE, says="wrong recovery key",
        env={"MEGAFS_RECOVERY_KEY": "{wrong_key}", "MEGAFS_NEW_PASSPHRASE": "new"}),
    row("recover-not-a-key", "mkfs", "megafs", "recover", "{url}",
        code=ExitCode.WRONG_PASSPHRASE, says="not a megafs recovery key",
        env={"MEGAFS_RECOVERY_KEY": "hello", "MEGAFS_NEW_PASSPHRASE": "new"}),
    row("recover-key-not-utf8", "mkfs", "megafs", "recover", "{url}", code=U,
        says="MEGAFS_RECOVERY_KEY is not valid UTF-8",
        env={"MEGAFS_RECOVERY_KEY": NOT_UTF8, "MEGAFS_NEW_PASSPHRASE": "new"}),
    row("stat-not-a-mount", "none", "megafs", "stat", "{tmp}", code=ExitCode.NOT_MOUNTED,
        says="not a megafs mount"),
    row("ctrl-cachesize-0", "mounted", "megafs", "ctrl", "{mnt}", "cachesize", "0", code=U,
        says="more than 0"),
    row("share-missing-path", "mounted", "megafs", "share", "{mnt}/missing",
        code=ExitCode.NO_SUCH_PATH, says="No such file"),
    row("unshare-not-shared", "mounted", "megafs", "unshare", "{mnt}/f",
        code=ExitCode.SHARE_NOT_FOUND, says="not shared"),
    row("unshare-missing-path", "mounted", "megafs", "unshare", "{mnt}/missing",
        code=ExitCode.NO_SUCH_PATH, says="No such file"),
    row("shares-not-a-mount", "none", "megafs", "shares", "{tmp}", code=ExitCode.NOT_MOUNTED,
        says="not inside a megafs mount"),
    row("get-over-proc-version", "shared", "megafs", "get", "{link}", "/proc/version",
        code=ExitCode.ALREADY_EXISTS, says="/proc/version exists (--force replaces it)"),
    row("get-force-over-proc-version", "shared", "megafs", "get", "--force", "{link}",
        "/proc/version", code=IO, says="/proc"),
    row("get-to-read-only-fs", "shared", "megafs", "get", "{link}", "{ro}/f", code=IO,
        says="Read-only file system"),
    row("get-store-does-not-exist", "none", "megafs", "get", "{nostore_link}",
        code=ExitCode.STORE_NOT_FOUND, says="does not exist"),
    row("get-store-without-filesystem", "none", "megafs", "get", "{empty_link}",
        code=ExitCode.NO_FILESYSTEM, says="holds no megafs filesystem"),
    row("get-connection-refused", "none", "megafs", "get", "{refused_link}",
        code=ExitCode.BACKEND_UNAVAILABLE, says="Connection refused"),
    row("get-not-a-link", "none", "megafs", "get", "https://example.com/x", code=U,
        says="not a megafs link"),
    row("get-s3-bad-ipv6", "none", "megafs", "get", "{badhost_link}", code=U,
        says="bad storage URL"),
]


def _closed_port() -> int:
    """A local TCP port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _link(url: str) -> str:
    share_id, key = share_format.new_share()
    return share_format.make_link(url, share_id, key, os.urandom(32))


class Scene:
    """The store, mount and scratch files one row runs against (local store)."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
        self.values: dict[str, str] = {
            "url": self.fs.url, "mnt": str(self.fs.mnt), "tmp": str(tmp_path / "scratch"),
        }
        (tmp_path / "scratch").mkdir()
        self.ro: Path | None = None
        self.public: Path | None = None

    def prepare(self, setup: str, needs: str) -> None:
        fs = self.fs
        if setup != "none":
            fs.mkfs()
        if setup.startswith("sb:"):
            self._tamper(setup[3:])
        if setup in ("mounted", "shared"):
            fs.mount()
            (fs.mnt / "f").write_bytes(b"shared bytes\n")
        if setup == "shared":
            self.values["link"] = fs.run("megafs", "share", fs.mnt / "f").stdout.split()[-1]
        if "{file}" in needs:
            (self.tmp / "plain-file").write_text("not a directory\n")
            self.values["file"] = str(self.tmp / "plain-file")
        if "{ro}" in needs:
            self.ro = self.tmp / "ro"
            self.ro.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "megafs-test-ro",
                            str(self.ro)], check=True, capture_output=True)
            self.values["ro"] = str(self.ro)
        if "{sticky}" in needs:
            sticky = self.tmp / "sticky"
            sticky.mkdir()
            os.chmod(sticky, 0o1777)
            self.values["sticky"] = str(sticky)
        if "{public_dir}" in needs:  # a directory user nobody may use
            self.public = Path(tempfile.mkdtemp(prefix="megafs-test-"))
            os.chmod(self.public, 0o755)
            self.values["public_dir"] = str(self.public)
        if "{nostore_link}" in needs:
            self.values["nostore_link"] = _link(f"local://{self.tmp}/no-such-store")
        if "{empty_link}" in needs:
            (self.tmp / "empty-store").mkdir()
            self.values["empty_link"] = _link(f"local://{self.tmp}/empty-store")
        if "{refused_link}" in needs:
            self.values["refused_link"] = _link(
                f"s3+http://127.0.0.1:{_closed_port()}/bucket")
        if "{badhost_link}" in needs:
            self.values["badhost_link"] = _link("s3://[zz]/bucket")
        if "{wrong_key}" in needs:
            self.values["wrong_key"] = superblock.format_recovery_key(os.urandom(32))

    def _tamper(self, edit: str) -> None:
        """``a.b=JSON``: set a field of the stored superblock, as a provider could."""
        path, _, value = edit.partition("=")
        sb = json.loads(self.fs.store.read(superblock.OBJECT_KEY))
        *parents, last = path.split(".")
        node = sb
        for name in parents:
            node = node[name]
        node[last] = json.loads(value)
        self.fs.store.write(superblock.OBJECT_KEY, json.dumps(sb).encode())

    def fill(self, text: str) -> str:
        return text.format(**self.values)

    def close(self) -> None:
        self.fs.cleanup()
        if self.public is not None:
            if str(self.public) in mounted_paths():
                subprocess.run(["fusermount3", "-u", "-z", str(self.public)],
                               capture_output=True)
            shutil.rmtree(self.public)
        if self.ro is not None and str(self.ro) in mounted_paths():
            subprocess.run(["umount", str(self.ro)], check=True, capture_output=True)


@pytest.fixture
def scene(tmp_path):
    s = Scene(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.parametrize("case", ROWS)
def test_bad_input(scene, case: Row):
    needs = " ".join(case.argv) + " " + " ".join(case.env.values())
    scene.prepare(case.setup, needs)
    env = dict(scene.fs.env, **{k: scene.fill(v) for k, v in case.env.items()})
    tool, *args = case.argv
    start = time.monotonic()
    argv = [str(BIN / tool), *map(scene.fill, args)]
    if case.no_dev_fuse:
        denied = scene.tmp / "no-fuse-device"
        denied.write_bytes(b"")
        os.chmod(denied, 0o600)
        argv = [*WITHOUT_DEV_FUSE, str(denied), *argv]
    proc = subprocess.run(argv, capture_output=True,
                          text=True, env=env, timeout=ROW_TIMEOUT, stdin=subprocess.DEVNULL,
                          cwd=scene.values["tmp"])
    line = assert_cli_error(proc, tool, case.code)
    assert case.says.lower() in line.lower(), line
    assert time.monotonic() - start < ROW_TIMEOUT
    if tool == "mount.megafs":
        assert not scene.fs.is_mounted()
    if case.setup == "shared":  # nothing was written where the download was refused
        assert not (scene.tmp / "ro" / "f").exists()


# -- Ctrl-C ---------------------------------------------------------------------------

#: Seconds after the start at which SIGINT arrives: while Python starts, while the tool's
#: modules load, and once it waits for the passphrase.
SIGINT_DELAYS = (0.0, 0.02, 0.05, 0.1, 0.4)
#: (tool, arguments) that wait for ever: on the passphrase file, a FIFO nobody writes;
#: umount.megafs on the flush of a mount whose every storage request takes 0.3 s.
SIGINT_TOOLS = {
    "mkfs.megafs": ("--passphrase-file", "{fifo}", "local:///nonexistent"),
    "mount.megafs": ("--passphrase-file", "{fifo}", "local:///nonexistent", "{mnt}"),
    "fsck.megafs": ("--passphrase-file", "{fifo}", "local:///nonexistent"),
    "megafs": ("quota", "--passphrase-file", "{fifo}", "local:///nonexistent"),
    "umount.megafs": ("{mnt}",),
}
#: What Python prints when Ctrl-C hits its own start (the site module), before the first
#: line of a megafs launcher runs: the one window megafs cannot close.
PYTHON_STARTING = "Fatal Python error: init_import_site"
#: umount.megafs mounts first (about 4 s a row): the quick run keeps its first delay.
SIGINT_ROWS = [pytest.param(tool, delay, id=f"{tool}-{delay}s",
                            marks=[pytest.mark.slow] if tool == "umount.megafs"
                            and delay != SIGINT_DELAYS[0] else [])
               for tool in SIGINT_TOOLS for delay in SIGINT_DELAYS]


@pytest.mark.parametrize("tool, delay", SIGINT_ROWS)
def test_ctrl_c_at_start(tool, delay, tmp_path):
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    fifo = tmp_path / "passphrase"
    os.mkfifo(fifo)
    values = {"fifo": str(fifo), "mnt": str(fs.mnt)}
    env = dict(os.environ, MEGAFS_INSECURE_TEST_KDF="1")
    env.pop("MEGAFS_PASSPHRASE", None)
    try:
        if tool == "umount.megafs":
            fs.mkfs()
            fs.env["MEGAFS_FAULTS"] = "latency=0.3"
            fs.mount()
            (fs.mnt / "data").write_bytes(os.urandom(300_000))
        proc = subprocess.Popen(
            [str(BIN / tool), *(a.format(**values) for a in SIGINT_TOOLS[tool])],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        fs.cleanup()
    if proc.returncode == -signal.SIGINT and (out, err) == ("", ""):
        return  # before the interpreter had set up its handlers: nothing ran at all
    if err.startswith(PYTHON_STARTING):
        return  # in the interpreter's own start, before the launcher's first line
    assert "Traceback" not in err, err
    assert proc.returncode == ExitCode.INTERRUPTED, (proc.returncode, err)
    assert err == f"{tool}: interrupted\n"


# -- the recovery key and mkfs ---------------------------------------------------------


def test_recovery_key_is_shown_before_the_filesystem_exists(tmp_path):
    """Ctrl-C between writing the superblock and printing the recovery key cannot happen:
    the key is printed (and flushed) first. Every request waits 0.3 s here, so a
    superblock written before the key was printed would be seen."""
    store = LocalStore(tmp_path / "store")
    fs = MegaFS(store, tmp_path)
    env = dict(fs.env, MEGAFS_FAULTS="latency=0.3")
    proc = subprocess.Popen([str(BIN / "mkfs.megafs"), store.url], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("    "):  # the key line
            break
    assert lines and lines[-1].startswith("    "), lines
    assert store.read(superblock.OBJECT_KEY) is None, "superblock written before the key"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err == "mkfs.megafs: interrupted\n"
    assert store.read(superblock.OBJECT_KEY) is None  # no filesystem: nothing lost

    # Uninterrupted, the key printed before the commit opens the filesystem made.
    done = fs.run("mkfs.megafs", "--force", store.url, env=env)
    key = done.stdout.strip().splitlines()[-1].strip()
    fs.run("megafs", "recover", store.url,
           env=dict(fs.env, MEGAFS_RECOVERY_KEY=key, MEGAFS_NEW_PASSPHRASE="after recovery"))
    fs.run("fsck.megafs", "--dry-run", store.url,
           env=dict(fs.env, MEGAFS_PASSPHRASE="after recovery"))


# -- MEGAFS_INSECURE_TEST_KDF outside the tests ------------------------------------------


def test_insecure_test_kdf_is_loud_outside_tests(tmp_path):
    store = LocalStore(tmp_path / "store")
    fs = MegaFS(store, tmp_path)
    outside = {k: v for k, v in fs.env.items() if k != "PYTEST_CURRENT_TEST"}
    assert outside["MEGAFS_INSECURE_TEST_KDF"] == "1"
    proc = fs.run("mkfs.megafs", store.url, env=outside)
    assert "WARNING: MEGAFS_INSECURE_TEST_KDF=1" in proc.stderr, proc.stderr
    proc = fs.run("megafs", "passphrase", store.url,
                  env=dict(outside, MEGAFS_NEW_PASSPHRASE="new one"))
    assert "WARNING: MEGAFS_INSECURE_TEST_KDF=1" in proc.stderr, proc.stderr
    proc = fs.run("megafs", "passphrase", store.url,
                  env=dict(fs.env, MEGAFS_PASSPHRASE="new one", MEGAFS_NEW_PASSPHRASE="3rd"))
    assert proc.stderr == ""  # inside the test suite it is set on purpose
    quiet = {k: v for k, v in outside.items() if k != "MEGAFS_INSECURE_TEST_KDF"}
    proc = fs.run("megafs", "passphrase", store.url,
                  env=dict(quiet, MEGAFS_PASSPHRASE="3rd", MEGAFS_NEW_PASSPHRASE="4th"))
    assert proc.stderr == ""


# -- quota bounds --------------------------------------------------------------------------


def test_largest_quota_keeps_df_working(tmp_path):
    """The largest quota accepted (1024P) still fits statfs: df shows it, no EIO."""
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    try:
        fs.mkfs("--quota", "1024P")
        fs.mount()
        st = os.statvfs(fs.mnt)
        assert st.f_blocks * st.f_frsize == 1 << 60
        fs.umount()
        assert fs.run("megafs", "quota", fs.url, "none").stdout.startswith("quota: none")
        assert fs.run("megafs", "quota", fs.url).stdout.strip() == "quota: none"
    finally:
        fs.cleanup()


# -- help ----------------------------------------------------------------------------------


def test_every_subcommand_explains_itself():
    from megafs.cli.common import subparsers
    from megafs.cli.tool import build_parser

    for name, sub, summary in subparsers(build_parser()):
        assert summary, f"megafs {name}: no one-line help"
        assert sub.description, f"megafs {name} --help has no description"
        for action in sub._actions:
            if not action.option_strings and action.dest != "action":
                assert action.help, f"megafs {name}: {action.metavar} has no help"


def test_mount_help_lists_every_option_of_the_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("Options understood in `-o`"):]
    section = section[:section.index("\n*")]
    options = re.findall(r"`([a-z_]+=?)`", section)
    assert len(options) >= 6, options
    proc = subprocess.run([str(BIN / "mount.megafs"), "--help"], capture_output=True,
                          text=True, check=True)
    text = " ".join(proc.stdout.split())
    for option in options:
        assert option in text, f"mount.megafs --help does not mention {option}"


# -- the cache directory is private -------------------------------------------------------


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("where", ["given-0755", "default-xdg"])
def test_cache_directory_is_private_whatever_the_umask(where, tmp_path):
    """Under umask 0, in a 0755 --cache-dir (the README's /var/cache/megafs) or the
    default one: the directory ends up 0700, everything in it 0600 (folders 0700)."""
    fs = MegaFS(LocalStore(tmp_path / "store"), tmp_path)
    try:
        fs.mkfs(block_size="1M")  # blocks past 128 KiB are files in the cache, not memory
        args = [fs.url, fs.mnt]
        if where == "given-0755":
            cache = tmp_path / "var-cache-megafs"
            cache.mkdir()
            os.chmod(cache, 0o755)
            (cache / "megafs.log").write_text("an old log\n")
            os.chmod(cache / "megafs.log", 0o644)
            args = ["--cache-dir", cache, *args]
        proc = subprocess.run([str(BIN / "mount.megafs"), *map(str, args)], env=fs.env,
                              capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: os.umask(0))
        assert proc.returncode == 0, proc.stderr
        fs.pids.add(fs.pid())
        (fs.mnt / "secret-name.txt").write_bytes(os.urandom(3 << 20))  # dirty blocks
        if where == "default-xdg":
            (cache,) = (tmp_path / "xdg-cache" / "megafs").glob("*/metadata.db")
            cache = cache.parent
        modes = _modes(cache)
        assert {"metadata.db", "metadata.db-wal", "megafs.log", "blocks"} <= set(modes), modes
        assert any(name.startswith("blocks/") for name in modes), modes
        for name, mode in modes.items():
            is_dir = (cache / name).is_dir()
            assert mode == (0o700 if is_dir else 0o600), (name, oct(mode))
        fs.flush()
        fs.umount()
    finally:
        fs.cleanup()


# -- S3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_get_names_the_missing_s3_store(store, tmp_path):
    """On S3 the store is checked over the network: a missing bucket, and a bucket
    without a filesystem, say so instead of 'revoked'."""
    fs = MegaFS(store, tmp_path)
    for url, code, says in [(store.missing_url(), ExitCode.STORE_NOT_FOUND, "does not exist"),
                            (store.url, ExitCode.NO_FILESYSTEM, "holds no megafs filesystem")]:
        proc = fs.run("megafs", "get", _link(url), tmp_path / "dest", check=False)
        line = assert_cli_error(proc, "megafs", code)
        assert says in line, line
