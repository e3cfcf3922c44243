"""Files and trees: snapshots for comparisons, reads, and the errno of a failing call."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

# -- tree snapshots -------------------------------------------------------------------


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def tree_state(root: Path) -> tuple[dict[str, tuple], set[frozenset[str]]]:
    """Everything ``cp -a`` preserves, per relative path, plus the hard-link groups."""
    entries: dict[str, tuple] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            common = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                      st.st_gid, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode):
                entries[rel] = (*common, st.st_size, st.st_nlink, _digest(path))
                inodes.setdefault(st.st_ino, set()).add(rel)
            elif stat.S_ISLNK(st.st_mode):
                entries[rel] = (*common, os.readlink(path))
            else:
                entries[rel] = common
    return entries, {frozenset(v) for v in inodes.values()}


def assert_same_tree(expected: Path, actual: Path) -> None:
    exp, exp_links = tree_state(expected)
    got, got_links = tree_state(actual)
    missing = sorted(set(exp) - set(got))
    extra = sorted(set(got) - set(exp))
    assert not missing, f"{len(missing)} entries missing, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} unexpected entries, e.g. {extra[:5]}"
    diff = [(k, exp[k], got[k]) for k in sorted(exp) if exp[k] != got[k]]
    assert not diff, f"{len(diff)} entries differ, e.g. (path, expected, got): {diff[:3]}"
    assert exp_links == got_links, "hard-link groups differ"


def read_file(path, offset: int = 0, size: int = -1) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def oserror(fn, *args) -> int:
    """Call *fn*; return the errno of the OSError it must raise."""
    try:
        fn(*args)
    except OSError as e:
        return e.errno
    raise AssertionError(f"{fn.__name__}{args} did not fail")
