"""User errors: each a distinct exit code and one clean line on stderr, no traceback."""

from __future__ import annotations

import os
import signal

from helpers import assert_cli_error, read_file, tool_env, wait_pid_gone

from megafs.errors import ExitCode


def test_exit_codes_are_distinct():
    codes = [ExitCode.WRONG_PASSPHRASE, ExitCode.NO_FILESYSTEM, ExitCode.STORE_NOT_FOUND,
             ExitCode.ALREADY_EXISTS, ExitCode.BAD_MOUNTPOINT, ExitCode.NOT_MOUNTED,
             ExitCode.USAGE, ExitCode.FSCK_ERRORS, ExitCode.FAILURE]
    assert len({int(c) for c in codes}) == len(codes)


def test_wrong_passphrase(megafs, tmp_path):
    megafs.mkfs()
    wrong = tool_env(MEGAFS_PASSPHRASE="not the passphrase",
                     XDG_CACHE_HOME=str(tmp_path / "xdg"))
    proc = megafs.run("mount.megafs", "--cache-dir", tmp_path / "c", megafs.url, megafs.mnt,
                      check=False, env=wrong)
    line = assert_cli_error(proc, "mount.megafs", ExitCode.WRONG_PASSPHRASE)
    assert "passphrase" in line.lower()
    assert not megafs.is_mounted()
    pwfile = tmp_path / "pw"
    pwfile.write_text("also wrong\n")
    proc = megafs.run("mount.megafs", "--passphrase-file", pwfile, "--cache-dir",
                      tmp_path / "c", megafs.url, megafs.mnt, check=False)
    assert_cli_error(proc, "mount.megafs", ExitCode.WRONG_PASSPHRASE)
    assert not megafs.is_mounted()
    proc = megafs.run("fsck.megafs", megafs.url, check=False, env=wrong)
    assert_cli_error(proc, "fsck.megafs", ExitCode.WRONG_PASSPHRASE)
    # the right one still works
    megafs.mount()
    megafs.umount()


def test_missing_store(megafs, store, tmp_path):
    url = store.missing_url()
    for tool, args in [("mkfs.megafs", [url]), ("fsck.megafs", [url]),
                       ("mount.megafs", ["--cache-dir", tmp_path / "c", url, megafs.mnt])]:
        proc = megafs.run(tool, *args, check=False)
        assert_cli_error(proc, tool, ExitCode.STORE_NOT_FOUND)
    assert not megafs.is_mounted()


def test_store_without_filesystem(megafs, tmp_path):
    proc = megafs.mount(check=False)
    assert_cli_error(proc, "mount.megafs", ExitCode.NO_FILESYSTEM)
    assert not megafs.is_mounted()
    proc = megafs.fsck(check=False)
    assert_cli_error(proc, "fsck.megafs", ExitCode.NO_FILESYSTEM)


def test_bad_mountpoints(megafs, tmp_path):
    megafs.mkfs()
    (megafs.mnt / "something").write_text("here")
    proc = megafs.mount(check=False)
    line = assert_cli_error(proc, "mount.megafs", ExitCode.BAD_MOUNTPOINT)
    assert "empty" in line
    assert not megafs.is_mounted()
    for bad in (tmp_path / "missing", megafs.mnt / "something"):
        proc = megafs.mount(mnt=bad, check=False)
        assert_cli_error(proc, "mount.megafs", ExitCode.BAD_MOUNTPOINT)
    # already mounted
    other = tmp_path / "mnt2"
    other.mkdir()
    megafs.mount(mnt=other)
    proc = megafs.mount(mnt=other, fresh_cache=True, check=False)
    assert_cli_error(proc, "mount.megafs", ExitCode.BAD_MOUNTPOINT)
    megafs.umount(other)


def test_mkfs_over_existing_filesystem(megafs, tmp_path):
    megafs.mkfs()
    megafs.mount()
    (megafs.mnt / "precious").write_bytes(b"keep me")
    megafs.umount()
    proc = megafs.mkfs(check=False)
    line = assert_cli_error(proc, "mkfs.megafs", ExitCode.ALREADY_EXISTS)
    assert "--force" in line
    megafs.mount(fresh_cache=True)  # untouched
    assert read_file(megafs.mnt / "precious") == b"keep me"
    megafs.umount()

    new_env = tool_env(MEGAFS_PASSPHRASE="a new passphrase",
                       XDG_CACHE_HOME=str(tmp_path / "xdg"))
    proc = megafs.run("mkfs.megafs", "--force", megafs.url, env=new_env)
    assert proc.returncode == 0
    proc = megafs.mount(fresh_cache=True, check=False)  # old passphrase
    assert_cli_error(proc, "mount.megafs", ExitCode.WRONG_PASSPHRASE)
    megafs.env = new_env
    megafs.mount(fresh_cache=True)
    assert not (megafs.mnt / "precious").exists()
    assert list(megafs.mnt.iterdir()) == []
    megafs.umount()
    assert megafs.fsck().returncode == 0


def test_mkfs_over_foreign_data_needs_force(megafs, store):
    store.write("unrelated-data", b"not megafs")
    proc = megafs.mkfs(check=False)
    line = assert_cli_error(proc, "mkfs.megafs", ExitCode.ALREADY_EXISTS)
    assert "--force" in line
    assert store.read("unrelated-data") == b"not megafs"
    megafs.mkfs("--force")
    megafs.mount()
    megafs.umount()


def test_umount_of_non_mount(megafs, tmp_path):
    for path in (megafs.mnt, tmp_path / "missing", "/proc"):
        proc = megafs.run("umount.megafs", path, check=False)
        assert_cli_error(proc, "umount.megafs", ExitCode.NOT_MOUNTED)


def test_umount_after_daemon_died(mounted):
    """A mount whose daemon is gone: umount.megafs removes it and says so in one line."""
    pid = mounted.pid()
    os.kill(pid, signal.SIGKILL)
    wait_pid_gone(pid)
    proc = mounted.run("umount.megafs", mounted.mnt, check=False)
    assert proc.returncode == 0 and "daemon" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not mounted.is_mounted()


def test_usage_errors(megafs):
    proc = megafs.run("mount.megafs", check=False)
    assert proc.returncode == ExitCode.USAGE and "Traceback" not in proc.stderr
    proc = megafs.run("mkfs.megafs", "--block-size", "4K", megafs.url, check=False)
    assert_cli_error(proc, "mkfs.megafs", ExitCode.USAGE)
    proc = megafs.run("mkfs.megafs", "local://relative/path", check=False)
    assert_cli_error(proc, "mkfs.megafs", ExitCode.USAGE)
    proc = megafs.run("mkfs.megafs", megafs.url, check=False,
                      env={k: v for k, v in megafs.env.items() if k != "MEGAFS_PASSPHRASE"})
    assert_cli_error(proc, "mkfs.megafs", ExitCode.USAGE)


def test_a_reply_the_kernel_gave_up_on_is_a_warning(tmp_path):
    """pyfuse3 logs an ERROR when a reply finds its request gone (the caller was
    interrupted, or the mount was torn down): the daemon log says WARNING, since nothing
    is lost; other pyfuse3 errors stay errors."""
    import logging

    from megafs.cli.common import setup_logging

    log_file = tmp_path / "megafs.log"
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(logfile=str(log_file))
        for h in root.handlers:
            h.close()
        setup_logging(logfile=str(log_file))  # set up twice: one filter
        pyfuse3_log = logging.getLogger("pyfuse3")
        pyfuse3_log.error("fuse_release(): fuse_reply_* failed with No such file or directory")
        pyfuse3_log.error("fuse_write(): fuse_reply_* failed with Bad address")
        for h in root.handlers:
            h.flush()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = log_file.read_text().splitlines()
    assert any("WARNING" in line and "No such file or directory" in line for line in lines), lines
    assert any("ERROR" in line and "Bad address" in line for line in lines), lines
    assert sum("KernelGaveUp" in type(f).__name__ for f in logging.getLogger("pyfuse3").filters) == 1
