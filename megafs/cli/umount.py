"""umount.megafs: unmount, returning only when everything is in the store."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time

from megafs.cli.common import Progress, parser, run, setup_logging
from megafs.errors import BadMountpoint, LockLost, MegafsError, NotMounted
from megafs.fs import control
from megafs.osutil import umount

#: Prose of the man page umount.megafs(8) (see tools/manpages.py), next to the options.
MANUAL = {
    "summary": "unmount a megafs filesystem after uploading all its data",
    "description": """\
**umount.megafs** asks the daemon serving MOUNTPOINT to upload every changed block \
and the metadata, unmounts it, and waits until the daemon has uploaded what changed \
meanwhile and exited. When it returns with status 0 everything written to the mount \
is in the store: the cache directory may be deleted and the filesystem mounted on \
another machine.

It waits through storage outages; while it waits it says how much is left to upload \
(and the storage error, if any), on a terminal as a progress line, otherwise every \
ten seconds on standard error. Interrupting it does not stop the uploads: the \
daemon goes on with them.

A read-only mount is unmounted the same way; a dead mount (its daemon was \
killed) is detached at once, and its cache directory uploads what is left at the \
next mount. MOUNTPOINT may be given through a symlink. If the mount lost the \
store's lock to another writer, it is unmounted and the exit status is 28.

`umount MOUNTPOINT` and `fusermount3 -u MOUNTPOINT` unmount too, but return at once, \
while the daemon is still uploading.""",
    "examples": """\
    umount.megafs /srv/mega""",
    "files": ["LOG"],
}


def _lock_lost(mnt: str) -> bool:
    try:
        return bool(control.read_status(mnt).get("lock_lost"))
    except (NotMounted, ValueError):
        return False


def flush_mount(mnt: str, progress: Progress | None = None, prog: str = "umount.megafs") -> None:
    """Ask the daemon to upload everything; say what we wait for while it takes long:
    on *progress* when it shows (a terminal), else in a line now and then."""
    result: list[OSError | None] = []

    def flush():
        try:
            control.send(mnt, "flush")
            result.append(None)
        except OSError as e:
            result.append(e)

    worker = threading.Thread(target=flush, daemon=True)
    worker.start()
    started = last = time.monotonic()
    while worker.is_alive():
        worker.join(0.2)
        now = time.monotonic()
        if progress is not None and progress.enabled:
            if worker.is_alive() and now - last >= 1:
                last = now
                progress.update(f"uploading: {_status(mnt)}")
        elif worker.is_alive() and now - last >= (5 if last == started else 10):
            last = now
            print(f"{prog}: still waiting after {now - started:.0f}s: {_status(mnt)}",
                  file=sys.stderr)
    if result and result[0] is not None:
        if _lock_lost(mnt):
            raise LockLost(f"{mnt}: this mount lost the store's lock to another writer and"
                           " stopped writing; see the daemon log")
        raise MegafsError(f"{mnt}: flushing failed ({result[0].strerror}); see the daemon log")


def _status(mnt: str) -> str:
    try:
        fields = control.read_status(mnt)
    except (NotMounted, ValueError):
        return "the daemon does not answer"
    text = f"{fields.get('dirty_bytes', 0) / 2**20:.1f} MiB left to upload"
    if fields.get("upload_error"):
        text += f" (storage error: {fields['upload_error']})"
    return text


def build_parser():
    p = parser("umount.megafs", "Unmount a megafs filesystem after uploading all its data.")
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="where the filesystem is mounted")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    mnt = control.megafs_mountpoint(args.mountpoint)
    try:
        pid = int(os.getxattr(mnt, control.PID))
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            raise NotMounted(f"{mnt}: the megafs daemon does not answer ({e.strerror})"
                             ) from None
        _unmount(mnt, lazy=True)  # the daemon is dead (killed): nothing to wait for
        print(f"umount.megafs: the daemon of {mnt} had died: unmounted it; what it had not"
              " uploaded is uploaded by the next mount with its cache directory",
              file=sys.stderr)
        return 0
    lost = None
    with Progress("umount.megafs", "uploading data and metadata") as progress:
        try:
            flush_mount(mnt, progress)
        except LockLost as e:
            lost = e  # unmount anyway: the daemon stopped writing, nothing to wait for
        except MegafsError:
            # A read-only mount refuses the flush (EROFS) before it reaches the daemon;
            # it uploads what is left after the unmount, and we wait for that below.
            if "ro" not in control.mount_options(mnt):
                raise
        _unmount(mnt)
        # The daemon uploads whatever changed since the flush, then exits.
        progress.update("unmounted; waiting for the daemon to finish uploading")
        while os.path.exists(f"/proc/{pid}"):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)
    if lost is not None:
        raise lost
    return 0


def _unmount(mnt: str, *, lazy: bool = False) -> None:
    try:
        done = umount(mnt, lazy=lazy)
    except OSError as e:
        cls = BadMountpoint if e.errno == errno.EBUSY else MegafsError
        raise cls(f"cannot unmount {mnt}: {e.strerror}") from None
    if not done:
        r = subprocess.run(["fusermount3", "-u", *(["-z"] if lazy else []), mnt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            msg = (r.stderr.strip().splitlines()[-1] if r.stderr.strip()
                   else "fusermount3 failed")
            raise (BadMountpoint if "busy" in msg else MegafsError)(msg)


def main(argv=None) -> int:
    return run("umount.megafs", _main, argv)
