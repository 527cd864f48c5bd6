"""Weighted data mixtures and several validation sets.

``data.path`` is the one-source mixture; ``data.sources`` mixes folders prepared with one
tokenizer. Each global stream position belongs to one source by a fixed, smooth schedule and
reads that source's own sample stream, so the loader state stays one global position and a
resume is bitwise exact at any data-parallel size. The schedule, its bounds and the val
sets: docs/DESIGN-NOTES.md, data/mixture.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from functools import reduce

import numpy as np
import torch

from cgpt.model.errors import CgptError
from cgpt.train.data.loader import (
    ORDER,
    TokenLoader,
    announce_repeat,
    micro_batch_pairs,
    step_share,
)
from cgpt.train.data.shards import TokenData, check_vocab, open_token_data

MAX_PERIOD = 1 << 16  # schedule positions per period (ints of 8 bytes: 1 MB at most)
MIXTURE_STATE = 1  # version of the mixture loader state


# ---------------------------------------------------------------------------- schedule
def integer_weights(weights: list[float], max_period: int = MAX_PERIOD) -> list[int]:
    """Integers with the weights' ratios (module docstring): exact for decimal weights whose
    reduced ratios sum to at most ``max_period``, else rounded to that total."""
    for w in weights:
        if not (math.isfinite(w) and w > 0):
            raise CgptError(f"mixture weights must be positive numbers, got {w}")
    fr = [Fraction(repr(float(w))) for w in weights]
    den = reduce(math.lcm, (f.denominator for f in fr), 1)
    ints = [int(f * den) for f in fr]
    g = reduce(math.gcd, ints)
    ints = [i // g for i in ints]
    if sum(ints) <= max_period:
        return ints
    total = sum(fr)
    quotas = [f / total * max_period for f in fr]
    ints = [max(1, math.floor(q)) for q in quotas]
    rest = max_period - sum(ints)
    # largest remainders first (ties: the earlier source); sources at the floor of 1 skip
    order = sorted(range(len(fr)), key=lambda k: (-(quotas[k] - math.floor(quotas[k])), k))
    for k in order[: max(rest, 0)]:
        ints[k] += 1
    return ints


class MixtureSchedule:
    """Which source owns each global position, and the how-manieth of that source's it is."""

    def __init__(self, weights: list[float]):
        self.a = np.array(integer_weights(weights), np.int64)
        self.period = int(self.a.sum())
        src = np.concatenate([np.full(a, k, np.int64) for k, a in enumerate(self.a)])
        j = np.concatenate([np.arange(a, dtype=np.int64) for a in self.a])
        t = (2 * j + 1) / (2.0 * self.a[src])  # ideal times (j + 1/2) / a_k
        perm = np.lexsort((src, t))  # by time, ties to the earlier source
        self.source, self.local = src[perm], j[perm]  # per position in the period
        self._slots = [np.flatnonzero(self.source == k) for k in range(len(self.a))]

    def counts(self, position: int) -> np.ndarray:
        """Positions owned by each source among global positions [0, position)."""
        q, r = divmod(int(position), self.period)
        return np.array(
            [q * int(a) + int(np.searchsorted(s, r)) for a, s in zip(self.a, self._slots)],
            np.int64,
        )

    def assign(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, that source's sample number) for global positions [start, stop)."""
        pos = np.arange(int(start), int(stop), dtype=np.int64)
        q, r = np.divmod(pos, self.period)
        src = self.source[r]
        return src, q * self.a[src] + self.local[r]


# ---------------------------------------------------------------------------- data
@dataclass
class Source:
    name: str
    data: TokenData
    weight: float


@dataclass
class MixtureData:
    """The opened folders of a run's data section (checked against each other)."""

    sources: list[Source]
    val: dict[str, TokenData] = field(default_factory=dict)
    explicit: bool = True  # data.sources or data.val given: log per-source / per-set metrics

    # the first source stands in where one TokenData is expected
    @property
    def dir(self):
        return self.sources[0].data.dir

    @property
    def tokenizer_dir(self) -> str | None:
        return self.sources[0].data.tokenizer_dir

    @property
    def vocab_size(self) -> int:
        return self.sources[0].data.vocab_size


def _fingerprint_check(named: list[tuple[str, TokenData]]) -> None:
    (first, d0), fp0 = named[0], named[0][1].fingerprint
    for name, d in named[1:]:
        if d.fingerprint != fp0 or (d.vocab_size, d.eos_id) != (d0.vocab_size, d0.eos_id):
            raise CgptError(
                f"data {name!r} ({d.dir}) was prepared with another tokenizer than "
                f"{first!r} ({d0.dir}): fingerprint {str(d.fingerprint)[:12]} vocab "
                f"{d.vocab_size} vs {str(fp0)[:12]} vocab {d0.vocab_size}; prepare every "
                "source with the same tokenizer"
            )


def open_data(
    section, model_vocab_size: int | None = None, verify: bool | str = True, tokenizer=None
) -> MixtureData:
    """Open and check a run config's ``data`` section (a DataSection or its dict): every
    folder, one tokenizer fingerprint for all, the model's vocab (and ``tokenizer``)."""
    d = section.model_dump() if hasattr(section, "model_dump") else dict(section)
    opened: dict[str, TokenData] = {}

    def _open(path: str) -> TokenData:
        key = os.path.realpath(path)
        if key not in opened:
            opened[key] = open_token_data(path, verify=verify)
        return opened[key]

    if d.get("sources"):
        srcs = [Source(s["name"], _open(s["path"]), float(s["weight"])) for s in d["sources"]]
        for s in srcs:
            integer_weights([s.weight])  # zero / negative / NaN refused (also by the config)
    else:
        srcs = [Source(os.path.basename(os.path.normpath(d["path"])), _open(d["path"]), 1.0)]
    if d.get("val"):
        val = {name: _open(path) for name, path in d["val"].items()}
    elif d.get("sources"):
        val = {s.name: s.data for s in srcs}
    else:
        val = {"val": srcs[0].data}
    _fingerprint_check([(s.name, s.data) for s in srcs] + [(f"val {n}", v) for n, v in val.items()])
    if model_vocab_size is not None:
        for s in srcs:
            check_vocab(s.data, model_vocab_size, tokenizer)
    return MixtureData(srcs, val, explicit=bool(d.get("sources") or d.get("val")))


def as_mixture(data) -> MixtureData:
    """A MixtureData (a TokenData is the one-source mixture, as ``data.path``)."""
    if isinstance(data, MixtureData):
        return data
    return MixtureData([Source(data.dir.name, data, 1.0)], {"val": data}, explicit=False)


def source_seed(seed: int, name: str) -> int:
    """The window-order seed of a mixture source: keyed by the run seed and its name."""
    h = hashlib.blake2b(f"cgpt-mixture-source:{int(seed)}:{name}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1


# ---------------------------------------------------------------------------- training
class MixtureLoader:
    """The training loader of a mixture (module docstring). One source: exactly a
    :class:`TokenLoader` (same batches, same state)."""

    def __init__(self, data, seq_len: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.mix = as_mixture(data)
        self.seq_len, self.rank, self.world_size, self.seed = seq_len, rank, world_size, seed
        self.names = [s.name for s in self.mix.sources]
        self.single: TokenLoader | None  # one source: exactly its TokenLoader
        if len(self.mix.sources) == 1:
            self.single = TokenLoader(self.mix.sources[0].data, seq_len, rank, world_size, seed)
            self.loaders = [self.single]
            return
        self.single = None
        self.loaders = [
            TokenLoader(s.data, seq_len, rank, world_size, seed=source_seed(seed, s.name))
            for s in self.mix.sources
        ]
        self.schedule = MixtureSchedule([s.weight for s in self.mix.sources])
        self.samples_seen = 0  # the global position P
        self._warned: set[int] = set()

    # ---- the stream
    def source_counts(self, position: int | None = None) -> np.ndarray:
        """Samples each source has given up to global ``position`` (default: now)."""
        if self.single is not None:
            return np.array([self.single.samples_seen if position is None else position])
        return self.schedule.counts(self.samples_seen if position is None else position)

    def window_array(self, start: int, count: int) -> np.ndarray:
        """(count, seq_len+1) windows at global positions [start, start+count)."""
        src, sample = self.schedule.assign(start, start + count)
        out = np.empty((count, self.seq_len + 1), np.int64)
        for k in np.unique(src):
            rows = np.flatnonzero(src == k)
            first = int(sample[rows[0]])  # a source's samples in a range are consecutive
            ld = self.loaders[int(k)]
            out[rows] = ld.window_array(ld.indices_at(first, len(rows)))
        return out

    def next_step(self, global_batch_seqs: int, micro_batch: int):
        if self.single is not None:
            return self.single.next_step(global_batch_seqs, micro_batch)
        G, share = step_share(global_batch_seqs, micro_batch, self.world_size)
        w = torch.from_numpy(self.window_array(self.samples_seen + self.rank * share, share))
        before = self.schedule.counts(self.samples_seen)
        self.samples_seen += G
        self._sync(before)
        return micro_batch_pairs(w, micro_batch)

    def _sync(self, before: np.ndarray | None) -> None:
        """Each source loader's epoch/position from the global position; the repeat warning
        when a source's sample of a new epoch was consumed."""
        after = self.schedule.counts(self.samples_seen)
        for k, (ld, c) in enumerate(zip(self.loaders, after)):
            ld.epoch, ld.position = divmod(int(c), ld.n_windows)
            ld.samples_seen = int(c)
            if before is None:
                if c > ld.n_windows:
                    self._warned.add(k)  # resumed past its first epoch: it started earlier
                continue
            if c > ld.n_windows and k not in self._warned:
                self._warned.add(k)
                if self.rank == 0:
                    s = self.mix.sources[k]
                    announce_repeat(
                        s.data,
                        ld.split,
                        f"data source {s.name!r} ({s.data.dir}) is repeating: the run has "
                        f"read all its {ld.n_windows} windows of {self.seq_len} tokens and "
                        f"starts its epoch {(int(c) - 1) // ld.n_windows + 1} "
                        "(said once; later epochs are not announced)",
                    )

    # ---- what was seen
    def stats(self) -> dict:
        """``data_tokens/NAME`` and ``data_epochs/NAME`` (passes over the source's train
        windows, fractional) for a metrics row."""
        row: dict[str, float] = {}
        for name, ld, c in zip(self.names, self.loaders, self.source_counts()):
            row[f"data_tokens/{name}"] = int(c) * self.seq_len
            row[f"data_epochs/{name}"] = round(int(c) / ld.n_windows, 6)
        return row

    def summary(self) -> dict:
        """Per source: weight, tokens, samples (windows), epochs (for summary.json)."""
        out = {}
        for s, ld, c in zip(self.mix.sources, self.loaders, self.source_counts()):
            out[s.name] = {
                "path": str(s.data.dir),
                "weight": s.weight,
                "samples": int(c),
                "tokens": int(c) * self.seq_len,
                "epochs": round(int(c) / ld.n_windows, 6),
                "windows": ld.n_windows,
            }
        return out

    # ---- checkpoint state
    def _sources_state(self) -> list[dict]:
        return [
            {"name": n, "n_windows": ld.n_windows, "weight": int(a)}
            for n, ld, a in zip(self.names, self.loaders, self.schedule.a)
        ]

    def state_dict(self) -> dict:
        if self.single is not None:
            return self.single.state_dict()
        return {
            "mixture": MIXTURE_STATE,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "samples_seen": self.samples_seen,
            "order": ORDER,
            "sources": self._sources_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        mixed = "mixture" in state
        if self.single is not None:
            if mixed:
                raise CgptError(
                    "the checkpoint's data loader read a mixture of "
                    f"{len(state.get('sources', []))} sources but this run has one data "
                    "folder; resume with the same data.sources"
                )
            return self.single.load_state_dict(state)
        if not mixed:
            raise CgptError(
                "the checkpoint's data loader read one data folder but this run mixes "
                f"{len(self.names)} sources ({', '.join(self.names)}); resume with the same "
                "data section"
            )
        if int(state["mixture"]) != MIXTURE_STATE or int(state.get("order", ORDER)) != ORDER:
            raise CgptError(
                f"the checkpoint's mixture state (version {state['mixture']}, order "
                f"{state.get('order')}) is not one this cgpt reads; resume with the cgpt "
                "version that wrote it"
            )
        for key, mine in (("seq_len", self.seq_len), ("seed", self.seed)):
            if state.get(key) != mine:
                raise CgptError(
                    f"the data loader state in the checkpoint has {key}={state.get(key)!r} "
                    f"but this run has {key}={mine!r}; resume with the same data, seq_len "
                    "and seed"
                )
        if state.get("sources") != self._sources_state():
            theirs = ", ".join(
                f"{s['name']}:{s['weight']}({s['n_windows']} windows)" for s in state["sources"]
            )
            ours = ", ".join(
                f"{s['name']}:{s['weight']}({s['n_windows']} windows)"
                for s in self._sources_state()
            )
            raise CgptError(
                f"the checkpoint's mixture was [{theirs}] but this run's is [{ours}] "
                "(name:integer weight); resume with the same sources, weights and data"
            )
        position = int(state["samples_seen"])
        if position < 0:
            raise CgptError(f"data loader state position {position} is negative")
        self.samples_seen = position
        self._warned = set()
        self._sync(None)


# ---------------------------------------------------------------------------- validation
class ValSets:
    """Every named validation set's fixed batches (this rank's share) and its evaluation."""

    def __init__(
        self,
        data,
        seq_len: int,
        rank: int,
        world_size: int,
        num_batches: int,
        batch_size: int,
        seed: int = 0,
    ):
        self.mix = as_mixture(data)
        self.batches: dict[str, list] = {}
        self.tokens_per_byte: dict[str, float] = {}
        for name, d in self.mix.val.items():
            ld = TokenLoader(d, seq_len, rank, world_size, seed=seed, split="val")
            self.batches[name] = ld.val_batches(num_batches, batch_size)
            nbytes = ((d.meta.get("splits") or {}).get("val") or {}).get("text_bytes")
            if nbytes:
                self.tokens_per_byte[name] = len(ld.tokens) / int(nbytes)
        weights = {s.name: s.weight for s in self.mix.sources}
        named = {n: weights[n] for n in self.batches if n in weights}
        if not named:
            named = {n: 1.0 for n in self.batches}
        total = sum(named.values())
        self.headline_weights = {n: w / total for n, w in named.items()}

    @property
    def first(self) -> list:
        return next(iter(self.batches.values()))

    def row(self, losses: dict[str, float]) -> dict:
        """The metrics of per-set mean losses: the headline ``val_loss`` and, for an explicit
        mixture or data.val, ``val_loss/NAME`` and ``val_bpb/NAME``."""
        out = {"val_loss": sum(w * losses[n] for n, w in self.headline_weights.items())}
        if self.mix.explicit:
            for n, loss in losses.items():
                out[f"val_loss/{n}"] = loss
                if n in self.tokens_per_byte:
                    out[f"val_bpb/{n}"] = loss * self.tokens_per_byte[n] / math.log(2)
        return out

    def evaluate(self, loss_of) -> dict:
        """``loss_of(batches)`` -> mean loss, for every set; returns :meth:`row`."""
        return self.row({n: float(loss_of(b)) for n, b in self.batches.items()})


__all__ = [
    "MAX_PERIOD",
    "MixtureData",
    "MixtureLoader",
    "MixtureSchedule",
    "Source",
    "ValSets",
    "as_mixture",
    "integer_weights",
    "open_data",
    "source_seed",
]
