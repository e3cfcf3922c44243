"""Share links and share manifests (docs/format.md, "Share manifests").

A link names a store location, a share id and -- after ``#`` only -- the share key
and the owner's public signing key::

    megafs+local:///srv/store/s/<32 hex>#<share key || public key, 86 chars base64url>
    megafs+s3+http://host:port/bucket/prefix/s/<32 hex>#<...>

The object ``s/<id>`` is an envelope of kind 6 sealed with the share key. Its
payload is ``0x03 || Ed25519 signature (64 bytes) || JSON manifest`` (version 3;
version 2 the same with 0x02): the JSON lists the shared file(s) with, for every
block, its block id, that block's own key, the SHA-256 of its envelope and (version
3) the object, offset and length where the envelope is stored. The signature is made with
a key derived from the master key, so a link holder who can write to the store
can still not change what other link holders receive. Nothing in a manifest
leads to the master key, the metadata key or any object that is not shared.

Links made before version 2 carry the share key only (43 characters) and their
manifests are bare JSON (version 1): they still open, unverified.
"""

from __future__ import annotations

import base64
import json
import os
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from megafs.errors import CorruptObject, UnsupportedFormat, UsageError
from megafs.store import envelope

KIND_SHARE = envelope.KIND_SHARE
MANIFEST_VERSION = 3
#: Signed manifest versions this megafs reads: 3 names where each block is stored
#: (an object key, offset and length: packs); 2 names one object per block.
SIGNED_VERSIONS = (2, 3)
KEY_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: The signed message is this label, the share id (32 ASCII hex digits), a NUL and the JSON.
SIGNATURE_LABEL = b"megafs v2 share manifest\x00"


class Link(NamedTuple):
    url: str  #: the storage URL
    share_id: str  #: 32 hex digits
    key: bytes | None  #: the share key (None: the link has no '#' part)
    public_key: bytes | None  #: the owner's Ed25519 key (None: an unsigned, old link)


def new_share() -> tuple[str, bytes]:
    """A fresh (share id, share key)."""
    return os.urandom(16).hex(), os.urandom(KEY_BYTES)


def object_key(share_id: str) -> str:
    return f"s/{share_id}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_link(storage_url: str, share_id: str, key: bytes, public_key: bytes | None) -> str:
    return f"megafs+{storage_url.rstrip('/')}/s/{share_id}#{_b64(key + (public_key or b''))}"


#: The download page's name next to a store's objects (``megafs web enable`` puts it there).
WEB_PAGE = "megafs.html"
_WEB_SCHEMES = {"s3": "https", "s3+http": "http"}


def web_base(storage_url: str) -> str | None:
    """Where a browser reads the objects of an S3 store (``https://HOST/BUCKET/PREFIX``,
    ``http://`` for an ``s3+http`` store), or None: a local store has no such place."""
    scheme, sep, rest = storage_url.rstrip("/").partition("://")
    return f"{_WEB_SCHEMES[scheme]}://{rest}" if sep and scheme in _WEB_SCHEMES else None


def web_link(storage_url: str, share_id: str, key: bytes, public_key: bytes) -> str | None:
    """The browser link ``https://HOST/BUCKET/PREFIX/megafs.html#s=ID&k=KEY`` (None for a
    store without one); KEY is the same 86 characters as in the megafs+ link."""
    base = web_base(storage_url)
    if base is None:
        return None
    return f"{base}/{WEB_PAGE}#s={share_id}&k={_b64(key + public_key)}"


def _parse_web_link(link: str) -> Link:
    body, _, fragment = link.partition("#")
    base, sep, page = body.rpartition("/")
    if not sep or page != WEB_PAGE or "?" in body or "://" not in base:
        raise UsageError(f"not a megafs link: {link!r} (a browser link ends in"
                         f" /{WEB_PAGE}#s=...&k=...)")
    fields = dict(part.partition("=")[::2] for part in fragment.split("&") if part)
    share_id, key = fields.get("s", ""), fields.get("k", "")
    if len(share_id) != 32 or any(c not in "0123456789abcdef" for c in share_id):
        raise UsageError(f"malformed megafs link: {link!r} (the share id after #s= is damaged)")
    return _with_key(base, share_id, key)


def _with_key(url: str, share_id: str, fragment: str) -> Link:
    if not fragment:
        return Link(url, share_id, None, None)
    try:
        raw = base64.urlsafe_b64decode(fragment + "=" * (-len(fragment) % 4))
    except ValueError:
        raw = b""
    if len(raw) not in (KEY_BYTES, KEY_BYTES + PUBLIC_KEY_BYTES):
        raise UsageError("the link's key (after '#') is damaged")
    return Link(url, share_id, raw[:KEY_BYTES], raw[KEY_BYTES:] or None)


def parse_link(link: str) -> Link:
    """A ``megafs+STORAGE_URL/s/ID#KEY`` link, or a browser link
    ``http(s)://HOST/BUCKET/PREFIX/megafs.html#s=ID&k=KEY`` (its url is then the
    ``http(s)://`` place of the objects, read without credentials)."""
    if link.startswith(("https://", "http://")):
        return _parse_web_link(link)
    if not link.startswith("megafs+"):
        raise UsageError(f"not a megafs link: {link!r} (links start with megafs+, or"
                         f" https:// for a browser link)")
    body, _, fragment = link[len("megafs+"):].partition("#")
    url, sep, share_id = body.rpartition("/s/")
    if not sep or len(share_id) != 32 or any(c not in "0123456789abcdef" for c in share_id):
        raise UsageError(f"malformed megafs link: {link!r}")
    return _with_key(url, share_id, fragment)


def _signed_message(share_id: str, body: bytes) -> bytes:
    return SIGNATURE_LABEL + share_id.encode() + b"\x00" + body


def manifest_payload(share_id: str, manifest: dict, signing_key: Ed25519PrivateKey) -> bytes:
    """``version || signature || JSON``: the payload of a signed manifest (the JSON's
    ``"v"`` is the version)."""
    body = json.dumps(manifest, separators=(",", ":")).encode()
    signature = signing_key.sign(_signed_message(share_id, body))
    version = manifest.get("v") if isinstance(manifest, dict) else None
    return bytes([version if version in SIGNED_VERSIONS else MANIFEST_VERSION]) + signature + body


def seal_manifest(key: bytes, share_id: str, manifest: dict,
                  signing_key: Ed25519PrivateKey) -> bytes:
    return envelope.seal(key, KIND_SHARE, object_key(share_id),
                         manifest_payload(share_id, manifest, signing_key))


def open_manifest(key: bytes, share_id: str, blob: bytes,
                  public_key: bytes | None = None) -> dict:
    """The manifest's JSON object, authenticated with the share key and, if the link
    has a *public_key*, its signature checked (a version 1 manifest is then refused)."""
    payload = envelope.open_(key, KIND_SHARE, object_key(share_id), blob)
    version = payload[0] if payload else 0
    if version in SIGNED_VERSIONS:
        if len(payload) < 1 + SIGNATURE_BYTES:
            raise CorruptObject("the share manifest is truncated")
        signature, body = payload[1:1 + SIGNATURE_BYTES], payload[1 + SIGNATURE_BYTES:]
        if public_key is not None:
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(
                    signature, _signed_message(share_id, body))
            except (InvalidSignature, ValueError):
                raise CorruptObject("the share manifest is not signed by the link's owner"
                                    " (forged)") from None
    elif payload[:1] == b"{":  # version 1: bare JSON, unsigned
        if public_key is not None:
            raise CorruptObject("the share manifest is unsigned but the link is signed"
                                " (downgraded)")
        body = payload
    elif max(SIGNED_VERSIONS) < version < 0x20:
        raise UnsupportedFormat(f"share manifest version {version} is not supported")
    else:
        raise CorruptObject("the share manifest is damaged")
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):  # includes UnicodeDecodeError, JSONDecodeError
        raise CorruptObject("the share manifest is not valid JSON") from None
    expected = version if version in SIGNED_VERSIONS else 1
    if not isinstance(manifest, dict) or manifest.get("v") != expected:
        raise CorruptObject(f"the share manifest does not say version {expected}")
    return manifest
