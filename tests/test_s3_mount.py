"""End to end on S3 under faults: 40% of the backend's requests fail and every one
takes 100 ms longer (``MEGAFS_FAULTS``, injected in every backend stack the tools
build, the mount daemon's included). Copying a real tree in, unmounting with
umount.megafs and verifying from an empty cache directory without faults loses
nothing. Block reads from an empty cache under the same faults work too.

And with slow requests, blocks whose uploads finish while a metadata upload is on its
way are still named by the metadata in the store when umount.megafs returns.

(Every other end-to-end test runs on S3 too, through the ``store`` fixture.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
from helpers import assert_same_tree, read_file

FAULTS = "fail=0.4,latency=0.1,seed={seed}"  # packs: few requests, so fail often
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


@pytest.mark.slow
@pytest.mark.s3
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
    # packs: a few dozen requests in all (P(fewer than 3 failures) is about 1e-4)
    assert injected >= 3, f"only {injected} injected failures: are faults active?"
    faulty = time.monotonic() - start

    # Reads from an empty cache under faults too (all of it: with packs, a request per
    # MiB or so, not per file).
    megafs.mount(fresh_cache=True, args=("--debug=megafs.backends.retry",))
    assert_same_tree(staging, megafs.mnt / "tree")
    megafs.umount()
    log = (megafs.cache_dir / "megafs.log").read_text(errors="replace")
    assert "GET p/" in log and "injected failure (get)" in log, "no block read failed"

    megafs.env = clean_env
    assert megafs.fsck().returncode == 0
    megafs.mount(fresh_cache=True)
    assert_same_tree(staging, megafs.mnt / "tree")
    assert os.getxattr(megafs.mnt / "tree" / "zz-extra" / "owned", "user.note") == b"kept"
    megafs.umount()
    print(f"{injected} injected failures; mkfs + copy + umount under faults {faulty:.1f}s")


@pytest.mark.s3
@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_block_uploads_during_metadata_uploads_reach_the_store(megafs):
    """Files written steadily while blocks and metadata deltas upload side by side (100 ms
    a request widens the overlap), then umount.megafs: a mount with an empty cache
    directory has every byte."""
    megafs.mkfs()
    clean_env = megafs.env
    megafs.env = dict(clean_env, MEGAFS_FAULTS="latency=0.1")
    megafs.mount(args=("--upload-delay", "0.05", "--metadata-interval", "0.2"))
    files = {}
    end = time.monotonic() + 3
    while time.monotonic() < end:
        name = f"f{len(files):04d}"
        files[name] = os.urandom(2 * 65536)
        (megafs.mnt / name).write_bytes(files[name])
        time.sleep(0.02)
    megafs.umount()
    megafs.env = clean_env
    megafs.mount(fresh_cache=True)
    wrong = [n for n, data in files.items() if read_file(megafs.mnt / n) != data]
    zeros = [n for n in wrong if not read_file(megafs.mnt / n).strip(b"\0")]
    assert not wrong, (f"{len(wrong)} of {len(files)} files differ in the store after"
                       f" umount.megafs ({len(zeros)} read as zeros): {wrong[:8]}")
    megafs.umount()
