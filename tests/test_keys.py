"""Passphrase change and recovery-key access, end to end through the tools."""

import os
import subprocess
import sys

from megafs.errors import ExitCode

BIN = os.path.dirname(sys.executable)


def tool(name, *args, **env):
    full = dict(os.environ, MEGAFS_INSECURE_TEST_KDF="1", **env)
    for k in ("MEGAFS_PASSPHRASE", "MEGAFS_NEW_PASSPHRASE", "MEGAFS_RECOVERY_KEY"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run([os.path.join(BIN, name), *args], env=full, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


def test_passphrase_change_and_recovery(tmp_path):
    url = f"local://{tmp_path}"
    mk = tool("mkfs.megafs", url, MEGAFS_PASSPHRASE="old secret")
    assert mk.returncode == 0, mk.stderr
    recovery = mk.stdout.strip().splitlines()[-1].strip()
    superblock_before = (tmp_path / "superblock").read_bytes()
    data_before = sorted(p for p in os.listdir(tmp_path / "m"))

    r = tool("megafs", "passphrase", url, MEGAFS_PASSPHRASE="old secret",
             MEGAFS_NEW_PASSPHRASE="new secret")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "superblock").read_bytes() != superblock_before
    assert sorted(os.listdir(tmp_path / "m")) == data_before  # nothing re-encrypted
    r = tool("fsck.megafs", url, MEGAFS_PASSPHRASE="old secret")
    assert r.returncode == ExitCode.WRONG_PASSPHRASE
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert tool("fsck.megafs", url, MEGAFS_PASSPHRASE="new secret").returncode == 0

    # Passphrase forgotten: the recovery key printed by mkfs sets a new one.
    r = tool("megafs", "recover", url, MEGAFS_RECOVERY_KEY=recovery,
             MEGAFS_NEW_PASSPHRASE="third secret")
    assert r.returncode == 0, r.stderr
    assert tool("fsck.megafs", url, MEGAFS_PASSPHRASE="third secret").returncode == 0
    assert tool("fsck.megafs", url, MEGAFS_PASSPHRASE="new secret").returncode == \
        ExitCode.WRONG_PASSPHRASE

    wrong = recovery[:-4] + ("AAAA" if not recovery.endswith("AAAA") else "BBBB")
    r = tool("megafs", "recover", url, MEGAFS_RECOVERY_KEY=wrong, MEGAFS_NEW_PASSPHRASE="x")
    assert r.returncode == ExitCode.WRONG_PASSPHRASE
    r = tool("megafs", "passphrase", url, MEGAFS_PASSPHRASE="wrong",
             MEGAFS_NEW_PASSPHRASE="x")
    assert r.returncode == ExitCode.WRONG_PASSPHRASE
    assert tool("fsck.megafs", url, MEGAFS_PASSPHRASE="third secret").returncode == 0
