"""Finding S3 credentials: the environment first, then an authinfo file.

Environment
    ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (both, or neither), plus an
    optional ``AWS_SESSION_TOKEN``. When they are set the authinfo file is not read.

Authinfo file
    ``$MEGAFS_AUTHINFO`` if set, else ``~/.config/megafs/authinfo``. The file must
    not be readable, writable or executable by group or others (``chmod 600``);
    otherwise it is refused. One entry per line, ``#`` starts a comment line::

        backend s3://HOST:PORT/BUCKET/PREFIX key-id ID secret-key SECRET
        backend s3+http://127.0.0.1:8333/bucket key-id ID secret-key SECRET session-token TOK

    An entry applies to its URL and every URL below it, at path-component
    boundaries (``s3://h/bucket`` covers ``s3://h/bucket/home`` but not
    ``s3://h/bucket2``); the longest matching URL wins. Schemes are compared
    literally: an entry for ``s3://`` does not cover ``s3+http://``.
"""

from __future__ import annotations

import dataclasses
import os
import stat

from megafs.errors import BadCredentials

__all__ = ["Credentials", "authinfo_path", "find_credentials", "parse_authinfo"]

_FIELDS = {"key-id": "access_key", "secret-key": "secret_key", "session-token": "session_token"}


@dataclasses.dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print secrets into logs or tracebacks
        return f"Credentials(access_key={self.access_key!r}, secret_key=<hidden>)"


def authinfo_path(environ=None) -> str:
    environ = os.environ if environ is None else environ
    path = environ.get("MEGAFS_AUTHINFO")
    if path:
        return path
    return os.path.join(os.path.expanduser("~"), ".config", "megafs", "authinfo")


def _normalize(url: str) -> str:
    return url.strip().rstrip("/")


def parse_authinfo(text: str, path: str = "authinfo") -> list[tuple[str, Credentials]]:
    """Parse authinfo *text* into ``[(url, credentials)]``; raise BadCredentials if malformed."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{path}:{lineno}"
        if words[0] != "backend" or len(words) < 2 or len(words) % 2:
            raise BadCredentials(f"{where}: expected 'backend URL key-id ID secret-key SECRET'")
        url = _normalize(words[1])
        values: dict[str, str] = {}
        for name, value in zip(words[2::2], words[3::2], strict=True):
            if name not in _FIELDS:
                raise BadCredentials(f"{where}: unknown field {name!r} (expected one of "
                                     f"{', '.join(_FIELDS)})")
            values[_FIELDS[name]] = value
        if "access_key" not in values or "secret_key" not in values:
            raise BadCredentials(f"{where}: an entry needs both key-id and secret-key")
        entries.append((url, Credentials(**values)))
    return entries


def _covers(entry_url: str, url: str) -> bool:
    return url == entry_url or url.startswith(entry_url + "/")


def _from_file(url: str, path: str, explicit: bool) -> Credentials | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if explicit:
            raise BadCredentials(f"authinfo file {path} (from MEGAFS_AUTHINFO) does not exist"
                                 ) from None
        return None
    except OSError as e:
        raise BadCredentials(f"cannot read authinfo file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadCredentials(f"authinfo file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise BadCredentials(
                f"refusing authinfo file {path}: it is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}")
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace", closefd=False) as f:
            text = f.read()
    except OSError as e:
        raise BadCredentials(f"cannot read authinfo file {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    url = _normalize(url)
    best: tuple[str, Credentials] | None = None
    for entry_url, creds in parse_authinfo(text, path):
        if _covers(entry_url, url) and (best is None or len(entry_url) > len(best[0])):
            best = (entry_url, creds)
    if best is None:
        raise BadCredentials(f"no credentials for {url}: authinfo file {path} has no "
                             "'backend' line covering it")
    return best[1]


def find_credentials(url: str, environ=None) -> Credentials:
    """Return the credentials for storage *url*; raise BadCredentials when there are none."""
    environ = os.environ if environ is None else environ
    key = environ.get("AWS_ACCESS_KEY_ID", "")
    secret = environ.get("AWS_SECRET_ACCESS_KEY", "")
    if key and secret:
        return Credentials(key, secret, environ.get("AWS_SESSION_TOKEN") or None)
    if key or secret:
        have, missing = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key
                         else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
        raise BadCredentials(f"{have} is set but {missing} is not")
    path = authinfo_path(environ)
    creds = _from_file(url, path, explicit=bool(environ.get("MEGAFS_AUTHINFO")))
    if creds is None:
        raise BadCredentials(
            f"no credentials for {_normalize(url)}: set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY, or add 'backend URL key-id ID secret-key SECRET' to {path}")
    return creds
