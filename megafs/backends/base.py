"""The one backend interface every storage layer implements.

A backend stores opaque byte strings under string keys made of ``[a-z0-9/._-]``.
It knows nothing about encryption; decorators (retry, fault injection) wrap a
backend and expose the same interface, so layers stack freely (see
:func:`megafs.backends.open_backend`).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator


class NoSuchObject(KeyError):
    """The key does not exist in the backend."""


class ObjectExists(Exception):
    """A conditional put (``if_absent=True``) found the key already present."""


class ObjectChanged(Exception):
    """A compare-and-swap (:meth:`Backend.replace_if`) found other bytes than expected."""


class TransientError(Exception):
    """A failure worth retrying (timeouts, 5xx, connection resets)."""


class Backend(abc.ABC):
    """Asynchronous key/value object storage."""

    #: A short human-readable description of where objects go (for messages).
    description: str = "backend"

    #: How many requests are worth running in parallel against this backend.
    parallelism: int = 4

    #: Objects travel over a network: worth uploading a complete block as soon as it
    #: is complete, overlapping the transfer with the writer. A local directory shares
    #: the disk with the cache, so starting early only slows the writer down.
    remote: bool = False

    @abc.abstractmethod
    async def get(self, key: str) -> bytes:
        """Return the object's bytes, or raise :class:`NoSuchObject`."""

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return *length* bytes of the object from *offset* (fewer if the object ends
        before), or raise :class:`NoSuchObject`. Packs are read this way (docs/format.md
        §4a): S3 sends a Range GET, the local backend a pread. The default fetches the
        whole object."""
        return (await self.get(key))[offset:offset + length]

    @abc.abstractmethod
    async def put(self, key: str, data: bytes, *, if_absent: bool = False,
                  digest: str | None = None) -> None:
        """Store *data* under *key* atomically (readers see old or new, never a mix).

        With ``if_absent=True`` raise :class:`ObjectExists` when *key* exists.
        *digest*, if given, is :meth:`payload_digest` of *data*.
        """

    async def replace_if(self, key: str, data: bytes, expected: bytes | None) -> None:
        """Compare and swap: store *data* under *key* only if *key* holds exactly
        *expected* (None: only if *key* is absent), atomically with respect to other
        ``replace_if`` calls; otherwise raise :class:`ObjectChanged`.

        A key that already holds *data* counts as success: a retried swap whose first
        attempt landed (callers make *data* unique, e.g. with a nonce). Used for the
        ``lock`` and ``head`` objects. The default reads, compares and writes: only
        safe with a single writer; backends override it with a real conditional write.
        """
        try:
            current = await self.get(key)
        except NoSuchObject:
            current = None
        if current == data:
            return
        if current != expected:
            raise ObjectChanged(key)
        await self.put(key, data, if_absent=expected is None)

    def payload_digest(self, data: bytes) -> str | None:
        """What :meth:`put` would compute from *data* anyway (S3: its SHA-256), so that a
        caller can compute it in a worker thread together with other work on the same
        bytes. Thread-safe. None: nothing to compute (the default)."""
        return None

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove *key*; a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key starting with *prefix*, in no particular order."""

    @abc.abstractmethod
    async def size(self, key: str) -> int | None:
        """Return the stored size of *key*, or None when it does not exist."""

    async def sync(self) -> None:  # noqa: B027 - optional hook
        """Make every completed put durable (a write barrier). Default: no-op."""

    async def check(self) -> None:  # noqa: B027 - optional hook
        """Raise a :class:`megafs.errors.MegafsError` if the store location is unusable."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""


class BackendWrapper(Backend):
    """Base for decorators: forwards everything to ``self.inner``."""

    def __init__(self, inner: Backend):
        self.inner = inner
        self.description = inner.description
        self.parallelism = inner.parallelism
        self.remote = inner.remote

    async def get(self, key):
        return await self.inner.get(key)

    async def get_range(self, key, offset, length):
        return await self.inner.get_range(key, offset, length)

    async def put(self, key, data, *, if_absent=False, digest=None):
        await self.inner.put(key, data, if_absent=if_absent, digest=digest)

    async def replace_if(self, key, data, expected):
        await self.inner.replace_if(key, data, expected)

    def payload_digest(self, data):
        return self.inner.payload_digest(data)

    async def delete(self, key):
        await self.inner.delete(key)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    async def size(self, key):
        return await self.inner.size(key)

    async def sync(self):
        await self.inner.sync()

    async def check(self):
        await self.inner.check()

    async def aclose(self):
        await self.inner.aclose()
