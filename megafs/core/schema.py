"""The metadata database schema (SQLite via apsw).

The same database is the local working copy in the cache directory and, as a
serialized image sealed in a metadata object, the filesystem's state in the
store. Schema version lives in ``PRAGMA user_version``: 2 added ``inodes.nblocks``,
3 added ``objects.sha256`` and the tables ``damaged`` and ``heads``, 4 (format 3)
``objects.pack``, ``objects.pack_offset`` and the table ``packs``, 5 the table
``unsent``. Databases of
older versions are upgraded when opened (:func:`upgrade`).

Tables
------
inodes    one row per inode. ``id`` 1 is the root directory. Times are integer
          nanoseconds since the epoch. ``target`` holds a symlink's target.
          Directories have nlink = 2 + number of subdirectories. ``nblocks`` is
          the number of ``blocks`` rows of the inode (its stored blocks, for
          ``st_blocks``), kept up to date by :class:`~megafs.core.blockmap.BlockMap`.
dentries  directory entries. ``id`` is AUTOINCREMENT and never reused: it is the
          readdir cookie, so a listing resumes correctly while entries are
          added or removed.
xattrs    extended attributes.
objects   stored data objects: ``key`` is the backend key (``b/<hex>``),
          ``hash`` the keyed dedup hash of the plaintext, ``refcount`` the number
          of ``blocks`` rows naming it. Rows with refcount 0 are garbage that is
          deleted from the store after the next metadata snapshot is committed.
          ``sha256`` is the SHA-256 of the sealed object as stored (what share
          manifests list, so that a link holder can verify what it fetches); NULL
          until known. ``pack`` is the pack object holding it (NULL: the object is
          stored alone under ``key``), at ``pack_offset``, ``stored_size`` bytes long.
packs     pack objects (``p/<hex>``): their stored (padded) ``size`` and the bytes
          ``used`` by envelopes (the rest is padding); a pack no object row names
          any more is garbage. Envelopes of unreferenced objects in it are dead
          space (compaction reclaims it).
blocks    (inode, blockno) -> object. A missing row is a hole (reads as zeros).
damaged   (inode, blockno) ranges whose stored object was found damaged or missing
          (by fsck or a verified read): ``key`` the object it named, ``reason``
          a short text, ``found`` when (ns). Reading such a block is EIO until the
          block is overwritten, truncated away or the file removed.
heads     the chain of metadata heads this filesystem went through: ``seq`` and
          the ``hash`` of each head (the newest ones, a bounded number). Shipped in
          snapshots and deltas, so a machine can tell that a newer state descends
          from the last head it saw.
retained  objects the metadata no longer needs, kept in the store until ``since`` +
          the retention period (followers may still read them), then deleted
          (:mod:`megafs.core.retention`). Added without a version bump: readers that
          do not know it ignore it, and :func:`add_missing_tables` creates it.
state     key/value: ``seq`` of the last snapshot committed to the store, etc.
journal   keys of rows changed since the last metadata upload (filled by triggers),
          so that an upload ships only what changed (a delta), not the database.
          ``journal_sent`` holds the keys of an upload in flight.
unsent    (inode, blockno) of blocks whose newest data the writer that uploaded this
          state had not uploaded yet (``writer``: its host and pid): the state names
          the file's new size, but the block map still names older content or none.
          Rows are added at each metadata upload for the blocks dirty then, and go in
          the transaction that records the block's upload, or with the block (truncate,
          delete). Reading such a block anywhere but on that writer is EIO, never zeros
          or old bytes. Schema 5: an older megafs, which would neither honour nor
          delete the rows, refuses the metadata (its schema version).
fsynced   local only: the content, as of its last ``fsync``, of a small block not
          uploaded yet (the block's data lives in memory; this row makes it durable
          with the same WAL sync as the metadata: one device flush per fsync). The
          row goes in the transaction that records the block's upload, and with the
          block (truncate, delete). Never journaled; emptied when an image from the
          store is loaded. Added without a version bump, like ``retained``.
"""

from __future__ import annotations

import apsw

SCHEMA_VERSION = 5
#: Older schema versions this megafs upgrades when it opens them.
UPGRADABLE = (1, 2, 3, 4)

SCHEMA = """
CREATE TABLE inodes (
    id INTEGER PRIMARY KEY,
    mode INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    nlink INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    target BLOB,
    nblocks INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE dentries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    inode INTEGER NOT NULL,
    UNIQUE (parent, name)
);
CREATE INDEX dentries_readdir ON dentries (parent, id);
CREATE INDEX dentries_inode ON dentries (inode);
CREATE TABLE xattrs (
    inode INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (inode, name)
) WITHOUT ROWID;
CREATE TABLE objects (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    hash BLOB UNIQUE,
    refcount INTEGER NOT NULL,
    size INTEGER NOT NULL,
    stored_size INTEGER NOT NULL,
    sha256 BLOB,
    pack TEXT,
    pack_offset INTEGER
);
CREATE INDEX objects_garbage ON objects (refcount) WHERE refcount = 0;
CREATE INDEX objects_pack ON objects (pack) WHERE pack IS NOT NULL;
CREATE TABLE packs (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    used INTEGER NOT NULL
);
CREATE TABLE blocks (
    inode INTEGER NOT NULL,
    blockno INTEGER NOT NULL,
    object INTEGER NOT NULL,
    PRIMARY KEY (inode, blockno)
) WITHOUT ROWID;
CREATE TABLE state (
    key TEXT PRIMARY KEY,
    value
);
CREATE TABLE shares (
    id TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    key BLOB NOT NULL,
    created INTEGER NOT NULL,
    digest BLOB
);
CREATE TABLE damaged (
    inode INTEGER NOT NULL,
    blockno INTEGER NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    found INTEGER NOT NULL,
    PRIMARY KEY (inode, blockno)
) WITHOUT ROWID;
CREATE TABLE heads (
    seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE retained (
    key TEXT PRIMARY KEY,
    since REAL NOT NULL
);
CREATE TABLE unsent (
    inode INTEGER NOT NULL,
    blockno INTEGER NOT NULL,
    writer TEXT NOT NULL,
    PRIMARY KEY (inode, blockno)
) WITHOUT ROWID;
CREATE TABLE journal (
    tbl TEXT NOT NULL,
    a NOT NULL,
    b NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, a, b)
) WITHOUT ROWID;
CREATE TABLE journal_sent (
    tbl TEXT NOT NULL,
    a NOT NULL,
    b NOT NULL DEFAULT 0,
    PRIMARY KEY (tbl, a, b)
) WITHOUT ROWID;
"""

#: Local-only tables added to the current schema version later, created by
#: :func:`add_missing_tables` where missing (never shipped in deltas).
FSYNCED_SCHEMA = """
CREATE TABLE fsynced (
    inode INTEGER NOT NULL,
    blockno INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (inode, blockno)
) WITHOUT ROWID;
"""
SCHEMA += FSYNCED_SCHEMA

#: Journaled tables: name -> (key column, second key column or None).
_JOURNAL_KEYS = {"inodes": ("id", None), "dentries": ("id", None),
                 "xattrs": ("inode", "name"), "objects": ("id", None),
                 "blocks": ("inode", "blockno"), "shares": ("id", None),
                 "damaged": ("inode", "blockno"), "heads": ("seq", None),
                 "packs": ("key", None), "retained": ("key", None),
                 "unsent": ("inode", "blockno")}


def journal_trigger(table: str) -> str:
    """The triggers that record every change of *table* in ``journal``."""
    a, b = _JOURNAL_KEYS[table]
    return "".join(
        f"""
CREATE TRIGGER {table}_{op.lower()} AFTER {op} ON {table} BEGIN
    INSERT OR IGNORE INTO journal (tbl, a, b) VALUES ('{table}', {row}.{a}, {f"{row}.{b}" if b else "0"});
END;"""
        for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")))


SCHEMA += "".join(journal_trigger(t) for t in _JOURNAL_KEYS)

#: Tables shipped in metadata deltas, with their key columns (see ``journal``).
JOURNALED = {t: tuple(c for c in cols if c) for t, cols in _JOURNAL_KEYS.items()}

#: The data tables alone (what a delta image holds), without indexes or triggers.
DELTA_SCHEMA = SCHEMA[:SCHEMA.index("CREATE TABLE state")].replace(
    "CREATE INDEX objects_garbage ON objects (refcount) WHERE refcount = 0;", "").replace(
    "CREATE INDEX objects_pack ON objects (pack) WHERE pack IS NOT NULL;", "") + \
    SCHEMA[SCHEMA.index("CREATE TABLE shares"):SCHEMA.index("CREATE TABLE journal (")]


#: Column order of inode rows handed around the core (``SELECT INODE_COLS FROM inodes``).
#: The last column is ``nblocks``; :class:`~megafs.core.filesystem.Filesystem` turns it
#: into ``st_blocks`` (512-byte units) before a row leaves the core.
INODE_COLS = "id, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns, rdev, nblocks"

#: Positions of the columns in an inode row (``row[MODE]``), in :data:`INODE_COLS` order
#: (a test checks each name against the column it stands for). Plain integers: naming
#: a column costs nothing per row. ``NBLOCKS`` is ``st_blocks`` once the row leaves the core.
(INO, MODE, UID, GID, SIZE, NLINK, ATIME_NS, MTIME_NS, CTIME_NS, RDEV,
 NBLOCKS) = range(len(INODE_COLS.split(",")))


def connect(path: str) -> apsw.Connection:
    """Open a metadata database with the pragmas the core relies on."""
    conn = apsw.Connection(path)
    conn.setbusytimeout(5000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


#: The journaled tables whose changes a user made (the others are bookkeeping that the
#: next upload redoes: objects, packs, retained, heads, damaged, unsent).
USER_TABLES = ("inodes", "dentries", "xattrs", "blocks", "shares")


def unsent_changes(conn: apsw.Connection) -> int:
    """Changes a user made since the last metadata upload that the store may not hold
    (rows of ``journal``, and of ``journal_sent`` of an upload in flight, for the
    :data:`USER_TABLES`); 0 for a database without those tables."""
    tables = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table'"
        " AND name IN ('journal', 'journal_sent') ORDER BY name")]
    marks = ",".join("?" * len(USER_TABLES))
    return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE tbl IN ({marks})",
                            USER_TABLES).fetchone()[0] for t in tables)


def commit_batch(conn: apsw.Connection, *, reopen: bool = True) -> None:
    """Commit the open batch of metadata changes; start the next one if *reopen*.

    The filesystem keeps one transaction open and commits it every second, on
    fsync and before snapshots, instead of once per request (each request's
    statements run in a savepoint, so a failing request still rolls back alone).
    A crash loses at most the last second of metadata changes nobody fsynced.
    """
    if conn.in_transaction:
        conn.execute("COMMIT")
    if reopen:
        conn.execute("BEGIN")


def create(conn: apsw.Connection, *, root_uid: int, root_gid: int, now_ns: int) -> None:
    with conn:
        conn.execute(SCHEMA)
        conn.execute(
            "INSERT INTO inodes (id, mode, uid, gid, size, nlink, atime_ns, mtime_ns, ctime_ns)"
            " VALUES (1, ?, ?, ?, 0, 2, ?, ?, ?)",
            (0o040755, root_uid, root_gid, now_ns, now_ns, now_ns),
        )
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def check_version(conn: apsw.Connection) -> int:
    """The schema version of *conn*: the current one or one :func:`upgrade` handles."""
    from megafs.errors import UnsupportedFormat

    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version != SCHEMA_VERSION and version not in UPGRADABLE:
        raise UnsupportedFormat(
            f"metadata schema version {version}; this megafs reads versions"
            f" {', '.join(map(str, (*UPGRADABLE, SCHEMA_VERSION)))}"
        )
    return version


def upgrade(conn: apsw.Connection) -> bool:
    """Bring a database of an older schema version (after its deltas are applied: they
    have the old columns) to the current one; True if it was upgraded.

    1 -> 2: ``inodes.nblocks``, counted from ``blocks``.
    2 -> 3: ``objects.sha256`` (NULL: not known yet), tables ``damaged`` and ``heads``
    (empty) with their journal triggers.
    3 -> 4: ``objects.pack`` and ``objects.pack_offset`` (NULL: one-block objects), the
    table ``packs`` (empty) with its journal triggers.
    4 -> 5: the table ``unsent`` (empty), with its journal triggers
    (:func:`add_missing_tables`).
    The caller must make the next upload a full snapshot: deltas of the new schema
    cannot apply to an old snapshot, and an older megafs refuses the new snapshot
    clearly (its schema version).
    """
    version = check_version(conn)
    if version == SCHEMA_VERSION:
        add_missing_tables(conn)
        return False
    with conn:
        if version < 2:
            conn.execute("ALTER TABLE inodes ADD COLUMN nblocks INTEGER NOT NULL DEFAULT 0")
            conn.execute("UPDATE inodes SET nblocks=(SELECT count(*) FROM blocks"
                         " WHERE blocks.inode=inodes.id) WHERE id IN (SELECT inode FROM blocks)")
        if version < 3:
            conn.execute("ALTER TABLE objects ADD COLUMN sha256 BLOB")
            conn.execute(_section("CREATE TABLE damaged", "CREATE TABLE retained"))
            has_journal = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table'"
                                       " AND name='journal'").fetchone()
            if has_journal:
                conn.execute("".join(journal_trigger(t) for t in ("damaged", "heads")))
        if version < 4:
            conn.execute("ALTER TABLE objects ADD COLUMN pack TEXT")
            conn.execute("ALTER TABLE objects ADD COLUMN pack_offset INTEGER")
            conn.execute(_section("CREATE INDEX objects_pack", "CREATE TABLE blocks"))
            has_journal = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table'"
                                       " AND name='journal'").fetchone()
            if has_journal:
                conn.execute(journal_trigger("packs"))
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    add_missing_tables(conn)
    return True


def add_missing_tables(conn: apsw.Connection) -> None:
    """Create the tables added to the current schema version later (``retained`` and
    ``unsent``, with their journal triggers when *conn* has a journal, and ``fsynced``)."""
    def exists(name: str) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name=?", (name,)).fetchone() \
            is not None

    if exists("retained") and exists("fsynced") and exists("unsent"):
        return
    with conn:
        if not exists("unsent"):
            conn.execute(_section("CREATE TABLE unsent", "CREATE TABLE journal ("))
            if exists("journal"):
                conn.execute(journal_trigger("unsent"))
        if not exists("retained"):
            conn.execute(_section("CREATE TABLE retained", "CREATE TABLE unsent"))
            if exists("journal"):
                conn.execute(journal_trigger("retained"))
        if not exists("fsynced"):
            conn.execute(FSYNCED_SCHEMA)


def _section(start: str, end: str) -> str:
    """The statements of :data:`SCHEMA` from *start* up to *end*."""
    return SCHEMA[SCHEMA.index(start):SCHEMA.index(end)]
