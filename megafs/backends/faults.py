"""A backend decorator that injects failures and latency (for tests).

Enabled through ``MEGAFS_FAULTS`` (see :func:`from_spec`), e.g.
``MEGAFS_FAULTS="fail=0.1,latency=0.1,seed=42"``; ``offline=FILE`` makes every
request fail while FILE exists, which lets a test take the backend down and
bring it back while a mount runs.
"""

from __future__ import annotations

import os
import random

import trio

from megafs.backends.base import BackendWrapper, TransientError


class FaultyBackend(BackendWrapper):
    def __init__(self, inner, *, fail: float = 0.0, latency: float = 0.0,
                 seed: int | None = None, offline_flag: str | None = None):
        super().__init__(inner)
        self.fail = fail
        self.latency = latency
        self.offline_flag = offline_flag
        self.rng = random.Random(seed)
        self.injected = 0

    async def _before(self, what: str) -> None:
        if self.latency:
            await trio.sleep(self.latency)
        if self.offline_flag and os.path.exists(self.offline_flag):
            self.injected += 1
            raise TransientError(f"injected: backend offline ({what})")
        if self.fail and self.rng.random() < self.fail:
            self.injected += 1
            raise TransientError(f"injected failure ({what})")

    async def get(self, key):
        await self._before("get")
        return await self.inner.get(key)

    async def get_range(self, key, offset, length):
        await self._before("get")
        return await self.inner.get_range(key, offset, length)

    async def put(self, key, data, *, if_absent=False, digest=None):
        await self._before("put")
        await self.inner.put(key, data, if_absent=if_absent, digest=digest)

    async def replace_if(self, key, data, expected):
        await self._before("replace_if")
        await self.inner.replace_if(key, data, expected)

    async def delete(self, key):
        await self._before("delete")
        await self.inner.delete(key)

    async def size(self, key):
        await self._before("size")
        return await self.inner.size(key)

    async def list(self, prefix=""):
        await self._before("list")
        async for k in self.inner.list(prefix):
            yield k


def from_spec(inner, spec: str) -> FaultyBackend:
    """Build a :class:`FaultyBackend` from ``"fail=0.1,latency=0.05,seed=1,offline=/path"``."""
    opts = dict(item.split("=", 1) for item in spec.split(",") if item)
    return FaultyBackend(
        inner,
        fail=float(opts.get("fail", 0)),
        latency=float(opts.get("latency", 0)),
        seed=int(opts["seed"]) if "seed" in opts else None,
        offline_flag=opts.get("offline"),
    )
