"""Share links: exactly the shared file or folder, nothing else; revocation; tampering."""

from __future__ import annotations

import os
import stat

import apsw
import pytest
from helpers import assert_cli_error

from megafs.errors import CorruptObject, ExitCode, UnsupportedFormat
from megafs.store import envelope
from megafs.store import share as share_format


def _share(fs, path) -> str:
    r = fs.run("megafs", "share", path)
    link = r.stdout.split()[-1]  # the megafs+ link (after a browser link on S3)
    assert link.startswith("megafs+") and "#" in link
    return link


def _get(fs, link, dest, check=True):
    return fs.run("megafs", "get", link, dest, check=check)


def _logical(name: str) -> str:
    """Object key of a stored object's name as the store lists it."""
    parts = name.split("/")
    return f"{parts[0]}/{parts[-1]}" if len(parts) == 3 else name


@pytest.fixture
def tree(mounted):
    fs = mounted
    photos = fs.mnt / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "cat.jpg").write_bytes(os.urandom(300_000))
    (photos / "sub" / "note.txt").write_text("a note")
    os.symlink("cat.jpg", photos / "link")
    os.chmod(photos / "sub" / "note.txt", 0o640)
    (fs.mnt / "private.txt").write_text("not shared: top secret")
    return fs


def test_file_and_folder_links(tree, tmp_path):
    fs = tree
    cat = fs.mnt / "photos" / "cat.jpg"
    link = _share(fs, cat)
    assert _share(fs, cat) == link  # one link per file
    _get(fs, link, tmp_path / "cat.jpg")
    assert (tmp_path / "cat.jpg").read_bytes() == cat.read_bytes()
    assert (tmp_path / "cat.jpg").stat().st_mtime_ns == cat.stat().st_mtime_ns

    folder = _share(fs, fs.mnt / "photos")
    _get(fs, folder, tmp_path / "p1")
    assert (tmp_path / "p1" / "cat.jpg").read_bytes() == cat.read_bytes()
    assert (tmp_path / "p1" / "sub" / "note.txt").read_text() == "a note"
    assert stat.S_IMODE((tmp_path / "p1" / "sub" / "note.txt").stat().st_mode) == 0o640
    assert os.readlink(tmp_path / "p1" / "link") == "cat.jpg"
    assert not (tmp_path / "p1" / "private.txt").exists()

    # A folder link shows the folder as it is now, also later.
    (fs.mnt / "photos" / "later.txt").write_text("added after sharing")
    fs.flush()
    _get(fs, folder, tmp_path / "p2")
    assert (tmp_path / "p2" / "later.txt").read_text() == "added after sharing"

    listing = fs.run("megafs", "shares", fs.mnt).stdout
    assert link in listing and folder in listing and "/photos/cat.jpg" in listing

    # Revocation: fresh downloads fail.
    fs.run("megafs", "unshare", link)
    assert_cli_error(_get(fs, link, tmp_path / "x", check=False), "megafs",
                     ExitCode.SHARE_NOT_FOUND)
    fs.run("megafs", "unshare", fs.mnt / "photos")
    assert_cli_error(_get(fs, folder, tmp_path / "y", check=False), "megafs",
                     ExitCode.SHARE_NOT_FOUND)
    assert fs.run("megafs", "shares", fs.mnt).stdout.strip() == ""


def test_a_link_opens_nothing_else(tree, tmp_path):
    fs = tree
    link = _share(fs, fs.mnt / "photos" / "sub")
    fs.flush()
    _url, share_id, key, public_key = share_format.parse_link(link)
    objects = {_logical(name): blob for name, blob in fs.store.objects()}
    manifest = share_format.open_manifest(key, share_id, objects[f"s/{share_id}"], public_key)
    granted = {f"s/{share_id}"}
    keys = [key]
    for entry in manifest["entries"]:
        for _blockno, block_id, keyhex, _size, _sha256, *_where in entry.get("blocks", []):
            granted.add(block_id)
            keys.append(bytes.fromhex(keyhex))
    assert len(granted) == 2  # the manifest and note.txt's one block
    # every envelope in the store: whole objects, and each block's range in its pack
    # (from the owner's metadata), tried under every name a link holder could know
    envelopes = dict(objects)
    db = apsw.Connection(str(fs.cache_dir / "metadata.db"), flags=apsw.SQLITE_OPEN_READONLY)
    for block_id, pack, offset, length in db.execute(
            "SELECT key, pack, pack_offset, stored_size FROM objects WHERE pack IS NOT NULL"):
        envelopes[block_id] = objects[pack][offset:offset + length]
    db.close()
    assert any(k.startswith("p/") for k in objects)
    opened = set()
    for name, blob in envelopes.items():
        for k in keys:
            for kind in range(1, 7):
                for as_name in {name, *granted}:
                    try:
                        envelope.open_(k, kind, as_name, blob)
                    except (CorruptObject, UnsupportedFormat):
                        continue
                    opened.add(name)
    assert opened == granted


def test_tampered_manifest_fails_verification(tree, tmp_path):
    fs = tree
    link = _share(fs, fs.mnt / "private.txt")
    share_id = share_format.parse_link(link).share_id
    (stored, data), = [(n, b) for n, b in fs.store.objects() if _logical(n) == f"s/{share_id}"]
    blob = bytearray(data)
    blob[-5] ^= 1
    fs.store.write(stored, bytes(blob))
    r = _get(fs, link, tmp_path / "out", check=False)
    assert_cli_error(r, "megafs", ExitCode.CORRUPT)
    assert not (tmp_path / "out").exists()


def test_bad_links_are_usage_errors(megafs, tmp_path):
    for bad in ("https://example.com/x", "megafs+local:///x/s/123#abc"):
        assert_cli_error(megafs.run("megafs", "get", bad, tmp_path / "o", check=False),
                         "megafs", ExitCode.USAGE)


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_s3_link_works_with_read_only_credentials(tree, tmp_path):
    """The owner grants recipients read access to the prefix (here SeaweedFS's
    read-only identity); with it and the link, get works, and the key cannot write."""
    import seaweed

    fs = tree
    link = _share(fs, fs.mnt / "photos")
    reader = dict(fs.env, AWS_ACCESS_KEY_ID=seaweed.READONLY.access_key,
                  AWS_SECRET_ACCESS_KEY=seaweed.READONLY.secret_key)
    reader.pop("MEGAFS_PASSPHRASE", None)
    fs.run("megafs", "get", link, tmp_path / "got", env=reader)
    assert (tmp_path / "got" / "cat.jpg").read_bytes() == \
        (fs.mnt / "photos" / "cat.jpg").read_bytes()
    # The same credentials cannot write: not a new store beside this one (refused by the
    # server at the first write)...
    r = fs.run("mkfs.megafs", fs.url + "-other", check=False,
               env=dict(reader, MEGAFS_PASSPHRASE="x"))
    assert r.returncode == ExitCode.BAD_CREDENTIALS, r.stderr
    assert "denied" in r.stderr.lower(), r.stderr
    # ... and not this store over its live writer, even with the passphrase and --force.
    r = fs.run("mkfs.megafs", "--force", fs.url, check=False,
               env=dict(reader, MEGAFS_PASSPHRASE=fs.env["MEGAFS_PASSPHRASE"]))
    assert r.returncode == ExitCode.LOCKED, r.stderr
    assert (fs.mnt / "private.txt").read_text() == "not shared: top secret"
