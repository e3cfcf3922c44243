"""Rebuilding a lost or damaged ``head`` from the metadata objects in the store (fsck).

Every snapshot and delta is sealed with the metadata key, so each one found under
``m/`` either authenticates or is skipped. Their place in the chain is in their
decrypted payload (docs/format.md §5): a snapshot's ``state`` rows ``chain_seq``
(``seq_pending`` in snapshots written before format 2) and ``chain_time``, a
delta's one-row ``chain`` table (``seq``, the ``parent`` object it applies on top of,
``time``). The rebuilt head names the newest snapshot together with the longest run
of deltas on top of it that applies; its ``prev`` is the newest entry of that
state's ``heads`` history.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import apsw

from megafs.core import snapshot
from megafs.errors import CorruptObject, UnsupportedFormat
from megafs.store import envelope
from megafs.store.objects import HEAD_FORMAT, ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Piece:
    """One metadata object that authenticated: a snapshot or a delta."""

    key: str
    delta: bool
    seq: int
    time: float
    size: int
    sha256: str
    parent: str = ""  #: deltas: the object they apply on top of


def _chain_info(key: str, kind: int, payload: bytes) -> tuple[int, float, str] | None:
    """(seq, time, parent) recorded inside a snapshot or delta image, None if absent."""
    conn = apsw.Connection(":memory:")
    try:
        conn.deserialize("main", payload)
        if kind == envelope.KIND_DELTA:
            row = conn.execute("SELECT seq, time, parent FROM chain").fetchone()
            return (int(row[0]), float(row[1]), row[2]) if row else None
        state = dict(conn.execute("SELECT key, value FROM state WHERE key IN"
                                  " ('chain_seq', 'chain_time', 'seq_pending')").fetchall())
        seq = state.get("chain_seq", state.get("seq_pending"))
        return (int(seq), float(state.get("chain_time", 0)), "") if seq is not None else None
    except (apsw.Error, TypeError, ValueError):
        return None
    finally:
        conn.close()


async def _pieces(store: ObjectStore, say: Callable[[str], None]) -> list[Piece]:
    found = []
    async for key in store.backend.list("m/"):
        try:
            blob = await store.backend.get(key)
            kind = blob[5] if len(blob) > 5 else 0
            if kind not in (envelope.KIND_METADATA, envelope.KIND_DELTA):
                raise CorruptObject(f"metadata object {key} is damaged")
            payload = envelope.open_(store.keys.meta, kind, key, blob)
        except (CorruptObject, UnsupportedFormat) as e:
            say(f"skipping {key} while rebuilding the head: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - deleted meanwhile, unreadable: skip it
            say(f"skipping {key} while rebuilding the head: {e}")
            continue
        info = _chain_info(key, kind, payload)
        if info is None:
            say(f"skipping {key} while rebuilding the head: it records no place in the chain")
            continue
        seq, when, parent = info
        found.append(Piece(key, kind == envelope.KIND_DELTA, seq, when, len(blob),
                           hashlib.sha256(blob).hexdigest(), parent))
    return found


def _chains(pieces: list[Piece]) -> list[list[Piece]]:
    """Candidate chains (a snapshot and the deltas following it), best first: the
    highest final seq, then the newest."""
    children: dict[str, list[Piece]] = {}
    for p in pieces:
        if p.delta:
            children.setdefault(p.parent, []).append(p)
    chains = []
    for base in (p for p in pieces if not p.delta):
        chain = [base]
        while True:
            nexts = [c for c in children.get(chain[-1].key, ()) if c.seq == chain[-1].seq + 1]
            if not nexts:
                break
            # Two deltas with one parent: an upload retried after a failed head write;
            # the later one holds every row of the earlier.
            chain.append(max(nexts, key=lambda c: c.time))
        chains.append(chain)
    chains.sort(key=lambda c: (c[-1].seq, c[-1].time), reverse=True)
    return chains


async def rebuild_head(store: ObjectStore, sb_version: int,
                       say: Callable[[str], None]) -> dict | None:
    """A head for the newest chain of metadata objects that loads, or None if none does
    (it is returned, not written)."""
    for chain in _chains(await _pieces(store, say)):
        head = {"format": HEAD_FORMAT, "seq": chain[-1].seq, "sb_version": sb_version,
                "snapshot": chain[0].key, "deltas": [p.key for p in chain[1:]],
                "objects": {p.key: [p.size, p.sha256] for p in chain},
                "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        try:
            conn = await snapshot.load(store, head)
        except (CorruptObject, UnsupportedFormat) as e:
            say(f"cannot rebuild the head from snapshot {chain[0].key}: {e}")
            continue
        row = conn.execute("SELECT hash FROM heads WHERE seq=?", (head["seq"] - 1,)).fetchone()
        conn.close()
        head["prev"] = row[0].hex() if row else None
        return head
    return None
