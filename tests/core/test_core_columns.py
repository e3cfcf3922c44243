"""Named positions match what they name: the inode row's column indexes against
``INODE_COLS`` and the ``inodes`` table, the readdir row's layout, the renameat2 flags
against pyfuse3's, and the FUSE adapter's attribute unpacking against the columns."""

from __future__ import annotations

import apsw
import pytest
from corelib import ATTRS, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT

from megafs.core import namespace, schema
from megafs.core.namespace import ENTRY_COOKIE, ENTRY_NAME, ENTRY_ROW, ROOT

COLUMNS = [c.strip() for c in schema.INODE_COLS.split(",")]


def test_inode_column_indexes_match_inode_cols():
    for position, column in enumerate(COLUMNS):
        name = "INO" if column == "id" else column.upper()
        assert getattr(schema, name) == position, column
    assert schema.NBLOCKS == len(COLUMNS) - 1  # the last one (turned into st_blocks)
    # The tests' own names (corelib.ATTRS) follow the same order.
    assert len(ATTRS) == len(COLUMNS)
    assert ATTRS.index("mode") == schema.MODE and ATTRS.index("blocks") == schema.NBLOCKS


def test_inode_cols_are_columns_of_inodes():
    conn = apsw.Connection(":memory:")
    schema.create(conn, root_uid=0, root_gid=0, now_ns=1)
    table = [r[1] for r in conn.execute("PRAGMA table_info(inodes)")]
    assert set(COLUMNS) <= set(table)
    row = conn.execute(f"SELECT {schema.INODE_COLS} FROM inodes WHERE id=1").fetchone()
    assert row[schema.INO] == ROOT and row[schema.NLINK] == 2 and row[schema.ATIME_NS] == 1


def test_rename_flags_are_renameat2s():
    assert (namespace.RENAME_NOREPLACE, namespace.RENAME_EXCHANGE,
            namespace.RENAME_WHITEOUT) == (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT)
    pyfuse3 = pytest.importorskip("pyfuse3")
    assert namespace.RENAME_NOREPLACE == pyfuse3.RENAME_NOREPLACE
    assert namespace.RENAME_EXCHANGE == pyfuse3.RENAME_EXCHANGE


def test_fuse_attributes_follow_the_columns():
    pytest.importorskip("pyfuse3")
    from megafs.fs.operations import _attrs

    row = tuple(range(100, 100 + len(COLUMNS)))
    a = _attrs(row)
    assert a.st_ino == row[schema.INO] and a.st_mode == row[schema.MODE]
    assert a.st_uid == row[schema.UID] and a.st_gid == row[schema.GID]
    assert a.st_size == row[schema.SIZE] and a.st_nlink == row[schema.NLINK]
    assert a.st_atime_ns == row[schema.ATIME_NS] and a.st_mtime_ns == row[schema.MTIME_NS]
    assert a.st_ctime_ns == row[schema.CTIME_NS] and a.st_rdev == row[schema.RDEV]
    assert a.st_blocks == row[schema.NBLOCKS]


async def test_readdir_rows_are_cookie_name_inode_row(core):
    core.mkdir("d")
    await core.create("d/stored-later", b"x" * 10000)  # st_blocks from blocks not uploaded
    core.make("d/empty")
    rows = core.listing(core.ino("d"))
    assert [r[ENTRY_NAME] for r in rows] == [b"stored-later", b"empty"]
    assert rows[0][ENTRY_COOKIE] < rows[1][ENTRY_COOKIE]
    for r in rows:
        ino = core.ino("d/" + r[ENTRY_NAME].decode())
        assert r[ENTRY_ROW:] == core.fs.getattr(ino)
    assert rows[0][ENTRY_ROW + schema.NBLOCKS] == 10000 // 4096 * 8 + 8  # 12 KiB in 512 B
