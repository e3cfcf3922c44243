"""Retention: objects the metadata no longer needs stay in the store for a while, because
followers that have not caught up yet may still read them (docs/format.md §5c).

This is the one place garbage objects are deleted: :func:`discard` records keys in the
metadata table ``retained`` with the time they became garbage (the rows travel in the
next delta, so fsck and the next writer know them), and :func:`delete_due` deletes the
objects whose retention has passed, then their rows. A retention of 0 deletes at once.
"""

from __future__ import annotations

import logging
import os

import apsw

from megafs.backends import Backend

log = logging.getLogger(__name__)
DEFAULT_RETENTION = 300.0  #: seconds: 60 follow intervals of the default 5 s
INTERVALS_KEPT = 10  #: the retention is at least this many follow intervals of any follower
RETENTION_ENV = "MEGAFS_RETENTION"  #: overrides DEFAULT_RETENTION (the tests use 0)


def default_retention() -> float:
    """``$MEGAFS_RETENTION`` seconds, or DEFAULT_RETENTION."""
    try:
        value = float(os.environ.get(RETENTION_ENV, DEFAULT_RETENTION))
    except ValueError:
        return DEFAULT_RETENTION
    return value if 0 <= value <= 10 * 365 * 86400 else DEFAULT_RETENTION


def effective(retention: float, follower_intervals: list[float]) -> float:
    """The retention to apply: *retention*, raised to INTERVALS_KEPT times the longest
    follow interval a follower announced."""
    return max([retention, *(INTERVALS_KEPT * i for i in follower_intervals)])


async def discard(db: apsw.Connection, backend: Backend, keys: list[str], now: float,
                  retention: float) -> None:
    """The objects *keys* are no longer needed as of *now*: record them (deleted by
    :func:`delete_due` once *retention* has passed), or delete them at once if it is 0;
    then delete those whose retention has passed."""
    if retention <= 0:
        for key in keys:
            await backend.delete(key)
        return
    with db:
        db.executemany("INSERT OR IGNORE INTO retained (key, since) VALUES (?, ?)",
                       [(k, now) for k in keys])
    await delete_due(db, backend, now, retention)


def pending(db: apsw.Connection, now: float, retention: float) -> set[str]:
    """The keys still inside their retention at *now*."""
    return {r[0] for r in db.execute("SELECT key FROM retained WHERE since > ?",
                                     (now - retention,))}


async def delete_due(db: apsw.Connection, backend: Backend, now: float,
                     retention: float) -> int:
    """Delete the objects whose retention ended by *now*; return how many."""
    due = [r[0] for r in db.execute(
        "SELECT key FROM retained WHERE since <= ? AND key NOT IN (SELECT key FROM objects)"
        " ORDER BY since", (now - retention,))]
    for key in due:
        await backend.delete(key)
        with db:
            db.execute("DELETE FROM retained WHERE key=?", (key,))
    if due:
        log.debug("deleted %d objects past their retention of %gs", len(due), retention)
    return len(due)
