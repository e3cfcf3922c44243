"""Errors a user can meet, each with its own process exit code.

Every command-line tool catches :class:`MegafsError` at its top level and prints
``<tool>: <message>`` on one line, then exits with :attr:`MegafsError.exit_code`.
The table of exit codes is documented in docs/exit-codes.md.
"""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  #: unexpected internal error (a bug: please report)
    USAGE = 2  #: bad command line (argparse uses this too)
    WRONG_PASSPHRASE = 10
    NO_FILESYSTEM = 11  #: store location exists but holds no megafs filesystem
    STORE_NOT_FOUND = 12  #: store location (directory, bucket) does not exist
    ALREADY_EXISTS = 13  #: mkfs over an existing filesystem, get over a file, without --force
    BAD_MOUNTPOINT = 14  #: mountpoint missing, not a directory, not empty, in use
    CORRUPT = 15  #: an object failed authentication (tampered or damaged)
    UNSUPPORTED_FORMAT = 16  #: store written by an incompatible megafs version
    BACKEND_UNAVAILABLE = 17  #: storage unreachable or failing
    NOT_MOUNTED = 18  #: umount/ctrl on something that is not a megafs mount
    FSCK_ERRORS = 19  #: fsck found problems it did not (or could not) repair
    CACHE_ERROR = 20  #: cache directory unusable (permissions, disk full)
    LOCKED = 21  #: the store's lock is held by a live mount (here or elsewhere)
    ROLLBACK = 22  #: the store serves older metadata than this machine has seen
    BAD_CREDENTIALS = 23  #: storage credentials missing, unreadable, rejected or not permitted
    SHARE_NOT_FOUND = 24  #: a share link that was revoked or never existed
    FSCK_REPAIRED = 25  #: fsck found problems and repaired them
    NO_SUCH_PATH = 26  #: a local path named on the command line does not exist
    LOCAL_IO = 27  #: a local file or directory cannot be read or written (permission, read-only, full)
    LOCK_LOST = 28  #: this mount's lock was taken over: it stopped writing
    INTERRUPTED = 130


class MegafsError(Exception):
    """An error with a one-line, user-facing message."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _kind(name: str, code: ExitCode) -> type[MegafsError]:
    return type(name, (MegafsError,), {"exit_code": code, "__doc__": code.name})


UsageError = _kind("UsageError", ExitCode.USAGE)
WrongPassphrase = _kind("WrongPassphrase", ExitCode.WRONG_PASSPHRASE)
NoFilesystem = _kind("NoFilesystem", ExitCode.NO_FILESYSTEM)
StoreNotFound = _kind("StoreNotFound", ExitCode.STORE_NOT_FOUND)
AlreadyExists = _kind("AlreadyExists", ExitCode.ALREADY_EXISTS)
BadMountpoint = _kind("BadMountpoint", ExitCode.BAD_MOUNTPOINT)
CorruptObject = _kind("CorruptObject", ExitCode.CORRUPT)
UnsupportedFormat = _kind("UnsupportedFormat", ExitCode.UNSUPPORTED_FORMAT)
BackendUnavailable = _kind("BackendUnavailable", ExitCode.BACKEND_UNAVAILABLE)
NotMounted = _kind("NotMounted", ExitCode.NOT_MOUNTED)
CacheError = _kind("CacheError", ExitCode.CACHE_ERROR)
StoreLocked = _kind("StoreLocked", ExitCode.LOCKED)
RollbackDetected = _kind("RollbackDetected", ExitCode.ROLLBACK)
ShareNotFound = _kind("ShareNotFound", ExitCode.SHARE_NOT_FOUND)
BadCredentials = _kind("BadCredentials", ExitCode.BAD_CREDENTIALS)
NoSuchPath = _kind("NoSuchPath", ExitCode.NO_SUCH_PATH)
LocalIOError = _kind("LocalIOError", ExitCode.LOCAL_IO)
LockLost = _kind("LockLost", ExitCode.LOCK_LOST)
