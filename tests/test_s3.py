"""The S3 backend: URLs, credentials, error mapping, streaming, cancellation, retries.

Most tests run against a real SeaweedFS server (``contrib/seaweed.py``). Faults
that a real server does not produce on demand (a lost response, a stalled
connection, a 503) come from :class:`FlakyProxy`, a TCP proxy placed between the
backend and SeaweedFS: requests still reach the real server.
"""

import datetime
import hashlib
import os
import socket
import time
import uuid

import pytest
import seaweed as seaweed_server
import trio

from megafs.backends import open_backend, parse_url
from megafs.backends.base import NoSuchObject, ObjectExists, TransientError
from megafs.backends.credentials import Credentials, find_credentials, parse_authinfo
from megafs.backends.retry import RetryBackend
from megafs.backends.s3 import S3Backend, S3Location, parse_location, sign_headers
from megafs.errors import (
    BackendUnavailable,
    BadCredentials,
    ExitCode,
    StoreNotFound,
    UsageError,
)


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def s3(seaweed, prefix):
    b = seaweed.backend(prefix)
    try:
        yield b
    finally:
        await b.aclose()


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean credential environment (no AWS_* variables, no default authinfo)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "MEGAFS_AUTHINFO", "MEGAFS_FAULTS", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- URLs


def test_parse_url_forms():
    assert parse_url("s3://s3.example.com/bucket/a/b/") == ("s3", "s3://s3.example.com/bucket/a/b")
    assert parse_url("s3+http://127.0.0.1:8333/bkt") == ("s3+http", "s3+http://127.0.0.1:8333/bkt")
    loc = parse_location("s3+http://Host:9000/bkt//x/y")
    assert loc == S3Location(secure=False, netloc="host:9000", bucket="bkt", prefix="x/y")
    assert loc.endpoint == "http://host:9000"
    assert parse_location("s3://[::1]:9000/b").endpoint == "https://[::1]:9000"


@pytest.mark.parametrize("url", [
    "s3://host", "s3://host/", "s3:///bucket", "s3://host:99999/b", "s3://host:x/b",
    "s3://key:secret@host/b", "s3://host/b?x=1", "s3://host/b/../c", "s3://host/-bad",
    "s3+https://host/b", "http://host/b",
])
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError, match="s3://HOST") as e:
        parse_url(url)
    assert e.value.exit_code == ExitCode.USAGE


# --------------------------------------------------------------------------- signing


def test_sigv4_matches_aws_documentation_example():
    # "Example: GET Object" from the AWS Signature Version 4 documentation for S3.
    creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    headers = sign_headers(
        "GET", "examplebucket.s3.amazonaws.com", "/test.txt", "", {"Range": "bytes=0-9"},
        hashlib.sha256(b"").hexdigest(), creds, "us-east-1",
        now=datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC))
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


# --------------------------------------------------------------------------- credentials


def _write(path, text, mode=0o600):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_credentials_from_environment(env):
    env.setenv("AWS_ACCESS_KEY_ID", "id")
    env.setenv("AWS_SECRET_ACCESS_KEY", "s3kr1t")
    env.setenv("AWS_SESSION_TOKEN", "tok")
    env.setenv("MEGAFS_AUTHINFO", "/nonexistent")  # not consulted
    assert find_credentials("s3://h/b") == Credentials("id", "s3kr1t", "tok")
    assert "s3kr1t" not in repr(find_credentials("s3://h/b"))


def test_half_set_environment_is_an_error(env):
    env.setenv("AWS_ACCESS_KEY_ID", "id")
    with pytest.raises(BadCredentials, match="AWS_SECRET_ACCESS_KEY is not"):
        find_credentials("s3://h/b")


def test_no_credentials_is_a_clear_error(env):
    with pytest.raises(BadCredentials, match="no credentials for s3://h/b: set AWS_ACCESS_KEY_ID"
                       ) as e:
        find_credentials("s3://h/b")
    assert e.value.exit_code == ExitCode.BAD_CREDENTIALS == 23


def test_authinfo_longest_prefix_wins(env, tmp_path):
    path = _write(tmp_path / "home/.config/megafs/authinfo", """
# comment
backend s3://h:9000/bucket key-id A secret-key a
backend s3://h:9000/bucket/home/ key-id B secret-key b session-token t
backend s3://h:9000/bucket/home/alice key-id C secret-key c
backend s3+http://h:9000/bucket key-id D secret-key d
""")
    assert find_credentials("s3://h:9000/bucket") == Credentials("A", "a")
    assert find_credentials("s3://h:9000/bucket/other") == Credentials("A", "a")
    assert find_credentials("s3://h:9000/bucket/home/bob") == Credentials("B", "b", "t")
    assert find_credentials("s3://h:9000/bucket/home/alice/x") == Credentials("C", "c")
    assert find_credentials("s3://h:9000/bucket/home/alicex") == Credentials("B", "b", "t")
    assert find_credentials("s3+http://h:9000/bucket/p") == Credentials("D", "d")
    with pytest.raises(BadCredentials, match="no 'backend' line covering it"):
        find_credentials("s3://h:9000/bucket2")
    env.setenv("MEGAFS_AUTHINFO", str(path))
    assert find_credentials("s3://h:9000/bucket") == Credentials("A", "a")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_authinfo_readable_by_others_is_refused(env, tmp_path, mode):
    path = _write(tmp_path / "authinfo", "backend s3://h/b key-id A secret-key a\n", mode)
    env.setenv("MEGAFS_AUTHINFO", str(path))
    with pytest.raises(BadCredentials, match=r"refusing authinfo file .*chmod 600"):
        find_credentials("s3://h/b")


def test_authinfo_errors(env, tmp_path):
    env.setenv("MEGAFS_AUTHINFO", str(tmp_path / "missing"))
    with pytest.raises(BadCredentials, match="does not exist"):
        find_credentials("s3://h/b")
    with pytest.raises(BadCredentials, match="authinfo:1: expected"):
        parse_authinfo("machine h login x password y\n")
    with pytest.raises(BadCredentials, match="unknown field 'password'"):
        parse_authinfo("backend s3://h/b key-id A password a\n")
    with pytest.raises(BadCredentials, match="needs both"):
        parse_authinfo("backend s3://h/b key-id A\n")


async def test_open_backend_with_authinfo(env, tmp_path, seaweed, prefix):
    url = seaweed.url(prefix)
    a = seaweed_server.ADMIN
    _write(tmp_path / "home/.config/megafs/authinfo",
           f"backend {seaweed.url()} key-id {a.access_key} secret-key {a.secret_key}\n")
    backend = open_backend(url)
    try:
        assert isinstance(backend, RetryBackend)
        assert backend.description == url
        await backend.check()
        await backend.put("superblock", b"sb")
        assert [k async for k in backend.list("")] == ["superblock"]
    finally:
        await backend.aclose()


async def test_plain_http_works_with_aws_ca_bundle_set(env, tmp_path, seaweed, prefix):
    env.setenv("AWS_ACCESS_KEY_ID", seaweed_server.ADMIN.access_key)
    env.setenv("AWS_SECRET_ACCESS_KEY", seaweed_server.ADMIN.secret_key)
    for bundle in (tmp_path / "missing.pem", _write(tmp_path / "junk.pem", "not a cert")):
        env.setenv("AWS_CA_BUNDLE", str(bundle))
        backend = open_backend(seaweed.url(prefix))
        try:
            await backend.check()
            await backend.put("head", b"h")
            assert await backend.get("head") == b"h"
        finally:
            await backend.aclose()
        # An https endpoint does use the bundle, and says so when it is unusable.
        with pytest.raises(UsageError, match="AWS_CA_BUNDLE"):
            open_backend("s3://127.0.0.1:1/b")


async def test_https_uses_aws_ca_bundle(env, seaweed, prefix):
    env.setenv("AWS_ACCESS_KEY_ID", seaweed_server.ADMIN.access_key)
    env.setenv("AWS_SECRET_ACCESS_KEY", seaweed_server.ADMIN.secret_key)
    url = f"s3://127.0.0.1:{seaweed.https_port}/{seaweed.bucket}/{prefix}"
    env.setenv("AWS_CA_BUNDLE", seaweed.ca_file)
    backend = open_backend(url)
    try:
        await backend.check()
        await backend.put("head", b"tls")
        assert await backend.get("head") == b"tls"
    finally:
        await backend.aclose()
    env.delenv("AWS_CA_BUNDLE")  # the test CA is not trusted by default
    backend = open_backend(url)
    try:
        with pytest.raises(BackendUnavailable, match="cannot reach https://.*certificate verification failed.*AWS_CA_BUNDLE"):
            await backend.check()
    finally:
        await backend.aclose()


async def test_https_puts_do_not_hash_the_payload(env, seaweed, prefix):
    # TLS protects the bytes in transit: plain PUTs sign UNSIGNED-PAYLOAD (no SHA-256 of
    # every uploaded byte); conditional PUTs still sign theirs; plain http signs all.
    env.setenv("AWS_ACCESS_KEY_ID", seaweed_server.ADMIN.access_key)
    env.setenv("AWS_SECRET_ACCESS_KEY", seaweed_server.ADMIN.secret_key)
    env.setenv("AWS_CA_BUNDLE", seaweed.ca_file)
    sent: list[tuple[str, str]] = []

    async def hook(request):
        sent.append((request.method, request.headers["x-amz-content-sha256"]))

    big = os.urandom(3 << 20)
    for url, signed in ((f"s3://127.0.0.1:{seaweed.https_port}/{seaweed.bucket}/{prefix}", False),
                        (seaweed.url(prefix + "-http"), True)):
        backend = open_backend(url)
        s3 = backend.inner.inner  # Retry -> Hedge -> S3
        s3._client.event_hooks["request"].append(hook)
        sent.clear()
        try:
            assert (s3.payload_digest(big) is not None) == signed
            await backend.put("b/big", big)
            await backend.put("lock", b"token", if_absent=True)
            assert await backend.get("b/big") == big
            assert await backend.get("lock") == b"token"
        finally:
            await backend.aclose()
        big_sig, lock_sig = (h for m, h in sent if m == "PUT")
        assert big_sig == (hashlib.sha256(big).hexdigest() if signed else "UNSIGNED-PAYLOAD")
        assert lock_sig == hashlib.sha256(b"token").hexdigest()


# --------------------------------------------------------------------------- error kinds


async def test_missing_bucket(seaweed):
    b = seaweed.backend("p", bucket="no-such-bucket")
    try:
        with pytest.raises(StoreNotFound, match="bucket no-such-bucket does not exist") as e:
            await b.check()
        assert e.value.exit_code == ExitCode.STORE_NOT_FOUND
        # Not created behind our back by a put (auto-creation is off) either.
        with pytest.raises(StoreNotFound):
            await b.put("x", b"x")
        with pytest.raises(StoreNotFound):
            await b.get("x")
    finally:
        await b.aclose()


@pytest.mark.parametrize("creds,match", [
    (Credentials("nobody", "secret"), "does not know access key nobody"),
    (Credentials(seaweed_server.ADMIN.access_key, "wrong"), "rejected the secret key"),
])
async def test_wrong_credentials(seaweed, creds, match):
    b = seaweed.backend("p", credentials=creds)
    try:
        with pytest.raises(BadCredentials, match=match) as e:
            await b.check()
        assert e.value.exit_code == ExitCode.BAD_CREDENTIALS
        # Not retried: a RetryBackend passes the permanent error straight through.
        start = time.monotonic()
        with pytest.raises(BadCredentials):
            await RetryBackend(b, deadline=30).get("x")
        assert time.monotonic() - start < 2
    finally:
        await b.aclose()


async def test_read_only_credentials(seaweed, s3, prefix):
    await s3.put("head", b"h")
    b = seaweed.backend(prefix, credentials=seaweed_server.READONLY)
    try:
        await b.check()
        assert await b.get("head") == b"h"
        with pytest.raises(BadCredentials, match="access denied: PUT head"):
            await b.put("head", b"x")
    finally:
        await b.aclose()


async def test_unreachable_endpoint_fails_fast():
    loc = S3Location(secure=False, netloc=f"127.0.0.1:{_closed_port()}", bucket="b", prefix="")
    b = S3Backend(loc, Credentials("a", "b"))
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="cannot reach http://127.0.0.1:") as e:
            await b.check()
        assert e.value.exit_code == ExitCode.BACKEND_UNAVAILABLE
        with pytest.raises(TransientError) as t:  # during operation: retryable, no httpx error
            await b.get("x")
        assert type(t.value).__module__.startswith("megafs")
        with pytest.raises(BackendUnavailable):
            await RetryBackend(b, deadline=0.3, base_delay=0.01).get("x")
        assert time.monotonic() - start < 3
    finally:
        await b.aclose()


# --------------------------------------------------------------------------- data paths


async def test_pagination_past_1000_keys(s3):
    keys = {f"b/{i:05d}" for i in range(1234)}
    limit = trio.CapacityLimiter(s3.parallelism)

    async def put(k):
        async with limit:
            await s3.put(k, b"")

    async with trio.open_nursery() as n:
        for k in keys:
            n.start_soon(put, k)
    pages = 0
    send = s3._send

    async def counting_send(method, path, what, **kw):
        nonlocal pages
        pages += what.startswith("LIST")
        return await send(method, path, what, **kw)

    s3._send = counting_send
    listed = [k async for k in s3.list("b/")]
    assert sorted(listed) == sorted(keys) and pages == 2
    assert {k async for k in s3.list("b/011")} == {f"b/011{i:02d}" for i in range(100)}


async def test_large_object_is_streamed(s3):
    data = os.urandom(30 << 20)
    gaps = []

    async def ticker():
        last = trio.current_time()
        while True:
            await trio.sleep(0.01)
            now = trio.current_time()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as n:
        n.start_soon(ticker)
        await s3.put("b/big", data)
        assert await s3.size("b/big") == len(data)
        assert await s3.get("b/big") == data
        n.cancel_scope.cancel()
    # The event loop kept running while 30 MiB went up and down.
    assert max(gaps) < 0.5, max(gaps)


# --------------------------------------------------------------------------- a flaky network


class FlakyProxy:
    """A TCP proxy in front of the real server that misbehaves on request.

    ``drop_responses``: for the next N responses, forward the request but cut
    the connection instead of returning the response (the server did the work).
    ``inject``: answer the next requests with these raw HTTP responses instead of
    forwarding them. ``stalled``: hold back all responses while set.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = 0
        self.drop_responses = 0
        self.dropped = 0
        self.inject: list[bytes] = []
        self.requests = 0
        self.stalled = False

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client):
        async with client:
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                return
            async with upstream, trio.open_nursery() as n:
                n.start_soon(self._requests, client, upstream, n.cancel_scope)
                n.start_soon(self._responses, upstream, client, n.cancel_scope)

    async def _requests(self, client, upstream, scope):
        try:
            async for data in client:
                if data[:4] in (b"GET ", b"PUT ", b"HEAD", b"DELE", b"POST"):
                    self.requests += 1
                    if self.inject:
                        await client.send_all(self.inject.pop(0))
                        break
                await upstream.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()

    async def _responses(self, upstream, client, scope):
        try:
            async for data in upstream:
                while self.stalled:
                    await trio.sleep(0.01)
                if self.drop_responses:
                    self.drop_responses -= 1
                    self.dropped += 1
                    break
                await client.send_all(data)
        except trio.BrokenResourceError:
            pass
        scope.cancel()


def _canned(status: str, code: str) -> bytes:
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n").encode() + body


@pytest.fixture
async def proxy(seaweed, nursery):
    return await nursery.start(FlakyProxy(seaweed.s3_port).serve)


@pytest.fixture
async def proxied(seaweed, proxy, prefix):
    loc = S3Location(secure=False, netloc=f"127.0.0.1:{proxy.port}", bucket=seaweed.bucket,
                     prefix=prefix)
    b = S3Backend(loc, seaweed_server.ADMIN, parallelism=1)
    try:
        yield b
    finally:
        await b.aclose()


async def test_retried_conditional_put_is_not_a_conflict(proxy, proxied, s3):
    retrying = RetryBackend(proxied, deadline=10, base_delay=0.01, max_delay=0.05)
    proxy.drop_responses = 1  # the server stores the object, we never hear back
    await retrying.put("lock", b"mine", if_absent=True)
    assert proxy.dropped == 1
    assert await s3.get("lock") == b"mine"
    # A genuine conflict stays a conflict, lost response or not.
    proxy.drop_responses = 1
    with pytest.raises(ObjectExists):
        await retrying.put("lock", b"theirs", if_absent=True)
    assert proxy.dropped == 2
    assert await s3.get("lock") == b"mine"
    with pytest.raises(ObjectExists):
        await retrying.put("lock", b"mine", if_absent=True)  # no failure in between: a conflict


async def test_transient_and_permanent_http_errors(proxy, proxied):
    await proxied.put("head", b"h")
    for status, code in [("503 Service Unavailable", "SlowDown"), ("500 Internal Server Error",
                                                                  "InternalError"),
                         ("409 Conflict", "ConditionalRequestConflict")]:
        proxy.inject = [_canned(status, code)]
        with pytest.raises(TransientError, match=code):
            await proxied.get("head")
    proxy.inject = [_canned("503 Service Unavailable", "SlowDown")] * 3
    assert await RetryBackend(proxied, base_delay=0.01).get("head") == b"h"
    # A permanent error is reported once, clearly, without retries.
    proxy.inject = [_canned("400 Bad Request", "InvalidArgument")] * 3
    before = proxy.requests
    with pytest.raises(BackendUnavailable, match="GET head failed: HTTP 400 InvalidArgument"):
        await RetryBackend(proxied, base_delay=0.01).get("head")
    assert proxy.requests == before + 1
    proxy.inject = []


async def test_cancellation_really_cancels(proxy, proxied):
    await proxied.put("b/0", b"zero")
    proxy.stalled = True
    for _ in range(5):  # more than the pool holds (parallelism=1: 2 connections)
        start = trio.current_time()
        with trio.move_on_after(0.2) as scope:
            await proxied.get("b/0")
        assert scope.cancelled_caught
        assert trio.current_time() - start < 1
    proxy.stalled = False
    # Cancelled requests gave their connections back: the pool still works.
    with trio.fail_after(5):
        for _ in range(5):
            assert await proxied.get("b/0") == b"zero"


async def test_responses_lost_for_plain_puts_are_retried(proxy, proxied, s3):
    proxy.drop_responses = 2
    await RetryBackend(proxied, base_delay=0.01).put("b/1", b"one")
    assert await s3.get("b/1") == b"one"
    with pytest.raises(NoSuchObject):
        await proxied.get("b/2")
