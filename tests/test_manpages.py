"""Man pages, the exit-code table and the bash completion are generated from the tools'
parsers (tools/manpages.py): the committed files must be what it renders, the pages
must render without warnings, the completion passes shellcheck, and every tool (and
subcommand) answers --version."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megafs import __version__
from megafs.cli import common
from megafs.errors import ExitCode
from tools import manpages as manpage

ROOT = Path(__file__).resolve().parent.parent
REGENERATE = "python -m tools.manpages --all  (from the repository root)"


def _parser(module: str) -> argparse.ArgumentParser:
    import importlib

    return importlib.import_module(module).build_parser()


def _all_parsers():
    """(words, parser) of every tool and subcommand, at any depth."""
    out = []

    def walk(words, p):
        out.append((words, p))
        for name, sub, _ in common.subparsers(p):
            walk([*words, name], sub)

    for name, _, module in manpage.TOOLS:
        walk([name], _parser(module))
    return out


# -- generated files are up to date ---------------------------------------------------------


def test_man_pages_are_up_to_date():
    expected = manpage.pages()
    committed = {p.name for p in (ROOT / "man").iterdir()}
    assert committed == set(expected), (
        f"man/ holds {sorted(committed)}, expected {sorted(expected)}: run {REGENERATE}")
    stale = [name for name, text in expected.items()
             if (ROOT / "man" / name).read_text() != text]
    assert not stale, f"man pages out of date: {stale}; run {REGENERATE}"


def test_regenerating_writes_the_committed_files(tmp_path):
    """The command named in the failure messages writes what the tests compare with."""
    proc = subprocess.run(
        [sys.executable, "-m", "tools.manpages", "--write", str(tmp_path / "man"),
         "--exit-codes", str(tmp_path / "exit-codes.md"), "--completion", str(tmp_path / "c.bash")],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name in manpage.pages():
        assert (tmp_path / "man" / name).read_text() == (ROOT / "man" / name).read_text(), (
            f"man/{name} out of date: run {REGENERATE}")
    assert (tmp_path / "exit-codes.md").read_text() == (ROOT / "docs/exit-codes.md").read_text()
    assert (tmp_path / "c.bash").read_text() == (
        ROOT / "contrib/megafs-completion.bash").read_text()


def test_every_exit_code_has_a_description():
    missing = [c.name for c in ExitCode if not getattr(c, "description", "").strip()]
    assert not missing, f"describe {missing} on ExitCode in megafs/errors.py"
    assert len({int(c) for c in ExitCode}) == len(ExitCode), "two exit codes share a number"


def test_exit_code_doc_is_up_to_date():
    assert (ROOT / "docs/exit-codes.md").read_text() == manpage.exit_codes_markdown(), (
        f"docs/exit-codes.md out of date: run {REGENERATE}")


def test_completion_is_up_to_date():
    assert (ROOT / "contrib/megafs-completion.bash").read_text() == \
        manpage.completion_script(), f"contrib/megafs-completion.bash out of date: run {REGENERATE}"


@pytest.mark.parametrize("script", ["tools/completion.bash", "contrib/megafs-completion.bash"])
def test_completion_passes_shellcheck(script):
    """The hand-written program and the generated file users install (``./dev.sh test``
    installs shellcheck, so this only skips on machines set up otherwise)."""
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck)")
    out = subprocess.run(["shellcheck", "--shell=bash", "--severity=style", script],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_completion_program_is_the_generated_files_tail():
    generated = (ROOT / "contrib/megafs-completion.bash").read_text()
    assert manpage._completion_code() in generated
    assert "_megafs_complete()" in manpage._completion_code()


# -- the pages render and say what --help says ------------------------------------------------


@pytest.mark.parametrize("page", sorted(manpage.pages()))
def test_man_page_renders_without_warnings(page):
    path = ROOT / "man" / page
    assert shutil.which("groff") and shutil.which("man"), \
        "install the Debian packages man-db and groff-base"
    groff = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(path)],
                           capture_output=True, text=True, timeout=60)
    assert groff.returncode == 0 and not groff.stderr, groff.stderr
    man = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", str(path)],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "MANWIDTH": "100", "LANG": "C.UTF-8"})
    assert man.returncode == 0 and not man.stderr, man.stderr
    text = man.stdout
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "SEE ALSO"):
        assert f"\n{section}\n" in text, f"{page}: no {section} section"
    name, section, module = next(t for t in manpage.TOOLS if f"{t[0]}.{t[1]}" == page)
    for words, p in _all_parsers():
        if words[0] != name:
            continue
        for action in p._actions:
            if action.help != argparse.SUPPRESS:
                for opt in action.option_strings:
                    assert opt in text, f"{page}: {' '.join(words)} {opt} is not documented"
    for code in ExitCode:
        assert f"\n       {int(code)} " in text, f"{page}: exit code {int(code)} missing"


def test_every_exit_code_in_the_doc_and_the_man_pages():
    """docs/exit-codes.md and each page's EXIT STATUS say what the enum says, code by code."""
    doc = (ROOT / "docs/exit-codes.md").read_text()
    for code in ExitCode:
        assert f"| {int(code)} | {code.description} |" in doc, f"docs/exit-codes.md: {code.name}"
    for page in manpage.pages():
        roff = (ROOT / "man" / page).read_text()
        status = roff.split(".SH EXIT STATUS\n", 1)[1].split("\n.SH ", 1)[0]
        entries = [e.split("\n", 2) for e in status.split(".TP\n")[1:]]
        assert [(b, t) for b, t, *_ in entries] == [
            (f".B {int(c)}", manpage._line(manpage._inline(c.description))) for c in ExitCode
        ], f"man/{page}: EXIT STATUS differs from ExitCode"


# -- --version and --debug everywhere -----------------------------------------------------------


@pytest.mark.parametrize("words", [w for w, _ in _all_parsers()], ids=" ".join)
def test_version_everywhere(words, capsys):
    module = next(m for n, _, m in manpage.TOOLS if n == words[0])
    args = [*words[1:], "--version"]
    if words[:2] == ["megafs", "ctrl"] and len(words) > 2:
        args = ["ctrl", "/mnt", *words[2:], "--version"]
    with pytest.raises(SystemExit) as exc:
        _parser(module).parse_args(args)
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip().endswith(__version__)


def test_version_of_installed_tools():
    bindir = Path(sys.executable).parent
    for name, _, _ in manpage.TOOLS:
        out = subprocess.run([str(bindir / name), "--version"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == f"{name} {__version__}", out


def test_debug_takes_modules_only_after_equals():
    p = _parser("megafs.cli.mount")
    args = p.parse_args(["--debug", "local:///s", "/mnt"])
    assert (args.debug, args.storage_url, args.mountpoint) == ("all", "local:///s", "/mnt")
    args = p.parse_args(["--debug=megafs.core.cache,megafs.backends", "local:///s", "/mnt"])
    assert common.debug_modules(args.debug) == ["megafs.core.cache", "megafs.backends"]
    assert common.debug_modules(p.parse_args(["local:///s", "/mnt"]).debug) is None
    tool = _parser("megafs.cli.tool")
    assert tool.parse_args(["--debug", "stat", "/m"]).debug == "all"
    assert tool.parse_args(["stat", "--debug=megafs.fs", "/m"]).debug == "megafs.fs"
    assert tool.parse_args(["stat", "/m"]).debug is None
    assert "--debug[=MODULES]" in p.format_help()


def test_debug_levels_per_module():
    import logging

    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        common.setup_logging("megafs.core.cache,megafs.backends")
        assert logging.getLogger("megafs.core.cache").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("megafs.backends.s3").getEffectiveLevel() == logging.DEBUG
        assert logging.getLogger("megafs.core.uploader").getEffectiveLevel() == logging.WARNING
        common.setup_logging("all")
        assert logging.getLogger("megafs.core.uploader").getEffectiveLevel() == logging.DEBUG
    finally:
        for name in ("megafs.core.cache", "megafs.backends"):
            logging.getLogger(name).setLevel(logging.NOTSET)
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)


def test_syslog_handler(tmp_path):
    import logging
    import socket

    assert common.syslog_handler("x", str(tmp_path / "missing")) is None
    path = str(tmp_path / "log")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        h = common.syslog_handler("mount.megafs", path)
        assert h is not None
        try:
            rec = logging.LogRecord("megafs.core.cache", logging.ERROR, __file__, 1,
                                    "cannot read %s", ("/a/b",), None)
            h.handle(rec)
            sock.settimeout(5)
            msg = sock.recv(4096).decode()
        finally:
            h.close()
    assert "mount.megafs[" in msg and "megafs.core.cache ERROR: cannot read /a/b" in msg
