"""Man pages, the exit-code table and bash completion, generated from the tools' parsers.

Every tool module has a ``build_parser()`` (argparse: the options and their help, the
same that ``--help`` prints) and a ``MANUAL`` dict with the prose of its page. This
module renders them, so the pages and the completion never drift from the options::

    python -m tools.manpages --all        # from the repository root: everything below
    python -m tools.manpages --write man/
    python -m tools.manpages --exit-codes docs/exit-codes.md
    python -m tools.manpages --completion contrib/megafs-completion.bash

tests/test_manpages.py fails when a committed file differs from what this renders.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
from pathlib import Path

from megafs import __version__
from megafs.cli.common import subparsers
from megafs.errors import ExitCode

#: (name, man section, module with build_parser() and MANUAL)
TOOLS = (
    ("mkfs.megafs", 8, "megafs.cli.mkfs"),
    ("mount.megafs", 8, "megafs.cli.mount"),
    ("umount.megafs", 8, "megafs.cli.umount"),
    ("fsck.megafs", 8, "megafs.cli.fsck"),
    ("megafs", 1, "megafs.cli.tool"),
)

EXIT_CODES_INTRO = """\
Every megafs tool prints failures as one line, `<tool>: <message>`, on standard
error and exits with one of these codes (`megafs/errors.py`, `ExitCode`)."""

#: Environment variables a page may list (MANUAL["environment"] names them).
ENVIRONMENT = {
    "MEGAFS_PASSPHRASE": "The passphrase, when no `--passphrase-file` is given; without"
                         " either it is asked for on the terminal.",
    "MEGAFS_NEW_PASSPHRASE": "The new passphrase of `megafs passphrase` and `megafs recover`,"
                             " when no `--new-passphrase-file` is given.",
    "MEGAFS_RECOVERY_KEY": "The recovery key of `megafs recover`, when no"
                           " `--recovery-key-file` is given.",
    "XDG_CACHE_HOME": "The default cache directories are in $XDG_CACHE_HOME/megafs/"
                      " (~/.cache/megafs/ when it is not set).",
    "MEGAFS_LOCK_TERM": "The term in seconds of the store lock's lease (default 60): the"
                        " holder renews it four times per term.",
    "MEGAFS_RETENTION": "The default of `--retention`: seconds objects the metadata no longer"
                        " names stay in the store (default 300).",
    "MEGAFS_AUTHINFO": "The file with S3 credentials (default ~/.config/megafs/authinfo).",
    "AWS_ACCESS_KEY_ID": "With AWS_SECRET_ACCESS_KEY and an optional AWS_SESSION_TOKEN: S3"
                         " credentials; when they are set the authinfo file is not read.",
}

#: Files a page may list (MANUAL["files"] names them): key -> (path, text).
FILES = {
    "CACHE_DIR": ("~/.cache/megafs/STORE_ID/",
                  "The default cache directory of a filesystem (see `--cache-dir`): its"
                  " metadata database, decrypted blocks and the log. Blocks not yet uploaded"
                  " are only there until they are: never delete it while it holds some"
                  " (after a crash, mount again to upload them)."),
    "LOG": ("~/.cache/megafs/STORE_ID/megafs.log",
            "The log of the mount daemon, in its cache directory; it also logs to the system"
            " log (journalctl -t mount.megafs) when one listens on /dev/log."),
    "FSTAB": ("/etc/fstab", "Lines of type `megafs` are mounted by mount(8) with"
                            " **mount.megafs** as its helper."),
    "AUTHINFO": ("~/.config/megafs/authinfo",
                 "S3 credentials, one line per store: `backend URL key-id ID secret-key SECRET`."
                 " It must not be accessible by group or others (chmod 600)."),
}

STORAGE_URLS = """\
STORAGE_URL says where the encrypted objects are kept:

    local:///absolute/path
    s3://HOST[:PORT]/BUCKET[/PREFIX]
    s3+http://HOST[:PORT]/BUCKET[/PREFIX]

A local directory must exist. `s3://` speaks HTTPS to any S3-compatible object \
store, `s3+http://` plain HTTP; credentials come from the environment or the \
authinfo file (see ENVIRONMENT and FILES)."""

COMMON_OPTIONS = {"-h", "--version", "--debug"}


# -- roff --------------------------------------------------------------------------------

_MARKUP = re.compile(r"\*\*(.+?)\*\*|`(.+?)`")


def _escape(text: str) -> str:
    return text.replace("\\", "\\e").replace("-", "\\-")


def _inline(text: str, metavars=frozenset()) -> str:
    """Plain text with ``**bold**`` and ```code``` (bold) -> roff; metavars in italics."""
    out, pos = [], 0
    for m in _MARKUP.finditer(text):
        out.append(_plain(text[pos:m.start()], metavars))
        out.append(rf"\fB{_escape(m.group(1) or m.group(2))}\fR")
        pos = m.end()
    out.append(_plain(text[pos:], metavars))
    return "".join(out)


def _plain(text: str, metavars) -> str:
    if not metavars:
        return _escape(text)
    pattern = r"(?<![\w$])(" + "|".join(map(re.escape, sorted(metavars, key=len,
                                                               reverse=True))) + r")(?!\w)"
    parts = re.split(pattern, text)
    return "".join(rf"\fI{_escape(p)}\fR" if i % 2 else _escape(p) for i, p in enumerate(parts))


def _line(text: str) -> str:
    """A text line that roff does not mistake for a request."""
    return "\\&" + text if text.startswith((".", "'")) else text


def _prose(text: str, metavars=frozenset()) -> list[str]:
    """Paragraphs separated by blank lines; a paragraph indented by 4 spaces is shown
    verbatim (commands, examples)."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip("\n")):
        lines = para.split("\n")
        if all(line.startswith("    ") for line in lines):
            out += [".PP", ".RS 4", ".nf"]
            out += [_line(_escape(line[4:])) for line in lines]
            out += [".fi", ".RE"]
        else:
            out += [".PP", _line(_inline(" ".join(s.strip() for s in lines), metavars))]
    return out


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else action.metavar[0]
    return action.dest.upper()


def _shown(action: argparse.Action) -> bool:
    return action.help != argparse.SUPPRESS


def _invocation(action: argparse.Action) -> str:
    """``-o OPTIONS``, ``--debug[=MODULES]``, ``-h, --help`` in roff."""
    names = ", ".join(rf"\fB{_escape(s)}\fR" for s in action.option_strings)
    if action.nargs == 0:
        return names
    mv = rf"\fI{_escape(_metavar(action))}\fR"
    return names + (f"[={mv}]" if action.nargs == "?" else f" {mv}")


def _usage_part(action: argparse.Action) -> str:
    if isinstance(action, argparse._SubParsersAction):
        return rf"\fI{_escape(_metavar(action))}\fR" + " ..."
    if not action.option_strings:
        mv = rf"\fI{_escape(_metavar(action))}\fR"
        return {"?": f"[{mv}]", "*": f"[{mv} ...]", "+": f"{mv} ..."}.get(action.nargs, mv)
    part = _invocation(action).split(", ")[-1]  # the long form
    return part if action.required else f"[{part}]"


def _parts(p: argparse.ArgumentParser, common: bool) -> list[str]:
    """Usage words of *p*'s own arguments (not its subcommands), each unbreakable."""
    return [_usage_part(a).replace(" ", "\\ ") for a in p._actions
            if _shown(a) and not isinstance(a, argparse._SubParsersAction)
            and (common or not COMMON_OPTIONS & set(a.option_strings))]


def _leaf_lines(p: argparse.ArgumentParser, head: list[str], common: bool) -> list[str]:
    """One synopsis line per leaf command (``megafs ctrl MOUNTPOINT log-level LEVEL``)."""
    head = head + _parts(p, common)
    subs = subparsers(p)
    if not subs:
        return [" ".join(head)]
    return [line for name, sub, _ in subs
            for line in _leaf_lines(sub, [*head, rf"\fB{_escape(name)}\fR"], False)]


def _synopsis_lines(p: argparse.ArgumentParser, name: str) -> list[str]:
    head = [rf"\fB{_escape(name)}\fR"]
    if not subparsers(p):
        return _leaf_lines(p, head, True)
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    first = " ".join([*head, *_parts(p, True), _usage_part(sub)])
    return [first, *_leaf_lines(p, head, False)]


def _metavars(p: argparse.ArgumentParser) -> set[str]:
    out = {"STORAGE_URL", "MOUNTPOINT", "STORE_ID", "MODULES"}
    for a in p._actions:
        if a.nargs != 0 and _shown(a) and not isinstance(a, argparse._SubParsersAction):
            out.add(_metavar(a))
    for _, sub, _ in subparsers(p):
        out |= _metavars(sub)
    return out


#: Help for arguments that have none in their parser.
FALLBACK_HELP = {
    "STORAGE_URL": "where the filesystem is stored",
    "MOUNTPOINT": "where the filesystem is mounted",
    "PATH": "a file or folder inside a megafs mount",
    "LINK": "a share link, as printed by megafs share",
    "LINK_OR_PATH": "a share link, or the shared file or folder inside a megafs mount",
}


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or FALLBACK_HELP.get(_metavar(action), "")
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    return text


def _options(p: argparse.ArgumentParser, common: bool, metavars) -> list[str]:
    out = []
    for a in p._actions:
        if not _shown(a) or isinstance(a, argparse._SubParsersAction):
            continue
        if not common and COMMON_OPTIONS & set(a.option_strings):
            continue
        tag = _invocation(a) if a.option_strings else rf"\fI{_escape(_metavar(a))}\fR"
        out += [".TP", _line(tag)]
        text = _help(a, p.prog) or _sibling_help.get(tuple(a.option_strings), "")
        if text:
            out.append(_line(_inline(text, metavars)))
    return out


def _commands(p: argparse.ArgumentParser, words: list[str], metavars) -> list[str]:
    out = []
    for name, sub, help_ in subparsers(p):
        here = [*words, name]
        out += [".SS " + _escape(" ".join(here[1:]))]
        for line in _leaf_lines(sub, [rf"\fB{_escape(w)}\fR" for w in here], False):
            out += [_line(line), ".br"]
        out.pop()
        text = sub.description or (help_[:1].upper() + help_[1:] + "." if help_ else "")
        if text:
            out += _prose(text, metavars)
        opts = _options(sub, False, metavars)
        if opts:
            out += [".PP", *opts]
        for action_name, leaf, leaf_help in subparsers(sub):
            tag = " ".join([rf"\fB{_escape(action_name)}\fR", *_parts(leaf, False)])
            out += [".TP", _line(tag), _line(_inline(leaf_help, metavars))]
            leaf_opts = _options(leaf, False, metavars)
            if leaf_opts:
                out += [".RS", *leaf_opts, ".RE"]
    return out


def _uses(p: argparse.ArgumentParser, metavar: str) -> bool:
    return any(_metavar(a) == metavar for a in p._actions if not a.option_strings) or any(
        _uses(sub, metavar) for _, sub, _ in subparsers(p))


_sibling_help: dict[tuple[str, ...], str] = {}


def _collect_help(p: argparse.ArgumentParser) -> None:
    """Remember each option's help, for a subcommand's same option that has none."""
    for a in p._actions:
        if a.option_strings and a.help and _shown(a):
            _sibling_help.setdefault(tuple(a.option_strings), a.help)
    for _, sub, _ in subparsers(p):
        _collect_help(sub)


def render(name: str, section: int, module: str) -> str:
    """The man page of tool *name* in roff."""
    mod = importlib.import_module(module)
    p = mod.build_parser()
    _sibling_help.clear()
    _collect_help(p)
    manual = mod.MANUAL
    mv = _metavars(p)
    title = "System Administration" if section == 8 else "User Commands"
    out = [
        f'.\\" Generated by "python -m tools.manpages" from {module.replace(".", "/")}.py:',
        '.\\" edit that file, not this one.',
        f'.TH {name.upper()} {section} "" "megafs {__version__}" "{title}"',
        ".nh", ".ad l",
        ".SH NAME", f"{_escape(name)} \\- {_escape(manual['summary'])}",
        ".SH SYNOPSIS",
    ]
    for line in _synopsis_lines(p, name):
        out += [_line(line), ".br"]
    out.pop()
    out += [".SH DESCRIPTION", *_prose(manual["description"], mv)]
    if _uses(p, "STORAGE_URL"):
        out += [".SS Storage URLs", *_prose(STORAGE_URLS, mv)]
    out += [".SH OPTIONS", *_options(p, True, mv)]
    if subparsers(p):
        out += [".SH COMMANDS", *_commands(p, [name], mv)]
    out += [".SH EXIT STATUS", *_prose(EXIT_CODES_INTRO.replace("\n", " "))]
    for code in ExitCode:
        out += [".TP", f".B {int(code)}", _line(_inline(code.description))]
    if manual.get("environment"):
        out.append(".SH ENVIRONMENT")
        for var in manual["environment"]:
            out += [".TP", f".B {_escape(var)}", _line(_inline(ENVIRONMENT[var], mv))]
    if manual.get("files"):
        out.append(".SH FILES")
        for key in manual["files"]:
            path, text = FILES[key]
            out += [".TP", rf"\fI{_escape(path)}\fR", _line(_inline(text, mv))]
    if manual.get("examples"):
        out += [".SH EXAMPLES", *_prose(manual["examples"])]
    others = [f"\\fB{_escape(n)}\\fR({s})" for n, s, _ in TOOLS if n != name]
    others += ["\\fBmount\\fR(8)", "\\fBfstab\\fR(5)", "\\fBfusermount3\\fR(1)"]
    out += [".SH SEE ALSO", ",\n".join(others)]
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """File name (``mkfs.megafs.8``) -> roff, for every tool."""
    return {f"{name}.{section}": render(name, section, module) for name, section, module in TOOLS}


# -- docs/exit-codes.md --------------------------------------------------------------------


def exit_codes_markdown() -> str:
    rows = "\n".join(f"| {int(code)} | {code.description} |" for code in ExitCode)
    return (f"# Exit codes\n\n{EXIT_CODES_INTRO}\n\n| code | meaning |\n|---:|---|\n{rows}\n\n"
            "This table is generated from the descriptions on `ExitCode` in `megafs/errors.py`,\n"
            "like the EXIT STATUS section of the man pages: `python -m tools.manpages --all`.\n")


# -- bash completion -------------------------------------------------------------------------

#: Loggers worth naming in --debug=MODULES.
DEBUG_MODULES = ("megafs", "megafs.backends", "megafs.cli", "megafs.core", "megafs.crypto",
                 "megafs.fs", "megafs.mount", "megafs.store")
MOUNT_OPTIONS = ("cache_dir=", "cache_size=", "passphrase_file=", "nonempty", "allow_other",
                 "allow_root", "ro", "rw", "_netdev", "nofail", "noauto")


def _kind(action: argparse.Action, prog: str) -> str:
    """What to complete for the value of *action*."""
    mv = _metavar(action)
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        return "words:" + "|".join(action.choices)
    if mv in ("F", "PATH", "DEST", "LINK_OR_PATH") or action.dest.endswith("_file"):
        return "file"
    if mv == "DIR":
        return "dir"
    if mv == "MOUNTPOINT":
        return "dir" if prog == "mount.megafs" else "mount"
    if mv == "STORAGE_URL":
        return "url"
    if mv == "MODULES":
        return "list:" + "|".join(DEBUG_MODULES)
    if mv == "OPTIONS":
        return "list:" + "|".join(MOUNT_OPTIONS)
    return "none"


def _specs(p: argparse.ArgumentParser, key: str, prog: str, out: dict) -> None:
    opts, pos, subs = [], [], []
    for a in p._actions:
        if not _shown(a):
            continue
        if isinstance(a, argparse._SubParsersAction):
            pos.append("sub")
        elif a.option_strings:
            kind = "" if a.nargs == 0 else ("=" if a.nargs == "?" else "") + _kind(a, prog)
            opts += [f"{s}:{kind}" for s in a.option_strings]
        else:
            pos.append(_kind(a, prog))
    for name, sub, _ in subparsers(p):
        subs.append(name)
        _specs(sub, f"{key}/{name}", prog, out)
    out[key] = (" ".join(opts), " ".join(pos), " ".join(subs))


#: The completion program (hand-written, checked by shellcheck): its functions follow its
#: header comment, the first block of lines starting with '#'.
COMPLETION_PROGRAM = Path(__file__).with_name("completion.bash")


def _completion_code() -> str:
    lines = COMPLETION_PROGRAM.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return "\n".join(lines[start:]).strip("\n")


def completion_script() -> str:
    specs: dict[str, tuple[str, str, str]] = {}
    for name, _, module in TOOLS:
        _specs(importlib.import_module(module).build_parser(), name, name, specs)
    out = ["# bash completion for the megafs tools. Generated by",
           "# \"python -m tools.manpages --completion FILE\" from their argparse parsers.",
           "# Install: cp megafs-completion.bash /etc/bash_completion.d/megafs",
           "# (or source it from ~/.bashrc).", "",
           "# Per command node (tool or tool/subcommand...): options as NAME:KIND (KIND empty",
           "# for a flag, =KIND for an optional --opt=VALUE), positionals' kinds, subcommands."]
    for table, index in (("_megafs_opts", 0), ("_megafs_pos", 1), ("_megafs_subs", 2)):
        out.append(f"declare -gA {table}=(")
        out += [f"    [{key}]='{spec[index]}'" for key, spec in specs.items()]
        out.append(")")
    out += ["", _completion_code()]
    out += ["", f"complete -F _megafs_complete {' '.join(name for name, _, _ in TOOLS)}", ""]
    return "\n".join(out)


# -- command line ------------------------------------------------------------------------------


def write_pages(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for filename, text in pages().items():
        path = os.path.join(directory, filename)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.manpages",
                                description="Regenerate the man pages, the exit-code table"
                                            " and the bash completion from the tools' parsers.")
    p.add_argument("--write", metavar="DIR", help="write the man pages into DIR (man/)")
    p.add_argument("--exit-codes", metavar="FILE", help="write the exit-code table (markdown)")
    p.add_argument("--completion", metavar="FILE", help="write the bash completion script")
    p.add_argument("--all", action="store_true",
                   help="all three at their places in the repository (run from its root)")
    args = p.parse_args(argv)
    if args.all:
        args.write = args.write or "man"
        args.exit_codes = args.exit_codes or os.path.join("docs", "exit-codes.md")
        args.completion = args.completion or os.path.join("contrib", "megafs-completion.bash")
    if not (args.write or args.exit_codes or args.completion):
        p.error("nothing to do: give --all, --write DIR, --exit-codes FILE or --completion FILE")
    written = []
    if args.write:
        written += write_pages(args.write)
    if args.exit_codes:
        written.append(_write(args.exit_codes, exit_codes_markdown()))
    if args.completion:
        written.append(_write(args.completion, completion_script()))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
