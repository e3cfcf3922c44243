"""Storage backends and the one place where they are assembled into a stack."""

from __future__ import annotations

import os
import urllib.parse

from megafs.backends.base import (
    Backend,
    NoSuchObject,
    ObjectChanged,
    ObjectExists,
    TransientError,
)
from megafs.errors import UsageError

__all__ = ["Backend", "NoSuchObject", "ObjectChanged", "ObjectExists", "TransientError", "open_backend",
           "parse_url"]


def parse_url(url: str) -> tuple[str, str]:
    """Split a storage URL into (scheme, location); raise UsageError if malformed.

    ``local:///absolute/path`` gives ("local", "/absolute/path");
    ``s3://HOST[:PORT]/BUCKET[/PREFIX]`` (HTTPS) and ``s3+http://...`` (plain
    HTTP) give ("s3", normalized URL) and ("s3+http", normalized URL).
    """
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError as e:  # such as an unclosed [IPv6 literal
        raise UsageError(f"bad storage URL {url!r}: {e}") from None
    if parsed.scheme == "local":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise UsageError(f"bad storage URL {url!r}: use local:///absolute/path")
        return "local", os.path.normpath(parsed.path)
    if parsed.scheme in ("s3", "s3+http"):
        from megafs.backends.s3 import parse_location

        return parsed.scheme, parse_location(url).url
    raise UsageError(f"bad storage URL {url!r}: expected local:///absolute/path, "
                     "s3://HOST[:PORT]/BUCKET[/PREFIX] or s3+http://HOST[:PORT]/BUCKET[/PREFIX]")


def open_backend(url: str, *, retry_deadline: float = 60.0,
                 write_once: tuple[str, ...] = ()) -> Backend:
    """Build the backend stack for *url*: base backend -> fault injection -> hedging
    -> retries.

    Fault injection is only inserted when ``MEGAFS_FAULTS`` is set (tests); hedged
    requests only for remote backends (a local disk's stall would stall a copy too),
    and PUTs only of keys under the *write_once* prefixes (see
    :mod:`megafs.backends.hedge`).
    """
    from megafs.backends.retry import RetryBackend

    scheme, location = parse_url(url)
    if scheme == "local":
        from megafs.backends.local import LocalBackend

        backend: Backend = LocalBackend(location)
    elif scheme in ("s3", "s3+http"):
        from megafs.backends.s3 import S3Backend

        backend = S3Backend.from_url(location)
    else:  # pragma: no cover - parse_url rejects the rest
        raise UsageError(url)
    spec = os.environ.get("MEGAFS_FAULTS")
    if spec:
        from megafs.backends.faults import from_spec

        backend = from_spec(backend, spec)
    if backend.remote:
        from megafs.backends.hedge import HedgeBackend

        backend = HedgeBackend(backend, write_once=write_once)
    return RetryBackend(backend, deadline=retry_deadline)
