"""Browser links (docs/format.md §5b): the download page in headless Chromium against
SeaweedFS with anonymous read set by ``megafs web enable``, and ``megafs get`` of the same
links without credentials. One filesystem for the module (bucket ``megafs-web``, a prefix
of its own), shared files made once; every test opens the page in a fresh document."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
import uuid
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers import MegaFS, S3Store, assert_cli_error, tool_env
from helpers.browser import Browser, chromium_missing, wait_download

from megafs.errors import ExitCode
from megafs.store import envelope
from megafs.store import share as share_format
from megafs.store.packs import PACK_SLACK, PACK_UNIT
from megafs.web import page as web_page

pytestmark = pytest.mark.s3

WEB_BUCKET = "megafs-web"
BIG = 5 << 20


@dataclasses.dataclass
class Site:
    fs: MegaFS
    store: S3Store
    links: dict[str, tuple[str, str]]  #: name -> (browser link, megafs+ link)
    before_enable: object  #: the `megafs share` run before `megafs web enable`


def _share(fs, path):
    return fs.run("megafs", "share", path)


def _links(run) -> tuple[str, str]:
    web, plus = run.stdout.split()
    return web, plus


def _manifest(store: S3Store, plus_link: str) -> dict:
    link = share_format.parse_link(plus_link)
    return share_format.open_manifest(link.key, link.share_id,
                                      store.read(share_format.object_key(link.share_id)),
                                      link.public_key)


def _publish(store: S3Store, raw: dict, version: int) -> str:
    """*raw* as a new share signed with a key of its own (version 1: bare JSON, the link
    still carrying a public key); returns its browser link."""
    share_id, key = share_format.new_share()
    signer = Ed25519PrivateKey.generate()
    if version == 1:
        blob = envelope.seal(key, envelope.KIND_SHARE, share_format.object_key(share_id),
                             json.dumps({**raw, "v": 1}).encode())
    else:
        blob = share_format.seal_manifest(key, share_id, {**raw, "v": version}, signer)
    store.write(share_format.object_key(share_id), blob)
    return share_format.web_link(store.url, share_id, key, signer.public_key().public_bytes_raw())


def _unsafe_path(store: S3Store, plus_link: str) -> str:
    """A folder manifest, correctly signed, naming a file outside the download."""
    raw = _manifest(store, plus_link)
    file = {**next(e for e in raw["entries"] if e["type"] == "file"), "path": "../escaped.jpg"}
    return _publish(store, {**raw, "entries": [raw["entries"][0], file]}, raw["v"])


def _downgraded(store: S3Store, plus_link: str) -> str:
    return _publish(store, _manifest(store, plus_link), 1)


def _blocks(store: S3Store, plus_link: str) -> list[list]:
    """The block entries (version 3) of the file *plus_link* shares."""
    return _manifest(store, plus_link)["entries"][0]["blocks"]


def _unpacked(store: S3Store, plus_link: str, version: int) -> str:
    """The share of *plus_link* with every block's envelope copied out of its pack into
    an object of its own under its block id, as formats 1 and 2 stored blocks; listed
    by a version 2 manifest (the whole object), or by a version 3 one naming those
    objects (offset 0). Signed with a key of its own: returns the new browser link."""
    raw = _manifest(store, plus_link)
    assert raw["v"] == 3
    for entry in raw["entries"]:
        blocks = []
        for number, block_id, k_obj, length, sha, holder, offset, size in entry.get("blocks", []):
            assert holder.startswith("p/")
            env = store.read(holder)[offset:offset + size]
            assert hashlib.sha256(env).hexdigest() == sha
            store.write(block_id, env)
            blocks.append([number, block_id, k_obj, length, sha]
                          + ([block_id, 0, size] if version == 3 else []))
        entry["blocks"] = blocks
    return _publish(store, raw, version)


def _odd_holder(store: S3Store, plus_link: str) -> str:
    """A version 3 manifest, correctly signed, naming the share's own manifest object as
    the object holding a block (only packs p/... and the block's own b/... are allowed)."""
    raw = _manifest(store, plus_link)
    link = share_format.parse_link(plus_link)
    raw["entries"][0]["blocks"][0][5] = share_format.object_key(link.share_id)
    return _publish(store, raw, 3)


#: Like the page (web/src/main.js, docs/format.md §5b): neighbouring envelopes of one
#: object are read together, up to 4 MiB a request, skipping up to 64 KiB between two.
COALESCE_MAX, COALESCE_GAP = 4 << 20, 64 << 10


def _expected_reads(blocks: list[list]) -> list[tuple[str, int, int]]:
    """(object, offset, length) of the Range GETs the page makes for version 3 *blocks*."""
    by_object: dict[str, list[tuple[int, int]]] = {}
    for block in blocks:
        by_object.setdefault(block[5], []).append((block[6], block[6] + block[7]))
    reads = []
    for key, ranges in by_object.items():
        run = None
        for start, end in sorted(ranges):
            if run and start <= run[1] + COALESCE_GAP and max(run[1], end) - run[0] <= \
                    COALESCE_MAX:
                run[1] = max(run[1], end)
            else:
                run = [start, end]
                reads.append((key, run))
    return sorted((key, start, end - start) for key, (start, end) in reads)


#: Records the page's fetches (path and Range header), before the page's own script.
_RECORD_FETCHES = """
window.megafsFetches = [];
const pageFetch = window.fetch;
window.fetch = function (url, options) {
  window.megafsFetches.push([new URL(url).pathname,
                             (options && options.headers && options.headers.Range) || null]);
  return pageFetch.apply(this, arguments);
};
"""


def _block_reads(browser, prefix: str) -> list[tuple[str, int, int]]:
    """(object, offset, length) of every block object the page fetched (length -1: the
    whole object, no Range header)."""
    reads = []
    for path, wanted in browser.driver.execute_script("return window.megafsFetches"):
        key = path.split(f"/{prefix}/", 1)[1]
        if key.startswith(("p/", "b/")):
            if wanted is None:
                reads.append((key, 0, -1))
            else:
                first, last = map(int, wanted.removeprefix("bytes=").split("-"))
                reads.append((key, first, last + 1 - first))
    return sorted(reads)


@pytest.fixture(scope="module")
def site(seaweed, tmp_path_factory):
    server = dataclasses.replace(seaweed, bucket=WEB_BUCKET)
    server.request("PUT", f"/{WEB_BUCKET}")  # 200, or 409 when it exists
    tmp = tmp_path_factory.mktemp("web")
    store = S3Store(server, f"w-{uuid.uuid4().hex[:12]}")
    fs = MegaFS(store, tmp)
    try:
        fs.mkfs()
        # no compaction: packs stay where the manifests (and the tests) found them
        fs.mount(args=("--compact-below", "0"))
        # First and together: neighbour.bin and tamper.bin go into the same pack.
        for name in ("neighbour.bin", "tamper.bin", "revoked.bin"):
            (fs.mnt / name).write_bytes(os.urandom(200_000))
        big = os.urandom(BIG - (1 << 20)) + (b"compressible megafs text " * 41944)[:1 << 20]
        assert len(big) == BIG
        (fs.mnt / "big.bin").write_bytes(big)
        (fs.mnt / "photos" / "sub").mkdir(parents=True)
        (fs.mnt / "photos" / "cat.jpg").write_bytes(os.urandom(300_000))
        (fs.mnt / "photos" / "sub" / "note.txt").write_text("a note\n" * 1000)
        (fs.mnt / "photos" / "empty.txt").write_bytes(b"")
        os.symlink("cat.jpg", fs.mnt / "photos" / "link")
        fs.flush()
        before = _share(fs, fs.mnt / "big.bin")
        fs.run("megafs", "web", "enable", store.url)
        links = {name: _links(_share(fs, fs.mnt / name))
                 for name in ("big.bin", "photos", "neighbour.bin", "tamper.bin",
                              "revoked.bin")}
        # tamper.bin: a byte of its block 1's envelope (ciphertext) flipped in its pack,
        # which holds neighbour.bin's blocks too
        tampered = _blocks(store, links["tamper.bin"][1])
        neighbours = _blocks(store, links["neighbour.bin"][1])
        packs = {b[5] for b in tampered + neighbours}
        assert len(packs) == 1 and packs.pop().startswith("p/"), \
            "neighbour.bin and tamper.bin were not stored in one pack"
        _, _, _, _, _, pack, offset, _ = tampered[1]
        data = bytearray(store.read(pack))
        data[offset + envelope.HEADER.size + 5] ^= 1
        store.write(pack, bytes(data))
        fs.run("megafs", "unshare", links["revoked.bin"][0])  # the browser link revokes too
        links["v2"] = (_unpacked(store, links["big.bin"][1], 2), "")
        links["v3-own-objects"] = (_unpacked(store, links["photos"][1], 3), "")
        links["odd-holder"] = (_odd_holder(store, links["big.bin"][1]), "")
        links["unsafe-path"] = (_unsafe_path(store, links["photos"][1]), "")
        links["downgraded"] = (_downgraded(store, links["big.bin"][1]), "")
        yield Site(fs, store, links, before)
    finally:
        fs.cleanup()
        store.close()


@pytest.fixture(scope="module")
def browser():
    why = chromium_missing()
    if why:
        pytest.fail(why)
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def _wrong_key(link: str) -> str:
    parsed = share_format.parse_link(link)
    return share_format.web_link(_storage(link), parsed.share_id, os.urandom(32),
                                 parsed.public_key)


def _forged(link: str) -> str:
    parsed = share_format.parse_link(link)
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    return share_format.web_link(_storage(link), parsed.share_id, parsed.key, other)


def _storage(web_link: str) -> str:
    """The s3+http:// URL of a browser link's store."""
    base = share_format.parse_link(web_link).url
    return "s3+http://" + base.removeprefix("http://")


# -- megafs share / web enable -------------------------------------------------------

def test_share_prints_both_links_and_the_policy_until_enabled(site):
    before = site.before_enable
    web, plus = _links(before)
    store_url = site.store.url
    assert web.startswith(share_format.web_base(store_url) + "/megafs.html#s=")
    assert plus.startswith(f"megafs+{store_url}/s/")
    assert web.split("#s=")[1][:32] == plus.split("/s/")[1][:32]
    assert web.split("&k=")[1] == plus.split("#")[1]
    assert "the browser link does not work yet" in before.stderr
    assert '"s3:GetObject"' in before.stderr and "ListBucket" not in before.stderr
    assert f'{site.store.prefix}/p/*"' in before.stderr  # packs: format 3's blocks
    after = _share(site.fs, site.fs.mnt / "big.bin")
    assert _links(after) == (web, plus) and after.stderr == ""


def test_share_warns_when_the_policy_predates_packs(site, monkeypatch):
    """A bucket whose policy was set before packs (s/*, b/* and the page, no p/*): the
    share and the page open anonymously, its blocks do not, and megafs share says so."""
    import trio

    from megafs.backends import s3web
    from megafs.backends.s3 import S3Backend

    for name, value in tool_env().items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)

    async def policy(change=None):
        backend = S3Backend.from_url(site.store.url)
        try:
            current = await s3web.get_policy(backend)
            if change is not None:
                await s3web.put_policy(backend, change(current))
            return current
        finally:
            await backend.aclose()

    sid = s3web.statement_id(site.store.server.bucket, site.store.prefix)

    def without_packs(current):
        old = json.loads(json.dumps(current))
        for statement in old["Statement"]:
            if statement["Sid"] == sid:
                statement["Resource"] = [r for r in statement["Resource"]
                                         if not r.endswith("/p/*")]
        return old

    current = trio.run(policy, without_packs)
    try:
        r = _share(site.fs, site.fs.mnt / "big.bin")
    finally:
        trio.run(policy, lambda _: current)
    assert _links(r) == site.links["big.bin"]
    assert "an anonymous GET of a block of the share got HTTP 403" in r.stderr
    assert f'{site.store.prefix}/p/*"' in r.stderr
    assert _share(site.fs, site.fs.mnt / "big.bin").stderr == ""  # the policy is back


def test_anonymous_read_covers_links_only(site):
    import httpx

    base = share_format.web_base(site.store.url)
    web = site.links["big.bin"][0]
    share_id = share_format.parse_link(web).share_id
    with httpx.Client() as client:
        assert client.get(f"{base}/s/{share_id}").status_code == 200
        page = client.get(f"{base}/megafs.html")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        pack = _blocks(site.store, site.links["big.bin"][1])[0][5]
        assert pack.startswith("p/")
        ranged = client.get(f"{base}/{pack}", headers={"Range": "bytes=0-3"})
        assert ranged.status_code == 206 and ranged.content == b"MGFS"
        metadata = next(key for key in site.store.listing() if key.startswith("m/"))
        for private in ("superblock", "head", "lock", metadata):
            assert client.get(f"{base}/{private}").status_code == 403, private
        listing = client.get(f"{share_format.web_base(site.store.url).rsplit('/', 1)[0]}"
                             f"?list-type=2")
        assert listing.status_code == 403


def test_get_of_a_browser_link_needs_no_credentials(site, tmp_path):
    env = tool_env()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)
    env["HOME"] = str(tmp_path)  # no authinfo file either
    web = site.links["big.bin"][0]
    site.fs.run("megafs", "get", web, tmp_path / "big.bin", env=env)
    assert (tmp_path / "big.bin").read_bytes() == (site.fs.mnt / "big.bin").read_bytes()
    site.fs.run("megafs", "get", site.links["photos"][0], tmp_path / "p", env=env)
    assert (tmp_path / "p" / "sub" / "note.txt").read_text() == "a note\n" * 1000
    assert os.readlink(tmp_path / "p" / "link") == "cat.jpg"
    site.fs.run("megafs", "get", site.links["v2"][0], tmp_path / "v2.bin", env=env)
    assert (tmp_path / "v2.bin").read_bytes() == (site.fs.mnt / "big.bin").read_bytes()
    site.fs.run("megafs", "get", site.links["v3-own-objects"][0], tmp_path / "own", env=env)
    assert (tmp_path / "own" / "cat.jpg").read_bytes() == \
        (site.fs.mnt / "photos" / "cat.jpg").read_bytes()
    site.fs.run("megafs", "get", site.links["neighbour.bin"][0], tmp_path / "n.bin", env=env)
    assert (tmp_path / "n.bin").read_bytes() == (site.fs.mnt / "neighbour.bin").read_bytes()


def _https(site, link):
    """*link* through the gateway's TLS port (its certificate is signed by the test CA)."""
    return link.replace(f"http://127.0.0.1:{site.store.server.s3_port}/",
                        f"https://127.0.0.1:{site.store.server.https_port}/")


def test_get_of_an_https_browser_link(site, tmp_path):
    env = tool_env(AWS_CA_BUNDLE=site.store.server.ca_file)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name)
    web = _https(site, site.links["big.bin"][0])
    assert web.startswith("https://")
    site.fs.run("megafs", "get", web, tmp_path / "big.bin", env=env)
    assert (tmp_path / "big.bin").read_bytes() == (site.fs.mnt / "big.bin").read_bytes()


@pytest.mark.parametrize(("link", "code", "message"), [
    pytest.param(lambda site: site.links["revoked.bin"][0], ExitCode.SHARE_NOT_FOUND,
                 "revoked", id="revoked"),
    pytest.param(lambda site: site.links["tamper.bin"][0], ExitCode.CORRUPT, "tampered",
                 id="tampered-block"),
    pytest.param(lambda site: _wrong_key(site.links["big.bin"][0]), ExitCode.CORRUPT,
                 "key commitment", id="wrong-key"),
    pytest.param(lambda site: _forged(site.links["big.bin"][0]), ExitCode.CORRUPT, "forged",
                 id="forged-signature"),
    pytest.param(lambda site: site.links["unsafe-path"][0], ExitCode.CORRUPT,
                 "leaves the download", id="path-escapes"),
    pytest.param(lambda site: site.links["odd-holder"][0], ExitCode.CORRUPT,
                 "block 0 names a bad object", id="block-in-a-manifest-object"),
    pytest.param(lambda site: site.links["downgraded"][0], ExitCode.CORRUPT, "downgraded",
                 id="downgraded-to-unsigned"),
    pytest.param(lambda site: site.links["big.bin"][0].replace(
        f":{site.store.server.s3_port}/", ":9/"), ExitCode.BACKEND_UNAVAILABLE,
        "cannot reach http://127.0.0.1:9/", id="unreachable-store"),
    pytest.param(lambda site: site.links["big.bin"][0].replace(site.store.prefix, "nothing"),
                 ExitCode.SHARE_NOT_FOUND, "does not allow anonymous reading",
                 id="no-anonymous-read"),
])
def test_get_of_a_browser_link_refuses(site, tmp_path, link, code, message):
    r = site.fs.run("megafs", "get", link(site), tmp_path / "out", check=False)
    assert message in assert_cli_error(r, "megafs", code)
    assert list(tmp_path.iterdir()) == []


# -- the page in a browser -----------------------------------------------------------

def test_page_downloads_a_5_mib_file(site, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    script = browser.before_page_scripts(_RECORD_FETCHES)
    try:
        browser.open(site.links["big.bin"][0], tmp_path)
    finally:
        browser.forget_script(script)
    assert browser.wait_status() == "ready"
    focused = browser.driver.switch_to.active_element  # the keyboard is enough
    assert focused.get_attribute("id") == "download"
    focused.send_keys(Keys.ENTER)
    assert browser.wait_status() == "done"
    got = wait_download(tmp_path, "big.bin")
    assert got.read_bytes() == (site.fs.mnt / "big.bin").read_bytes()
    assert browser.driver.find_element("id", "progress-text").text == "5.0 MiB of 5.0 MiB"
    # Every request went to the page's own origin (the store), none elsewhere.
    origins = browser.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin)"
        ".concat([location.origin])")
    assert set(origins) == {origins[-1]}
    # the manifest, then its blocks by Range GETs of neighbouring envelopes in packs
    blocks = _blocks(site.store, site.links["big.bin"][1])
    reads = _block_reads(browser, site.store.prefix)
    assert reads == _expected_reads(blocks) and len(reads) < len(blocks) == 80
    assert len(origins) == 1 + len(reads) + 1


@pytest.mark.parametrize(("name", "saved", "source"), [
    pytest.param("v2", "big.bin", "big.bin", id="version-2-one-object-per-block"),
    pytest.param("v3-own-objects", "photos.zip", "photos", id="version-3-own-objects"),
])
def test_page_reads_blocks_stored_alone(site, browser, tmp_path, name, saved, source):
    """Manifests naming blocks stored as objects of their own (formats 1 and 2), whole
    (version 2) or by range (version 3)."""
    script = browser.before_page_scripts(_RECORD_FETCHES)
    try:
        browser.open(site.links[name][0], tmp_path)
        assert browser.wait_status() == "ready"
        browser.click("download")
        assert browser.wait_status() == "done"
    finally:
        browser.forget_script(script)
    got = wait_download(tmp_path, saved).read_bytes()
    reads = _block_reads(browser, site.store.prefix)
    assert reads and all(key.startswith("b/") for key, _, _ in reads)
    if name == "v2":
        assert got == (site.fs.mnt / source).read_bytes()
        assert all(length == -1 for _, _, length in reads)  # whole objects, no Range
    else:
        with zipfile.ZipFile(io.BytesIO(got)) as z:
            assert z.read("photos/cat.jpg") == (site.fs.mnt / source / "cat.jpg").read_bytes()
        assert all(offset == 0 and length > 0 for _, offset, length in reads)


def test_page_reads_a_file_from_a_pack_shared_with_others(site, browser, tmp_path):
    """neighbour.bin's blocks share their pack with tamper.bin's, one of which is
    damaged: the page reads only neighbour.bin's ranges (one Range GET for its
    neighbouring envelopes), and each passes its own SHA-256 and envelope."""
    blocks = _blocks(site.store, site.links["neighbour.bin"][1])
    tampered = _blocks(site.store, site.links["tamper.bin"][1])
    assert {b[5] for b in blocks} == {b[5] for b in tampered}  # one pack
    pack_size = len(site.store.read(blocks[0][5]))
    assert sum(b[7] for b in blocks) < pack_size and (pack_size - PACK_SLACK) % PACK_UNIT == 0
    script = browser.before_page_scripts(_RECORD_FETCHES)
    try:
        browser.open(site.links["neighbour.bin"][0], tmp_path)
        assert browser.wait_status() == "ready"
        browser.click("download")
        assert browser.wait_status() == "done"
    finally:
        browser.forget_script(script)
    assert wait_download(tmp_path, "neighbour.bin").read_bytes() == \
        (site.fs.mnt / "neighbour.bin").read_bytes()
    reads = _block_reads(browser, site.store.prefix)
    assert reads == _expected_reads(blocks) and len(reads) < len(blocks)
    flipped = tampered[1][6] + envelope.HEADER.size + 5
    assert not any(offset <= flipped < offset + length for _, offset, length in reads)


def test_page_downloads_a_folder_as_zip_and_file_by_file(site, browser, tmp_path):
    browser.open(site.links["photos"][0], tmp_path)
    assert browser.wait_status() == "ready"
    browser.click("download")
    assert browser.wait_status() == "done"
    with zipfile.ZipFile(io.BytesIO(wait_download(tmp_path, "photos.zip").read_bytes())) as z:
        assert z.testzip() is None
        files = {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}
    src = site.fs.mnt / "photos"
    assert files == {"photos/cat.jpg": (src / "cat.jpg").read_bytes(),
                     "photos/empty.txt": b"",
                     "photos/sub/note.txt": (src / "sub" / "note.txt").read_bytes()}
    from selenium.webdriver.common.by import By

    button = browser.driver.find_element(By.CSS_SELECTOR, "button[aria-label='Download cat.jpg']")
    button.click()
    assert browser.wait_status() == "done"
    assert wait_download(tmp_path, "cat.jpg").read_bytes() == (src / "cat.jpg").read_bytes()


def test_page_fits_a_phone_screen(site, browser, tmp_path):
    browser.driver.set_window_size(360, 640)
    try:
        browser.open(site.links["photos"][0], tmp_path)
        assert browser.wait_status() == "ready"
        overflow = browser.driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        labels = browser.driver.execute_script(
            "return [...document.querySelectorAll('#files button')]"
            ".map(b => b.getAttribute('aria-label'))")
        assert sorted(labels) == ["Download cat.jpg", "Download empty.txt",
                                  "Download sub/note.txt"]
        items = browser.driver.execute_script(
            "return [...document.querySelectorAll('#files li')].map(li => li.textContent)")
        assert "link \u2192 cat.jpg (a symbolic link: megafs get recreates it)" in items
    finally:
        browser.driver.set_window_size(1024, 768)


#: Stands in for the save dialog of the File System Access API: a file in the origin's
#: private file system (a real FileSystemFileHandle: writes go to a temporary file that
#: only close() commits), and a lower in-memory limit so that 5 MiB already streams.
_SAVE_TO_OPFS = """
window.megafsBlobLimit = %d;
window.showSaveFilePicker = async function (options) {
  const root = await navigator.storage.getDirectory();
  return root.getFileHandle(options.suggestedName, {create: true});
};
"""
_OPFS_FILE = """
navigator.storage.getDirectory()
  .then(root => root.getFileHandle(arguments[0]))
  .then(handle => handle.getFile())
  .then(file => file.arrayBuffer())
  .then(bytes => crypto.subtle.digest('SHA-256', bytes).then(d => [bytes.byteLength,
        [...new Uint8Array(d)].map(x => x.toString(16).padStart(2, '0')).join('')]))
  .catch(e => 'error: ' + e);
"""


@pytest.mark.parametrize(("name", "limit", "expected", "saved"), [
    pytest.param("big.bin", 1 << 20, "done", "all", id="5-mib-streamed-to-disk"),
    pytest.param("tamper.bin", 64 << 10, "tampered: tamper.bin: block 1", "nothing",
                 id="tampered-block-streams-nothing"),
])
def test_page_streams_large_files(site, browser, tmp_path, name, limit, expected, saved):
    script = browser.before_page_scripts(_SAVE_TO_OPFS % limit)
    try:
        browser.open(site.links[name][0], tmp_path)
        assert browser.wait_status() == "ready"
        browser.click("download")
        assert browser.wait_status().startswith(expected)
        got = browser.run_async(_OPFS_FILE.rstrip().rstrip(";") + ".then(done);", name)
    finally:
        browser.forget_script(script)
    if saved == "all":
        data = (site.fs.mnt / name).read_bytes()
        assert got == [len(data), hashlib.sha256(data).hexdigest()]
    else:
        assert got == [0, hashlib.sha256(b"").hexdigest()]
    assert list(tmp_path.iterdir()) == []  # nothing went through the browser's downloads


def _unreachable(browser):
    browser.block(["*/s/*"])


ATTACKS = [
    pytest.param("tamper.bin", None, None, True, "tampered: tamper.bin: block 1 is not what"
                 " the owner shared", id="byte-flipped-in-the-pack-saves-nothing"),
    pytest.param("odd-holder", None, None, False, "tampered: the share manifest is malformed:"
                 " block 0 names a bad object", id="block-in-a-manifest-object"),
    pytest.param("revoked.bin", None, None, False, "revoked: this link was revoked",
                 id="revoked-link"),
    pytest.param("big.bin", _wrong_key, None, False, "wrong key:", id="wrong-key"),
    pytest.param("big.bin", _forged, None, False, "tampered: the share manifest is not signed"
                 " by the link's owner (forged)", id="forged-signature"),
    pytest.param("unsafe-path", None, None, False, "tampered: the share manifest is malformed:"
                 " the path \"../escaped.jpg\" has an unsafe component", id="path-escapes"),
    pytest.param("downgraded", None, None, False, "tampered: the share manifest is unsigned"
                 " but the link is signed (downgraded)", id="downgraded-to-unsigned"),
    pytest.param("big.bin", lambda link: link[:-3], None, False, "this link is incomplete: its"
                 " key after &k= is missing or damaged", id="truncated-link"),
    pytest.param("big.bin", None, _unreachable, False, "unreachable: the store cannot be"
                 " reached", id="unreachable-store"),
]


@pytest.mark.parametrize(("name", "change_link", "before", "click", "expected"), ATTACKS)
def test_page_refuses(site, browser, tmp_path, name, change_link, before, click, expected):
    link = site.links[name][0]
    if change_link:
        link = change_link(link)
    try:
        if before:
            before(browser)
        browser.open(link, tmp_path)
        if click:
            assert browser.wait_status() == "ready"
            browser.click("download")
        assert browser.wait_status().startswith(expected)
        assert not browser.driver.find_element("id", "download").is_displayed() or click
        time.sleep(0.5)  # a download started anyway would have created its file by now
    finally:
        browser.block([])
    assert list(tmp_path.iterdir()) == []


# -- command-line refusals and hostile input -------------------------------------------

@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_share_on_a_local_store_says_browser_links_need_s3(mounted):
    (mounted.mnt / "f").write_text("x")
    mounted.flush()
    r = _share(mounted, mounted.mnt / "f")
    assert r.stdout.count("\n") == 1 and r.stdout.startswith(f"megafs+{mounted.url}/s/")
    assert r.stderr == ("megafs: a browser link needs the store on an S3 endpoint (this link"
                        " is for megafs get; on this machine 'megafs web serve' serves it)\n")


def _reader_env():
    import seaweed

    return tool_env(AWS_ACCESS_KEY_ID=seaweed.READONLY.access_key,
                    AWS_SECRET_ACCESS_KEY=seaweed.READONLY.secret_key)


@pytest.mark.parametrize(("url", "env", "code", "message"), [
    pytest.param(lambda site, tmp: f"local://{tmp}", tool_env, ExitCode.USAGE,
                 "browser links need the store on an S3 endpoint", id="local-store"),
    pytest.param(lambda site, tmp: site.store.url, _reader_env, ExitCode.BAD_CREDENTIALS,
                 "cannot set the bucket policy", id="credentials-without-policy-rights"),
    pytest.param(lambda site, tmp: "s3+http://127.0.0.1:9/megafs-web/x", tool_env,
                 ExitCode.BACKEND_UNAVAILABLE, "cannot reach", id="unreachable-endpoint"),
])
def test_web_enable_refuses(site, tmp_path, url, env, code, message):
    r = site.fs.run("megafs", "web", "enable", url(site, tmp_path), env=env(), check=False)
    assert message in assert_cli_error(r, "megafs", code)
    if code == ExitCode.BAD_CREDENTIALS:  # the policy to apply by hand, on stdout
        assert '"Action": "s3:GetObject"' in r.stdout and f"{site.store.prefix}/s/*" in r.stdout
        assert f"{site.store.prefix}/p/*" in r.stdout


@pytest.mark.parametrize("link", [
    pytest.param("https://h/b/p/index.html#s=" + "0" * 32 + "&k=" + "A" * 86, id="not-the-page"),
    pytest.param("https://h/b/p/megafs.html#s=0123&k=" + "A" * 86, id="short-share-id"),
    pytest.param("https://h/b/p/megafs.html#s=" + "0" * 32 + "&k=AAAA", id="short-key"),
    pytest.param("https://h/b/p/megafs.html?x=1#s=" + "0" * 32 + "&k=" + "A" * 86,
                 id="query"),
])
def test_malformed_browser_links_are_usage_errors(site, tmp_path, link):
    r = site.fs.run("megafs", "get", link, tmp_path / "out", check=False)
    assert_cli_error(r, "megafs", ExitCode.USAGE)
    assert list(tmp_path.iterdir()) == []


def _v3_entry(**change):
    block = [0, "b/" + "1" * 32, "2" * 64, 10, "3" * 64, "p/" + "4" * 32, 100, 200]
    for index, value in change.items():
        block[int(index[1:])] = value
    return {"v": 3, "kind": "file", "name": "f", "block_size": 65536,
            "entries": [{"path": "", "type": "file", "mode": 420, "mtime_ns": 0, "size": 10,
                         "blocks": [block]}]}


@pytest.mark.parametrize("raw", [
    pytest.param(_v3_entry(i5="../" + "4" * 32), id="container-outside-the-store"),
    pytest.param(_v3_entry(i5=None), id="container-missing"),
    pytest.param(_v3_entry(i5="s/" + "4" * 32), id="container-not-a-pack"),
    pytest.param(_v3_entry(i5="b/" + "4" * 32), id="container-another-block"),
    pytest.param(_v3_entry(i6=-1), id="negative-offset"),
    pytest.param(_v3_entry(i6=(1 << 40) + 1), id="offset-beyond-2^40"),
    pytest.param(_v3_entry(i7=10), id="envelope-shorter-than-any"),
    pytest.param(_v3_entry(i7=1 << 30), id="envelope-too-long"),
    pytest.param({**_v3_entry(), "entries": [{**_v3_entry()["entries"][0],
                                              "blocks": [[0, "b/" + "1" * 32, "2" * 64, 10,
                                                          "3" * 64]]}]},
                 id="version-2-entry-in-version-3"),
])
def test_version_3_block_entries_are_checked(raw):
    from megafs.errors import CorruptObject
    from megafs.store import manifest as manifest_format

    with pytest.raises(CorruptObject, match="malformed"):
        manifest_format.parse(raw)


def test_version_3_block_entry_is_read():
    from megafs.store import manifest as manifest_format

    block = manifest_format.parse(_v3_entry()).entries[0].blocks[0]
    assert (block.object_key, block.holder, block.offset, block.stored_length) == \
        ("b/" + "1" * 32, "p/" + "4" * 32, 100, 200)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_web_serve_a_local_store_read_only(mounted, browser, tmp_path):
    import socket
    import subprocess

    import httpx
    from helpers import BIN

    data = os.urandom(300_000)
    (mounted.mnt / "local.bin").write_bytes(data)
    mounted.flush()
    link = share_format.parse_link(_share(mounted, mounted.mnt / "local.bin").stdout.strip())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([BIN / "megafs", "web", "serve", f"127.0.0.1:{port}", mounted.url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mounted.env, stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().startswith("serving the links of")  # once listening
        base = f"http://127.0.0.1:{port}"
        web = share_format.web_link("s3+http://x", link.share_id, link.key, link.public_key)
        web = base + "/megafs.html#" + web.split("#", 1)[1]
        with httpx.Client() as client:
            assert client.get(f"{base}/s/{link.share_id}").status_code == 200
            ranged = client.get(f"{base}/s/{link.share_id}", headers={"Range": "bytes=4-5"})
            assert ranged.status_code == 206 and ranged.content == bytes([1, 6])
            stored = mounted.store.path / "s" / link.share_id[:2] / link.share_id
            raw = share_format.open_manifest(link.key, link.share_id, stored.read_bytes(),
                                             link.public_key)
            blocks = raw["entries"][0]["blocks"]
            _, block_id, _, _, sha, pack, offset, length = blocks[0]
            assert pack.startswith("p/")  # its block is read by range from its pack
            envelope_range = client.get(f"{base}/{pack}", headers={
                "Range": f"bytes={offset}-{offset + length - 1}"})
            assert envelope_range.status_code == 206
            assert hashlib.sha256(envelope_range.content).hexdigest() == sha
            pack_size = (mounted.store.path / pack[:2] / pack[2:4] / pack[2:]).stat().st_size
            assert envelope_range.headers["content-range"] == \
                f"bytes {offset}-{offset + length - 1}/{pack_size}"
            assert client.get(f"{base}/{pack}", headers={
                "Range": f"bytes={pack_size}-"}).status_code == 416
            head = client.head(f"{base}/{pack}")  # its length, no body
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(pack_size)
            head = client.head(f"{base}/{pack}", headers={"Range": "bytes=4-9"})
            assert head.status_code == 206 and head.headers["content-length"] == "6"
            assert client.get(f"{base}/{block_id}").status_code == 404  # not stored alone
            metadata = next(p for p in (mounted.store.path / "m").rglob("*") if p.is_file())
            assert client.get(f"{base}/m/{metadata.name}").status_code == 404
            for path in ("/superblock", "/head", "/lock", "/s/../superblock", "/"):
                assert client.get(base + path).status_code == 404, path
            assert client.put(f"{base}/s/{link.share_id}", content=b"x").status_code == 501
            page = client.get(f"{base}/megafs.html")
            assert page.content == web_page()
            assert page.headers["content-security-policy"].endswith("; frame-ancestors 'none'")
        browser.open(web, tmp_path / "downloads")
        assert browser.wait_status() == "ready"
        browser.click("download")
        assert browser.wait_status() == "done"
        assert wait_download(tmp_path / "downloads", "local.bin").read_bytes() == data
        mounted.run("megafs", "get", web, tmp_path / "got.bin")
        assert (tmp_path / "got.bin").read_bytes() == data
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0


@pytest.mark.parametrize("store", ["s3"], indirect=True)
def test_fsck_keeps_the_page(mounted):
    mounted.run("megafs", "web", "enable", mounted.url)
    mounted.umount()
    r = mounted.fsck()
    assert r.returncode == 0, r.stdout + r.stderr
    assert mounted.store.read("megafs.html") == web_page()


@pytest.mark.parametrize("current", [
    pytest.param(None, id="no-policy-yet"),
    pytest.param({"Version": "2012-10-17", "Statement": {"Sid": "Other", "Effect": "Deny",
                                                        "Principal": "*", "Action": "s3:*",
                                                        "Resource": "arn:aws:s3:::b/x/*"}},
                 id="another-statement-kept"),
    pytest.param({"Version": "2012-10-17", "Statement": [
        {"Sid": "Other", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": "arn:aws:s3:::b/x/*"},
        {"Sid": "MegafsAnonymousRead" + "0" * 12, "Effect": "Allow"}]},
        id="other-prefix-kept"),
])
def test_policy_merge_adds_this_prefix_once(current):
    from megafs.backends import s3web

    once = s3web.merged(current, "b", "p/q")
    twice = s3web.merged(once, "b", "p/q")
    assert once == twice
    mine = [s for s in once["Statement"] if s["Sid"] == s3web.statement_id("b", "p/q")]
    assert mine == [s3web.statement("b", "p/q")]
    assert mine[0]["Resource"] == ["arn:aws:s3:::b/p/q/s/*", "arn:aws:s3:::b/p/q/p/*",
                                   "arn:aws:s3:::b/p/q/b/*", "arn:aws:s3:::b/p/q/megafs.html"]
    others = [s for s in once["Statement"] if s is not mine[0]]
    before = current["Statement"] if current else []
    assert others == (before if isinstance(before, list) else [before])
