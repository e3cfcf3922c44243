"""megafs: an encrypted filesystem stored in opaque objects on a local directory or S3."""

__version__ = "0.1.0"

#: Version of the on-storage format (see docs/format.md).
FORMAT_VERSION = 3
