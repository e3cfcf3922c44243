"""Kernel lookup counts per inode, compact for millions of inodes.

The kernel holds a lookup on every inode it has seen; a plain ``dict[int, int]`` costs
about 80 bytes per entry (the table slot, the key and the count objects). Inode
numbers are SQLite rowids: mostly dense from 1, but may be sparse or huge. Counts of
inodes below :attr:`LookupCounts.DENSE_LIMIT` live in an ``array('I')`` indexed by
inode number, grown on demand (4 bytes per slot); larger inode numbers, and counts
that do not fit 32 bits, fall back to a dict.

It behaves like the dict it replaces for the uses megafs has: ``ino in counts``,
``counts.get(ino, 0)``, ``counts[ino] = n`` (n > 0), ``counts.pop(ino, None)``,
``len``, iteration over ``items()`` and equality with a dict.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

_MAX = 0xFFFFFFFF  # largest count an array slot holds


class LookupCounts:
    #: Inode numbers below this are kept in the array (at most 4 bytes * this).
    DENSE_LIMIT = 1 << 26
    _GROW_MIN = 1024

    __slots__ = ("_dense", "_sparse", "_len")

    def __init__(self) -> None:
        self._dense = array("I")
        self._sparse: dict[int, int] = {}
        self._len = 0  # inodes with a count > 0

    def get(self, ino: int, default: int = 0) -> int:
        if 0 <= ino < len(self._dense):
            n = self._dense[ino]
            if n:
                return n
        return self._sparse.get(ino, default)

    def __contains__(self, ino: object) -> bool:
        return self.get(ino, 0) > 0 if isinstance(ino, int) else False

    def __getitem__(self, ino: int) -> int:
        n = self.get(ino, 0)
        if n <= 0:
            raise KeyError(ino)
        return n

    def __setitem__(self, ino: int, n: int) -> None:
        if n <= 0:
            raise ValueError("a lookup count is positive (pop to drop it)")
        was = ino in self
        self._drop(ino)
        if 0 <= ino < self.DENSE_LIMIT and n <= _MAX:
            dense = self._dense
            if ino >= len(dense):
                grow = max(ino + 1, len(dense) * 2, self._GROW_MIN)
                dense.frombytes(bytes(4 * (min(grow, self.DENSE_LIMIT) - len(dense))))
            dense[ino] = n
        else:
            self._sparse[ino] = n
        if not was:
            self._len += 1

    def _drop(self, ino: int) -> int:
        n = 0
        if 0 <= ino < len(self._dense) and self._dense[ino]:
            n, self._dense[ino] = self._dense[ino], 0
        return self._sparse.pop(ino, 0) or n

    def pop(self, ino: int, *default: int) -> int:
        n = self._drop(ino)
        if n:
            self._len -= 1
            return n
        if default:
            return default[0]
        raise KeyError(ino)

    def add(self, ino: int, n: int = 1) -> None:
        """Add *n* lookups of *ino*."""
        self[ino] = self.get(ino, 0) + n

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def items(self) -> Iterator[tuple[int, int]]:
        for ino, n in enumerate(self._dense):
            if n:
                yield ino, n
        yield from list(self._sparse.items())

    def keys(self) -> Iterator[int]:
        return (ino for ino, _ in self.items())

    __iter__ = keys

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LookupCounts | dict):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LookupCounts({dict(self.items())!r})"
