"""The package's layers, read off the source with ast (nothing of cgpt is imported): no import
cycles among cgpt modules, counting imports made inside functions (``if TYPE_CHECKING:``
blocks excepted: they never run); model/ imports neither train/ nor launch/, and train/ does
not import launch/ (model/ -> train/ -> launch/, one way); each folder imports only what its
row of README's Layout table allows; a function-level import says why."""

from __future__ import annotations

import ast
import re
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


README = ROOT / "README.md"


def layout_table(text: str) -> list[tuple[list[str], list[tuple[str, str | None]]]]:
    """README's Layout table: per row, its folders/modules and what they may import, as
    (path, only_from) pairs (``only_from``: the one file of the row allowed that import)."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        units = re.findall(r"`([^`]+)`", cells[0])
        allowed = [
            (m.group(1), m.group(2))
            for m in re.finditer(r"`([\w./]+/|[\w./]+\.py)`(?:\s*\(([\w.]+) only)?", cells[2])
        ]
        rows.append((units, allowed))
    return rows


def _covers(unit: str, path: str) -> bool:
    return path.startswith(unit) if unit.endswith("/") else path == unit


def table_violations(graph, mods, rows, root: Path = ROOT) -> list[str]:
    """Imports the Layout table does not allow, and modules no row names."""
    rel = {m: f.relative_to(root).as_posix() for m, f in mods.items()}
    out = []

    def row_of(path: str):
        hits = [(len(u), u, r) for r in rows for u in r[0] if _covers(u, path)]
        return max(hits, default=(0, None, None))[1:]

    for mod, edges in sorted(graph.items()):
        unit, row = row_of(rel[mod])
        if row is None:
            out.append(f"{rel[mod]}: no row of README's Layout table names it")
            continue
        for target, line in sorted(edges.items()):
            path = rel[target]
            if row_of(path)[0] == unit:
                continue  # inside its own folder (or itself)
            ok = any(
                _covers(a, path) and (only is None or rel[mod].endswith("/" + only))
                for a, only in row[1]
            )
            if not ok:
                out.append(f"{rel[mod]}:{line}: imports {path}, which its row does not allow")
    return out


def test_imports_follow_the_readme_layout_table():
    """The Layout table is the one statement of who may import whom: every import (inside
    functions too) is one its row allows, and every module has a row."""
    rows = layout_table(README.read_text())
    assert len(rows) >= 15  # the table was found
    mods = module_files(ROOT)
    bad = table_violations(import_graph(mods), mods, rows)
    assert not bad, "\n".join(bad)


def test_the_table_check_catches_an_upward_import(tmp_path):
    """The check itself: an import the table does not list, an exception used from another
    file than the one it names, and a module without a row are each reported."""
    for d in ("model", "train/plan", "train/source", "train/data"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "model" / "a.py").write_text("")
    (tmp_path / "train" / "data" / "d.py").write_text("from cgpt.train.plan import p\n")
    (tmp_path / "train" / "plan" / "p.py").write_text("def f():\n    from cgpt.model import a\n")
    (tmp_path / "train" / "plan" / "request.py").write_text("from cgpt.train.source import s\n")
    (tmp_path / "train" / "plan" / "other.py").write_text("from cgpt.train.source import s\n")
    (tmp_path / "train" / "source" / "s.py").write_text("")
    (tmp_path / "train" / "x.py").write_text("")
    text = (
        "intro\n## Layout\n\n| Folder | What | May import |\n|---|---|---|\n"
        "| `model/` | m | nothing |\n| `train/data/` | d | `model/` |\n"
        "| `train/plan/` | p | `model/`, `train/source/` (request.py only) |\n"
        "| `train/source/` | s | `model/` |\n\n## Next\n"
    )
    mods = module_files(tmp_path, {"cgpt.model": "model", "cgpt.train": "train"})
    bad = table_violations(import_graph(mods), mods, layout_table(text), tmp_path)
    assert bad == [
        "train/data/d.py:1: imports train/plan/p.py, which its row does not allow",
        "train/plan/other.py:1: imports train/source/s.py, which its row does not allow",
        "train/x.py: no row of README's Layout table names it",
    ], bad


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
