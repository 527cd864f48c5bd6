"""Code rules read off the source with ast (nothing is imported), for the whole package: no
module imports another module's ``_private`` name, functions stay under ~80 lines, module
docstrings say what and why briefly (design detail lives in docs/); and the scaling code's
fits (cgpt.train.fits) never import the sweep orchestration (cgpt.train.sweeps)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FITS, SWEEPS = ROOT / "train" / "fits", ROOT / "train" / "sweeps"
MAX_FUNCTION_LINES = 80
MAX_DOCSTRING_LINES = 8  # fits/ and sweeps/ (docs/SCALING.md holds their detail)
MAX_DOCSTRING_LINES_ANYWHERE = 15  # the rest (docs/DESIGN-NOTES.md holds the detail)


def _files() -> list[Path]:
    files = sorted(FITS.glob("*.py")) + sorted(SWEEPS.glob("*.py"))
    assert len(files) > 15, "train/fits and train/sweeps hold the scaling code"
    return files


def _all_files() -> list[Path]:
    files = sorted(f for d in ("model", "train", "launch") for f in (ROOT / d).rglob("*.py"))
    assert len(files) > 100, "model/, train/ and launch/ hold the package"
    return files


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):  # every level: function-level imports count
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{a.name}") for a in node.names
            ]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def test_fits_never_import_sweeps():
    bad = [
        f"{f.relative_to(ROOT)}:{line} imports {mod}"
        for f in sorted(FITS.glob("*.py"))
        for line, mod in _imported_modules(ast.parse(f.read_text()))
        if mod == "cgpt.train.sweeps" or mod.startswith("cgpt.train.sweeps.")
    ]
    assert not bad, "\n".join(bad)


def test_no_private_names_imported_across_modules():
    bad = []
    for f in _all_files():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cgpt"):
                bad += [
                    f"{f.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert not bad, "\n".join(bad)


def test_functions_are_short():
    long = [
        f"{f.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for f in _all_files()
        for n in ast.walk(ast.parse(f.read_text()))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and n.end_lineno is not None
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "\n".join(long)


def test_module_docstrings_say_what_and_why_briefly():
    wordy = []
    for f in _all_files():
        doc = ast.get_docstring(ast.parse(f.read_text()), clean=False) or ""
        limit = MAX_DOCSTRING_LINES if f.parent in (FITS, SWEEPS) else MAX_DOCSTRING_LINES_ANYWHERE
        if len(doc.splitlines()) > limit:
            wordy.append(f"{f.relative_to(ROOT)}: {len(doc.splitlines())} lines")
    assert not wordy, "\n".join(wordy)
    assert (ROOT / "docs" / "SCALING.md").is_file() and (
        ROOT / "docs" / "DESIGN-NOTES.md"
    ).is_file()
