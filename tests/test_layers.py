"""The package's layers, read off the source with ast (nothing of cgpt is imported): no import
cycles among cgpt modules, counting imports made inside functions (``if TYPE_CHECKING:``
blocks excepted: they never run); model/ imports neither train/ nor launch/, and train/ does
not import launch/ (model/ -> train/ -> launch/, one way)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the design card's top level (pyproject.toml, package-dir): package -> folder
PACKAGES = {
    "cgpt.model": "model",
    "cgpt.train": "train",
    "cgpt.launch": "launch",
    "cgpt.configs": "configs",
}
# who may not import whom: a module under the key imports none of the values
FORBIDDEN = {"cgpt.model": ("cgpt.train", "cgpt.launch"), "cgpt.train": ("cgpt.launch",)}


def module_files(root: Path, packages: dict[str, str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file (cgpt.train.loop.trainer -> train/loop/trainer.py)."""
    mods = {}
    for pkg, folder in packages.items():
        assert (root / folder).is_dir(), root / folder
        for f in (root / folder).rglob("*.py"):
            parts = [pkg, *f.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = f
    return mods


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    up = parents.get(node)
    while up is not None:
        if isinstance(up, ast.If) and "TYPE_CHECKING" in ast.unparse(up.test):
            return True
        up = parents.get(up)
    return False


def _targets(node: ast.AST, module: str, is_pkg: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the module's own package up
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - node.level + 1]
        base = ".".join(pkg + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names]


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported cgpt module: line of the first such import}, function-level
    imports included. ``from a.b import c`` counts as importing a.b.c when that is a module."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            targets = _targets(node, mod, path.name == "__init__.py")
            if not targets or _type_checking_only(node, parents):
                continue
            assert isinstance(node, ast.Import | ast.ImportFrom)
            for t in targets:
                # `from a import b`: b when it is a module, else a (its package)
                r = resolve(t) if t.startswith("cgpt") else None
                if r and r != mod:
                    edges.setdefault(r, node.lineno)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected group of two or more modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, g) for g in groups]


def _one_cycle(graph: dict[str, dict[str, int]], group: set[str]) -> list[str]:
    start = min(group)
    paths = {start: [start]}
    todo = [start]
    while todo:  # breadth first inside the group, back to start
        v = todo.pop(0)
        for w in sorted(graph[v]):
            if w == start:
                return paths[v] + [start]
            if w in group and w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected group has one


def describe(cycle: list[str], graph: dict[str, dict[str, int]], mods: dict) -> str:
    steps = [
        f"{a} ({mods[a].relative_to(ROOT) if mods[a].is_relative_to(ROOT) else mods[a]}:"
        f"{graph[a][b]}) -> {b}"
        for a, b in zip(cycle, cycle[1:])
    ]
    return "import cycle: " + "; ".join(steps)


def layer_violations(graph: dict[str, dict[str, int]], mods: dict) -> list[str]:
    out = []
    for mod, edges in sorted(graph.items()):
        for low_layer, banned in FORBIDDEN.items():
            if mod == low_layer or mod.startswith(low_layer + "."):
                for target, line in sorted(edges.items()):
                    if any(target == b or target.startswith(b + ".") for b in banned):
                        out.append(f"{mods[mod]}:{line}: {mod} imports {target}")
    return out


def test_no_import_cycles():
    mods = module_files(ROOT)
    assert len(mods) > 50  # the whole package was found
    graph = import_graph(mods)
    found = [describe(c, graph, mods) for c in cycles(graph)]
    assert not found, "\n".join(found)


def test_layers_import_one_way():
    mods = module_files(ROOT)
    bad = layer_violations(import_graph(mods), mods)
    assert not bad, "\n".join(bad)


def test_the_checks_see_function_level_imports(tmp_path):
    """The checks themselves: a cycle closed by an import inside a function is found and
    named, one behind TYPE_CHECKING is not, and model/ importing train/ is a violation."""
    (tmp_path / "model").mkdir()
    (tmp_path / "train").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "a.py").write_text("from cgpt.model import b\n")
    (tmp_path / "model" / "b.py").write_text("def f():\n    from cgpt.model.a import x\n")
    (tmp_path / "train" / "__init__.py").write_text("")
    (tmp_path / "train" / "c.py").write_text("from . import d\n")
    (tmp_path / "train" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cgpt.train.c import y\n"
    )
    (tmp_path / "model" / "e.py").write_text("def g():\n    import cgpt.train.c\n")
    mods = module_files(tmp_path, {"cgpt.model": "model", "cgpt.train": "train"})
    graph = import_graph(mods)
    assert graph["cgpt.train.c"] == {"cgpt.train.d": 1} and graph["cgpt.train.d"] == {}
    found = [describe(c, graph, mods) for c in cycles(graph)]
    assert len(found) == 1 and "cgpt.model.a" in found[0] and "cgpt.model.b" in found[0]
    assert "b.py:2) -> cgpt.model.a" in found[0]  # the function-level import, with its line
    bad = layer_violations(graph, mods)
    assert len(bad) == 1 and "cgpt.model.e imports cgpt.train.c" in bad[0]


# comments that are tool pragmas, not reasons
_PRAGMA = ("# noqa", "# type:", "# pragma", "# fmt:", "# pyright:")


def unexplained_function_imports(mods: dict[str, Path]) -> list[str]:
    """``file:line: import`` of each import of a cgpt module made inside a function (``if
    TYPE_CHECKING:`` excepted) with no comment saying why: none at the end of its lines, none
    directly above it or above the run of consecutive import statements it belongs to (blank
    lines between allowed: isort separates its sections so). Issue 25 rule 1: such an import
    only defers a heavy dependency, with a one-line reason."""
    out = []
    for mod, path in sorted(mods.items()):
        bad: dict[int, str] = {}  # line -> import (a nested def's body is walked twice)
        src = path.read_text()
        tree = ast.parse(src, str(path))
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        lines = ["", *src.splitlines()]  # 1-based
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for body in _statement_lists(fn):
                for k, node in enumerate(body):
                    targets = _targets(node, mod, path.name == "__init__.py")
                    if not any(t.startswith("cgpt.") for t in targets):
                        continue
                    if _type_checking_only(node, parents):
                        continue
                    run = [node]  # it and the imports right before it
                    while k - len(run) >= 0 and isinstance(
                        body[k - len(run)], ast.Import | ast.ImportFrom
                    ):
                        run.append(body[k - len(run)])
                    # an import statement holds no string: a # on its lines starts a comment
                    own = range(node.lineno, (node.end_lineno or node.lineno) + 1)
                    said = [lines[i] for i in own if "#" in lines[i]] + [
                        lines[r.lineno - 1]
                        for r in run
                        if lines[r.lineno - 1].lstrip().startswith("#")
                    ]
                    if not any(not any(p in c for p in _PRAGMA) for c in said):
                        bad[node.lineno] = ast.unparse(node)
        rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        out += [f"{rel}:{line}: {text}" for line, text in sorted(bad.items())]
    return out


def _statement_lists(fn: ast.AST) -> list[list[ast.stmt]]:
    """Every list of statements under `fn` (its body, if/try/with/for blocks, nested defs)."""
    found = []
    for node in ast.walk(fn):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                found.append(block)
        found += [h.body for h in getattr(node, "handlers", [])]
    return found


def test_function_level_imports_say_why():
    bad = unexplained_function_imports(module_files(ROOT))
    assert not bad, "function-level cgpt imports with no reason comment:\n" + "\n".join(bad)


def test_the_reason_check_sees_missing_comments(tmp_path):
    """The check itself: an end-of-line comment, a comment above a run of imports (blank
    lines inside it) and one above a lone import count; a bare import, a pragma-only one or
    a comment with code between does not; module level and TYPE_CHECKING imports are not
    asked."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "__init__.py").write_text("")
    (tmp_path / "model" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from cgpt.model import b\n"  # 2: module level
        "def f():\n"
        "    from cgpt.model import c  # deferred: torch\n"
        "    # deferred: torch\n"
        "    import os\n"
        "\n"
        "    from cgpt.model import d\n"  # 8: in the commented run
        "    x = 1\n"
        "    from cgpt.model import e\n"  # 10: bare
        "    if x:\n"
        "        from cgpt.model import g  # noqa: F401\n"  # 12: pragma only
        "    # a comment\n"
        "    y = 2\n"
        "    from cgpt.model import h\n"  # 15: code between it and the comment
        "    if TYPE_CHECKING:\n"
        "        from cgpt.model import i\n"
        "    def inner():\n"
        "        # deferred: scipy\n"
        "        from cgpt.model import (\n"
        "            j,\n"
        "        )\n"
        "        from cgpt.model import k\n"  # 23: in a run under a comment
        "        return j, k\n"
        "    return c, d, e, g, h, i, inner, os, x, y\n"
    )
    found = unexplained_function_imports(module_files(tmp_path, {"cgpt.model": "model"}))
    assert [s.split(": ", 1)[0].rsplit(":", 1)[1] for s in found] == ["10", "12", "15"], found
    assert found[0].endswith("model/a.py:10: from cgpt.model import e")
