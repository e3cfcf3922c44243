"""Shared command-line plumbing: parsers, passphrases, sizes, logging, progress, errors."""

from __future__ import annotations

import argparse
import getpass
import logging
import logging.handlers
import os
import re
import sys
import threading
import time

from megafs import __version__
from megafs.errors import ExitCode, LocalIOError, MegafsError, UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
#: ``--debug`` without a value: debug messages of every module.
DEBUG_ALL = "all"
#: Libraries that log every request: only their warnings, unless named in --debug.
QUIET_LOGGERS = ("httpx", "httpcore")
SYSLOG_SOCKET = "/dev/log"
LEVELS = ("debug", "info", "warning", "error", "critical")


#: No size option means anything beyond this (1 EiB); statfs counts in 64 bits.
MAX_SIZE = 1 << 60
#: Longest delay or timeout any option takes, in seconds (a day).
MAX_SECONDS = 86400.0


def parse_size(text: str) -> int:
    """``"4G"``, ``"512MiB"``, ``"1048576"`` -> bytes (binary units), at most 1024P."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 4G, 512M, 65536)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not value <= MAX_SIZE:  # also inf
        raise argparse.ArgumentTypeError(f"size {text!r} is too large (at most 1024P)")
    return int(value)


def positive_size(text: str) -> int:
    """:func:`parse_size`, refusing 0."""
    value = parse_size(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be more than 0")
    return value


def parse_quota(text: str) -> int | None:
    """A quota: a size of at least 1 byte, or ``none`` (no limit) -> None."""
    if text.strip().lower() == "none":
        return None
    try:
        value = positive_size(text)
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"invalid quota: {e} (write 'none' for no limit)") from None
    return value


def seconds(lo: float, *, allow_lo: bool = True, hi: float = MAX_SECONDS):
    """An argparse type: a finite number of seconds in [lo, hi] (or (lo, hi])."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not (lo <= value <= hi and (allow_lo or value > lo)):  # nan fails every test
            bound = f"{'at least' if allow_lo else 'more than'} {lo:g}"
            raise argparse.ArgumentTypeError(
                f"invalid number of seconds {text!r} (must be {bound} and at most {hi:g})")
        return value

    parse.__name__ = "seconds"
    return parse


def add_retention_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--retention SECONDS``: how long objects the metadata no longer names are kept
    (for followers that have not caught up); *what* says what the tool does with it."""
    from megafs.core.retention import default_retention

    p.add_argument("--retention", type=seconds(0), default=default_retention(),
                   metavar="SECONDS",
                   help=f"{what} (default $MEGAFS_RETENTION or 300; at least 10 follow"
                        " intervals of any follower)")


# -- parsers -------------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Shows an option with an optional value as ``--debug[=MODULES]``."""

    def _format_usage(self, usage, actions, groups, prefix):
        text = super()._format_usage(usage, actions, groups, prefix)
        return re.sub(r"(--[\w-]+) \[([A-Z_]+)\]", r"\1[=\2]", text)

    def _format_action_invocation(self, action):
        if action.option_strings and action.nargs == "?":
            return ", ".join(f"{s}[={self._metavar_formatter(action, action.dest)(1)[0]}]"
                             for s in action.option_strings)
        return super()._format_action_invocation(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``--debug`` takes its value only as ``--debug=MODULES``.

    A bare ``--debug`` never swallows the next word (``mount.megafs --debug URL MNT``).
    Subparsers are of this class too (argparse creates them with ``type(parent)``).
    """

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str):
        """A bad command line: one line ``<tool>: <message>`` and exit 2 (argparse's
        default prints the whole usage first)."""
        tool = self.prog.split()[0]
        sub = self.prog[len(tool):].strip()
        where = f"{sub}: " if sub else ""
        self.exit(int(ExitCode.USAGE),
                  f"{tool}: {where}{message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        if "--" in args:
            cut = args.index("--")
            args = [_bare_debug(a) for a in args[:cut]] + args[cut:]
        else:
            args = [_bare_debug(a) for a in args]
        return super().parse_known_args(args, namespace)


def _bare_debug(arg: str) -> str:
    return f"--debug={DEBUG_ALL}" if arg == "--debug" else arg


def _add_common(p: argparse.ArgumentParser, *, top: bool) -> None:
    present = {s for a in p._actions for s in a.option_strings}
    if "--version" not in present:
        p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                       help="print the version and exit")
    if "--debug" not in present:
        p.add_argument("--debug", nargs="?", const=DEBUG_ALL, metavar="MODULES",
                       default=None if top else argparse.SUPPRESS,
                       help="log debug messages: of every module, or with --debug=MODULES only"
                            " of those (comma-separated logger names, such as"
                            " megafs.core.cache,megafs.backends)")


def parser(prog: str, description: str) -> Parser:
    p = Parser(prog=prog, description=description)
    _add_common(p, top=True)
    return p


def subparsers(p: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(name, parser, help) of *p*'s subcommands, in the order they were added."""
    out = []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    out.append((name, sub, helps.get(name) or ""))
    return out


def finish(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give every subcommand (at any depth) ``--version`` and ``--debug`` too."""
    for _, sub, _ in subparsers(p):
        _add_common(sub, top=False)
        finish(sub)
    return p


def add_passphrase_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", metavar="F",
                   help="read the passphrase from file F (first line);"
                        " default: $MEGAFS_PASSPHRASE, else ask on the terminal")


def read_passphrase(path: str | None, *, confirm: bool = False,
                    prompt: str = "Passphrase: ") -> bytes:
    if path:
        try:
            with open(path, "rb") as f:
                value = f.readline().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"cannot read passphrase file {path}: {e.strerror}") from None
    elif "MEGAFS_PASSPHRASE" in os.environ:
        value = env_text("MEGAFS_PASSPHRASE").encode()
    elif sys.stdin.isatty():
        value = getpass.getpass(prompt).encode()
        if confirm and getpass.getpass("Repeat passphrase: ").encode() != value:
            raise UsageError("passphrases do not match")
    else:
        raise UsageError("no passphrase: use --passphrase-file or MEGAFS_PASSPHRASE")
    if not value:
        raise UsageError("the passphrase is empty")
    return value


def env_text(name: str) -> str:
    """The environment variable *name*, which must be valid UTF-8 (passphrases and keys
    must give the same bytes whether they come from the environment or a prompt)."""
    value = os.environ[name]
    try:
        value.encode()
    except UnicodeEncodeError:
        raise UsageError(f"{name} is not valid UTF-8") from None
    return value


#: Set by pytest in the environment of a running test (and so of the tools it runs).
TEST_RUNNER_VARIABLE = "PYTEST_CURRENT_TEST"


def warn_insecure_kdf(prog: str) -> None:
    """Say loudly that ``MEGAFS_INSECURE_TEST_KDF`` makes a passphrase cheap to guess
    (except inside the test suite, which sets it on purpose)."""
    if (os.environ.get("MEGAFS_INSECURE_TEST_KDF") == "1"
            and TEST_RUNNER_VARIABLE not in os.environ):
        print(f"{prog}: WARNING: MEGAFS_INSECURE_TEST_KDF=1 is set: the passphrase is protected by"
              " test-only key derivation parameters and is cheap to guess; unset it and run"
              " 'megafs passphrase' again", file=sys.stderr)


# -- logging -------------------------------------------------------------------------

_FILE_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"


def debug_modules(debug) -> list[str] | None:
    """``--debug`` value -> None (off), [] (every module) or the logger names listed."""
    if not debug:
        return None
    if debug is True or debug == DEBUG_ALL:
        return []
    return [m.strip() for m in str(debug).split(",") if m.strip()]


class KernelGaveUp(logging.Filter):
    """pyfuse3 logs at ERROR when the reply to a request finds it gone (ENOENT): the
    kernel gave up on the request (its caller was interrupted, or the mount was being
    torn down). Nothing is lost, so it is logged as a warning."""

    GONE = "fuse_reply_* failed with No such file or directory"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and self.GONE in record.getMessage():
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(debug=None, logfile: str | None = None, *, level: int | None = None,
                  buffer: bool = False, syslog: str | None = None) -> None:
    """Send log records to *logfile*, else (with *buffer*) to memory until
    :func:`log_to_file` names the file, else to stderr; and to syslog as *syslog*
    (the ident) when the system logger listens on /dev/log.

    *debug* is ``--debug``'s value: debug messages of every module or of some.
    """
    if logfile:
        handler: logging.Handler = logging.FileHandler(logfile)
        handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    elif buffer:
        handler = logging.handlers.MemoryHandler(1 << 30, flushLevel=logging.CRITICAL + 1)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    handlers = [handler]
    if syslog:
        h = syslog_handler(syslog)
        if h is not None:
            handlers.append(h)
    root = logging.getLogger()
    root.handlers[:] = handlers
    if level is None:
        level = logging.INFO if (logfile or buffer) else logging.WARNING
    modules = debug_modules(debug)
    root.setLevel(logging.DEBUG if modules == [] else level)
    pyfuse3_log = logging.getLogger("pyfuse3")
    if not any(isinstance(f, KernelGaveUp) for f in pyfuse3_log.filters):
        pyfuse3_log.addFilter(KernelGaveUp())
    for name in QUIET_LOGGERS:  # one INFO line per HTTP request (DEBUG: per event)
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in modules or ():
        logging.getLogger(name).setLevel(logging.DEBUG)


def syslog_handler(ident: str, address: str = SYSLOG_SOCKET) -> logging.Handler | None:
    """A handler to the system logger (journald, rsyslog) at *address*, if one listens."""
    if not os.path.exists(address):
        return None
    try:
        h = logging.handlers.SysLogHandler(address, logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        return None
    h.ident = f"{ident}[{os.getpid()}]: "
    h.setLevel(logging.INFO)
    h.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    return h


def log_to_file(path: str) -> None:
    """Replace the memory buffer of ``setup_logging(buffer=True)`` by *path*, keeping
    what was logged so far. Does nothing when no buffer is in place."""
    root = logging.getLogger()
    for i, h in enumerate(root.handlers):
        if isinstance(h, logging.handlers.MemoryHandler):
            target = logging.FileHandler(path)
            target.setFormatter(logging.Formatter(_FILE_FORMAT))
            h.setTarget(target)
            h.flush()
            root.handlers[i] = target
            h.close()
            return


def logging_buffered() -> bool:
    return any(isinstance(h, logging.handlers.MemoryHandler) for h in logging.getLogger().handlers)


# -- progress --------------------------------------------------------------------------


class Progress:
    """One self-updating line on stderr while something slow runs: a spinner, what is
    going on and the seconds spent. Only on a terminal: in scripts and logs it prints
    nothing at all. Use as a context manager; :meth:`update` changes the text (from
    any thread).
    """

    FRAMES = "|/-\\"

    def __init__(self, prog: str, text: str, *, stream=None, interval: float = 0.1):
        self.stream = sys.stderr if stream is None else stream
        self.prog = prog
        self.text = text
        self.interval = interval
        try:
            tty = self.stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.enabled = tty and os.environ.get("TERM") != "dumb"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._frame = 0

    def update(self, text: str) -> None:
        self.text = text

    def print(self, text: str, file=None) -> None:
        """Print a line (to stdout by default) without mixing it into the progress line."""
        with self._lock:
            if self._thread is not None:
                self._write("\r\x1b[K")
            print(text, file=sys.stdout if file is None else file, flush=True)

    def __enter__(self) -> Progress:
        if self.enabled:
            self._started = time.monotonic()
            self._draw()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            with self._lock:
                self._write("\r\x1b[K")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            frame = self.FRAMES[self._frame % len(self.FRAMES)]
            self._frame += 1
            elapsed = time.monotonic() - self._started
            self._write(f"\r\x1b[K{self.prog}: {self.text} {frame} {elapsed:.0f}s")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass


# -- running ---------------------------------------------------------------------------


def run(prog: str, fn, *args) -> int:
    """Call *fn*; turn every expected failure into one line on stderr and an exit code."""
    try:
        try:
            return fn(*args) or 0
        except BaseExceptionGroup as eg:  # trio nurseries wrap errors in groups
            raise leaf_error(eg) from None
    except MegafsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except PermissionError as e:
        print(f"{prog}: permission denied: {e.filename or e}", file=sys.stderr)
        return int(LocalIOError.exit_code)


def leaf_error(eg: BaseExceptionGroup) -> BaseException:
    """The first MegafsError (else KeyboardInterrupt, else the group itself) in *eg*."""
    for kind in (MegafsError, KeyboardInterrupt):
        match, _ = eg.split(kind)
        while isinstance(match, BaseExceptionGroup):
            match = match.exceptions[0]
        if match is not None:
            return match
    return eg
