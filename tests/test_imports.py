"""The shape of the house: no import cycles in aigc/ and flows/, only aigc/cli imports flows, short documented modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of aigc/ and flows/."""
    found = {}
    for package in ("aigc", "flows"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The aigc/flows modules ``name`` imports anywhere in its file, function-level imports included.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``. A package's
    own ``__init__`` is not counted as imported by its submodules (Python runs it first, but it is not
    a dependency of theirs).
    """
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in MODULES and t != name)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle of GRAPH (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_function_level_imports():
    # aigc.cli.write imports flows.article inside its command function only
    assert "flows.article" in GRAPH["aigc.cli.write"]
    assert "aigc.cli.common" in GRAPH["aigc.cli.write"]


def test_no_import_cycles():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_flows():
    offenders = {name: sorted(t for t in targets if t.split(".")[0] == "flows")
                 for name, targets in GRAPH.items()
                 if name.startswith("aigc") and not (name == "aigc.cli" or name.startswith("aigc.cli."))}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_is_and_stays_short(name):
    path = MODULES[name]
    text = path.read_text("utf-8")
    assert ast.get_docstring(ast.parse(text)), f"{path.relative_to(REPO)}: no module docstring"
    lines = len(text.splitlines())
    assert lines < MAX_LINES, f"{path.relative_to(REPO)}: {lines} lines; split it by concern (under {MAX_LINES})"
