"""Entry points of the command-line tools ([project.scripts] in pyproject.toml).

Importing a tool pulls in trio, cryptography and apsw, which takes a few tenths of a
second. Ctrl-C in that time must not print a KeyboardInterrupt traceback, so this
module imports nothing heavy: it first installs a SIGINT handler that prints one line
and exits 130, then imports the tool, and only then hands SIGINT back to Python
(as KeyboardInterrupt), which the tool's top level (:func:`megafs.cli.common.run`)
turns into the same line.
"""

import os
import signal
import sys

#: ExitCode.INTERRUPTED, spelled out so that nothing is imported before the handler.
EXIT_INTERRUPTED = 130


def _exit_interrupted(prog: str):
    def handler(signum, frame):
        os.write(2, f"{prog}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)
    return handler


def _start(prog: str, module: str) -> int:
    signal.signal(signal.SIGINT, _exit_interrupted(prog))
    import importlib

    tool = importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return tool.main()
    finally:
        # Done: a Ctrl-C while the interpreter exits must not print a traceback either.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def mkfs() -> int:
    return _start("mkfs.megafs", "megafs.cli.mkfs")


def mount() -> int:
    return _start("mount.megafs", "megafs.cli.mount")


def umount() -> int:
    return _start("umount.megafs", "megafs.cli.umount")


def fsck() -> int:
    return _start("fsck.megafs", "megafs.cli.fsck")


def megafs() -> int:
    return _start("megafs", "megafs.cli.tool")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(megafs())
