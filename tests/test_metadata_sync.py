"""Metadata reaches the store as deltas whose size follows the change, not the filesystem."""

import os

from megafs.backends.local import LocalBackend
from megafs.core import schema, snapshot
from megafs.core.blockmap import BlockMap
from megafs.crypto.keys import KeyRing
from megafs.store import envelope
from megafs.store.objects import ObjectStore


def _dump(conn):
    return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall())
            for t in schema.JOURNALED}


async def test_one_chmod_among_100k_files_uploads_kilobytes(tmp_path):
    store = ObjectStore(LocalBackend(str(tmp_path / "store")), KeyRing(os.urandom(32), b"s" * 16))
    conn = schema.connect(str(tmp_path / "meta.db"))
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    with conn:
        conn.executemany(
            "INSERT INTO inodes (id, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns)"
            " VALUES (?, 33188, 0, 0, 10, 1, 1, 1, 1)", ((i,) for i in range(2, 100_002)))
        conn.executemany("INSERT INTO dentries (parent, name, inode) VALUES (1, ?, ?)",
                         ((f"file-{i:06d}".encode(), i) for i in range(2, 100_002)))
    snap = snapshot.Snapshotter(conn, store, BlockMap(conn))
    schema.commit_batch(conn)
    await snap.upload()  # the first upload is a full snapshot
    full = snap.last_size
    assert full > 500_000

    conn.execute("UPDATE inodes SET mode=33261, ctime_ns=2 WHERE id=54321")
    await snap.upload()
    assert snap.last_size == envelope.BUCKET_MIN  # kilobytes, not the database
    # a change of a hundred rows looks the same: deltas are padded to coarse buckets
    conn.execute("UPDATE inodes SET ctime_ns=3 WHERE id BETWEEN 1000 AND 1099")
    await snap.upload()
    assert snap.last_size == envelope.BUCKET_MIN

    # A few more kinds of change, then rebuild from the store alone and compare.
    conn.execute("DELETE FROM dentries WHERE inode=777")
    conn.execute("DELETE FROM inodes WHERE id=777")
    conn.execute("UPDATE dentries SET name=x'6e6577' WHERE inode=888")
    conn.execute("INSERT INTO xattrs VALUES (999, x'7573', x'76')")
    conn.execute("INSERT INTO objects VALUES (5, 'b/00', x'01', 1, 10, 20, NULL, NULL, NULL)")
    conn.execute("INSERT INTO blocks VALUES (999, 0, 5)")
    await snap.upload()
    head = await store.read_head()
    assert len(head["deltas"]) == 3
    assert len(await store.backend.get("head")) == envelope.BUCKET_MIN  # padded too
    copy = await snapshot.download(store, head, str(tmp_path / "copy.db"))
    schema.commit_batch(conn, reopen=False)
    assert _dump(copy) == _dump(conn)
    assert copy.execute("SELECT count(*) FROM journal").fetchone()[0] == 0


def test_metadata_size_buckets():
    bucket = envelope.bucket
    assert [bucket(n) for n in (0, 1, 16384)] == [16384] * 3
    assert [bucket(n) for n in (16385, 40000, 65536, 65537)] == [32768, 65536, 65536, 131072]
    assert [bucket(n) for n in (1 << 20, (1 << 20) + 1, 5_000_000)] == [
        1 << 20, 2 << 20, 5 << 20]
    for n in (0, 100, 20_000, 3_000_000):  # the whole envelope has the bucket's size
        blob = envelope.seal(bytes(32), envelope.KIND_DELTA, "m/x", os.urandom(n),
                             coarse=True)
        assert len(blob) == bucket(n + envelope.OVERHEAD)
        assert envelope.open_(bytes(32), envelope.KIND_DELTA, "m/x", blob) is not None


async def test_failed_upload_keeps_changes_for_the_next_one(tmp_path):
    backend = LocalBackend(str(tmp_path / "store"))
    store = ObjectStore(backend, KeyRing(os.urandom(32), b"s" * 16))
    conn = schema.connect(str(tmp_path / "meta.db"))
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    snap = snapshot.Snapshotter(conn, store, BlockMap(conn))
    await snap.upload()
    conn.execute("UPDATE inodes SET uid=42 WHERE id=1")
    orig = backend.put

    async def failing_put(*args, **kwargs):
        raise OSError("injected failure")

    backend.put = failing_put
    try:
        await snap.upload()
    except OSError:
        pass
    else:
        raise AssertionError("the upload did not fail")
    backend.put = orig
    await snap.upload()
    head = await store.read_head()
    copy = await snapshot.load(store, head)
    assert copy.execute("SELECT uid FROM inodes WHERE id=1").fetchone()[0] == 42
