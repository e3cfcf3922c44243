"""End to end on S3 under faults: 10% of the backend's requests fail and every one
takes 100 ms longer (``MEGAFS_FAULTS``, injected in every backend stack the tools
build, the mount daemon's included). Copying a real tree in, unmounting with
umount.megafs and verifying from an empty cache directory without faults loses
nothing. Block reads from an empty cache under the same faults work too.

(Every other end-to-end test runs on S3 too, through the ``store`` fixture.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from helpers import assert_same_tree

pytestmark = pytest.mark.s3

FAULTS = "fail=0.1,latency=0.1,seed={seed}"
PACKAGES = ("email", "xml", "importlib", "unittest", "asyncio", "encodings", "json", "http",
            "urllib")


def _tree(dst):
    """About 300 files (4 MB) of the standard library, plus links, modes, owners and times
    of our own and files of several blocks."""
    src = os.path.dirname(os.__file__)
    for pkg in PACKAGES:
        shutil.copytree(os.path.join(src, pkg), dst / pkg, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    extra = dst / "zz-extra"
    (extra / "sub").mkdir(parents=True)
    (extra / "empty-dir").mkdir()
    (extra / "empty-file").write_bytes(b"")
    os.symlink("../json/__init__.py", extra / "rel-link")
    os.symlink("does/not/exist", extra / "dangling")
    os.link(dst / "json" / "decoder.py", extra / "sub" / "decoder-hardlink")
    big = extra / "big"
    big.write_bytes(os.urandom(5 * 65536 + 123))  # several blocks
    os.chmod(big, 0o600)
    os.utime(big, ns=(1_000_000_001, 1_234_567_890_123_456_789))
    sparse = extra / "sparse"
    with open(sparse, "wb") as f:
        f.seek(3 * 65536 + 5)
        f.write(b"end")
    owned = extra / "owned"
    owned.write_bytes(b"owned by someone else\n")
    os.chown(owned, 1234, 4321)
    os.chmod(owned, 0o2751)
    os.setxattr(owned, "user.note", b"kept")
    return dst


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_copy_under_faults_then_verify_from_fresh_cache(megafs, tmp_path):
    staging = _tree(tmp_path / "staging")
    clean_env = megafs.env
    megafs.env = dict(clean_env, MEGAFS_FAULTS=FAULTS.format(seed=20240611))
    start = time.monotonic()
    megafs.mkfs()
    # Debug messages of the retry layer only: they show the injected failures.
    megafs.mount(args=("--debug=megafs.backends.retry",))
    subprocess.run(["cp", "-a", str(staging), str(megafs.mnt / "tree")], check=True)
    assert_same_tree(staging, megafs.mnt / "tree")
    megafs.umount()  # the daemon (faults included) uploads everything first
    log = (megafs.cache_dir / "megafs.log").read_text(errors="replace")
    injected = log.count("injected failure")
    assert injected >= 10, f"only {injected} injected failures: are faults active?"
    faulty = time.monotonic() - start

    # Reads from an empty cache under faults too (a part of the tree: at 100 ms a request
    # all of it would take long).
    megafs.mount(fresh_cache=True, args=("--debug=megafs.backends.retry",))
    for part in ("zz-extra", "json", "email"):
        assert_same_tree(staging / part, megafs.mnt / "tree" / part)
    megafs.umount()
    log = (megafs.cache_dir / "megafs.log").read_text(errors="replace")
    assert "GET b/" in log and "injected failure (get)" in log, "no block read failed"

    megafs.env = clean_env
    assert megafs.fsck().returncode == 0
    megafs.mount(fresh_cache=True)
    assert_same_tree(staging, megafs.mnt / "tree")
    assert os.getxattr(megafs.mnt / "tree" / "zz-extra" / "owned", "user.note") == b"kept"
    megafs.umount()
    print(f"{injected} injected failures; mkfs + copy + umount under faults {faulty:.1f}s")
