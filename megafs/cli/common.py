"""Shared command-line plumbing: passphrases, sizes, logging, error reporting."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
import sys

from megafs import __version__
from megafs.errors import ExitCode, MegafsError, UsageError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text: str) -> int:
    """``"4G"``, ``"512MiB"``, ``"1048576"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (examples: 4G, 512M, 65536)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="verbose logging")
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
        value = os.environ["MEGAFS_PASSPHRASE"].encode()
    elif sys.stdin.isatty():
        value = getpass.getpass(prompt).encode()
        if confirm and getpass.getpass("Repeat passphrase: ").encode() != value:
            raise UsageError("passphrases do not match")
    else:
        raise UsageError("no passphrase: use --passphrase-file or MEGAFS_PASSPHRASE")
    if not value:
        raise UsageError("the passphrase is empty")
    return value


def setup_logging(debug: bool, logfile: str | None = None) -> None:
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s" if logfile
        else "%(name)s: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO if logfile else logging.WARNING)


def run(prog: str, fn, *args) -> int:
    """Call *fn*; turn every expected failure into one line on stderr and an exit code."""
    try:
        try:
            return fn(*args) or 0
        except BaseExceptionGroup as eg:  # trio nurseries wrap errors in groups
            raise _leaf(eg) from None
    except MegafsError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return int(e.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except PermissionError as e:
        print(f"{prog}: permission denied: {e.filename or e}", file=sys.stderr)
        return int(ExitCode.FAILURE)


def _leaf(eg: BaseExceptionGroup) -> BaseException:
    """The first MegafsError (else KeyboardInterrupt, else the group itself) in *eg*."""
    for kind in (MegafsError, KeyboardInterrupt):
        match, _ = eg.split(kind)
        while isinstance(match, BaseExceptionGroup):
            match = match.exceptions[0]
        if match is not None:
            return match
    return eg
