"""megafs.core.descent: which store heads a machine accepts, one row per case."""

from __future__ import annotations

import pytest

from megafs.core.descent import Relation, Seen, check_superblock, follow_plan, refusal, relate
from megafs.errors import ExitCode, RollbackDetected

H = {n: f"{n:02d}" * 32 for n in range(1, 20)}  # head hashes (64 hex digits)
OBJ5 = {"m/s": [100, "aa"], "m/d5": [10, "bb"]}
SEEN = Seen(seq=5, hash=H[5], objects=OBJ5)
HISTORY = {(4, H[4]), (5, H[5]), (6, H[6])}


def head(seq, digest, prev=None, objects=None):
    return {"seq": seq, "hash": digest, "prev": prev,
            "objects": objects if objects is not None else {"m/x": [1, f"{seq}"]}}


CASES = [
    ("fresh-cache", None, head(5, H[5]), HISTORY, Relation.FRESH),
    ("equal", SEEN, head(5, H[5], H[4], OBJ5), HISTORY, Relation.EQUAL),
    ("pending-own-head", Seen(5, H[5], OBJ5, pending_seq=6, pending_hash=H[6]),
     head(6, H[6], H[5]), set(), Relation.PENDING),
    ("pending-without-hash-never-matches", Seen(5, H[5], OBJ5, pending_seq=6),
     head(6, H[7], H[9]), set(), Relation.DIVERGED),
    ("pending-hash-other-seq", Seen(5, H[5], OBJ5, pending_seq=6, pending_hash=H[6]),
     head(7, H[6], H[9]), set(), Relation.DIVERGED),
    ("same-objects-newer-head", SEEN, head(6, H[6], H[5], OBJ5), set(), Relation.SAME_STATE),
    ("same-objects-rebuilt-head", SEEN, head(5, H[8], H[4], OBJ5), set(), Relation.SAME_STATE),
    ("same-objects-but-older", SEEN, head(4, H[8], H[3], OBJ5), set(), Relation.ROLLED_BACK),
    ("newer-direct-child", SEEN, head(6, H[6], H[5]), set(), Relation.NEWER),
    ("newer-descends-by-history", SEEN, head(9, H[9], H[8]), HISTORY, Relation.NEWER),
    ("newer-descends-from-pending", Seen(5, H[5], OBJ5, pending_seq=6, pending_hash=H[6]),
     head(9, H[9], H[8]), {(6, H[6])}, Relation.NEWER),
    ("older-rolled-back", SEEN, head(3, H[3], H[2]), HISTORY, Relation.ROLLED_BACK),
    ("same-seq-other-head-forked", SEEN, head(5, H[9], H[4]), HISTORY, Relation.DIVERGED),
    ("rolled-back-then-written-past", SEEN, head(9, H[9], H[8]), {(3, H[3]), (8, H[8])},
     Relation.DIVERGED),
    ("history-has-seq-with-other-hash", SEEN, head(9, H[9], H[8]), {(5, H[7])},
     Relation.DIVERGED),
    ("legacy-cache-equal", Seen(5), head(5, H[5]), set(), Relation.EQUAL),
    ("legacy-cache-newer", Seen(5), head(8, H[8]), set(), Relation.NEWER),
    ("legacy-cache-older", Seen(5), head(4, H[4]), set(), Relation.ROLLED_BACK),
]


@pytest.mark.parametrize(("seen", "store_head", "history", "expect"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_relate(seen, store_head, history, expect):
    got = relate(seen, store_head, lambda s, h: (s, h) in history)
    assert got is expect
    assert got.accepted == (expect not in (Relation.ROLLED_BACK, Relation.DIVERGED))


def test_newer_without_history_asks_for_it_and_never_accepts_blindly():
    rel = relate(SEEN, head(9, H[9], H[8]))
    assert rel is Relation.NEEDS_HISTORY and not rel.accepted and not rel.keeps_local


def test_refusal_names_both_states():
    err = refusal(SEEN, head(9, H[9], H[8]), Relation.DIVERGED)
    assert isinstance(err, RollbackDetected) and err.exit_code == ExitCode.ROLLBACK
    assert "version 9 (head 09090909)" in str(err) and "version 5 (head 05050505)" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize(("sb_version", "head_version", "refused"),
                         [(0, 0, False), (3, 2, False), (2, 2, False), (1, 2, True)],
                         ids=["both-0", "newer-superblock", "equal", "older-superblock"])
def test_superblock_version(sb_version, head_version, refused):
    h = {"seq": 7, "sb_version": head_version}
    if refused:
        with pytest.raises(RollbackDetected, match="superblock was rolled back"):
            check_superblock(sb_version, h)
    else:
        check_superblock(sb_version, h)


def test_format_1_head_has_superblock_version_0():
    check_superblock(0, {"seq": 3})


# -- a follower: which deltas of a newer head it applies on top of what it holds --------

FOLLOW_OBJ = {"m/s": [100, "aa"], "m/d1": [10, "b1"], "m/d2": [10, "b2"]}


def follow_head(snapshot="m/s", deltas=("m/d1", "m/d2"), **objects):
    objs = {k: v for k, v in FOLLOW_OBJ.items() if k == snapshot or k in deltas}
    objs.update({k.replace("_", "/"): v for k, v in objects.items()})
    return {"snapshot": snapshot, "deltas": list(deltas),
            "objects": {**{k: [1, "new"] for k in (snapshot, *deltas) if k not in objs}, **objs}}


FOLLOW_CASES = [
    ("no-new-delta", ["m/d1", "m/d2"], follow_head(), []),
    ("two-new-deltas", ["m/d1"], follow_head(deltas=("m/d1", "m/d2", "m/d3")),
     ["m/d2", "m/d3"]),
    ("from-the-bare-snapshot", [], follow_head(deltas=("m/d1",)), ["m/d1"]),
    ("new-snapshot", ["m/d1"], follow_head(snapshot="m/s2", deltas=()), None),
    ("held-delta-missing-from-head", ["m/d1", "m/d2"], follow_head(deltas=("m/d1", "m/d3")),
     None),
    ("held-delta-with-other-hash", ["m/d1"], follow_head(m_d1=[10, "forged"]), None),
    ("snapshot-with-other-hash", ["m/d1"], follow_head(m_s=[100, "other"]), None),
]


@pytest.mark.parametrize(("held", "store_head", "expect"), [c[1:] for c in FOLLOW_CASES],
                         ids=[c[0] for c in FOLLOW_CASES])
def test_follow_plan(held, store_head, expect):
    objects = {k: v for k, v in FOLLOW_OBJ.items() if k in ("m/s", *held)}
    assert follow_plan("m/s", held, objects, store_head) == expect
