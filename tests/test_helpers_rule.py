"""Issue 25 rule 6: shared test fixtures live in tests/conftest.py / tests/helpers.py, and no
test module imports from another test module (at module level, inside a function, or in the
source of a child-process script it runs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# a script kept in a string and run by a child process (``python -c``): its import lines
SCRIPT_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(test_\w+)[ \t]+import|import[ \t]+(test_\w+))", re.M
)


def _is_test_module(name: str | None) -> bool:
    return name is not None and name.split(".")[0].startswith("test_")


def imports_of_test_modules(path: Path) -> list[str]:
    """``FILE:LINE: module`` for every import of a test_* module in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str | None] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args:  # importlib.import_module("test_x")
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if called in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                names = [arg.value if isinstance(arg.value, str) else None]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [a or b for a, b in SCRIPT_IMPORT.findall(node.value)]
        line = getattr(node, "lineno", 0)
        found += [f"{path.name}:{line}: {n}" for n in names if _is_test_module(n)]
    return found


def test_no_test_module_imports_another():
    bad = [hit for f in sorted(TESTS.glob("*.py")) for hit in imports_of_test_modules(f)]
    assert not bad, (
        "test modules import from other test modules; move the shared helper to "
        "tests/helpers.py (or a fixture to tests/conftest.py):\n" + "\n".join(bad)
    )


def test_scanner_finds_every_kind_of_import(tmp_path):
    """The rule above can fail: each way of importing a test module is caught."""
    src = tmp_path / "test_x.py"
    # spelled "T_" here so that this file's own strings do not break the rule
    sample = (
        "import T_a\n"
        "from T_b import f\n"
        "import importlib\n"
        "def g():\n"
        "    from T_c import h\n"
        "    importlib.import_module('T_d')\n"
        "PROBE = '''\nimport sys\nfrom T_e import k\n'''\n"
        "from helpers import make_cfg\n"
        "import testing_tools\n"
    )
    src.write_text(sample.replace("T_", "test_"))
    hits = [h.split(": ")[-1] for h in imports_of_test_modules(src)]
    assert sorted(hits) == ["test_a", "test_b", "test_c", "test_d", "test_e"]
