"""The filesystem core: metadata (SQLite), block cache, uploads, metadata snapshots."""
