"""The package's layers, enforced: imports point down only, and no module imports
another module's private (``_name``) names.

    cli -> mount -> fs -> core -> store -> crypto, backends -> errors, osutil, threads

A module may import from its own layer and from any layer below. Imports inside
functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "megafs"

#: Layer of each top-level part of the package; higher layers may import lower ones.
LAYERS = {
    "__init__": 0, "errors": 0, "osutil": 0, "threads": 0, "web": 0,
    "crypto": 1, "backends": 1,
    "store": 2,
    "core": 3,
    "fs": 4,
    "mount": 5,
    "cli": 6, "__main__": 6,
}


def _part(module: str) -> str:
    """The top-level part ('core', 'mount', ...) of a dotted megafs module name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        found.append((name.removesuffix(".__init__"), path))
    return found


def _imports(path: Path, module: str):
    """(imported module, imported names, line) for every megafs import in *path*."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "megafs":
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([target] if target else []))
            if target.split(".")[0] == "megafs":
                yield target, [a.name for a in node.names], node.lineno


MODULES = _modules()


def test_every_part_has_a_layer():
    assert {_part(name) for name, _ in MODULES} <= set(LAYERS)


@pytest.mark.parametrize("module,path", MODULES, ids=[name for name, _ in MODULES])
def test_imports_point_down_and_stay_public(module, path):
    own = LAYERS[_part(module)]
    problems = []
    for target, names, line in _imports(path, module):
        if LAYERS[_part(target)] > own:
            problems.append(f"line {line}: {module} ({_part(module)}) imports {target}"
                            f" ({_part(target)}), a higher layer")
        if target != module:
            problems += [f"line {line}: {module} imports the private name {target}.{n}"
                         for n in names if n.startswith("_") and not n.startswith("__")]
    assert not problems, "\n".join(problems)


def test_the_checker_sees_an_upward_edge(tmp_path):
    """The checker itself: a store module importing the core is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from megafs.core import schema\nfrom megafs.cli.umount import _flush\n")
    found = list(_imports(bad, "megafs.store.bad"))
    assert [(LAYERS[_part(t)] > LAYERS["store"]) for t, _, _ in found] == [True, True]
    assert found[1][1] == ["_flush"]
