"""Publishing a store's shared objects for browsers (docs/format.md §5b, "Browser links"):
the bucket policy that lets anyone GET what links read, and the download page.

The policy allows anonymous ``s3:GetObject`` on ``PREFIX/s/*`` (manifests),
``PREFIX/p/*`` (packs: blocks of format 3, read by range), ``PREFIX/b/*`` (blocks stored
alone by formats 1 and 2) and ``PREFIX/megafs.html`` only: never ``s3:ListBucket`` (names
stay unguessable 128-bit values) and never the superblock, head, lock or metadata (the
superblock would let anyone try passphrases offline). It is one statement, named after the
prefix, merged into the bucket's existing policy.
"""

from __future__ import annotations

import hashlib
import json

import httpx

from megafs.backends.anon import tls_verify
from megafs.backends.s3 import S3Backend
from megafs.errors import BackendUnavailable

#: What links read, below a store's prefix.
PUBLIC_KEYS = ("s/*", "p/*", "b/*", "megafs.html")
PAGE_TYPE = "text/html; charset=utf-8"


def statement_id(bucket: str, prefix: str) -> str:
    return "MegafsAnonymousRead" + hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:12]


def statement(bucket: str, prefix: str) -> dict:
    base = f"arn:aws:s3:::{bucket}/" + (f"{prefix}/" if prefix else "")
    return {"Sid": statement_id(bucket, prefix), "Effect": "Allow", "Principal": "*",
            "Action": "s3:GetObject", "Resource": [base + key for key in PUBLIC_KEYS]}


def policy_text(bucket: str, prefix: str) -> str:
    """The whole policy for a bucket that has none yet (what ``megafs share`` prints)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [statement(bucket, prefix)]},
                      indent=2)


def merged(current: dict | None, bucket: str, prefix: str) -> dict:
    """*current* (a bucket policy, or None) with this store's statement in it, once."""
    policy = dict(current or {"Version": "2012-10-17"})
    mine = statement(bucket, prefix)
    others = policy.get("Statement") or []
    if isinstance(others, dict):
        others = [others]
    policy["Statement"] = [s for s in others if s.get("Sid") != mine["Sid"]] + [mine]
    return policy


async def get_policy(backend: S3Backend) -> dict | None:
    status, _, body = await backend._send("GET", backend._bucket_path, "GET bucket policy",
                                          query={"policy": ""})
    if status == 404 and b"<Code>NoSuchBucket</Code>" not in body:
        return None  # NoSuchBucketPolicy
    if status != 200:
        raise backend._error(status, body, "GET bucket policy")
    try:
        return json.loads(body)
    except ValueError:
        raise BackendUnavailable(f"{backend.description}: the bucket policy is not JSON"
                                 ) from None


async def put_policy(backend: S3Backend, policy: dict) -> None:
    body = json.dumps(policy).encode()
    status, _, reply = await backend._send(
        "PUT", backend._bucket_path, "PUT bucket policy", query={"policy": ""}, body=body,
        headers={"content-length": str(len(body)), "content-type": "application/json"})
    if status not in (200, 204):
        raise backend._error(status, reply, "PUT bucket policy")


async def put_page(backend: S3Backend, key: str, page: bytes) -> None:
    """Store the page as ``text/html`` (a browser shows it instead of saving it)."""
    status, _, reply = await backend._send(
        "PUT", backend._object_path(key), f"PUT {key}", body=page,
        headers={"content-length": str(len(page)), "content-type": PAGE_TYPE})
    if status != 200:
        raise backend._error(status, reply, f"PUT {key}")


async def anonymous_status(url: str) -> int | str:
    """The HTTP status of an unauthenticated GET of *url*, or why there was none."""
    try:
        async with httpx.AsyncClient(timeout=15, follow_redirects=False,
                                     verify=tls_verify()) as client:
            async with client.stream("GET", url) as response:
                return response.status_code
    except httpx.HTTPError as e:
        return str(e) or type(e).__name__
