"""The layering the README's architecture section promises, checked on the source.

Read with ast, not by importing: a lazy import inside a function counts as much as one
at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "sandbox"

# What sandbox/cgroups may use from the rest of the package: plain data below it.
CGROUPS_MAY_IMPORT = {"sandbox.limits"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Every sandbox module `path` imports, resolved to absolute dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    here = (module or _module_name(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sandbox"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("sandbox"):
                continue
            if node.module is None:
                found.update(f"{target}.{a.name}" for a in node.names)
            else:
                found.add(target)
    return found


def test_cgroups_imports_nothing_above_itself() -> None:
    bad = []
    for path in sorted((PKG / "cgroups").rglob("*.py")):
        for name in sorted(_imports(path)):
            if name.startswith("sandbox.cgroups") or name in CGROUPS_MAY_IMPORT:
                continue
            bad.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    # The check above must be able to fail: lazy relative imports upward are found.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\n\ndef f():\n    from .. import runner\n"
        "    from ..switchboard import client\n    from .base import X\n"
    )
    names = _imports(probe, "sandbox.cgroups.probe")
    assert names == {"sandbox.runner", "sandbox.switchboard", "sandbox.cgroups.base"}


# The calls that tell a process who it is. Only the privilege strategy may make them:
# every other module gets the answer from the Privilege it is handed.
IDENTITY_CALLS = {"getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid"}


def _identity_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in IDENTITY_CALLS:
            found.append(f"{path.name}:{node.lineno} {node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found.extend(f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name in IDENTITY_CALLS)
    return found


def test_exactly_one_module_asks_who_we_are() -> None:
    askers = {}
    for path in sorted(PKG.rglob("*.py")):
        calls = _identity_calls(path)
        if calls:
            askers[_module_name(path)] = calls
    assert list(askers) == ["sandbox.privilege"], askers


def test_the_identity_reader_finds_both_spellings(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom os import getegid\n\nroot = os.geteuid() == 0\n")
    assert sorted(_identity_calls(probe)) == ["probe.py:2 getegid", "probe.py:4 geteuid"]


MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def test_no_function_over_60_lines_and_no_module_over_400_in_sandbox() -> None:
    too_long = []
    for path in sorted(PKG.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PKG.parent)}: {lines} lines")
        for node in ast.walk(ast.parse(text, str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)
