"""A share manifest checked as hostile input (docs/format.md, "Share manifests").

Whoever holds a link key can seal a manifest, so ``megafs get`` believes nothing
in it before :func:`parse` has checked every field's type and bounds: each path
is a list of safe components under the download (no ``''``, ``.``, ``..``, ``/``
or NUL, at most NAME_MAX bytes), whose parent is a directory listed earlier; no
path twice; sizes within bounds and consistent with the block list. Any
violation is :class:`~megafs.errors.CorruptObject` (exit code 15).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from megafs.errors import CorruptObject

NAME_MAX = 255  #: bytes in one path component
PATH_MAX = 4096  #: bytes in a path or a symlink target
MAX_ENTRIES = 10_000_000
MIN_BLOCK_SIZE = 64 << 10  #: the bounds mkfs.megafs enforces
MAX_BLOCK_SIZE = 64 << 20
MAX_FILE_SIZE = 1 << 44  #: 16 TiB (ext4's limit); larger sizes are refused
MAX_MTIME_NS = (1 << 63) - 1
_OBJECT_KEY = re.compile(r"b/[0-9a-f]{32}")
_HOLDER_KEY = re.compile(r"[bp]/[0-9a-f]{32}")  #: a one-block object or a pack
MAX_OFFSET = 1 << 40  #: offsets of envelopes in the objects holding them
#: An envelope is at most the block plus Padme's 12 % and the envelope overhead.
_ENVELOPE_SLACK = 1.13
MIN_ENVELOPE = 75  #: header, inner header and tag of an empty payload (envelope.OVERHEAD)
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Block:
    number: int
    object_key: str
    key: bytes  #: the object's own key K_obj
    length: int  #: plaintext bytes
    sha256: bytes | None  #: of the stored envelope (None in version 1 manifests)
    holder: str = ""  #: the object holding the envelope (version 3; "": object_key)
    offset: int = 0  #: where the envelope starts in it (version 3)
    stored_length: int | None = None  #: the envelope's length (version 3; None: all)


@dataclass
class Entry:
    path: tuple[str, ...]  #: components below the download's root; () is the root
    type: str  #: "dir", "file" or "symlink"
    mode: int  #: permission bits only (0o777)
    mtime_ns: int
    size: int = 0
    blocks: list[Block] = field(default_factory=list)
    target: str = ""

    @property
    def display(self) -> str:
        return "/".join(self.path)


@dataclass
class Manifest:
    kind: str  #: "file" or "dir"
    name: str  #: the share's name reduced to one safe component
    block_size: int
    entries: list[Entry]  #: parents before children; entries[0] is the root

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def _bad(what: str) -> CorruptObject:
    return CorruptObject(f"the share manifest is malformed: {what}")


def _int(value, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:  # bool is not an int here
        raise _bad(f"{what} is not a number from {low} to {high}")
    return value


def _str(value, what: str) -> str:
    if not isinstance(value, str) or "\x00" in value:
        raise _bad(f"{what} is not a text without NUL")
    return value


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _encoded_len(text: str) -> int:
    try:
        return len(os.fsencode(text))
    except UnicodeEncodeError:
        raise _bad(f"{text!r} cannot be a file name here") from None


def is_safe_component(name: str) -> bool:
    return (name not in ("", ".", "..") and "/" not in name and "\x00" not in name
            and _encoded_len(name) <= NAME_MAX)


def safe_name(name, fallback: str) -> str:
    """The share's name as one path component (its last one), or *fallback*."""
    if isinstance(name, str):
        name = name.replace("\x00", "").rstrip("/").rsplit("/", 1)[-1]
        try:
            if is_safe_component(name):
                return name
        except CorruptObject:
            pass
    return fallback


def _path(value) -> tuple[str, ...]:
    text = _str(value, "a path")
    if text == "":
        return ()
    if _encoded_len(text) > PATH_MAX:
        raise _bad("a path is too long")
    parts = tuple(text.split("/"))
    if not all(is_safe_component(p) for p in parts):
        raise _bad(f"the path {_short(text)!r} leaves the download or has an unsafe"
                   " component")
    return parts


def _blocks(raw, entry: Entry, block_size: int, version: int) -> list[Block]:
    if not isinstance(raw, list):
        raise _bad(f"{entry.display or 'the file'}: blocks is not a list")
    width = 8 if version >= 3 else 5 if version >= 2 else 4
    blocks, seen = [], set()
    for item in raw:
        if not isinstance(item, list) or len(item) != width:
            raise _bad(f"{entry.display or 'the file'}: a block is not a list of {width}")
        number = _int(item[0], "a block number", 0, MAX_FILE_SIZE // block_size)
        start = number * block_size
        if number in seen or start >= entry.size:
            raise _bad(f"{entry.display or 'the file'}: block {number} is repeated or lies"
                       " beyond the file's size")
        seen.add(number)
        length = _int(item[3], "a block length", 0, min(block_size, entry.size - start))
        object_key = _str(item[1], "an object key")
        if not _OBJECT_KEY.fullmatch(object_key) or not isinstance(item[2], str) \
                or not _HEX64.fullmatch(item[2]):
            raise _bad(f"{entry.display or 'the file'}: block {number} has a bad key")
        sha256 = None
        if version >= 2:
            if not isinstance(item[4], str) or not _HEX64.fullmatch(item[4]):
                raise _bad(f"{entry.display or 'the file'}: block {number} has a bad hash")
            sha256 = bytes.fromhex(item[4])
        holder, offset, stored = "", 0, None
        if version >= 3:
            holder = _str(item[5], "an object key")
            if not _HOLDER_KEY.fullmatch(holder) or (holder[0] == "b" and holder != object_key):
                raise _bad(f"{entry.display or 'the file'}: block {number} names a bad object")
            offset = _int(item[6], "an offset", 0, MAX_OFFSET)
            stored = _int(item[7], "a stored length", MIN_ENVELOPE,
                          int(block_size * _ENVELOPE_SLACK) + 4096)
        blocks.append(Block(number, object_key, bytes.fromhex(item[2]), length, sha256,
                            holder, offset, stored))
    return blocks


def _entry(raw, block_size: int, version: int) -> Entry:
    if not isinstance(raw, dict):
        raise _bad("an entry is not an object")
    path = _path(raw.get("path"))
    kind = raw.get("type")
    if kind not in ("dir", "file", "symlink"):
        raise _bad(f"{'/'.join(path) or 'the root'} has an unknown type")
    entry = Entry(path, kind, _int(raw.get("mode"), "a mode", 0, 0o7777) & 0o777,
                  _int(raw.get("mtime_ns"), "a time", -MAX_MTIME_NS, MAX_MTIME_NS))
    if kind == "file":
        entry.size = _int(raw.get("size"), "a size", 0, MAX_FILE_SIZE)
        entry.blocks = _blocks(raw.get("blocks"), entry, block_size, version)
    elif kind == "symlink":
        entry.target = _str(raw.get("target"), "a symlink target")
        if not entry.target or _encoded_len(entry.target) > PATH_MAX:
            raise _bad(f"{entry.display}: the symlink target is empty or too long")
    return entry


def parse(raw: dict, fallback_name: str = "megafs-share") -> Manifest:
    """Check every field of an opened manifest (see :func:`megafs.store.share.open_manifest`)."""
    version = raw["v"]
    kind = raw.get("kind")
    if kind not in ("file", "dir"):
        raise _bad("its kind is neither file nor dir")
    block_size = _int(raw.get("block_size"), "the block size", MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)
    items = raw.get("entries")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ENTRIES:
        raise _bad("entries is not a list of entries")
    entries = [_entry(item, block_size, version) for item in items]
    root = entries[0]
    if root.path != () or root.type != kind or (kind == "file" and len(entries) != 1):
        raise _bad("the first entry is not the shared file or folder")
    dirs: set[tuple[str, ...]] = {()}
    seen: set[tuple[str, ...]] = {()}
    for entry in entries[1:]:
        if entry.path in seen:
            raise _bad(f"{entry.display} is listed twice")
        if entry.path[:-1] not in dirs:
            raise _bad(f"{entry.display} is not inside a folder listed before it")
        seen.add(entry.path)
        if entry.type == "dir":
            dirs.add(entry.path)
    return Manifest(kind, safe_name(raw.get("name"), fallback_name), block_size, entries)
