"""An S3 (or S3-compatible) backend: httpx under trio, AWS Signature V4.

Storage URLs::

    s3://HOST[:PORT]/BUCKET[/PREFIX]        HTTPS endpoint
    s3+http://HOST[:PORT]/BUCKET[/PREFIX]   plain-HTTP endpoint (local gateways, tests)

Requests use path-style addressing (``https://HOST:PORT/BUCKET/PREFIX/KEY``), so
any S3-compatible server works without DNS tricks. The region used for signing
comes from ``AWS_REGION`` or ``AWS_DEFAULT_REGION`` (default ``us-east-1``);
credentials come from :mod:`megafs.backends.credentials`. For ``https`` endpoints,
``AWS_CA_BUNDLE`` (when set) names the CA certificates to trust; plain-http
endpoints never look at it.

Over plain http every request signs the SHA-256 of its actual body, so the server
also checks that the bytes arrived intact. Over https, TLS already guarantees that,
and unconditional PUTs sign ``UNSIGNED-PAYLOAD`` instead, as the AWS SDKs do: that
saves hashing every uploaded byte (0.6 ms of CPU per MiB). Every object megafs
stores is also authenticated end to end by its own envelope.

Connections come from one bounded pool (``2 * parallelism``); a cancelled request
closes its connection instead of returning it to the pool half-read.

Error mapping: 5xx, ``SlowDown``, ``RequestTimeout``, 409
``ConditionalRequestConflict``, timeouts and connection failures raise
:class:`TransientError` (the retry layer retries them); a missing bucket raises
:class:`StoreNotFound`; rejected or insufficient credentials raise
:class:`BadCredentials`; any other 4xx raises :class:`BackendUnavailable` with the
server's error code and message. No httpx exception escapes.

A conditional put (``If-None-Match: *``) whose response was lost may have been
applied anyway; its retry then gets ``412``. The backend remembers conditional
puts that failed transiently, and on such a ``412`` reads the object back: when
it holds exactly the bytes we sent, the put is reported as a success rather
than as :class:`ObjectExists`.

A compare-and-swap (:meth:`S3Backend.replace_if`) is a PUT with ``If-Match`` on
the ETag of the expected bytes (the MD5 of a single-part object, which is what
S3 and SeaweedFS report; SeaweedFS honours ``If-Match`` on PUT), or with
``If-None-Match: *`` when the key must be absent. On ``412`` it reads the object:
our own bytes mean an earlier attempt landed; the expected bytes under another
ETag (servers whose ETag is not the MD5, e.g. with SSE-KMS) are swapped once more
with that ETag; anything else raises :class:`ObjectChanged`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import ssl
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping

import httpx
import trio

from megafs.backends.base import (
    Backend,
    NoSuchObject,
    ObjectChanged,
    ObjectExists,
    TransientError,
)
from megafs.backends.credentials import Credentials, find_credentials
from megafs.backends.sigv4 import canonical_query, sign_headers, uri_quote
from megafs.errors import BackendUnavailable, BadCredentials, StoreNotFound, UsageError
from megafs.threads import run_sync

__all__ = ["S3Backend", "S3Location", "parse_location", "sign_headers"]

DEFAULT_REGION = "us-east-1"
URL_HELP = ("use s3://HOST[:PORT]/BUCKET[/PREFIX], or s3+http://HOST[:PORT]/BUCKET[/PREFIX] "
            "for a plain-http endpoint (e.g. s3+http://127.0.0.1:8333/backups/laptop)")

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_HASH_IN_THREAD = 1 << 20  # hash bodies larger than this off the event loop
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "ConditionalRequestConflict", "OperationAborted", "Throttling",
                    "ThrottlingException", "RequestThrottled", "TooManyRequests"}
_UNCERTAIN_LIMIT = 4096


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if data else _EMPTY_SHA256


# --------------------------------------------------------------------------- URLs


@dataclasses.dataclass(frozen=True)
class S3Location:
    secure: bool
    netloc: str  #: host[:port] exactly as sent in the Host header
    bucket: str
    prefix: str  #: "" or "a/b" (no leading or trailing slash)

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.netloc}"

    @property
    def url(self) -> str:
        scheme = "s3" if self.secure else "s3+http"
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"{scheme}://{self.netloc}/{self.bucket}{tail}"


def parse_location(url: str) -> S3Location:
    """Parse an ``s3://`` or ``s3+http://`` URL; raise UsageError if malformed."""

    def bad(why: str) -> UsageError:
        return UsageError(f"bad storage URL {url!r}: {why}; {URL_HELP}")

    try:
        parsed = urllib.parse.urlsplit(url)
        hostname = parsed.hostname  # raises ValueError for a bad [IPv6] literal
    except ValueError as e:
        raise bad(f"invalid host ({e})") from None
    if parsed.scheme not in ("s3", "s3+http"):
        raise bad("not an s3 URL")
    if parsed.query or parsed.fragment or url.endswith(("?", "#")):
        raise bad("no query or fragment allowed")
    if "@" in parsed.netloc:
        raise bad("credentials do not belong in the URL (set AWS_ACCESS_KEY_ID and "
                  "AWS_SECRET_ACCESS_KEY, or use an authinfo file)")
    if not hostname:
        raise bad("missing host")
    try:
        port = parsed.port
    except ValueError:
        raise bad("invalid port") from None
    if port == 0 or (port is None and parsed.netloc.endswith(":")):
        raise bad("invalid port")
    parts = [p for p in parsed.path.split("/") if p]
    if not parts:
        raise bad("missing bucket")
    bucket, prefix_parts = parts[0], parts[1:]
    if not _BUCKET_RE.match(bucket):
        raise bad(f"invalid bucket name {bucket!r}")
    if any(p in (".", "..") for p in prefix_parts):
        raise bad("'.' and '..' are not allowed in the prefix")
    return S3Location(secure=parsed.scheme == "s3", netloc=parsed.netloc.lower(), bucket=bucket,
                      prefix="/".join(prefix_parts))


def default_region(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


# --------------------------------------------------------------------------- errors


class _Unreachable(TransientError):
    """The request did not get an HTTP response (connection, DNS, TLS, timeout)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _parse_error(body: bytes) -> tuple[str, str]:
    """Return (Code, Message) from an S3 XML error body ("" when absent)."""
    if not body:
        return "", ""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return "", body[:200].decode("utf-8", "replace").strip()
    code = message = ""
    for el in root.iter():
        name = _local(el.tag)
        if name == "Code" and not code:
            code = (el.text or "").strip()
        elif name == "Message" and not message:
            message = (el.text or "").strip()
    return code, message


def _reason(e: BaseException) -> str:
    """A one-line reason for a failed request, from httpx's exception and its causes."""
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in chain and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for c in list(chain):
        if isinstance(c, BaseExceptionGroup):
            chain.extend(c.exceptions)
    for c in chain:
        if isinstance(c, ssl.SSLCertVerificationError):
            return (f"TLS certificate verification failed ({c.verify_message}); "
                    "set AWS_CA_BUNDLE to the CA certificate file if the endpoint uses a "
                    "private CA")
    if isinstance(e, httpx.TimeoutException):
        return f"timed out ({type(e).__name__})"
    errors = [c.strerror for c in chain if isinstance(c, OSError) and c.strerror]
    if errors:  # the root cause, e.g. "Connection refused"
        root = errors[-1]
        return root.rpartition(": ")[2] if root.startswith("Error connecting to") else root
    return next((str(c).strip() for c in chain if str(c).strip()), type(e).__name__)


# --------------------------------------------------------------------------- backend


class S3Backend(Backend):
    """Objects under ``PREFIX/`` in one bucket of an S3-compatible server."""

    parallelism = 16
    remote = True

    def __init__(self, location: S3Location, credentials: Credentials, *,
                 region: str | None = None, parallelism: int = 16,
                 connect_timeout: float = 10.0, read_timeout: float = 60.0,
                 ca_bundle: str | None = None):
        self.location = location
        self.credentials = credentials
        self.region = region or default_region()
        self.parallelism = parallelism
        self.description = location.url
        self._key_prefix = f"{location.prefix}/" if location.prefix else ""
        self._bucket_path = "/" + uri_quote(location.bucket)
        self.sign_payload = not location.secure  # https: TLS protects the bytes in transit
        # Conditional puts whose outcome is unknown (a transient failure):
        # key -> sha256 of the bytes we tried to write.
        self._uncertain: dict[str, str] = {}
        if location.secure:
            bundle = ca_bundle if ca_bundle is not None else os.environ.get("AWS_CA_BUNDLE")
            verify: ssl.SSLContext | bool = True
            if bundle:
                try:
                    verify = ssl.create_default_context(cafile=bundle)
                except (OSError, ssl.SSLError) as e:
                    raise UsageError(f"cannot use CA bundle {bundle} (AWS_CA_BUNDLE): "
                                     f"{getattr(e, 'strerror', None) or e}") from None
        else:
            verify = False  # plain http: no TLS, so no CA bundle to load or to break
        # Queue excess requests here, fairly, rather than inside httpcore's pool
        # (whose bookkeeping costs O(waiters) per request).
        self._slots = trio.Semaphore(parallelism * 2)
        self._client = httpx.AsyncClient(
            verify=verify,
            limits=httpx.Limits(max_connections=parallelism * 2,
                                max_keepalive_connections=parallelism * 2),
            timeout=httpx.Timeout(connect=connect_timeout, read=read_timeout,
                                  write=read_timeout, pool=None),
            follow_redirects=False,
        )

    @classmethod
    def from_url(cls, url: str, **kw) -> S3Backend:
        location = parse_location(url)
        return cls(location, find_credentials(location.url), **kw)

    # -- plumbing ---------------------------------------------------------

    def _object_path(self, key: str) -> str:
        return f"{self._bucket_path}/{uri_quote(self._key_prefix + key, safe='/')}"

    async def _sha256(self, data: bytes) -> str:
        if len(data) > _HASH_IN_THREAD:
            return await run_sync(_sha256_hex, data)
        return _sha256_hex(data)

    async def _send(self, method: str, path: str, what: str, *, query=None,
                    headers: Mapping[str, str] | None = None, body: bytes = b"",
                    payload_sha256: str | None = None) -> tuple[int, httpx.Headers, bytes]:
        """Send one signed request; return (status, headers, body).

        Raises TransientError when no HTTP response arrived.
        """
        if payload_sha256 is None:
            payload_sha256 = await self._sha256(body)
        qs = canonical_query(query)
        hdrs = sign_headers(method, self.location.netloc, path, qs, headers or {}, payload_sha256,
                            self.credentials, self.region)
        hdrs["accept-encoding"] = "identity"  # bytes as stored, never re-encoded
        url = f"{self.location.endpoint}{path}" + (f"?{qs}" if qs else "")
        try:
            async with self._slots, self._client.stream(
                    method, url, headers=hdrs,
                    content=body if method in ("PUT", "POST") else None) as response:
                chunks = [chunk async for chunk in response.aiter_raw()]
                return response.status_code, response.headers, b"".join(chunks)
        except (httpx.TransportError, OSError) as e:
            if isinstance(e, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
                raise BackendUnavailable(f"{self.description}: {what}: {_reason(e)}") from None
            reason = _reason(e)
            raise _Unreachable(f"{self.description}: {what}: {reason}", reason) from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as e:
            raise BackendUnavailable(f"{self.description}: {what}: {_reason(e)}") from None

    def _error(self, status: int, body: bytes, what: str) -> Exception:
        """The exception for an unexpected HTTP response."""
        code, message = _parse_error(body)
        detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message
                                                                      else "")
        endpoint = self.location.endpoint
        if status >= 500 or status in (408, 429) or code in _TRANSIENT_CODES:
            return TransientError(f"{self.description}: {what}: {detail}")
        if code == "NoSuchBucket":
            return StoreNotFound(f"bucket {self.location.bucket} does not exist at {endpoint}")
        key_id = self.credentials.access_key
        if code == "InvalidAccessKeyId":
            return BadCredentials(f"{endpoint} does not know access key {key_id} "
                                  "(InvalidAccessKeyId): check AWS_ACCESS_KEY_ID or authinfo")
        if code == "SignatureDoesNotMatch":
            return BadCredentials(f"{endpoint} rejected the secret key of access key {key_id} "
                                  "(SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY or "
                                  "authinfo")
        if code == "RequestTimeTooSkewed":
            return BadCredentials(f"{endpoint} rejected the request signature: this machine's "
                                  "clock is wrong (RequestTimeTooSkewed)")
        if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
            return BadCredentials(f"{endpoint} rejected the session token ({code}): check "
                                  "AWS_SESSION_TOKEN")
        if status in (401, 403) or code == "AccessDenied":
            return BadCredentials(f"access denied: {what} on {self.description} with access key "
                                  f"{key_id} ({detail})")
        return BackendUnavailable(f"{self.description}: {what} failed: {detail}")

    # -- the Backend interface ----------------------------------------------

    async def check(self) -> None:
        query = {"list-type": "2", "max-keys": "1", "prefix": self._key_prefix}
        try:
            status, _, body = await self._send("GET", self._bucket_path, "LIST", query=query)
        except _Unreachable as e:
            raise BackendUnavailable(f"cannot reach {self.location.endpoint}: {e.reason}"
                                     ) from None
        if status == 200:
            return
        if status == 404:
            code, _ = _parse_error(body)
            if code in ("", "NoSuchBucket"):
                raise StoreNotFound(f"bucket {self.location.bucket} does not exist at "
                                    f"{self.location.endpoint}")
        err = self._error(status, body, "LIST")
        if isinstance(err, TransientError):
            raise BackendUnavailable(f"{self.location.endpoint} is failing: {err}")
        raise err

    async def get(self, key: str) -> bytes:
        status, _, body = await self._send("GET", self._object_path(key), f"GET {key}")
        if status == 200:
            return body
        if status == 404 and _parse_error(body)[0] != "NoSuchBucket":
            raise NoSuchObject(key)
        raise self._error(status, body, f"GET {key}")

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        what = f"GET {key} (bytes {offset}+{length})"
        status, _, body = await self._send("GET", self._object_path(key), what,
                                           headers={"range": f"bytes={offset}-{offset + length - 1}"})
        if status == 206:
            return body
        if status == 200:  # the server ignored the range
            return body[offset:offset + length]
        if status == 416:  # the object ends before offset
            return b""
        if status == 404 and _parse_error(body)[0] != "NoSuchBucket":
            raise NoSuchObject(key)
        raise self._error(status, body, what)

    def payload_digest(self, data: bytes) -> str | None:
        return _sha256_hex(data) if self.sign_payload else None

    async def put(self, key: str, data: bytes, *, if_absent: bool = False,
                  digest: str | None = None) -> None:
        data = bytes(data)
        if digest is None:
            # Conditional puts (small) always sign their payload: the digest also
            # recognises our own bytes after an uncertain attempt (see _holds).
            if self.sign_payload or if_absent:
                digest = await self._sha256(data)
            else:
                digest = UNSIGNED_PAYLOAD
        headers = {"content-length": str(len(data)), "content-type": "application/octet-stream"}
        if if_absent:
            headers["if-none-match"] = "*"
        what = f"PUT {key}"
        try:
            status, _, body = await self._send("PUT", self._object_path(key), what,
                                               headers=headers, body=data,
                                               payload_sha256=digest)
            if status == 412 and if_absent:
                if self._uncertain.get(key) == digest and await self._holds(key, data):
                    self._uncertain.pop(key, None)
                    return  # an earlier attempt of this very put went through
                self._uncertain.pop(key, None)
                raise ObjectExists(key)
            if status != 200:
                raise self._error(status, body, what)
        except TransientError:
            if if_absent:
                self._remember_uncertain(key, digest)
            raise
        self._uncertain.pop(key, None)

    async def replace_if(self, key: str, data: bytes, expected: bytes | None) -> None:
        data = bytes(data)
        if expected is None:
            try:
                await self.put(key, data, if_absent=True)
            except ObjectExists:
                raise ObjectChanged(key) from None
            return
        etag = f'"{hashlib.md5(expected, usedforsecurity=False).hexdigest()}"'
        for _ in range(2):
            if await self._put_if_match(key, data, etag):
                return
            status, headers, body = await self._send("GET", self._object_path(key),
                                                     f"GET {key}")
            if status == 404 and _parse_error(body)[0] != "NoSuchBucket":
                raise ObjectChanged(key)
            if status != 200:
                raise self._error(status, body, f"GET {key}")
            if body == data:
                return  # an earlier attempt of this swap landed
            if body != expected or headers.get("etag") in (None, etag):
                raise ObjectChanged(key)
            etag = headers["etag"]  # the expected bytes under a non-MD5 ETag
        raise ObjectChanged(key)

    async def _put_if_match(self, key: str, data: bytes, etag: str) -> bool:
        """PUT *data* if the object's ETag is *etag*; False on 412."""
        headers = {"content-length": str(len(data)), "content-type": "application/octet-stream",
                   "if-match": etag}
        what = f"PUT {key} (if-match)"
        status, _, body = await self._send("PUT", self._object_path(key), what, headers=headers,
                                           body=data, payload_sha256=await self._sha256(data))
        if status == 412 or (status == 404 and _parse_error(body)[0] != "NoSuchBucket"):
            return False
        if status != 200:
            raise self._error(status, body, what)
        return True

    def _remember_uncertain(self, key: str, digest: str) -> None:
        self._uncertain.pop(key, None)
        self._uncertain[key] = digest
        while len(self._uncertain) > _UNCERTAIN_LIMIT:
            del self._uncertain[next(iter(self._uncertain))]

    async def _holds(self, key: str, data: bytes) -> bool:
        try:
            return await self.get(key) == data
        except NoSuchObject:
            # Gone again (deleted in between): the put's outcome is still
            # unknown, so let the retry layer try it once more.
            raise TransientError(f"{self.description}: PUT {key}: conflicting object "
                                 "vanished") from None

    async def delete(self, key: str) -> None:
        status, _, body = await self._send("DELETE", self._object_path(key), f"DELETE {key}")
        if status in (200, 204):
            return
        if status == 404 and _parse_error(body)[0] != "NoSuchBucket":
            return
        raise self._error(status, body, f"DELETE {key}")

    async def size(self, key: str) -> int | None:
        status, headers, body = await self._send("HEAD", self._object_path(key), f"HEAD {key}")
        if status == 200:
            try:
                return int(headers["content-length"])
            except (KeyError, ValueError):
                raise BackendUnavailable(f"{self.description}: HEAD {key}: no valid "
                                         "Content-Length in the response") from None
        if status == 404:
            return None
        raise self._error(status, body, f"HEAD {key}")

    async def list(self, prefix: str = ""):
        full = self._key_prefix + prefix
        strip = len(self._key_prefix)
        token = None
        while True:
            query = {"list-type": "2", "prefix": full, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            status, _, body = await self._send("GET", self._bucket_path, f"LIST {prefix}",
                                               query=query)
            if status != 200:
                raise self._error(status, body, f"LIST {prefix}")
            keys, token, truncated = self._parse_listing(body, prefix)
            for k in keys:
                if k.startswith(full):
                    yield k[strip:]
            if not truncated:
                return
            if not token:
                raise BackendUnavailable(f"{self.description}: LIST {prefix}: truncated "
                                         "listing without a continuation token")

    def _parse_listing(self, body: bytes, prefix: str) -> tuple[list[str], str | None, bool]:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as e:
            raise TransientError(f"{self.description}: LIST {prefix}: malformed response: {e}"
                                 ) from None
        keys: list[str] = []
        token = None
        truncated = False
        for el in root:
            name = _local(el.tag)
            if name == "Contents":
                for child in el:
                    if _local(child.tag) == "Key" and child.text:
                        keys.append(child.text)
            elif name == "NextContinuationToken":
                token = el.text
            elif name == "IsTruncated":
                truncated = (el.text or "").strip().lower() == "true"
        return keys, token, truncated

    async def aclose(self) -> None:
        await self._client.aclose()
