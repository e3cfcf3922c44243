"""Retry transient backend failures with exponential backoff and full jitter."""

from __future__ import annotations

import logging
import random

import trio

from megafs.backends.base import BackendWrapper, TransientError
from megafs.errors import BackendUnavailable

log = logging.getLogger(__name__)


class RetryBackend(BackendWrapper):
    """Retries :class:`TransientError` until *deadline* seconds have passed.

    Permanent errors (missing keys, conditional-write conflicts, authentication)
    pass straight through. When the deadline is exceeded the last error is
    raised as :class:`BackendUnavailable`.
    """

    def __init__(self, inner, *, deadline: float = 60.0, base_delay: float = 0.05,
                 max_delay: float = 5.0):
        super().__init__(inner)
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay
        #: The error the backend is failing with right now (None once a request
        #: succeeds again): lets the daemon say why it waits during an outage.
        self.failing: str | None = None

    async def _retry(self, what: str, fn, *args, bounded: bool = False, **kw):
        """Call *fn* until it succeeds or *deadline* passes; with *bounded*, a single
        attempt that hangs (a stalled endpoint) is cut off at the deadline too."""
        start = trio.current_time()
        attempt = 0
        while True:
            try:
                if bounded:
                    left = max(0.0, start + self.deadline - trio.current_time())
                    with trio.move_on_after(left) as scope:
                        result = await fn(*args, **kw)
                    if scope.cancelled_caught:
                        raise BackendUnavailable(f"{self.description}: {what} got no answer"
                                                 f" for {self.deadline:.0f}s")
                else:
                    result = await fn(*args, **kw)
                self.failing = None
                return result
            except TransientError as e:
                self.failing = str(e)
                attempt += 1
                elapsed = trio.current_time() - start
                if elapsed >= self.deadline:
                    raise BackendUnavailable(
                        f"{self.description}: {what} failed for {elapsed:.0f}s: {e}"
                    ) from None
                delay = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
                log.debug("%s: %s failed (%s), retry %d in %.2fs", self.description, what, e,
                          attempt, delay)
                await trio.sleep(min(delay, max(0.0, self.deadline - elapsed)))

    async def get(self, key):
        return await self._retry(f"GET {key}", self.inner.get, key, bounded=True)

    async def get_range(self, key, offset, length):
        return await self._retry(f"GET {key} (bytes {offset}+{length})", self.inner.get_range,
                                 key, offset, length, bounded=True)

    async def put(self, key, data, *, if_absent=False, digest=None):
        # A conditional put whose first attempt landed but whose answer was lost
        # comes back as ObjectExists on the retry; the S3 backend recognises its
        # own bytes and reports success, and the lock compares its token.
        await self._retry(f"PUT {key}", self.inner.put, key, data, if_absent=if_absent,
                          digest=digest)

    async def replace_if(self, key, data, expected):
        # A swap whose answer was lost but which landed finds *data* on the retry,
        # which replace_if reports as success.
        await self._retry(f"PUT {key} (conditional)", self.inner.replace_if, key, data,
                          expected, bounded=True)

    async def delete(self, key):
        await self._retry(f"DELETE {key}", self.inner.delete, key)

    async def size(self, key):
        return await self._retry(f"HEAD {key}", self.inner.size, key, bounded=True)

    async def list(self, prefix=""):
        async def collect():
            return [k async for k in self.inner.list(prefix)]

        for key in await self._retry(f"LIST {prefix}", collect):
            yield key

    async def sync(self):
        await self._retry("sync", self.inner.sync)
