"""Hedged requests (megafs.backends.hedge), on trio's virtual clock.

The inner backend is scripted: each request for a key takes the next (seconds,
error) step of that key's script, so a test decides which copy of a request is slow
and which fails. The hedge also runs against SeaweedFS in the conformance suite
(tests/test_backends.py).
"""

import collections

import pytest
import trio

from megafs.backends import open_backend
from megafs.backends.base import Backend, NoSuchObject, TransientError
from megafs.backends.hedge import HedgeBackend
from megafs.backends.retry import RetryBackend
from megafs.store.objects import WRITE_ONCE_PREFIXES

FAST = 0.01


class Scripted(Backend):
    """In-memory objects; request *n* for a key sleeps and fails as its script says."""

    remote = True

    def __init__(self):
        self.objects: dict[str, bytes] = {}
        self.script: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.calls: collections.Counter = collections.Counter()
        self.cancelled = 0

    async def _step(self, key: str) -> None:
        self.calls[key] += 1
        seconds, error = self.script[key].popleft() if self.script[key] else (FAST, None)
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self.cancelled += 1
            raise
        if error is not None:
            raise error

    async def get(self, key):
        await self._step(key)
        try:
            return self.objects[key]
        except KeyError:
            raise NoSuchObject(key) from None

    async def put(self, key, data, *, if_absent=False, digest=None):
        await self._step(key)
        self.objects[key] = data

    async def delete(self, key):
        self.objects.pop(key, None)

    async def list(self, prefix=""):
        for k in list(self.objects):
            if k.startswith(prefix):
                yield k

    async def size(self, key):
        data = self.objects.get(key)
        return None if data is None else len(data)


@pytest.fixture
def inner():
    return Scripted()


def hedge(inner, **kw) -> HedgeBackend:
    """Data blocks (``b/``) and the warm-up objects (``w/``) are write-once keys."""
    return HedgeBackend(inner, write_once=("b/", "w/"), **kw)


async def warm(b: HedgeBackend, n: int = 8) -> None:
    """Enough fast requests of both kinds for a median (FAST: the delay is min_delay)."""
    for i in range(n):
        await b.put(f"w/{i}", b"w")
        await b.get(f"w/{i}")


async def test_a_stalled_put_is_sent_again_and_the_copy_wins(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.script["b/k"].extend([(10.0, None), (FAST, None)])
    start = trio.current_time()
    await b.put("b/k", b"data")
    assert trio.current_time() - start == pytest.approx(0.2 + FAST)
    assert inner.objects["b/k"] == b"data"
    assert (b.hedged, b.won, inner.calls["b/k"], inner.cancelled) == (1, 1, 2, 1)


async def test_a_stalled_get_is_sent_again(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.objects["b/k"] = b"x"
    inner.script["b/k"].extend([(10.0, None), (FAST, None)])
    start = trio.current_time()
    assert await b.get("b/k") == b"x"
    assert trio.current_time() - start == pytest.approx(0.2 + FAST)
    assert (b.hedged, b.won) == (1, 1)


async def test_the_first_copy_wins_if_it_finishes_first(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.script["b/k"].extend([(0.3, None), (10.0, None)])
    start = trio.current_time()
    await b.put("b/k", b"data")
    assert trio.current_time() - start == pytest.approx(0.3)
    assert (b.hedged, b.won, inner.cancelled) == (1, 0, 1)


async def test_the_delay_follows_the_median_latency(inner, autojump_clock):
    b = hedge(inner, factor=3.0, min_delay=0.2)
    for i in range(8):
        inner.script[f"w/{i}"].append((0.5, None))
        await b.put(f"w/{i}", b"w")
    inner.script["b/k"].extend([(1.4, None), (FAST, None)])
    await b.put("b/k", b"data")  # 1.4 s < 3 x 0.5 s: nothing sent twice
    inner.script["b/l"].extend([(10.0, None), (FAST, None)])
    start = trio.current_time()
    await b.put("b/l", b"data")
    assert trio.current_time() - start == pytest.approx(1.5 + FAST)
    assert b.hedged == 1


async def test_no_hedging_before_latencies_are_known(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    inner.script["b/k"].append((2.0, None))
    await b.put("b/k", b"data")
    assert b.hedged == 0 and inner.calls["b/k"] == 1


async def test_a_copy_failing_does_not_fail_the_request(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2, budget=1.0)
    await warm(b)
    # The first copy fails after the second was sent; the second succeeds later.
    inner.script["b/k"].extend([(0.5, TransientError("boom")), (1.0, None)])
    start = trio.current_time()
    await b.put("b/k", b"data")
    assert trio.current_time() - start == pytest.approx(1.2)
    # The second copy fails fast; the first one succeeds later.
    inner.script["b/l"].extend([(0.8, None), (FAST, TransientError("boom"))])
    start = trio.current_time()
    await b.put("b/l", b"data")
    assert trio.current_time() - start == pytest.approx(0.8)
    assert inner.objects.keys() >= {"b/k", "b/l"} and b.hedged == 2


async def test_every_copy_failing_raises_the_first_error(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.script["b/k"].extend([(0.5, TransientError("first")), (0.6, TransientError("second"))])
    with pytest.raises(TransientError, match="first"):
        await b.put("b/k", b"data")
    assert b.hedged == 1


async def test_a_fast_failure_is_not_hedged(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    with pytest.raises(NoSuchObject):
        await b.get("missing")
    inner.script["b/k"].append((FAST, TransientError("boom")))
    with pytest.raises(TransientError):
        await b.put("b/k", b"data")
    assert b.hedged == 0 and inner.calls["b/k"] == 1


async def test_conditional_puts_are_never_hedged(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.script["lock"].append((2.0, None))
    await b.put("lock", b"token", if_absent=True)
    assert b.hedged == 0 and inner.calls["lock"] == 1


async def test_puts_of_keys_that_are_rewritten_are_never_hedged(inner, autojump_clock):
    # A late copy of an old head PUT, completed by the server after a newer one,
    # would bring the old head back.
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.script["head"].append((2.0, None))
    start = trio.current_time()
    await b.put("head", b"new")
    assert trio.current_time() - start == pytest.approx(2.0)
    assert b.hedged == 0 and inner.calls["head"] == 1
    inner.objects["head"] = b"x"
    inner.script["head"].extend([(10.0, None), (FAST, None)])
    assert await b.get("head") == b"x"  # reads are always safe to repeat
    assert b.hedged == 1


async def test_hedges_are_budgeted(inner, autojump_clock):
    # A store slow across the board gets at most ~5% extra requests, not twice its load.
    b = hedge(inner, min_delay=0.2, budget=0.05)
    await warm(b)  # 16 requests: 1 + 16 x 0.05 = 1.8 tokens
    for i in range(100):
        inner.script[f"b/{i}"].extend([(1.0, None), (FAST, None)])
    async with trio.open_nursery() as nursery:
        for i in range(100):
            nursery.start_soon(b.put, f"b/{i}", b"data")
    # 1.8 + 100 x 0.05 = 6.8 tokens: 6 hedges; every object is stored once or twice.
    assert b.hedged == 6
    assert len([k for k in inner.objects if k.startswith("b/")]) == 100


async def test_cancelling_the_caller_cancels_every_copy(inner, autojump_clock):
    b = hedge(inner, min_delay=0.2)
    await warm(b)
    inner.script["b/k"].extend([(10.0, None), (10.0, None)])
    with trio.move_on_after(1.0) as scope:
        await b.put("b/k", b"data")
    assert scope.cancelled_caught
    assert (b.hedged, inner.cancelled, "b/k" in inner.objects) == (1, 2, False)


async def test_retries_stack_above_hedging(inner, autojump_clock):
    # A request whose both copies fail is retried as a whole by RetryBackend.
    b = RetryBackend(hedge(inner, min_delay=0.2), base_delay=0.01, max_delay=0.02)
    await warm(b.inner)
    inner.script["b/k"].extend([(0.5, TransientError("a")), (0.5, TransientError("b"))])
    await b.put("b/k", b"data")
    assert inner.objects["b/k"] == b"data" and inner.calls["b/k"] == 3


def test_only_remote_stacks_hedge(tmp_path, monkeypatch):
    monkeypatch.delenv("MEGAFS_FAULTS", raising=False)
    local = open_backend(f"local://{tmp_path}")
    assert isinstance(local, RetryBackend) and not isinstance(local.inner, HedgeBackend)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = open_backend("s3+http://127.0.0.1:9/bucket/prefix")
    assert isinstance(s3, RetryBackend) and isinstance(s3.inner, HedgeBackend)
    assert s3.inner.write_once == ()  # PUTs are only hedged for keys the caller names
    s3 = open_backend("s3+http://127.0.0.1:9/bucket/prefix", write_once=WRITE_ONCE_PREFIXES)
    assert s3.inner.write_once == ("b/", "m/", "p/")
