"""The Cerebras-GPT paper's downstream suite and its zero-shot table (the only copy in code).

The numbers are docs/REFERENCE.md, "Zero-shot accuracy"; a test checks that
:data:`PAPER_ZERO_SHOT` equals that table. They are read as ``acc`` for every task
(:data:`PAPER_METRIC`), so ``cgpt eval`` reports ``acc`` and ``acc_norm`` and compares the
paper with ``acc``. Why ``acc``, task by task: docs/DESIGN-NOTES.md, eval/paper.
"""

from __future__ import annotations

from dataclasses import dataclass

from cgpt.model.errors import CgptError
from cgpt.model.sizes import GPT2_VOCAB, PUBLISHED, canonical_name

SUITE = "cerebras-gpt"
# the paper's seven tasks, as lm-evaluation-harness names them, in the table's column order
SUITE_TASKS: tuple[str, ...] = (
    "hellaswag",
    "piqa",
    "winogrande",
    "lambada_openai",
    "arc_easy",
    "arc_challenge",
    "openbookqa",
)
SUITES: dict[str, tuple[str, ...]] = {SUITE: SUITE_TASKS}
DISPLAY = {
    "hellaswag": "HellaSwag",
    "piqa": "PIQA",
    "winogrande": "WinoGrande",
    "lambada_openai": "LAMBADA",
    "arc_easy": "ARC-e",
    "arc_challenge": "ARC-c",
    "openbookqa": "OpenBookQA",
}
# the metric the paper's table reports (see the module docstring for why)
PAPER_METRIC = {t: "acc" for t in SUITE_TASKS}
# the other metric lm-eval computes for the task (reported next to the paper's)
OTHER_METRIC = {
    "hellaswag": "acc_norm",
    "piqa": "acc_norm",
    "arc_easy": "acc_norm",
    "arc_challenge": "acc_norm",
    "openbookqa": "acc_norm",
    "lambada_openai": "perplexity",
}

# docs/REFERENCE.md, Zero-shot accuracy: HellaSwag, PIQA, WinoGrande, LAMBADA, ARC-e, ARC-c,
# OpenBookQA, avg (0-shot, acc)
_ROWS = {
    "111M": (0.268, 0.594, 0.488, 0.194, 0.380, 0.166, 0.118, 0.315),
    "256M": (0.274, 0.613, 0.511, 0.293, 0.410, 0.170, 0.158, 0.347),
    "590M": (0.291, 0.627, 0.498, 0.366, 0.464, 0.190, 0.158, 0.370),
    "1.3B": (0.325, 0.664, 0.521, 0.462, 0.508, 0.224, 0.166, 0.410),
    "2.7B": (0.386, 0.701, 0.559, 0.567, 0.571, 0.246, 0.206, 0.462),
    "6.7B": (0.447, 0.739, 0.602, 0.636, 0.643, 0.282, 0.238, 0.512),
    "13B": (0.513, 0.766, 0.646, 0.696, 0.714, 0.367, 0.286, 0.570),
}
PAPER_ZERO_SHOT: dict[str, dict[str, float]] = {
    size: {**dict(zip(SUITE_TASKS, row[:7])), "avg": row[7]} for size, row in _ROWS.items()
}
PAPER_SOURCE = "docs/REFERENCE.md, Zero-shot accuracy"


def expand_tasks(names: list[str]) -> list[str]:
    """Task names with suite names (``cerebras-gpt``) replaced by their tasks, in order,
    each once."""
    out: list[str] = []
    for n in names:
        for t in SUITES.get(n, (n,)):
            if t not in out:
                out.append(t)
    return out


def match_published(shape: dict | None) -> tuple[str | None, str | None]:
    """(published size, None) when ``shape`` (n_layer, n_embd, n_head, vocab_size) is one of
    the paper's models, else (None, a note naming a near miss, or None)."""
    if not shape:
        return None, None
    for name, p in PUBLISHED.items():
        if (shape.get("n_layer"), shape.get("n_embd"), shape.get("n_head")) == (
            p.n_layer,
            p.n_embd,
            p.n_head,
        ):
            if shape.get("vocab_size") == GPT2_VOCAB:
                return name, None
            return None, (
                f"the shape is Cerebras-GPT {name}'s except the vocab "
                f"({shape.get('vocab_size')} vs {GPT2_VOCAB}); pass --compare-paper "
                f"{name} to compare anyway"
            )
    return None, None


def paper_size(name: str) -> str:
    """The canonical published size for ``--compare-paper`` (CgptError listing valid ones)."""
    return canonical_name(name)


@dataclass
class PaperRow:
    task: str
    label: str
    ours: float | None
    paper: float

    @property
    def diff(self) -> float | None:
        return None if self.ours is None else self.ours - self.paper


def compare(scores: dict[str, dict[str, float]], size: str) -> list[PaperRow]:
    """Our paper-metric scores next to the paper's 0-shot row of ``size``: one row per suite
    task we have, plus "avg" when we have all seven.

    ``scores``: {task: {metric: value}} as :func:`cgpt.train.eval.harness.summarize` gives.
    """
    if size not in PAPER_ZERO_SHOT:
        raise CgptError(f"no paper row for {size!r}; valid sizes: {', '.join(PAPER_ZERO_SHOT)}")
    paper = PAPER_ZERO_SHOT[size]
    rows = [
        PaperRow(t, DISPLAY[t], scores[t].get(PAPER_METRIC[t]), paper[t])
        for t in SUITE_TASKS
        if t in scores
    ]
    avg = suite_average(scores)
    if avg is not None:
        rows.append(PaperRow("avg", "average", avg, paper["avg"]))
    return rows


def suite_average(scores: dict[str, dict[str, float]], metric: str | None = None) -> float | None:
    """Mean over the seven suite tasks of the paper's metric (``metric="acc_norm"``: that,
    where the task has it, else the paper's); None unless all seven are present."""
    vals = []
    for t in SUITE_TASKS:
        m = scores.get(t) or {}
        v = m.get(metric) if metric and metric in m else m.get(PAPER_METRIC[t])
        if not isinstance(v, (int, float)):
            return None
        vals.append(float(v))
    return sum(vals) / len(vals)


__all__ = [
    "DISPLAY",
    "OTHER_METRIC",
    "PAPER_METRIC",
    "PAPER_SOURCE",
    "PAPER_ZERO_SHOT",
    "PaperRow",
    "SUITE",
    "SUITES",
    "SUITE_TASKS",
    "compare",
    "expand_tasks",
    "match_published",
    "paper_size",
    "suite_average",
]
