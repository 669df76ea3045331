"""The package layout: imports point one way (core <- interp, judges <- pipeline <- findings), no cycles, small modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "emlib"
# the layer of each package; a module may import from lower layers and from its own package only
LAYERS = {"core": 0, "interp": 1, "judges": 1, "report": 1, "pipeline": 2, "findings": 3, "": 4}
ALLOWED = {  # packages each package may import from besides its own (report reads records: core only)
    "core": set(),
    "interp": {"core"},
    "judges": {"core"},
    "report": {"core"},
    "pipeline": {"core", "interp", "judges"},
    "findings": {"core", "interp", "judges", "pipeline", "report"},
    "": {"core", "interp", "judges", "pipeline", "findings", "report"},
}
MAX_LINES = 400


def module_name(path: Path) -> str:
    """'emlib.pkg.mod' for emlib/pkg/mod.py ('emlib.pkg' for its __init__)."""
    parts = ("emlib", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every emlib module imported anywhere in the file (module level, functions, TYPE_CHECKING blocks)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("emlib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("emlib"):
                continue
            for alias in node.names:  # `from .pkg import mod` names a module
                sub = f"{target}.{alias.name}"
                found.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() else target)
    return found - {name}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) else ""


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in ROOT.rglob("*.py")}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            nxt = nxt if nxt in edges else nxt.rsplit(".", 1)[0]
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt in edges and state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state.get(node) is None and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_of_resolves_relative_imports(tmp_path):
    edges = graph()
    assert "emlib.core.cache" in edges["emlib.pipeline.train"]
    assert "emlib.pipeline.sample" in edges["emlib.pipeline.evaluate"]


def test_no_import_cycles():
    assert find_cycle(graph()) is None


def test_imports_point_one_way():
    bad = []
    for mod, targets in graph().items():
        pkg = package_of(mod)
        for t in targets:
            tpkg = package_of(t)
            if tpkg != pkg and tpkg not in ALLOWED[pkg]:
                bad.append(f"{mod} -> {t}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (at most {MAX_LINES})"


def test_every_package_has_a_layer():
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {""}
