"""Operating megafs like a system tool: ``megafs ctrl`` on a running mount, progress
only on terminals, where the daemon logs, and the contrib/ files (systemd unit, fstab
example, backup script, bash completion) run for real against temporary stores."""

from __future__ import annotations

import errno
import io
import os
import pty
import re
import select
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    BIN,
    PASSPHRASE,
    assert_cli_error,
    assert_same_tree,
    mounted_paths,
    oserror,
    pid_alive,
    read_file,
)

from megafs.cli import tool
from megafs.cli.common import Progress, subparsers

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
#: The control channel, the tools and the contrib files do not depend on the backend.
local_only = pytest.mark.parametrize("store", ["local"], indirect=True)


def _poll(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def _complete(line: str) -> list[str]:
    """COMPREPLY of the bash completion for *line* (cursor at its end)."""
    script = (f"source {shlex.quote(str(CONTRIB / 'megafs-completion.bash'))}\n"
              f"COMP_LINE={shlex.quote(line)}; COMP_POINT=${{#COMP_LINE}}\n"
              "_megafs_complete\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                         timeout=30, cwd="/")
    assert out.returncode == 0 and not out.stderr, out.stderr
    return [w for w in out.stdout.split("\n") if w]


# -- megafs ctrl ------------------------------------------------------------------------------


@local_only
def test_ctrl_actions_on_a_running_mount(mounted):
    m = mounted
    data = os.urandom(300_000)
    (m.mnt / "f").write_bytes(data)
    assert m.status()["dirty_bytes"] != 0

    proc = m.run("megafs", "ctrl", m.mnt, "flush")
    assert proc.stdout == proc.stderr == ""
    st = m.status()
    assert st["dirty_bytes"] == 0 and st["cache_bytes"] >= len(data)

    m.run("megafs", "ctrl", m.mnt, "dropcache")
    assert m.status()["cache_bytes"] == 0
    with open(m.mnt / "f", "rb") as f:  # drop the kernel's copy too: read from the store
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert f.read() == data
    assert m.status()["cache_bytes"] >= len(data)

    m.run("megafs", "ctrl", m.mnt, "cachesize", "128K")
    st = m.status()
    assert st["cache_max"] == 128 << 10
    assert st["cache_bytes"] <= 128 << 10  # clean blocks evicted down to the bound
    assert read_file(m.mnt / "f") == data
    (m.mnt / "g").write_bytes(data)  # writers still make progress under a tiny bound
    m.run("megafs", "ctrl", m.mnt, "cachesize", "64M")
    assert m.status()["cache_max"] == 64 << 20

    m.run("megafs", "ctrl", m.mnt, "log-level", "DEBUG")
    assert m.status()["log_level"] == "debug"
    m.run("megafs", "ctrl", m.mnt, "log-level", "error", "megafs.core.cache,megafs.fs")
    assert m.status()["log_level"] == "debug"  # only those modules changed
    m.run("megafs", "ctrl", m.mnt, "log-level", "info")
    assert m.status()["log_level"] == "info"
    assert "control: log level debug for every module" in m.log()

    # The daemon refuses what it does not know, with EINVAL.
    for bad in (b"bogus", b"flush now", b"cachesize", b"cachesize 0", b"cachesize -1",
                b"cachesize 1G", b"log-level loud", b"log-level", b"\xff", b""):
        assert oserror(os.setxattr, m.mnt, "megafs.ctrl", bad) == errno.EINVAL, bad
    assert oserror(os.setxattr, m.mnt, "megafs.other", b"flush") == errno.EINVAL
    assert m.run("megafs", "ctrl", m.mnt, "log-level", "loud", check=False).returncode == 2
    assert m.run("megafs", "ctrl", m.mnt, "cachesize", "lots", check=False).returncode == 2
    assert m.run("megafs", "ctrl", m.mnt, "explode", check=False).returncode == 2
    assert_cli_error(m.run("megafs", "ctrl", m.tmp, "flush", check=False), "megafs", 18)

    # The bash completion offers the running megafs mounts where a MOUNTPOINT is wanted.
    assert str(m.mnt) in _complete("umount.megafs ")  # (other tests' mounts too)
    assert _complete(f"megafs ctrl {m.mnt.parent}/m") == [str(m.mnt)]
    assert _complete(f"megafs ctrl {m.mnt} ") == ["flush", "dropcache", "log-level",
                                                   "cachesize"]
    m.umount()
    assert m.fsck().returncode == 0


@local_only
def test_ctrl_flush_waits_for_uploads(mounted):
    m = mounted
    (m.mnt / "big").write_bytes(os.urandom(2 << 20))
    m.run("megafs", "ctrl", m.mnt, "flush")
    assert m.status()["dirty_bytes"] == 0
    m.kill9()  # nothing was left for the daemon to do: everything is in the store
    m.mount(fresh_cache=True)
    assert len(read_file(m.mnt / "big")) == 2 << 20


# -- progress and logs ----------------------------------------------------------------------------


def test_progress_is_silent_unless_on_a_terminal(monkeypatch):
    buf = io.StringIO()
    with Progress("tool", "working", stream=buf) as p:
        p.update("still working")
        time.sleep(0.05)
    assert buf.getvalue() == ""

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "xterm")
    tty = Tty()
    with Progress("tool", "working", stream=tty, interval=0.01) as p:
        time.sleep(0.05)
        p.update("almost done")
        time.sleep(0.05)
        p.print("a result line", file=io.StringIO())
    out = tty.getvalue()
    assert "tool: working" in out and "tool: almost done" in out
    assert out.endswith("\r\x1b[K")  # the line is cleared at the end


def _on_pty(argv, env) -> tuple[int, str]:
    """Run *argv* with its stderr on a pseudo-terminal; (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=env)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    with proc.stdout:
        proc.stdout.read()
    return proc.wait(timeout=60), shown.decode(errors="replace")


@local_only
def test_progress_on_a_terminal_and_quiet_in_scripts(megafs):
    env = dict(megafs.env, TERM="xterm")
    code, shown = _on_pty([str(BIN / "mkfs.megafs"), "--block-size", "64K", megafs.url], env)
    assert code == 0, shown
    assert "mkfs.megafs: deriving the key" in shown and "\x1b[K" in shown
    # the same in a script: not a byte on stderr
    proc = megafs.mkfs("--force", check=True)
    assert proc.stderr == ""
    megafs.mount()
    (megafs.mnt / "f").write_bytes(os.urandom(100_000))
    code, shown = _on_pty([str(BIN / "umount.megafs"), str(megafs.mnt)], env)
    assert code == 0 and "umount.megafs: uploading" in shown, shown
    assert not megafs.is_mounted()
    proc = megafs.fsck()
    assert proc.stderr == ""


# -- contrib/ ---------------------------------------------------------------------------------------


def _escape_path(path: str) -> str:
    """``systemd-escape --path``."""
    out = []
    for i, ch in enumerate(path.strip("/")):
        if ch == "/":
            out.append("-")
        elif ch.isascii() and (ch.isalnum() or ch in ":_" or (ch == "." and i)):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out)


def _unescape(name: str) -> str:
    text = name.replace("-", "/")
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
        else:
            key, _, value = line.partition("=")
            current.append((key, value))
    return sections


def _command(line: str, instance: str, env: dict[str, str]) -> tuple[bool, list[str]]:
    """An Exec*= line as systemd runs it: (failure ignored, argv)."""
    ignore = line.startswith("-")
    line = line.lstrip("-@:+!")
    spec = {"i": instance, "I": _unescape(instance), "f": "/" + _unescape(instance), "%": "%"}
    line = re.sub(r"%(.)", lambda m: spec[m.group(1)], line)
    argv = []
    for word in shlex.split(line):
        if re.fullmatch(r"\$\w+", word):
            argv += env.get(word[1:], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word))
    return ignore, argv


@local_only
def test_systemd_unit_mounts_and_unmounts(megafs, tmp_path):
    m = megafs
    m.mkfs()
    instance = _escape_path(str(m.mnt))
    if shutil.which("systemd-escape"):
        out = subprocess.run(["systemd-escape", "--path", str(m.mnt)], capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip() == instance
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / f"{instance}.conf").write_text(
        f"# test\nMEGAFS_URL={m.url}\nMEGAFS_PASSPHRASE_FILE={etc}/mnt.passphrase\n"
        "MEGAFS_OPTIONS=--upload-delay 0.5 --cache-size 64M\n")
    (etc / "mnt.passphrase").write_text(PASSPHRASE + "\n")
    text = (CONTRIB / "megafs@.service").read_text()
    text = text.replace("/etc/megafs/", f"{etc}/").replace("/usr/local/bin/", f"{BIN}/")
    unit = _unit(text)
    service = dict(unit["Service"])
    assert service["Type"] == "forking"
    assert service["Restart"] == "on-failure"
    assert service["TimeoutStopSec"] == "infinity"  # stopping waits for the uploads
    assert "umount.megafs" in service["ExecStop"]
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"
    assert "network-online.target" in dict(unit["Unit"])["After"]

    if shutil.which("systemd-analyze"):
        units = tmp_path / "units"
        units.mkdir()
        path = units / f"megafs@{instance}.service"
        path.write_text(text)
        out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(path)],
                             capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "megafs@" not in out.stderr, out.stderr

    # Run its commands as systemd would.
    env = {k: v for k, v in m.env.items() if k != "MEGAFS_PASSPHRASE"}
    for line in (etc / f"{instance}.conf").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    cache = tmp_path / "var-cache" / instance
    cache.mkdir(parents=True)  # CacheDirectory=
    env["CACHE_DIRECTORY"] = str(cache)
    m.cache_dir = cache

    def run(key: str) -> subprocess.CompletedProcess:
        ignore, argv = _command(service[key], instance, env)
        assert argv[0].startswith("/"), argv
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90,
                              stdin=subprocess.DEVNULL)
        assert ignore or proc.returncode == 0, f"{key}: {argv}: {proc.stderr}"
        return proc

    run("ExecStartPre")  # nothing to clear: fails, ignored
    run("ExecStart")
    assert m.is_mounted()
    pid = m.pid()
    m.pids.add(pid)
    assert (cache / "megafs.log").exists()
    (m.mnt / "from-systemd").write_bytes(b"started by the unit")
    run("ExecStop")
    assert not m.is_mounted() and not pid_alive(pid)

    m.mount(fresh_cache=True)
    assert read_file(m.mnt / "from-systemd") == b"started by the unit"
    m.umount()


@local_only
def test_fstab_example_line_mounts(megafs, tmp_path):
    m = megafs
    m.mkfs()
    lines = [line for line in (CONTRIB / "fstab.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split()
    assert len(fields) == 6 and fields[2] == "megafs", fields
    source, target, _, options, _, _ = fields
    pwfile = tmp_path / "mega.passphrase"
    pwfile.write_text(PASSPHRASE + "\n")
    cache = tmp_path / "fstab-cache"
    options = (options.replace("/etc/megafs/mega.passphrase", str(pwfile))
               .replace("/var/cache/megafs/mega", str(cache)))
    assert str(pwfile) in options and str(cache) in options
    mine = f"{m.url} {m.mnt} megafs {options} 0 0\n"
    (tmp_path / "fstab").write_text(mine)
    out = subprocess.run(["findmnt", "--verify", "--tab-file", str(tmp_path / "fstab")],
                         capture_output=True, text=True, timeout=30)
    assert "0 parse errors, 0 errors" in out.stdout + out.stderr, out.stdout + out.stderr

    # As mount(8) runs its helper: mount.TYPE SPEC DIR [-sfnv] -o OPTIONS.
    env = {k: v for k, v in m.env.items() if k != "MEGAFS_PASSPHRASE"}
    m.cache_dir = cache
    m.run("mount.megafs", m.url, m.mnt, "-n", "-o", options, env=env)
    m.pids.add(m.pid())
    assert m.is_mounted()
    with open("/proc/self/mounts") as f:
        entry = next(line for line in f if line.split()[1] == str(m.mnt))
    assert "allow_other" in entry.split()[3]
    assert m.status()["cache_max"] == 8 << 30
    assert (cache / "megafs.log").exists()
    (m.mnt / "f").write_bytes(b"via fstab")
    m.umount()
    m.mount(fresh_cache=True)
    assert read_file(m.mnt / "f") == b"via fstab"
    m.umount()


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (root / "sub" / "deeper" / "empty").write_bytes(b"")
    os.link(root / "a.txt", root / "sub" / "hard")
    os.symlink("../a.txt", root / "sub" / "link")
    os.chmod(root / "sub" / "b.bin", 0o600)
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


@local_only
def test_backup_script_copies_into_the_store(megafs, tmp_path):
    m = megafs
    m.mkfs()
    src = tmp_path / "src"
    src.mkdir()
    _tree(src)
    script = CONTRIB / "megafs-backup"
    env = dict(m.env, PATH=f"{BIN}:{os.environ['PATH']}", TMPDIR=str(tmp_path))
    proc = subprocess.run([str(script), m.url, "host1", f"{src}/"], capture_output=True,
                          text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    assert not [p for p in mounted_paths() if p.startswith(str(tmp_path))]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("megafs-backup.")]

    # Without --cache-dir the daemon logged to its store's cache directory.
    base = tmp_path / "xdg-cache" / "megafs"
    logs = list(base.glob("*/megafs.log"))
    assert len(logs) == 1 and "clean exit" in logs[0].read_text()
    assert not (base / "megafs.log").exists()

    # A failing rsync still unmounts, and the script fails.
    proc = subprocess.run([str(script), m.url, "host1", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert not [p for p in mounted_paths() if p.startswith(str(tmp_path))]

    m.mount(fresh_cache=True)
    assert_same_tree(src, m.mnt / "host1")
    m.umount()


def test_bash_completion():
    out = subprocess.run(
        ["bash", "--norc", "-c", f"source {CONTRIB / 'megafs-completion.bash'}; complete -p"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stderr, out.stderr
    for name in ("mkfs.megafs", "mount.megafs", "umount.megafs", "fsck.megafs", "megafs"):
        assert f"complete -F _megafs_complete {name}\n" in out.stdout
    assert _complete("mkfs.megafs --f") == ["--force"]
    assert "--passphrase-file" in _complete("mount.megafs --")
    assert "-n" not in _complete("mount.megafs -")  # hidden options stay hidden
    commands = [name for name, _, _ in subparsers(tool.build_parser())]
    assert {"stat", "ctrl", "passphrase", "recover"} <= set(commands)
    assert _complete("megafs ") == commands
    assert _complete("megafs pa") == ["passphrase"]
    assert _complete("megafs ctrl /mnt log-level ") == ["debug", "info", "warning", "error",
                                                        "critical"]
    assert _complete("megafs ctrl /mnt log-level warning megafs.c") == [
        "megafs.cli", "megafs.core", "megafs.crypto"]
    # values after '=' and ':' come back as bash replaces them (after the word break)
    assert _complete("mount.megafs --debug=megafs.cor") == ["megafs.core"]
    assert _complete("fsck.megafs --debug=megafs.core,megafs.st") == ["megafs.core,megafs.store"]
    assert _complete("mount.megafs -o allow_other,cache_d") == ["allow_other,cache_dir="]
    assert "/etc/hosts" in _complete("mount.megafs --passphrase-file /etc/host")
    assert _complete("mount.megafs --cache-dir /us") == ["/usr"]
    assert _complete("fsck.megafs s3") == ["s3://", "s3+http://"]
    assert _complete("mkfs.megafs local:///us") == ["///usr/"]
    assert "/usr" in _complete("mount.megafs --fg local:///srv /us")
    assert _complete("umount.megafs /nonexistent") == []


@pytest.mark.parametrize("name", ["megafs-backup"])
def test_contrib_scripts_are_executable_shell(name):
    path = CONTRIB / name
    assert os.access(path, os.X_OK)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    out = subprocess.run([str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("usage: megafs-backup")
