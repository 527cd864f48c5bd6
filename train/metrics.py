"""Training metrics: console (progress bar + log lines), metrics.jsonl, wandb, loss.png.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per line: every optimizer step
(``step`` = steps done, ``loss``, ``lr``, ``grad_norm``, ``tokens``, ``tokens_per_s``, ``mfu``)
and every evaluation (``step``, ``tokens``, ``val_loss``). wandb mirrors the same dicts;
``auto`` means offline unless WANDB_API_KEY is set, so nothing ever needs the network.
MFU uses the 6N + 12·L·T·d convention (docs/REFERENCE.md, FLOP conventions) against the
device table's bf16 peak (docs/REFERENCE.md, Throughput references); it is None on CPU.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Literal, TextIO

from cgpt.model.files import open_append
from cgpt.train.config import write_text_atomic
from cgpt.train.figures import pyplot, save_figure
from cgpt.train.terminal import surviving_a_hangup
from cgpt.train.write_errors import writing

WandbSetting = Literal["auto", "offline", "online", "off"]  # runtime.wandb's values


def wandb_mode(setting: WandbSetting) -> Literal["offline", "online"] | None:
    """The wandb mode for runtime.wandb: None (off), 'offline' or 'online'."""
    if setting == "off":
        return None
    if setting == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return setting


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (metrics.jsonl, a sweep's results.jsonl); [] when missing."""
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: ignore it
            continue
    return rows


def truncate_metrics(path: str | Path, last_step: int) -> None:
    """Drop rows after `last_step` (a resumed run re-does those steps), atomically."""
    p = Path(path)
    if not p.is_file():
        return
    keep = [r for r in read_metrics(p) if r.get("step", 0) <= last_step]
    write_text_atomic(p, "".join(json.dumps(r) + "\n" for r in keep))


class MetricsLogger:
    def __init__(
        self,
        run_dir: str | Path,
        enabled: bool,
        total_steps: int,
        start_step: int,
        wandb_setting: WandbSetting = "off",
        wandb_project: str = "cgpt",
        config: dict | None = None,
        log_every: int = 10,
    ):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / "metrics.jsonl"
        self.log_every, self.total = log_every, total_steps
        self._wandb = self._bar = None
        self._file: TextIO | None = None
        if not enabled:
            return
        self._file = open_append(self.path, "metrics file")  # never through a link
        self._wandb = self._start_wandb(wandb_setting, wandb_project, config)
        self._bar = self._start_bar(start_step)

    def _start_wandb(self, setting: WandbSetting, project: str, config: dict | None):
        mode = wandb_mode(setting)
        if mode is None:
            return None
        import wandb

        id_file = self.run_dir / "wandb_id"
        # (wandb.util.generate_id is gone in wandb 0.31)
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        write_text_atomic(id_file, run_id + "\n")
        return wandb.init(
            project=project,
            dir=str(self.run_dir),
            mode=mode,
            id=run_id,
            resume="allow",
            name=self.run_dir.name,
            config=config or {},
        )

    def _start_bar(self, start_step: int):
        from tqdm import tqdm

        return tqdm(
            total=self.total,
            initial=start_step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            disable=None,
        )  # None: no bar when stderr is not a TTY

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        assert self._file is not None  # enabled: __init__ opened it
        row = {
            k: (None if isinstance(v, float) and not math.isfinite(v) and k == "mfu" else v)
            for k, v in row.items()
        }
        with writing(self.path):  # disk full: WriteFailed naming metrics.jsonl
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._wandb is not None:
            self._wandb.log(
                {k: v for k, v in row.items() if v is not None and k != "step"}, step=row["step"]
            )
        if "loss" in row:
            self._progress(row)
        if "val_loss" in row:
            self.message(f"step {row['step']}: val_loss {row['val_loss']:.4f}")
        if "init_loss" in row:  # a continued run's step-0 check (cgpt.train.loop.init_from)
            self.message(_step0_text(row))

    def _progress(self, row: dict) -> None:
        bar, step = self._bar, row["step"]
        if bar is not None and not bar.disable:
            with surviving_a_hangup():
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:.3g}")
        if step % self.log_every == 0 or step == self.total:
            eta = eta_text(row.get("eta_s"))
            mfu = f" mfu {row['mfu']:.1%}" if row.get("mfu") is not None else ""
            self.message(
                f"step {step}/{self.total} loss {row['loss']:.4f} lr {row['lr']:.3g} "
                f"grad_norm {row.get('grad_norm') or float('nan'):.3f} "
                f"tokens {row['tokens']:,} tok/s {row['tokens_per_s']:,.0f}{mfu} "
                f"eta {eta}"
            )

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        with surviving_a_hangup():  # a closed terminal: the run still saves and stops
            if self._bar is not None and not self._bar.disable:
                self._bar.write(text, file=sys.stderr)
            else:
                print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the write that failed (reported already) is flushed again
                pass
        if self._wandb is not None:
            self._wandb.finish()  # wandb 0.31 has no quiet=
        self._bar = self._file = self._wandb = None


def _step0_text(row: dict) -> str:
    text = f"step 0: init_loss {row['init_loss']:.4f} of the weights from {row['init_source']}"
    if "init_hf_loss" in row:
        text += (
            f"; rank 0 {row['init_loss_rank0']:.6f} vs transformers {row['init_hf_loss']:.6f} "
            f"(|diff| {row['init_loss_diff']:.2e}): loaded faithfully"
        )
    return text


def eta_text(seconds: float | None) -> str:
    """HH:MM:SS (or days) for an ETA; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    return (
        time.strftime("%H:%M:%S", time.gmtime(seconds))
        if seconds < 86400
        else f"{seconds / 86400:.1f}d"
    )


class Throughput:
    """tokens/s and MFU over the steps since the last reset (skips warm-up steps)."""

    def __init__(self, flops_per_token: float, peak_flops: float | None):
        self.fpt, self.peak = flops_per_token, peak_flops
        self.t0 = time.perf_counter()

    def step(self, tokens: int) -> tuple[float, float | None]:
        now = time.perf_counter()
        dt, self.t0 = max(now - self.t0, 1e-9), now
        tps = tokens / dt
        mfu = self.fpt * tps / self.peak if self.peak else None
        return tps, mfu

    def reset(self) -> None:
        self.t0 = time.perf_counter()


def plot_loss(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Train and val loss against tokens seen, written atomically; None without data."""
    rows = read_metrics(metrics_path)
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4.5))
    if train:
        ax.plot(*zip(*train), lw=1, label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", ms=4, label="val loss")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out_png)
