"""AWS Signature Version 4 for S3 requests (hashlib/hmac only; see the AWS SigV4 docs)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import hmac
import urllib.parse
from collections.abc import Mapping

from megafs.backends.credentials import Credentials


def uri_quote(s: str, safe: str = "") -> str:
    # RFC 3986 unreserved characters stay, everything else is %XX (upper case).
    return urllib.parse.quote(s, safe=safe + "~")


def canonical_query(params: Mapping[str, str] | None) -> str:
    if not params:
        return ""
    pairs = sorted((uri_quote(k), uri_quote(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in pairs)


@functools.lru_cache(maxsize=8)  # one key per day: not four HMACs per request
def _signing_key(secret: str, date: str, region: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign_headers(method: str, netloc: str, path: str, query: str, headers: Mapping[str, str],
                 payload_sha256: str, credentials: Credentials, region: str,
                 now: datetime.datetime | None = None) -> dict[str, str]:
    """Return *headers* plus the AWS Signature V4 headers for one request.

    *path* and *query* must already be in canonical (encoded) form and are sent
    exactly as given. Every header passed in is signed, as are ``host``,
    ``x-amz-date``, ``x-amz-content-sha256`` and ``x-amz-security-token``.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    out = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    out["host"] = netloc
    out["x-amz-date"] = amz_date
    out["x-amz-content-sha256"] = payload_sha256
    if credentials.session_token:
        out["x-amz-security-token"] = credentials.session_token
    names = sorted(out)
    signed = ";".join(names)
    canonical = "\n".join([
        method, path, query, "".join(f"{n}:{out[n]}\n" for n in names), signed, payload_sha256,
    ])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    signature = hmac.new(_signing_key(credentials.secret_key, date, region), to_sign.encode(),
                         hashlib.sha256).hexdigest()
    out["authorization"] = (f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                            f"SignedHeaders={signed}, Signature={signature}")
    return out
