"""Hedged requests: when a request takes far longer than usual, send it again.

Object stores have a long latency tail. Amazon's S3 performance guidelines advise
latency-sensitive clients to retry slow requests aggressively, and our reference
server shows why: when a SeaweedFS volume fills up, the few PUTs that arrive at that
moment stall for about a second while the next requests pass in milliseconds. A
copy that ends on such a stall waits a second for its last block.

:class:`HedgeBackend` starts a second copy of a request that has
not finished after ``factor`` times the median latency of recent requests of its
kind (at least ``min_delay``), and takes whichever copy succeeds first; the other
is cancelled. Only requests that may safely run twice are hedged: GETs, and PUTs
of write-once keys (the ``write_once`` prefixes: data blocks and metadata
snapshots, whose random names are never reused for other bytes). A cancelled copy
may still be completed by the server later; for a write-once key it can only store
the same bytes again (or bring back an object deleted as garbage meanwhile, which
fsck removes), whereas a late copy of a ``head`` or ``lock`` PUT would overwrite a
newer one. Conditional PUTs and compare-and-swaps, PUTs of other keys, deletes, listings and HEADs pass
straight through.

Hedges are budgeted: each request earns ``budget`` of a hedge (5%), so a store
that is slow across the board gets at most that much extra load, never twice its
load. A copy that fails while the other still runs does not fail the request.
"""

from __future__ import annotations

import statistics
from collections import deque

import trio

from megafs.backends.base import BackendWrapper

_WINDOW = 64  # recent latencies the median is taken from
_MIN_SAMPLES = 8  # no hedging until this many requests of a kind succeeded
_MAX_TOKENS = 8.0  # hedges that can be saved up while requests are fast


class _Latency:
    """Recent latencies of one kind of request, and the hedging delay they imply."""

    def __init__(self, factor: float, min_delay: float, max_delay: float):
        self.samples: deque[float] = deque(maxlen=_WINDOW)
        self.factor = factor
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._delay: float | None = None  # cached until the next sample

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self._delay = None

    def delay(self) -> float | None:
        """Seconds after which a copy is worth sending; None: too few samples yet."""
        if self._delay is None and len(self.samples) >= _MIN_SAMPLES:
            median = statistics.median(self.samples)
            self._delay = min(self.max_delay, max(self.min_delay, self.factor * median))
        return self._delay


class HedgeBackend(BackendWrapper):
    def __init__(self, inner, *, write_once: tuple[str, ...] = (), factor: float = 3.0,
                 min_delay: float = 0.2, max_delay: float = 30.0, budget: float = 0.05):
        super().__init__(inner)
        self.write_once = write_once  # key prefixes whose PUTs may be sent twice
        self.budget = budget
        self._tokens = 1.0
        self._get = _Latency(factor, min_delay, max_delay)
        self._put = _Latency(factor, min_delay, max_delay)
        self.hedged = 0  # copies sent
        self.won = 0  # ... that finished first

    def _take_token(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def _hedged(self, latency: _Latency, fn, *args, **kw):
        """``await fn(*args, **kw)``, with a second copy if the first is slow."""
        self._tokens = min(_MAX_TOKENS, self._tokens + self.budget)
        delay = latency.delay()
        if delay is None:
            start = trio.current_time()
            result = await fn(*args, **kw)
            latency.add(trio.current_time() - start)
            return result
        results: list = []  # the first success
        errors: list[Exception] = []
        started = 0
        done = trio.Event()  # the first copy finished (either way)

        async def attempt(nursery: trio.Nursery, hedge: bool) -> None:
            start = trio.current_time()
            try:
                value = await fn(*args, **kw)
            except Exception as e:  # noqa: BLE001 - reported once every copy failed
                errors.append(e)
                if len(errors) == started:  # no copy left that could succeed
                    nursery.cancel_scope.cancel()
            else:
                latency.add(trio.current_time() - start)
                results.append(value)
                self.won += hedge
                nursery.cancel_scope.cancel()
            finally:
                done.set()

        async with trio.open_nursery() as nursery:
            started = 1
            nursery.start_soon(attempt, nursery, False)
            with trio.move_on_after(delay):
                await done.wait()
            if not done.is_set() and self._take_token():
                started = 2
                self.hedged += 1
                nursery.start_soon(attempt, nursery, True)
        if results:
            return results[0]
        raise errors[0]

    async def get(self, key):
        return await self._hedged(self._get, self.inner.get, key)

    async def get_range(self, key, offset, length):
        return await self._hedged(self._get, self.inner.get_range, key, offset, length)

    async def put(self, key, data, *, if_absent=False, digest=None):
        if if_absent or not key.startswith(self.write_once):
            await self.inner.put(key, data, if_absent=if_absent, digest=digest)
        else:
            await self._hedged(self._put, self.inner.put, key, data, digest=digest)
