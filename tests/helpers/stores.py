"""Stores as the tests see them from outside: a local directory, or a key prefix in a
SeaweedFS bucket read through signed requests of the tests' own."""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import httpx
import seaweed

from megafs.backends.sigv4 import canonical_query, sign_headers, uri_quote

# -- stores -----------------------------------------------------------------------


class Store:
    """A place a megafs filesystem is kept, as the tests see it from outside."""

    url: str

    def objects(self) -> Iterator[tuple[str, bytes]]:
        """(name, raw bytes) of every object in the store."""
        raise NotImplementedError

    def read(self, key: str) -> bytes | None:
        """Raw bytes of the object named *key* (``head``, ``superblock``...), None if absent."""
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        """Put a raw object (to simulate foreign data or damage)."""
        raise NotImplementedError

    def total_bytes(self) -> int:
        return sum(len(data) for _, data in self.objects())

    def missing_url(self) -> str:
        """URL of a store location that does not exist."""
        raise NotImplementedError


class LocalStore(Store):
    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"local://{path}"

    def objects(self) -> Iterator[tuple[str, bytes]]:
        for dirpath, _, files in os.walk(self.path):
            for name in files:
                p = Path(dirpath, name)
                yield str(p.relative_to(self.path)), p.read_bytes()

    def read(self, key: str) -> bytes | None:
        try:
            return (self.path / key).read_bytes()  # top-level keys only
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        (self.path / key).write_bytes(data)

    def total_bytes(self) -> int:
        return sum(Path(d, f).stat().st_size for d, _, fs in os.walk(self.path) for f in fs)

    def missing_url(self) -> str:
        return f"local://{self.path.parent / 'no-such-store'}"


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


class S3Store(Store):
    """A key prefix in the bucket of a SeaweedFS server (:mod:`seaweed`).

    Seen from outside through signed requests of its own (plain httpx), not through
    megafs's S3 backend, so a bug there cannot hide itself. The tools find the
    credentials (:data:`seaweed.ADMIN`) in the environment (:func:`tool_env`).
    """

    def __init__(self, server: seaweed.SeaweedFS, prefix: str):
        self.server = server
        self.prefix = prefix
        self.url = server.url(prefix)
        self.netloc = f"127.0.0.1:{server.s3_port}"
        self._client = httpx.Client(timeout=30)

    def close(self) -> None:
        self._client.close()

    def _request(self, method: str, key: str | None = None, *, query: dict | None = None,
                 body: bytes = b"") -> httpx.Response:
        path = f"/{uri_quote(self.server.bucket)}"
        if key is not None:
            path += "/" + uri_quote(f"{self.prefix}/{key}", safe="/")
        qs = canonical_query(query)
        headers = sign_headers(method, self.netloc, path, qs,
                               {"content-length": str(len(body))},
                               hashlib.sha256(body).hexdigest(), seaweed.ADMIN, seaweed.REGION)
        url = f"http://{self.netloc}{path}" + (f"?{qs}" if qs else "")
        return self._client.request(method, url, headers=headers, content=body or None)

    def _check(self, r: httpx.Response, what: str) -> httpx.Response:
        if r.status_code not in (200, 204):
            raise AssertionError(f"S3 {what}: HTTP {r.status_code} {r.text[:300]}")
        return r

    def listing(self) -> dict[str, int]:
        """Name -> size of every object under the prefix (all pages)."""
        out: dict[str, int] = {}
        token = None
        while True:
            query = {"list-type": "2", "prefix": self.prefix + "/", "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring(self._check(self._request("GET", query=query), "LIST").content)
            fields = {_local(el.tag): el for el in root}
            for el in root:
                if _local(el.tag) == "Contents":
                    item = {_local(c.tag): c.text or "" for c in el}
                    out[item["Key"][len(self.prefix) + 1:]] = int(item["Size"])
            token = fields["NextContinuationToken"].text if "NextContinuationToken" in fields \
                else None
            if (fields["IsTruncated"].text or "").strip().lower() != "true":
                return out
            assert token, "truncated listing without a continuation token"

    def objects(self) -> Iterator[tuple[str, bytes]]:
        for name in sorted(self.listing()):
            data = self.read(name)
            if data is not None:  # deleted meanwhile
                yield name, data

    def read(self, key: str) -> bytes | None:
        r = self._request("GET", key)
        if r.status_code == 404:
            return None
        return self._check(r, f"GET {key}").content

    def write(self, key: str, data: bytes) -> None:
        self._check(self._request("PUT", key, body=data), f"PUT {key}")

    def delete(self, key: str) -> None:
        r = self._request("DELETE", key)
        if r.status_code != 404:
            self._check(r, f"DELETE {key}")

    def total_bytes(self) -> int:
        return sum(self.listing().values())

    def missing_url(self) -> str:
        return self.server.url(self.prefix, bucket="megafs-no-such-bucket")


def with_unlocked_store(url: str, fn, passphrase: str):
    """Run ``await fn(store)`` on the store at *url*, unlocked with *passphrase* in this
    process (the caller's environment must have what the tools' has: the test KDF, S3
    credentials), and return its result."""
    import trio

    from megafs.store import lifecycle

    async def go():
        backend = await lifecycle.connect(url)
        try:
            store, _ = await lifecycle.unlock(backend, passphrase=passphrase.encode())
            return await fn(store)
        finally:
            await backend.aclose()

    return trio.run(go)
