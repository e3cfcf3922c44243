"""``megafs web serve ADDRESS STORAGE_URL``: a local store's shared objects and the
download page over plain HTTP, read-only (docs/format.md §5b, "Serving a local store").

Only ``GET``/``HEAD`` of ``/megafs.html``, ``/s/<32 hex>``, ``/p/<32 hex>`` (packs) and
``/b/<32 hex>`` are answered (single byte ranges too, read with ``pread``: a block's
range of a 16 MiB pack reads that range only); everything else, the superblock and
metadata included, is 404. Files are opened without following symlinks. Browsers allow the
page's WebCrypto only in a secure context: ``http://`` works on this machine
(127.0.0.1, localhost); from other machines put an https proxy in front.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import stat
import sys

from megafs.errors import LocalIOError, StoreNotFound, UsageError

_KEY = re.compile(r"/([spb])/([0-9a-f]{32})")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad address {text!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "0.0.0.0", int(port)


def _pread(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        parts.append(chunk)
        length -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _handler(root: str, page: bytes, csp: str):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "megafs"
        sys_version = ""

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            pass

        def _send(self, status: int, body, kind: str, extra=(), length: int | None = None):
            """Answer with *body*: bytes, or a function returning the *length* bytes, called
            for GET only (a HEAD of a pack reads nothing)."""
            if length is None:
                length = len(body)
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(length))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Accept-Ranges", "bytes")
            for name, value in extra:
                self.send_header(name, value)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body() if callable(body) else body)

        def _object(self) -> int | None:
            """A descriptor of the object the path names, or None."""
            match = _KEY.fullmatch(self.path)
            if not match:
                return None
            kind, name = match.groups()
            try:
                fd = os.open(os.path.join(root, kind, name[:2], name),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                return None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return None
            return fd

        def do_GET(self) -> None:
            if self.path == "/megafs.html":
                self._send(200, page, "text/html; charset=utf-8",
                           [("Content-Security-Policy", csp + "; frame-ancestors 'none'"),
                            ("Referrer-Policy", "no-referrer")])
                return
            fd = self._object()
            if fd is None:
                self._send(404, b"not found\n", "text/plain")
                return
            try:
                size = os.fstat(fd).st_size
                wanted = _RANGE.fullmatch(self.headers.get("Range", "").strip())
                if wanted:
                    start = int(wanted.group(1))
                    end = min(int(wanted.group(2) or size - 1), size - 1)
                    if start > end:
                        self._send(416, b"", "text/plain",
                                   [("Content-Range", f"bytes */{size}")])
                        return
                    self._send(206, lambda: _pread(fd, end + 1 - start, start),
                               "application/octet-stream",
                               [("Content-Range", f"bytes {start}-{end}/{size}")],
                               length=end + 1 - start)
                    return
                self._send(200, lambda: _pread(fd, size, 0), "application/octet-stream",
                           length=size)
            finally:
                os.close(fd)

        do_HEAD = do_GET

    return Handler


def serve(address: str, storage_url: str) -> int:
    from megafs.backends import parse_url
    from megafs.web import page

    scheme, root = parse_url(storage_url)
    if scheme != "local":
        raise UsageError(f"{storage_url}: megafs web serve serves local stores (an S3 store"
                         " serves itself: megafs web enable)")
    if not os.path.isfile(os.path.join(root, "superblock")):
        raise StoreNotFound(f"{root} holds no megafs store")
    html = page()
    csp = re.search(rb'http-equiv="Content-Security-Policy" content="([^"]+)"', html)
    host, port = parse_address(address)
    try:
        server = http.server.ThreadingHTTPServer((host, port), _handler(root, html,
                                                                        csp.group(1).decode()))
    except OSError as e:
        raise LocalIOError(f"cannot listen on {address}: {e.strerror}") from None
    shown = f"[{host}]" if ":" in host else host
    print(f"serving the links of {storage_url} read-only: http://{shown}:{port}/megafs.html"
          "#s=ID&k=KEY (ID and KEY from its megafs+ link: .../s/ID#KEY)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
