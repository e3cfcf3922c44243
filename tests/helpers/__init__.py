"""Helpers for the end-to-end tests on real FUSE mounts (the fixtures are in conftest.py),
one module per concern, all re-exported here (``from helpers import MegaFS``):

* :mod:`helpers.stores`: stores as seen from outside (a local directory, or a prefix in a
  SeaweedFS bucket);
* :mod:`helpers.procs`: the tools' environment, daemon processes, the mount table, the
  check that a CLI failure is one clean line;
* :mod:`helpers.mount`: :class:`MegaFS` driving the command-line tools, and its daemon logs;
* :mod:`helpers.files`: tree snapshots for comparisons, file reads, errno checks.
"""

from helpers.files import assert_same_tree, oserror, read_file, tree_state
from helpers.mount import (
    BUG_LINE,
    DAMAGED_READ,
    SMALL_BLOCK,
    TOOL_TIMEOUT,
    MegaFS,
    abort_fuse_connection,
    daemon_log_errors,
    daemon_log_sizes,
    rows_expecting_log_errors,
)
from helpers.procs import (
    BIN,
    PASSPHRASE,
    assert_cli_error,
    become_subreaper,
    is_megafs_daemon,
    mounted_paths,
    pid_alive,
    reap,
    tool_env,
    wait_pid_gone,
)
from helpers.stores import LocalStore, S3Store, Store, with_unlocked_store

__all__ = [
    "BIN", "BUG_LINE", "DAMAGED_READ", "PASSPHRASE", "SMALL_BLOCK", "TOOL_TIMEOUT",
    "LocalStore", "MegaFS", "S3Store", "Store",
    "abort_fuse_connection", "assert_cli_error", "assert_same_tree", "become_subreaper", "daemon_log_errors",
    "daemon_log_sizes", "is_megafs_daemon", "mounted_paths", "oserror", "pid_alive",
    "read_file", "reap", "rows_expecting_log_errors", "tool_env", "tree_state",
    "wait_pid_gone", "with_unlocked_store",
]
