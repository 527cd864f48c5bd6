"""A larger offline corpus of one kind for issue 27 (docs/PREDICTION.md section 12): the
hand-written Python of seven installed scientific packages, one JSON-lines record per file.
    .venv/bin/python scripts/python_corpus.py runs/data/scipy-stack.jsonl
Rules (the same as the stdlib source's): ``*.py`` files only, test folders out; also out:
files over 200 kB (generated tables) and exact duplicates. Files are in sorted path order,
so ``cgpt prepare``'s val split (every k-th document) spreads over all seven packages. Next
to the corpus, ``NAME.manifest.json`` records the package versions, file count, bytes and
the corpus's sha256: the same versions give the same bytes."""

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path

PACKAGES = ("matplotlib", "networkx", "numpy", "pandas", "scipy", "sklearn", "sympy")
DISTRIBUTIONS = {"sklearn": "scikit-learn"}  # import name -> distribution name
SKIP_DIRS = {"test", "tests", "testing", "idle_test", "__pycache__"}
MAX_BYTES = 200_000


def package_files(name: str) -> tuple[Path, list[Path]]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"python_corpus: package {name!r} is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        out += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    return root, sorted(out)


def main(out: Path) -> None:
    seen: set[str] = set()
    digest, files, nbytes = hashlib.sha256(), 0, 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for name in PACKAGES:
            root, paths = package_files(name)
            for path in paths:
                data = path.read_bytes()
                key = hashlib.sha256(data).hexdigest()
                if len(data) > MAX_BYTES or key in seen or not data.strip():
                    continue
                seen.add(key)
                rel = f"{name}/{path.relative_to(root).as_posix()}"
                line = json.dumps({"text": data.decode("utf-8", "replace"), "path": rel}) + "\n"
                f.write(line)
                digest.update(line.encode())
                files, nbytes = files + 1, nbytes + len(data)
    manifest = {
        "packages": {n: importlib.metadata.version(DISTRIBUTIONS.get(n, n)) for n in PACKAGES},
        "files": files,
        "bytes": nbytes,
        "sha256": digest.hexdigest(),
    }
    out.with_suffix(".manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/data/scipy-stack.jsonl"))
