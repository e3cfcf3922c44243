"""Backend conformance: one suite, run against every backend stack."""

import os

import pytest
import trio

from megafs.backends import NoSuchObject, ObjectExists, TransientError
from megafs.backends.faults import FaultyBackend
from megafs.backends.local import LocalBackend
from megafs.backends.retry import RetryBackend
from megafs.errors import BackendUnavailable, StoreNotFound


def _local(path):
    return LocalBackend(str(path))


def _faulty_retry(path):
    # 30% of requests fail; retries must hide every one of them.
    return RetryBackend(FaultyBackend(LocalBackend(str(path)), fail=0.3, seed=7),
                        deadline=30, base_delay=0.001, max_delay=0.01)


@pytest.fixture(params=[_local, _faulty_retry], ids=["local", "local+faults+retry"])
def backend(request, tmp_path):
    return request.param(tmp_path)


async def test_put_get_size_delete(backend):
    await backend.put("b/0011", b"data")
    assert await backend.get("b/0011") == b"data"
    assert await backend.size("b/0011") == 4
    await backend.put("b/0011", b"other")  # overwrite
    assert await backend.get("b/0011") == b"other"
    await backend.delete("b/0011")
    await backend.delete("b/0011")  # deleting a missing key is fine
    assert await backend.size("b/0011") is None


async def test_missing_key(backend):
    with pytest.raises(NoSuchObject):
        await backend.get("b/ffff")
    assert await backend.size("b/ffff") is None


async def test_conditional_put(backend):
    await backend.put("lock", b"one", if_absent=True)
    with pytest.raises(ObjectExists):
        await backend.put("lock", b"two", if_absent=True)
    assert await backend.get("lock") == b"one"


async def test_list_many_keys_with_prefixes(backend):
    keys = {f"b/{i:04x}{'0' * 28}" for i in range(1100)} | {"m/aa00", "head", "superblock"}
    async with trio.open_nursery() as n:
        for k in keys:
            n.start_soon(backend.put, k, b"x")
    assert {k async for k in backend.list("")} == keys
    assert {k async for k in backend.list("b/")} == {k for k in keys if k.startswith("b/")}
    assert {k async for k in backend.list("m/")} == {"m/aa00"}


async def test_large_object(backend):
    data = os.urandom(24 << 20)
    await backend.put("b/big0", data)
    assert await backend.get("b/big0") == data
    assert await backend.size("b/big0") == len(data)


async def test_local_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(StoreNotFound, match="does not exist"):
        await LocalBackend(str(tmp_path / "nope")).check()


async def test_retry_gives_up_after_deadline(tmp_path):
    flag = tmp_path / "offline"
    flag.touch()
    b = RetryBackend(FaultyBackend(LocalBackend(str(tmp_path)), offline_flag=str(flag)),
                     deadline=0.3, base_delay=0.01, max_delay=0.05)
    with pytest.raises(BackendUnavailable, match="offline"):
        await b.get("head")


async def test_retry_does_not_retry_permanent_errors(tmp_path):
    calls = 0

    class Counting(LocalBackend):
        async def get(self, key):
            nonlocal calls
            calls += 1
            return await super().get(key)

    with pytest.raises(NoSuchObject):
        await RetryBackend(Counting(str(tmp_path))).get("b/0000")
    assert calls == 1


async def test_faults_are_transient_errors(tmp_path):
    b = FaultyBackend(LocalBackend(str(tmp_path)), fail=1.0)
    with pytest.raises(TransientError):
        await b.put("b/0000", b"x")
