"""Read-only access to a store's shared objects with plain, unauthenticated HTTP GETs.

The base URL is where the objects are, e.g. ``https://HOST/BUCKET/PREFIX`` for an S3
bucket whose policy allows anonymous ``s3:GetObject`` on the objects links read
(docs/format.md §5b): ``megafs get`` of a browser link needs no credentials. Only
:meth:`get`, :meth:`get_range` and :meth:`size` work; nothing is ever written.
An object that is absent (404) or not readable anonymously (403: S3 answers so for a
missing key when listing is forbidden) is :class:`NoSuchObject`; its ``status`` says
which.
"""

from __future__ import annotations

import os
import ssl

import httpx
import trio

from megafs.backends.base import Backend, NoSuchObject
from megafs.errors import BackendUnavailable, UsageError

ATTEMPTS = 4  #: tries of a request that got no answer or a 5xx


def tls_verify() -> ssl.SSLContext | bool:
    """The certificates to trust: the system's, or ``AWS_CA_BUNDLE``'s as for S3 stores."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if not bundle:
        return True
    try:
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot use CA bundle {bundle} (AWS_CA_BUNDLE):"
                         f" {getattr(e, 'strerror', None) or e}") from None


class Forbidden(NoSuchObject):
    """HTTP 403: absent, or anonymous read is not allowed."""


class AnonymousBackend(Backend):
    remote = True
    parallelism = 8

    def __init__(self, base_url: str, *, timeout: float = 30.0):
        self.base = base_url.rstrip("/")
        self.description = self.base
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                         verify=tls_verify(),
                                         headers={"accept-encoding": "identity"})

    async def _get(self, key: str, headers: dict[str, str], method: str = "GET"):
        url = f"{self.base}/{key}"
        delay = 0.2
        for attempt in range(ATTEMPTS):
            try:
                response = await self._client.request(method, url, headers=headers)
            except httpx.HTTPError as e:
                reason = str(e) or type(e).__name__
                if attempt == ATTEMPTS - 1:
                    raise BackendUnavailable(f"cannot reach {url}: {reason}") from None
            else:
                if response.status_code == 404:
                    raise NoSuchObject(key)
                if response.status_code == 403:
                    raise Forbidden(key)
                if response.status_code == 416 and "range" in headers:
                    return response  # the object ends before the range
                if response.status_code < 500 or attempt == ATTEMPTS - 1:
                    if response.status_code not in (200, 206):
                        raise BackendUnavailable(f"{url}: {method}: HTTP"
                                                 f" {response.status_code}")
                    return response
            await trio.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    async def get(self, key: str) -> bytes:
        return (await self._get(key, {})).content

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Bytes [offset, offset + length) of an object (fewer if it is shorter)."""
        if length <= 0:
            return b""
        response = await self._get(key, {"range": f"bytes={offset}-{offset + length - 1}"})
        if response.status_code == 416:
            return b""
        data = response.content
        return data if response.status_code == 206 else data[offset:offset + length]

    async def size(self, key: str) -> int | None:
        try:
            response = await self._get(key, {}, "HEAD")
        except NoSuchObject:
            return None
        return int(response.headers.get("content-length", 0))

    async def put(self, key, data, *, if_absent=False, digest=None):
        raise BackendUnavailable(f"{self.description} is read-only (anonymous access)")

    async def delete(self, key):
        raise BackendUnavailable(f"{self.description} is read-only (anonymous access)")

    async def list(self, prefix=""):
        raise BackendUnavailable(f"{self.description}: listing is not allowed anonymously")
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        await self._client.aclose()
