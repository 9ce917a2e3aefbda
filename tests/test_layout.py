"""The package's import graph: no cycle between modules, no arrow from the product back into the demo, and
the recipe reaches other floors only through typed seams (no ``Any`` rollout / trainer / scorer)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mstar_fast"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> package modules it imports (anywhere in the file); a package's ``__init__`` re-exports and
    imports of one's own ancestor packages are not arrows."""
    def resolve(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
                targets = [f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in mods else n.module for a in n.names]
            else:
                continue
            for t in targets:
                r = resolve(t) if t.startswith("mstar_fast") else ""
                if r and r != m and not m.startswith(r + ".") and mods[r].name != "__init__.py":
                    edges[m].add(r)
    return edges


def test_no_import_cycle():
    edges = _edges(_modules())
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            assert state.get(n) != 1, "import cycle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_the_product_does_not_import_the_demo():
    edges = _edges(_modules())
    back = {m: sorted(t for t in ts if t.startswith("mstar_fast.demo")) for m, ts in edges.items()
            if not m.startswith("mstar_fast.demo") and m != "mstar_fast.cli"}
    assert not {m: ts for m, ts in back.items() if ts}


def test_recipe_seams_are_typed():
    seams = ("rollout", "trainer", "scorer", "engine", "model", "processor")
    untyped = []
    for p in (PKG / "recipe").rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for a in n.args.args + n.args.kwonlyargs:
                    if a.arg in seams and (a.annotation is None or "Any" in ast.unparse(a.annotation)):
                        untyped.append(f"{p.name}:{n.name}({a.arg})")
    assert not untyped
