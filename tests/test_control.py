"""The control channel (megafs.fs.control): names, status format and the mount check
that every tool shares, including mountpoints whose names the kernel escapes."""

from __future__ import annotations

import os

import pytest

from megafs.fs import control
from megafs.osutil import unescape_mount_field

local_only = pytest.mark.parametrize("store", ["local"], indirect=True)

ESCAPES = {
    "plain": ("/srv/mega", "/srv/mega"),
    "space": (r"/srv/my\040mega", "/srv/my mega"),
    "tab": (r"/srv/a\011b", "/srv/a\tb"),
    "newline": (r"/srv/a\012b", "/srv/a\nb"),
    "backslash": (r"/srv/a\134040", "/srv/a\\040"),  # an escaped backslash, then digits
    "all": (r"\040\011\012\134", " \t\n\\"),
}


@pytest.mark.parametrize("field, path", ESCAPES.values(), ids=ESCAPES.keys())
def test_mount_table_fields_are_unescaped_as_getmntent_does(field, path):
    assert unescape_mount_field(field) == path


def test_status_is_json_with_the_documented_fields(mounted):
    status = control.read_status(str(mounted.mnt))
    assert set(status) == set(control.STATUS_FIELDS)
    assert isinstance(status["dirty_bytes"], int) and status["lock_lost"] is False
    assert status["upload_error"] == ""


@local_only
def test_tools_find_a_mount_whose_name_the_kernel_escapes(megafs):
    """A mountpoint with a space, a tab and a backslash in its name: stat, ctrl, share
    and umount.megafs all recognise it, and the status says nothing is left to upload."""
    mnt = megafs.tmp / "my mega\tdrive\\040"
    mnt.mkdir()
    megafs.mkfs()
    megafs.mount(mnt=mnt)
    assert str(mnt) in control.megafs_mounts()
    assert control.megafs_mountpoint(str(mnt)) == str(mnt)
    (mnt / "f").write_bytes(b"x" * 1000)
    megafs.run("megafs", "ctrl", mnt, "flush")
    assert control.read_status(str(mnt))["dirty_bytes"] == 0
    assert "daemon pid" in megafs.run("megafs", "stat", mnt).stdout
    link = megafs.run("megafs", "share", mnt / "f").stdout.strip()
    assert link.startswith("megafs+")
    assert control.mount_options(str(mnt)) >= {"rw"}
    megafs.umount(mnt)
    assert str(mnt) not in control.megafs_mounts()


def test_a_path_that_is_not_a_megafs_mount_is_refused(tmp_path):
    with pytest.raises(control.NotMounted):
        control.megafs_mountpoint(str(tmp_path))
    with pytest.raises(control.NotMounted):
        control.megafs_mountpoint("/proc")  # a mount, of another type
    assert os.path.ismount("/proc")
