"""How the store's head relates to the last head this machine saw (docs/format.md §5).

Pure decisions, no I/O: mount and fsck read the two sides and act on the
:class:`Relation`. A machine accepts a head only if it is the one it saw, one it
wrote itself right before a crash (pending), the same metadata under a newer
head, or a newer state whose history contains the head it saw (descends).
Anything else is a rollback or a fork of the store: exit code 22.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from megafs.errors import RollbackDetected

#: How many head hashes the metadata's ``heads`` table keeps (the newest ones).
HISTORY_KEPT = 10_000
SHORT_HASH = 8  # hex digits of a head hash shown in messages


class Relation(enum.Enum):
    FRESH = "no local metadata"
    EQUAL = "the head this machine saw"
    PENDING = "the head this machine wrote right before it stopped"
    SAME_STATE = "a newer head naming the same metadata objects"
    NEEDS_HISTORY = "newer: the store's metadata must be read to tell whether it descends"
    NEWER = "a newer state that descends from the head this machine saw"
    ROLLED_BACK = "older than the head this machine saw"
    DIVERGED = "a state that does not descend from the head this machine saw"

    @property
    def accepted(self) -> bool:
        return self not in (Relation.ROLLED_BACK, Relation.DIVERGED, Relation.NEEDS_HISTORY)

    @property
    def keeps_local(self) -> bool:
        """The local working copy is current: use it instead of downloading."""
        return self in (Relation.EQUAL, Relation.PENDING, Relation.SAME_STATE)


@dataclass(frozen=True)
class Seen:
    """What a cache directory's ``state`` table says this machine last saw or wrote."""

    seq: int
    hash: str | None = None  #: None: a cache directory from before format 2
    objects: dict | None = None  #: that head's ``objects`` map
    pending_seq: int | None = None  #: a head it was about to write (crash window)
    pending_hash: str | None = None


def relate(seen: Seen | None, head: dict,
           history_contains: Callable[[int, str], bool] | None = None) -> Relation:
    """Relation of the store's *head* (with ``hash`` added by read_head) to *seen*.

    *history_contains(seq, hash)* answers from the store's metadata ``heads`` table;
    without it a newer head that does not name *seen* as ``prev`` gives NEEDS_HISTORY.
    """
    if seen is None:
        return Relation.FRESH
    seq, digest = head["seq"], head.get("hash")
    if seen.hash is not None and digest == seen.hash:
        return Relation.EQUAL
    if (seen.pending_hash is not None and digest == seen.pending_hash
            and seq == seen.pending_seq):
        return Relation.PENDING
    if seq < seen.seq:
        return Relation.ROLLED_BACK
    if seen.hash is None:  # a cache from before chained heads: numbers only, as then
        return Relation.EQUAL if seq == seen.seq else Relation.NEWER
    if seen.objects is not None and head.get("objects") == seen.objects:
        return Relation.SAME_STATE
    if seq == seen.seq:
        return Relation.DIVERGED
    known = [(seen.seq, seen.hash)]
    if seen.pending_hash is not None and seen.pending_seq is not None:
        known.append((seen.pending_seq, seen.pending_hash))
    if head.get("prev") in {h for _, h in known}:
        return Relation.NEWER
    if history_contains is None:
        return Relation.NEEDS_HISTORY
    if any(history_contains(s, h) for s, h in known):
        return Relation.NEWER
    return Relation.DIVERGED


def short(digest: str | None) -> str:
    return digest[:SHORT_HASH] if digest else "unknown"


def refusal(seen: Seen, head: dict, relation: Relation) -> RollbackDetected:
    """The one-line error for a head this machine must not accept."""
    cause = ("the store was rolled back or replaced" if relation is Relation.ROLLED_BACK
             else "the store was rolled back and written to since, or forked")
    return RollbackDetected(
        f"the store serves metadata version {head['seq']} (head {short(head.get('hash'))}),"
        f" but this machine has seen version {seen.seq} (head {short(seen.hash)}),"
        f" which it does not descend from: {cause}")


def check_superblock(sb_version: int, head: dict) -> None:
    """Refuse a superblock older than the one *head* was written under."""
    recorded = head.get("sb_version", 0)
    if sb_version < recorded:
        raise RollbackDetected(
            f"the superblock was rolled back: it is version {sb_version}, but the store's"
            f" head (metadata version {head['seq']}) was written under version {recorded}")


def follow_plan(seen_snapshot: str | None, seen_deltas: list[str], seen_objects: dict | None,
                head: dict) -> list[str] | None:
    """For a follower (docs/format.md §5c) that holds the metadata of a head naming
    *seen_snapshot* and *seen_deltas* (with their ``objects`` entries *seen_objects*), the
    deltas of the newer *head* it must apply on top, in order; None when *head* is based on
    another snapshot (or rewrote a delta the follower holds): then the follower replaces
    its whole copy with *head*'s snapshot and deltas."""
    deltas = head.get("deltas", [])
    if head["snapshot"] != seen_snapshot or deltas[:len(seen_deltas)] != seen_deltas:
        return None
    objects = head.get("objects")
    if seen_objects is not None and objects is not None and any(
            objects.get(k) != seen_objects.get(k) for k in (seen_snapshot, *seen_deltas)):
        return None
    return deltas[len(seen_deltas):]
