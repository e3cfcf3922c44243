"""Processes: the tools' environment, daemon pids (alive, gone, reaped), mount table,
and the check that a CLI failure is one clean line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import seaweed

from megafs.fs import control

BIN = Path(sys.executable).parent
PASSPHRASE = "correct horse battery staple"


# -- process helpers ----------------------------------------------------------------


def tool_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["MEGAFS_INSECURE_TEST_KDF"] = "1"
    env["MEGAFS_PASSPHRASE"] = PASSPHRASE
    env.pop("MEGAFS_FAULTS", None)
    # Garbage goes at once: tests count the store's objects (test_follow.py sets its own).
    env["MEGAFS_RETENTION"] = "0"
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
    """Every mountpoint (of any filesystem type), as the kernel lists them."""
    return {mnt for _, mnt, _, _ in control.mount_table()}


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
