"""Share links and share manifests (docs/format.md, "Share manifests").

A link names a store location, a share id and -- after ``#`` only -- the share key::

    megafs+local:///srv/store/s/<32 hex>#<share key, 43 chars base64url>
    megafs+s3+http://host:port/bucket/prefix/s/<32 hex>#<key>

The object ``s/<id>`` is an envelope of kind 6 sealed with the share key. Its
payload is a JSON manifest listing the shared file(s) with, for every block, the
object key and that object's own key. Nothing in it leads to the master key,
the metadata key or any object that is not shared.
"""

from __future__ import annotations

import base64
import json
import os

from megafs.errors import UsageError
from megafs.store import envelope

KIND_SHARE = envelope.KIND_SHARE
MANIFEST_VERSION = 1


def new_share() -> tuple[str, bytes]:
    """A fresh (share id, share key)."""
    return os.urandom(16).hex(), os.urandom(32)


def object_key(share_id: str) -> str:
    return f"s/{share_id}"


def make_link(storage_url: str, share_id: str, key: bytes) -> str:
    return (f"megafs+{storage_url.rstrip('/')}/s/{share_id}#"
            f"{base64.urlsafe_b64encode(key).decode().rstrip('=')}")


def parse_link(link: str) -> tuple[str, str, bytes | None]:
    """(storage URL, share id, share key or None if the link has no '#' part)."""
    if not link.startswith("megafs+"):
        raise UsageError(f"not a megafs link: {link!r} (links start with megafs+)")
    body, _, fragment = link[len("megafs+"):].partition("#")
    url, sep, share_id = body.rpartition("/s/")
    if not sep or len(share_id) != 32 or any(c not in "0123456789abcdef" for c in share_id):
        raise UsageError(f"malformed megafs link: {link!r}")
    key = None
    if fragment:
        try:
            key = base64.urlsafe_b64decode(fragment + "=" * (-len(fragment) % 4))
        except ValueError:
            key = b""
        if len(key) != 32:
            raise UsageError("the link's key (after '#') is damaged")
    return url, share_id, key


def seal_manifest(key: bytes, share_id: str, manifest: dict) -> bytes:
    payload = json.dumps(manifest, separators=(",", ":")).encode()
    return envelope.seal(key, KIND_SHARE, object_key(share_id), payload)


def open_manifest(key: bytes, share_id: str, blob: bytes) -> dict:
    manifest = json.loads(envelope.open_(key, KIND_SHARE, object_key(share_id), blob))
    if manifest.get("v") != MANIFEST_VERSION:
        from megafs.errors import UnsupportedFormat

        raise UnsupportedFormat(f"share manifest version {manifest.get('v')} is not supported")
    return manifest
