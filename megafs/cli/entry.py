"""Entry points of the command-line tools ([project.scripts] in pyproject.toml).

Importing a tool pulls in trio, cryptography and apsw, which takes a few tenths of a
second. Ctrl-C in that time must not print a KeyboardInterrupt traceback, so this
module imports nothing heavy: when it is imported it installs a SIGINT handler that
prints one line and exits 130, then imports the tool, and only then hands SIGINT back
to Python (as KeyboardInterrupt), which the tool's top level
(:func:`megafs.cli.common.run`) turns into the same line.

What remains is the interpreter's own start (the ``site`` module, and the first
imports of the console-script wrapper): a few milliseconds in which Python, not
megafs, prints a traceback. An editable install in setuptools' default mode adds
~25 ms of imports to ``site``; dev.sh installs in ``compat`` mode, which does not.
"""

# _signal, the C module: "import signal" first loads enum, functools, collections (~10 ms)
import _signal
import os
import sys

#: ExitCode.INTERRUPTED, spelled out so that nothing is imported before the handler.
EXIT_INTERRUPTED = 130


def _exit_interrupted(prog: str):
    def handler(signum, frame):
        os.write(2, f"{prog}: interrupted\n".encode())
        os._exit(EXIT_INTERRUPTED)
    return handler


# At import, before the script that imports us goes on: it still has work to do
# (setuptools' console-script wrapper compiles a regular expression, ~10 ms).
_PROG = os.path.basename(sys.argv[0])
_signal.signal(_signal.SIGINT, _exit_interrupted(
    "megafs" if not _PROG or _PROG.endswith(".py") else _PROG))  # (python -m megafs: __main__.py)


def _start(prog: str, module: str) -> int:
    _signal.signal(_signal.SIGINT, _exit_interrupted(prog))
    import importlib
    import signal

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
