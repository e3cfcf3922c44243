"""The table ``fsynced``: small blocks' content made durable by an fsync.

An fsync of a file whose dirty blocks are small and held in memory stores their
content here, in the open metadata transaction, so that the one WAL sync that
makes the metadata durable makes the data durable too: one device flush per
fsync instead of two, and no block file to create, sync, rename and delete
(docs/format.md §6, rule 4). The table is local to the cache directory: never
journaled, never read from an image that came from the store.

A row exists only while its block is dirty in the cache (an entry with ``synced``
set); it goes in the transaction that records the block's upload, or with the
block (truncate, delete). After a crash :meth:`Filesystem.recover
<megafs.core.filesystem.Filesystem.recover>` turns each row back into a dirty
block, unless a ``.d`` file of the block (newer: written after the fsync) exists.
"""

from __future__ import annotations

import apsw


def store(db: apsw.Connection, rows: list[tuple[int, int, bytes]]) -> None:
    """Record ``(inode, block, content)`` rows (replacing older content)."""
    db.executemany("INSERT OR REPLACE INTO fsynced (inode, blockno, data) VALUES (?, ?, ?)",
                   rows)


def forget(db: apsw.Connection, blocks: list[tuple[int, int]]) -> None:
    """Drop the rows of these ``(inode, block)`` pairs (uploaded, or gone)."""
    db.executemany("DELETE FROM fsynced WHERE inode=? AND blockno=?", blocks)


def forget_from(db: apsw.Connection, ino: int, first_blk: int = 0) -> None:
    """Drop the rows of *ino*'s blocks from *first_blk* on (truncate, delete)."""
    db.execute("DELETE FROM fsynced WHERE inode=? AND blockno>=?", (ino, first_blk))


def truncate(db: apsw.Connection, ino: int, blk: int, size: int) -> None:
    """Cut the stored content of one block to *size* bytes (a truncate inside it)."""
    db.execute("UPDATE fsynced SET data=substr(data, 1, ?) WHERE inode=? AND blockno=?",
               (size, ino, blk))


def rows(db: apsw.Connection) -> list[tuple[int, int, bytes]]:
    """Every row: ``(inode, block, content)``."""
    return db.execute("SELECT inode, blockno, data FROM fsynced").fetchall()


def count(db: apsw.Connection) -> int:
    """The number of rows (0 if the database predates the table)."""
    if not db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='fsynced'"
                      ).fetchall():
        return 0
    return db.execute("SELECT count(*) FROM fsynced").fetchone()[0]


def clear(db: apsw.Connection) -> None:
    """Empty the table (an image from the store: its rows are another cache's)."""
    db.execute("DELETE FROM fsynced")
