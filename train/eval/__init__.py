"""cgpt.train.eval: evaluate any cgpt model the way the Cerebras-GPT paper did.

- :mod:`.harness`: lm-evaluation-harness through its Python API on the model's verified
  Hugging Face export (scores equal ``lm_eval --model hf`` on that folder), and
  :func:`run_tasks`, the trainer's hook;
- :mod:`.paper`: the paper's 7-task suite ``cerebras-gpt`` and its zero-shot table;
- :mod:`.heldout`: held-out cross-entropy in nats/token and bits/byte (comparable across
  tokenizers);
- :mod:`.source`, :mod:`.runner`: what ``cgpt eval SRC`` resolves (through
  :mod:`cgpt.train.source`, which also asks the Hub only when it answers), and the command's
  order of work.

Importing this package imports neither lm_eval nor transformers nor torch.
"""

from cgpt.train.eval.paper import PAPER_ZERO_SHOT, SUITE, SUITE_TASKS


def heldout_loss(*args, **kwargs):
    """:func:`cgpt.train.eval.heldout.heldout_loss` (imported on first use)."""
    # deferred: torch is heavy; quick verbs (`cgpt eval --help`) must not load it
    from cgpt.train.eval.heldout import heldout_loss as _heldout_loss

    return _heldout_loss(*args, **kwargs)


def run_tasks(*args, **kwargs):
    """:func:`cgpt.train.eval.harness.run_tasks` (imported on first use)."""
    # deferred: torch and lm-eval; quick verbs (`cgpt eval --help`) must not load them
    from cgpt.train.eval.harness import run_tasks as _run_tasks

    return _run_tasks(*args, **kwargs)


__all__ = ["PAPER_ZERO_SHOT", "SUITE", "SUITE_TASKS", "heldout_loss", "run_tasks"]
