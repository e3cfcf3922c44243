"""Follower announcements: each read-only mount that follows the writer says so with an
object of its own, a lease it renews (docs/format.md §5c).

The object is ``f/<32 hex>``, a random name per mount, an envelope of kind 7 sealed with
the metadata key, whose JSON payload is ``{"host", "pid", "mount", "since", "renewed",
"term", "seq", "interval"}``: who follows, the lease, the metadata version it shows and
how often it looks (the writer keeps garbage for at least 10 such intervals). The
provider learns how many followers there are and when they renew, nothing else. The
follower deletes it at unmount; an announcement not renewed for longer than its term
counts as gone (a follower that crashed), and the writer deletes it after
:data:`FORGET_TERMS` terms.

The writer reads them (:func:`followers`) to know whether anybody follows: while some
follower is announced, each metadata upload is a state whose data is all in the store
(megafs.mount), and ``megafs stat`` lists them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from megafs.backends import NoSuchObject
from megafs.errors import MegafsError
from megafs.store import envelope
from megafs.store.lock import RENEWALS_PER_TERM, lease_term
from megafs.store.objects import ObjectStore

log = logging.getLogger(__name__)
PREFIX = "f/"
FORGET_TERMS = 10  #: the writer deletes an announcement not renewed for this many terms


def _seal(store: ObjectStore, key: str, record: dict) -> bytes:
    return envelope.seal(store.keys.meta, envelope.KIND_FOLLOWER, key,
                         json.dumps(record).encode())


class Announcement:
    """This follower's announcement: :meth:`renew` writes it (with the version shown),
    :meth:`withdraw` deletes it."""

    def __init__(self, store: ObjectStore, interval: float):
        self.store = store
        self.key = PREFIX + os.urandom(16).hex()
        now = time.time()
        self.record = {"host": socket.gethostname(), "pid": os.getpid(),
                       "mount": self.key[len(PREFIX):], "since": now, "renewed": now,
                       "term": lease_term(), "seq": 0, "interval": interval}

    @property
    def interval(self) -> float:
        return self.record["term"] / RENEWALS_PER_TERM

    async def renew(self, seq: int) -> None:
        self.record = dict(self.record, renewed=time.time(), seq=seq)
        await self.store.backend.put(self.key, _seal(self.store, self.key, self.record))

    async def withdraw(self) -> None:
        try:
            await self.store.backend.delete(self.key)
        except (MegafsError, OSError) as e:
            log.warning("could not delete this follower's announcement %s: %s", self.key, e)


async def followers(store: ObjectStore, *, now: float | None = None,
                    clean: bool = False) -> list[dict]:
    """The live followers' records (renewed within their term), oldest first. With *clean*
    (the writer), announcements gone for FORGET_TERMS terms are deleted; one that does
    not authenticate is skipped (and never deleted: it is not ours to judge)."""
    now = time.time() if now is None else now
    found = []
    async for key in store.backend.list(PREFIX):
        try:
            blob = await store.backend.get(key)
            record = json.loads(envelope.open_(store.keys.meta, envelope.KIND_FOLLOWER, key,
                                               blob))
            age = now - float(record["renewed"])
            term = float(record["term"])
        except NoSuchObject:  # withdrawn meanwhile
            continue
        except (MegafsError, ValueError, KeyError, TypeError) as e:
            log.warning("follower announcement %s is unreadable: %s", key, e)
            continue
        if age <= term:
            found.append(record)
        elif clean and age > FORGET_TERMS * term:
            await store.backend.delete(key)
    return sorted(found, key=lambda r: r.get("since", 0))
