"""Share links against a hostile link holder: the manifest is hostile input.

Whoever holds a link key can seal a manifest; with write access to the store they
can put it, or a re-sealed block, where other link holders fetch it. Each attack
is a row of a table. Path and field attacks are sealed with the share key *and
signed with the owner's key*, so they prove that ``megafs get`` checks hold even
for a manifest the owner signed; signature attacks use other keys. Forging rows
run on the local backend and on S3 (SeaweedFS).
"""

from __future__ import annotations

import copy
import errno
import os
import signal
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import (
    BIN,
    PASSPHRASE,
    LocalStore,
    MegaFS,
    S3Store,
    assert_cli_error,
    rows_expecting_log_errors,
)
from posixlib import ALICE, as_user

from megafs.cli.download import PART_MARK
from megafs.crypto.keys import KeyRing
from megafs.errors import ExitCode
from megafs.store import envelope, superblock
from megafs.store import share as share_format

BS = 64 * 1024
DOC_SIZE = 150_000  # three blocks
INTERRUPT_SIZE = 24 << 20


# -- the owner's filesystem and forging helpers ---------------------------------------


@dataclass
class Owner:
    fs: MegaFS
    keys: KeyRing
    doc_link: str
    folder_link: str
    doc: bytes

    @property
    def store(self):
        return self.fs.store

    def stored_name(self, key: str) -> str:
        """Where the store keeps object *key* (the local backend fans out by 2 hex)."""
        if isinstance(self.store, LocalStore) and "/" in key:
            prefix, hexname = key.split("/")
            return f"{prefix}/{hexname[:2]}/{hexname}"
        return key

    def manifest(self, link: str) -> dict:
        lk = share_format.parse_link(link)
        blob = self.store.read(self.stored_name(share_format.object_key(lk.share_id)))
        return share_format.open_manifest(lk.key, lk.share_id, blob, lk.public_key)

    def forge(self, payload_of) -> str:
        """Publish a new share whose payload is ``payload_of(share_id)``; its link."""
        share_id, key = share_format.new_share()
        blob = envelope.seal(key, envelope.KIND_SHARE, share_format.object_key(share_id),
                             payload_of(share_id))
        if isinstance(self.store, LocalStore):
            (self.store.path / self.stored_name(f"s/{share_id}")).parent.mkdir(exist_ok=True)
        self.store.write(self.stored_name(share_format.object_key(share_id)), blob)
        return share_format.make_link(self.fs.url, share_id, key, self.keys.share_public_key())

    def signed(self, manifest) -> str:
        """A new share of *manifest*, sealed and signed with the owner's own keys."""
        return self.forge(lambda sid: share_format.manifest_payload(
            sid, manifest, self.keys.share_signing))


def _owner(fs: MegaFS) -> Owner:
    fs.mkfs()
    fs.mount()
    doc = os.urandom(DOC_SIZE)
    (fs.mnt / "doc.txt").write_bytes(doc)
    (fs.mnt / "dir" / "sub").mkdir(parents=True)
    (fs.mnt / "dir" / "a.txt").write_text("folder file a")
    (fs.mnt / "dir" / "sub" / "b.txt").write_text("folder file b")
    os.symlink("a.txt", fs.mnt / "dir" / "link")
    doc_link = fs.run("megafs", "share", fs.mnt / "doc.txt").stdout.split()[-1]
    folder_link = fs.run("megafs", "share", fs.mnt / "dir").stdout.split()[-1]
    fs.flush()
    sb = superblock.parse(fs.store.read("superblock"))
    keys = superblock.unlock(sb, passphrase=PASSPHRASE.encode())
    return Owner(fs, keys, doc_link, folder_link, doc)


def _make_store(request, tmp: Path, kind: str):
    if kind == "local":
        return LocalStore(tmp / "store")
    return S3Store(request.getfixturevalue("seaweed"), f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module", params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def owner(request, tmp_path_factory):
    """One filesystem per backend for the whole module, with a file and a folder shared."""
    tmp = tmp_path_factory.mktemp(f"owner-{request.param}")
    store = _make_store(request, tmp, request.param)
    fs = MegaFS(store, tmp)
    try:
        yield _owner(fs)
    finally:
        fs.cleanup()
        if isinstance(store, S3Store):
            store.close()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def fresh_owner(request, tmp_path):
    """A filesystem of its own (for rows that damage stored blocks)."""
    store = _make_store(request, tmp_path, request.param)
    fs = MegaFS(store, tmp_path)
    try:
        yield _owner(fs)
    finally:
        fs.cleanup()
        if isinstance(store, S3Store):
            store.close()


@dataclass
class Scene:
    """Where a download happens: ``cwd`` inside ``outside``, and a victim file."""
    outside: Path
    cwd: Path
    victim: Path

    @classmethod
    def make(cls, tmp_path: Path) -> Scene:
        outside = tmp_path / "outside"
        cwd = outside / "cwd"
        cwd.mkdir(parents=True)
        victim = outside / "victim.txt"
        victim.write_text("the victim's own bytes")
        return cls(outside, cwd, victim)

    def untouched_outside(self) -> None:
        assert sorted(os.listdir(self.outside)) == ["cwd", "victim.txt"]
        assert self.victim.read_text() == "the victim's own bytes"

    def leftovers(self) -> list[str]:
        return [str(p.relative_to(self.cwd)) for p in self.cwd.rglob("*")]


def get(fs: MegaFS, link: str, *args, cwd: Path, env=None) -> subprocess.CompletedProcess:
    env = dict(env or fs.env)
    env.pop("MEGAFS_PASSPHRASE", None)
    return subprocess.run([str(BIN / "megafs"), "get", link, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def _ok(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


# -- the forged-manifest table ----------------------------------------------------------


def _folder(*entries) -> dict:
    return {"v": 2, "kind": "dir", "name": "folder", "block_size": BS,
            "entries": [{"path": "", "type": "dir", "mode": 0o755, "mtime_ns": 0}, *entries]}


def _file_entry(m: dict, path: str) -> dict:
    return dict(m["entries"][0], path=path)


def _symlink(path: str, target: str) -> dict:
    return {"path": path, "type": "symlink", "mode": 0o777, "mtime_ns": 0, "target": target}


def _set(field, value):
    def change(m, scene):
        m["entries"][0][field] = value
        return m
    return change


def _block(index, value):
    def change(m, scene):
        m["entries"][0]["blocks"][0][index] = value
        return m
    return change


def _top(field, value):
    def change(m, scene):
        m[field] = value
        return m
    return change


@dataclass
class Forgery:
    change: object  # (genuine file manifest, scene) -> manifest dict
    expect: int = ExitCode.CORRUPT
    check: object = None  # (owner, scene) -> None, for rows that succeed


def _check_in_cwd(name):
    def check(owner, scene):
        assert (scene.cwd / name).read_bytes() == owner.doc
        assert scene.leftovers() == [name]
    return check


def _check_no_setuid(owner, scene):
    umask = os.umask(0o022)
    os.umask(umask)
    mode = (scene.cwd / "doc.txt").stat().st_mode
    assert stat.S_IMODE(mode) == 0o755 & ~umask, oct(mode)


FORGERIES = {
    # The share's name is reduced to one component: written in the cwd, never outside.
    "name-absolute": Forgery(
        lambda m, s: dict(m, name=str(s.outside / "escaped")), 0, _check_in_cwd("escaped")),
    "name-dotdot": Forgery(lambda m, s: dict(m, name="../escaped"), 0,
                           _check_in_cwd("escaped")),
    "name-is-dotdot": Forgery(lambda m, s: dict(m, name=".."), 0,
                              _check_in_cwd("megafs-share")),
    "path-absolute": Forgery(lambda m, s: _folder(_file_entry(m, str(s.outside / "x")))),
    "path-dotdot": Forgery(lambda m, s: _folder(_file_entry(m, "../escaped"))),
    "path-dot-component": Forgery(lambda m, s: _folder({"path": "d", "type": "dir", "mode": 493,
                                                         "mtime_ns": 0},
                                                        _file_entry(m, "d/./x"))),
    "path-empty-component": Forgery(lambda m, s: _folder(_file_entry(m, "a//x"))),
    "path-nul": Forgery(lambda m, s: _folder(_file_entry(m, "a\x00b"))),
    "path-too-long": Forgery(lambda m, s: _folder(_file_entry(m, "x" * 300))),
    "symlink-then-file-through-it": Forgery(lambda m, s: _folder(
        _symlink("l", str(s.outside)), _file_entry(m, "l/victim.txt"))),
    "symlink-to-victim-then-same-path": Forgery(lambda m, s: _folder(
        _symlink("v", str(s.victim)), _file_entry(m, "v"))),
    "duplicate-file": Forgery(lambda m, s: _folder(_file_entry(m, "a"), _file_entry(m, "a"))),
    "duplicate-dir-then-file": Forgery(lambda m, s: _folder(
        {"path": "d", "type": "dir", "mode": 493, "mtime_ns": 0}, _file_entry(m, "d"))),
    "file-in-unlisted-folder": Forgery(lambda m, s: _folder(_file_entry(m, "nodir/x"))),
    "setuid-mode": Forgery(_set("mode", 0o6755), 0, _check_no_setuid),
    "huge-size": Forgery(_set("size", 2**50)),
    "size-smaller-than-blocks": Forgery(_set("size", 10)),
    "size-negative": Forgery(_set("size", -1)),
    "size-not-a-number": Forgery(_set("size", "150000")),
    "size-bool": Forgery(_set("size", True)),
    "mode-string": Forgery(_set("mode", "rwxr-xr-x")),
    "mtime-float": Forgery(_set("mtime_ns", 1.5)),
    "type-unknown": Forgery(_set("type", "fifo")),
    "blocks-not-a-list": Forgery(_set("blocks", {"0": 1})),
    "block-short": Forgery(lambda m, s: (m["entries"][0]["blocks"][0].pop(), m)[1]),
    "block-number-repeated": Forgery(lambda m, s: (m["entries"][0]["blocks"].append(
        m["entries"][0]["blocks"][0]), m)[1]),
    "block-object-key-foreign": Forgery(_block(1, "../../superblock")),
    "block-key-not-hex": Forgery(_block(2, "zz" * 32)),
    "block-hash-missing": Forgery(_block(4, None)),
    "block-length-too-big": Forgery(_block(3, BS + 1)),
    "block-size-zero": Forgery(_top("block_size", 0)),
    "kind-unknown": Forgery(_top("kind", "device")),
    "kind-file-with-two-entries": Forgery(lambda m, s: dict(
        m, entries=m["entries"] + [_file_entry(m, "x")])),
    "entries-empty": Forgery(_top("entries", [])),
    "entries-not-a-list": Forgery(_top("entries", "everything")),
    "manifest-a-list": Forgery(lambda m, s: [m]),
    "version-1-inside-a-version-2-payload": Forgery(_top("v", 1)),
}


@pytest.mark.parametrize("row", list(FORGERIES), ids=list(FORGERIES))
def test_forged_manifest_signed_by_the_owner(owner, tmp_path, row):
    case = FORGERIES[row]
    scene = Scene.make(tmp_path)
    link = owner.signed(case.change(copy.deepcopy(owner.manifest(owner.doc_link)), scene))
    r = get(owner.fs, link, cwd=scene.cwd)
    if case.expect:
        assert_cli_error(r, "megafs", case.expect)
        assert scene.leftovers() == []
    else:
        _ok(r)
        case.check(owner, scene)
    scene.untouched_outside()


def _payload_forged_key(owner, sid):
    body = share_format.manifest_payload(sid, owner.manifest(owner.doc_link),
                                         Ed25519PrivateKey.generate())
    return body


def _payload_flipped_signature(owner, sid):
    body = bytearray(share_format.manifest_payload(sid, owner.manifest(owner.doc_link),
                                                   owner.keys.share_signing))
    body[5] ^= 1
    return bytes(body)


def _payload_other_share_id(owner, sid):
    """A manifest the owner signed for another share, copied under this share."""
    return share_format.manifest_payload("0" * 32, owner.manifest(owner.doc_link),
                                         owner.keys.share_signing)


def _payload_version_1(owner, sid):
    import json
    m = owner.manifest(owner.doc_link)
    for entry in m["entries"]:
        entry["blocks"] = [b[:4] for b in entry["blocks"]]
    return json.dumps(dict(m, v=1)).encode()


def _payload_not_json(owner, sid):
    body = b"{not json"
    return bytes([2]) + owner.keys.share_signing.sign(
        share_format.SIGNATURE_LABEL + sid.encode() + b"\x00" + body) + body


SIGNATURE_ATTACKS = {
    "signed-with-another-key": _payload_forged_key,
    "signature-flipped": _payload_flipped_signature,
    "signature-of-another-share": _payload_other_share_id,
    "downgrade-to-unsigned-version-1": _payload_version_1,
    "signed-garbage-not-json": _payload_not_json,
    "truncated-payload": lambda owner, sid: bytes([2]) + b"\x00" * 10,
}


@pytest.mark.parametrize("row", list(SIGNATURE_ATTACKS), ids=list(SIGNATURE_ATTACKS))
def test_manifest_resealed_with_the_share_key(owner, tmp_path, row):
    """A link holder re-seals the manifest with the share key (which they have)."""
    scene = Scene.make(tmp_path)
    link = owner.forge(lambda sid: SIGNATURE_ATTACKS[row](owner, sid))
    assert_cli_error(get(owner.fs, link, cwd=scene.cwd), "megafs", ExitCode.CORRUPT)
    assert scene.leftovers() == []
    scene.untouched_outside()


def _as_one_block_objects(owner: Owner) -> None:
    """Store each block of the shared document alone under its block id, as a format-2
    megafs did (a version 1 or 2 manifest can name nothing else)."""
    for block in owner.manifest(owner.doc_link)["entries"][0]["blocks"]:
        holder, offset, length = block[5:8]
        blob = owner.store.read(owner.stored_name(holder))[offset:offset + length]
        if isinstance(owner.store, LocalStore):
            (owner.store.path / owner.stored_name(block[1])).parent.mkdir(parents=True,
                                                                            exist_ok=True)
        owner.store.write(owner.stored_name(block[1]), blob)


def test_old_unsigned_link_still_downloads_with_a_warning(owner, tmp_path):
    scene = Scene.make(tmp_path)
    _as_one_block_objects(owner)
    link = owner.forge(lambda sid: _payload_version_1(owner, sid))
    old_link = link[:link.index("#") + 1 + 43]  # the key only, as links were
    r = get(owner.fs, old_link, "doc.txt", cwd=scene.cwd)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("megafs: warning: this link is unsigned")
    assert (scene.cwd / "doc.txt").read_bytes() == owner.doc


# -- stored blocks changed by a link holder with write access --------------------------


def _first_block(owner: Owner) -> str:
    return owner.manifest(owner.doc_link)["entries"][0]["blocks"][0][1]


def _where(owner: Owner, block_id: str, blocks: list | None = None
           ) -> tuple[str, int, int, int]:
    """(object holding the block's envelope, offset, length, plaintext length), as the
    manifest (version 3) of the document's link lists them (or *blocks*)."""
    blocks = blocks or owner.manifest(owner.doc_link)["entries"][0]["blocks"]
    block = next(b for b in blocks if b[1] == block_id)
    return block[5], block[6], block[7], block[3]


def _splice(owner: Owner, holder: str, offset: int, data: bytes) -> None:
    blob = bytearray(owner.store.read(owner.stored_name(holder)))
    blob[offset:offset + len(data)] = data
    owner.store.write(owner.stored_name(holder), bytes(blob))


def _flip_a_bit(owner: Owner, objkey: str) -> None:
    holder, offset, length, _ = _where(owner, objkey)
    blob = owner.store.read(owner.stored_name(holder))
    _splice(owner, holder, offset + length - 3, bytes([blob[offset + length - 3] ^ 1]))


def _reseal(owner: Owner, objkey: str, blocks: list | None = None) -> None:
    """Re-seal the block under its own key K_obj, which every link to it carries, in the
    place of the original envelope (same length: random bytes of the same length)."""
    blocks = blocks or owner.manifest(owner.doc_link)["entries"][0]["blocks"]
    holder, offset, length, plain = _where(owner, objkey, blocks)
    keyhex = next(b[2] for b in blocks if b[1] == objkey)
    forged = envelope.seal(bytes.fromhex(keyhex), envelope.KIND_BLOCK, objkey,
                           os.urandom(plain), compress=False, full=BS)
    assert len(forged) == length
    _splice(owner, holder, offset, forged)


def _delete(owner: Owner, objkey: str) -> None:
    holder = _where(owner, objkey)[0]
    if isinstance(owner.store, LocalStore):
        (owner.store.path / owner.stored_name(holder)).unlink()
    else:
        owner.store.delete(holder)


BLOCK_ATTACKS = {"bit-flipped": _flip_a_bit, "resealed-under-its-own-key": _reseal,
                 "deleted": _delete}


@pytest.mark.parametrize("row", list(BLOCK_ATTACKS), ids=list(BLOCK_ATTACKS))
def test_changed_block_leaves_no_file(fresh_owner, tmp_path, row):
    owner = fresh_owner
    # A second link to the same bytes: a folder holding a copy (deduplicated block).
    (owner.fs.mnt / "dir" / "copy.txt").write_bytes(owner.doc)
    owner.fs.flush()
    BLOCK_ATTACKS[row](owner, _first_block(owner))
    scene = Scene.make(tmp_path)
    line = assert_cli_error(get(owner.fs, owner.doc_link, cwd=scene.cwd), "megafs",
                            ExitCode.CORRUPT)
    assert "doc.txt" in line
    line = assert_cli_error(get(owner.fs, owner.folder_link, cwd=scene.cwd), "megafs",
                            ExitCode.CORRUPT)
    # deleting the pack takes the folder's other files in it too; any of them is named
    assert "copy.txt" in line or (row == "deleted" and "missing from the store" in line)
    assert scene.leftovers() == []
    scene.untouched_outside()


# -- interrupted downloads ---------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_download_leaves_nothing_complete_looking(mounted, tmp_path, signum):
    fs = mounted
    with open(fs.mnt / "big.bin", "wb") as f:
        f.write(os.urandom(INTERRUPT_SIZE))
    link = fs.run("megafs", "share", fs.mnt / "big.bin").stdout.split()[-1]
    fs.flush()
    scene = Scene.make(tmp_path)
    env = dict(fs.env, MEGAFS_FAULTS="latency=0.05")  # each GET takes 50 ms or more
    env.pop("MEGAFS_PASSPHRASE")
    proc = subprocess.Popen([str(BIN / "megafs"), "get", link], cwd=scene.cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until some of it is written
            parts = [p for p in scene.cwd.iterdir() if PART_MARK in p.name]
            if parts and parts[0].stat().st_blocks * 512 > 2 * BS:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        else:
            raise AssertionError("the download wrote nothing in 30 s")
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert err.strip().splitlines()[-1] == "megafs: interrupted"
    assert "Traceback" not in err
    assert scene.leftovers() == []


# -- destinations, as cp does it -----------------------------------------------------------


def _dest_file_into_dir(owner, cwd):
    (cwd / "inbox").mkdir()
    _ok(get(owner.fs, owner.doc_link, "inbox", cwd=cwd))
    assert (cwd / "inbox" / "doc.txt").read_bytes() == owner.doc


def _dest_folder_into_dir(owner, cwd):
    (cwd / "inbox").mkdir()
    (cwd / "inbox" / "mine.txt").write_text("mine")
    _ok(get(owner.fs, owner.folder_link, "inbox", cwd=cwd))
    assert (cwd / "inbox" / "dir" / "sub" / "b.txt").read_text() == "folder file b"
    assert sorted(os.listdir(cwd / "inbox")) == ["dir", "mine.txt"]  # not spilled


def _dest_existing_file(owner, cwd):
    (cwd / "doc.txt").write_text("keep me")
    line = assert_cli_error(get(owner.fs, owner.doc_link, "doc.txt", cwd=cwd), "megafs",
                            ExitCode.ALREADY_EXISTS)
    assert "doc.txt" in line and "--force" in line
    assert (cwd / "doc.txt").read_text() == "keep me"
    assert os.listdir(cwd) == ["doc.txt"]


def _dest_existing_file_forced(owner, cwd):
    (cwd / "doc.txt").write_text("replace me")
    _ok(get(owner.fs, owner.doc_link, "--force", cwd=cwd))
    assert (cwd / "doc.txt").read_bytes() == owner.doc
    assert os.listdir(cwd) == ["doc.txt"]


def _dest_symlink_at_name(owner, cwd):
    victim = cwd.parent / "victim.txt"
    os.symlink(victim, cwd / "doc.txt")
    assert_cli_error(get(owner.fs, owner.doc_link, cwd=cwd), "megafs",
                     ExitCode.ALREADY_EXISTS)
    _ok(get(owner.fs, owner.doc_link, "--force", cwd=cwd))
    assert not (cwd / "doc.txt").is_symlink()  # the link was replaced, not followed
    assert (cwd / "doc.txt").read_bytes() == owner.doc


def _dest_missing_parent(owner, cwd):
    line = assert_cli_error(get(owner.fs, owner.doc_link, "no/such/place.txt", cwd=cwd),
                            "megafs", ExitCode.NO_SUCH_PATH)
    assert "no/such" in line
    assert os.listdir(cwd) == []


def _dest_folder_twice(owner, cwd):
    _ok(get(owner.fs, owner.folder_link, cwd=cwd))
    before = (cwd / "dir" / "a.txt").stat().st_mtime_ns
    line = assert_cli_error(get(owner.fs, owner.folder_link, cwd=cwd), "megafs",
                            ExitCode.ALREADY_EXISTS)
    assert "a.txt" in line or "b.txt" in line
    _ok(get(owner.fs, owner.folder_link, "--force", cwd=cwd))
    assert os.readlink(cwd / "dir" / "link") == "a.txt"
    assert (cwd / "dir" / "a.txt").read_text() == "folder file a"
    assert (cwd / "dir" / "a.txt").stat().st_mtime_ns == before
    assert sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*")) == [
        "dir", "dir/a.txt", "dir/link", "dir/sub", "dir/sub/b.txt"]


def _dest_new_name(owner, cwd):
    _ok(get(owner.fs, owner.folder_link, "copy", cwd=cwd))
    assert (cwd / "copy" / "a.txt").read_text() == "folder file a"
    assert os.listdir(cwd) == ["copy"]


DESTINATIONS = {
    "file-into-existing-dir": _dest_file_into_dir,
    "folder-into-existing-dir": _dest_folder_into_dir,
    "existing-file-without-force": _dest_existing_file,
    "existing-file-with-force": _dest_existing_file_forced,
    "symlink-at-the-name": _dest_symlink_at_name,
    "missing-parent": _dest_missing_parent,
    "folder-twice": _dest_folder_twice,
    "folder-under-a-new-name": _dest_new_name,
}


@pytest.mark.parametrize("owner", ["local"], indirect=True)
@pytest.mark.parametrize("row", list(DESTINATIONS), ids=list(DESTINATIONS))
def test_destination(owner, tmp_path, row):
    scene = Scene.make(tmp_path)
    DESTINATIONS[row](owner, scene.cwd)
    assert scene.victim.read_text() == "the victim's own bytes"


@pytest.mark.parametrize("owner", ["local"], indirect=True)
def test_republished_share_keeps_its_link(owner, tmp_path):
    fs = owner.fs
    (fs.mnt / "changing.txt").write_text("first")
    link = fs.run("megafs", "share", fs.mnt / "changing.txt").stdout.split()[-1]
    _ok(get(fs, link, "one", cwd=tmp_path))
    (fs.mnt / "changing.txt").write_text("second, longer")
    fs.flush()
    _ok(get(fs, link, "two", cwd=tmp_path))
    assert (tmp_path / "one").read_text() == "first"
    assert (tmp_path / "two").read_text() == "second, longer"


# -- share and control attributes on an allow_other mount ------------------------------------


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("allow-other")
    fs = MegaFS(LocalStore(tmp / "store"), tmp)
    try:
        fs.mkfs()
        fs.mount(args=("-o", "allow_other"))
        os.chmod(fs.mnt, 0o755)
        (fs.mnt / "secret.txt").write_text("root only")
        os.chmod(fs.mnt / "secret.txt", 0o644)
        fs.run("megafs", "share", fs.mnt / "secret.txt")
        yield fs
    finally:
        fs.cleanup()


XATTR_CALLS = {
    "get-shares": (os.getxattr, ".", "megafs.shares"),
    "get-share-of-a-file": (os.getxattr, "secret.txt", "megafs.share"),
    "get-stats": (os.getxattr, ".", "megafs.stats"),
    "get-status": (os.getxattr, ".", "megafs.status"),
    "get-pid": (os.getxattr, ".", "megafs.pid"),
    "set-ctrl-flush": (os.setxattr, ".", "megafs.ctrl", b"flush"),
    "set-share-create": (os.setxattr, "secret.txt", "megafs.share", b"create"),
    "set-share-revoke": (os.setxattr, "secret.txt", "megafs.share", b"revoke"),
    "set-unshare": (os.setxattr, ".", "megafs.unshare", b"0" * 32),
}


@pytest.mark.parametrize("row", list(XATTR_CALLS), ids=list(XATTR_CALLS))
def test_control_attributes_only_for_the_owner_and_root(shared_mount, row):
    fn, *args = XATTR_CALLS[row]
    try:
        as_user(shared_mount.mnt, ALICE, ALICE, fn, *args)
        got = 0
    except OSError as e:
        got = e.errno
    assert got == errno.EACCES, f"another user's {row}: errno {got}"
    if fn is os.getxattr:  # the owner (root here) still gets the answer
        assert os.getxattr(shared_mount.mnt / args[0], args[1])
    assert (shared_mount.mnt / "secret.txt").read_text() == "root only"
    assert "megafs+" in shared_mount.run("megafs", "shares", shared_mount.mnt).stdout


# -- objects stored before their SHA-256 was recorded ----------------------------------------


def _forget_hashes(fs: MegaFS) -> None:
    """Make every object look stored by an older megafs (objects.sha256 NULL)."""
    import apsw

    fs.umount()
    conn = apsw.Connection(str(fs.cache_dir / "metadata.db"))
    try:
        assert conn.execute("SELECT count(*) FROM objects WHERE sha256 IS NULL"
                            ).fetchone()[0] == 0  # the uploader records every hash
        conn.execute("UPDATE objects SET sha256 = NULL")
    finally:
        conn.close()
    fs.mount()


OLDER_OBJECTS = ["genuine", "resealed-before-sharing"]


@pytest.mark.parametrize("row", rows_expecting_log_errors(OLDER_OBJECTS, {
    "resealed-before-sharing": (
        r"ERROR: setxattr: data block b/[0-9a-f]+ does not match its hash$",
        r"ERROR: share [0-9a-f]+ not republished: data block b/[0-9a-f]+ does not match its hash$"),
}))
def test_sharing_older_objects_records_verified_hashes(mounted, tmp_path, row):
    fs = mounted
    data = os.urandom(DOC_SIZE)
    (fs.mnt / "old.bin").write_bytes(data)
    fs.flush()
    sb = superblock.parse(fs.store.read("superblock"))
    owner = Owner(fs, superblock.unlock(sb, passphrase=PASSPHRASE.encode()), "", "", data)
    # An earlier link to the file, revoked since: its holder kept the block keys.
    earlier = fs.run("megafs", "share", fs.mnt / "old.bin").stdout.split()[-1]
    owner.doc_link = earlier
    blocks = owner.manifest(earlier)["entries"][0]["blocks"]
    fs.run("megafs", "unshare", earlier)
    _forget_hashes(fs)
    if row == "resealed-before-sharing":
        objkey = blocks[1][1]
        _reseal(owner, objkey, blocks)
        # The owner notices (keyed dedup hash, a key no link holder has): no link.
        r = fs.run("megafs", "share", fs.mnt / "old.bin", check=False)
        assert r.returncode != 0 and "megafs+" not in r.stdout
        assert r.stderr.strip() == f"megafs: cannot share {fs.mnt / 'old.bin'}: Input/output error"
        assert f"data block {objkey} does not match its hash" in fs.log()
        return
    link = fs.run("megafs", "share", fs.mnt / "old.bin").stdout.split()[-1]
    _ok(get(fs, link, "got", cwd=tmp_path))
    assert (tmp_path / "got").read_bytes() == data
    assert all(b[4] for b in owner.manifest(link)["entries"][0]["blocks"])
