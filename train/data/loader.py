"""Deterministic, resumable, data-parallel batches of next-token windows.

The token array is cut into windows of ``seq_len + 1`` tokens starting at multiples of
``seq_len`` (consecutive windows share one token, so every token is a target exactly once per
epoch): ``n_windows = (N - 1) // seq_len``. Epoch ``e`` visits the windows in the order
``permutation(seed, e)``; all ranks walk this one *global* stream, and an optimizer step of
``G`` sequences takes the next ``G`` windows, rank ``r`` the ``r``-th contiguous slice of
``G / world_size``. The state is just the global position, identical on every rank, so a run
resumes with exactly the batches an uninterrupted run would have seen, even with a different
data-parallel size.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from cgpt.model.errors import CgptError
from cgpt.train.data.shards import TokenData, open_token_data


class DataRepeatWarning(UserWarning):
    """The plan asks for more tokens than the data holds: windows are being repeated."""


class TokenLoader:
    def __init__(
        self,
        data: str | os.PathLike | TokenData,
        seq_len: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        split: str = "train",
    ):
        if not isinstance(data, TokenData):
            data = open_token_data(data)
        if seq_len <= 0:
            raise CgptError(f"seq_len must be positive, got {seq_len}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.data, self.seq_len, self.split = data, int(seq_len), split
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.tokens = data.split(split)
        self.n_windows = (len(self.tokens) - 1) // self.seq_len if len(self.tokens) else 0
        if self.n_windows < 1:
            hint = "raise --val-fraction in cgpt prepare" if split == "val" else "prepare more data"
            raise CgptError(
                f"the {split} split of {str(data.dir)!r} holds {len(self.tokens)} "
                f"tokens, fewer than one window of seq_len+1 = {self.seq_len + 1}; "
                f"{hint} or lower plan.seq_len"
            )
        self.epoch = 0
        self.position = 0  # windows of the current epoch already consumed (globally)
        self.samples_seen = 0  # windows consumed since the start, over all epochs
        self._perm_epoch, self._perm = -1, None

    # ------------------------------------------------------------------ the global stream
    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm, self._perm_epoch = rng.permutation(self.n_windows), epoch
        return self._perm

    def _stream(self, start: int, count: int) -> np.ndarray:
        """Window indices at global stream offsets [start, start+count) from the current
        (epoch, position); may run into later epochs."""
        out, epoch, pos = [], self.epoch, self.position + start
        epoch += pos // self.n_windows
        pos %= self.n_windows
        while count > 0:
            take = min(count, self.n_windows - pos)
            out.append(self._permutation(epoch)[pos : pos + take])
            count -= take
            epoch, pos = epoch + 1, 0
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def _advance(self, count: int) -> None:
        pos = self.position + count
        new_epoch = self.epoch + pos // self.n_windows
        # warn when a window of a new epoch is actually consumed (not when a step merely
        # ends on the boundary: a run that stops there never repeats anything)
        last_touched = self.epoch + (pos - 1) // self.n_windows
        first_new = self.epoch if self.position == 0 else self.epoch + 1
        for e in range(max(first_new, 1), last_touched + 1):
            self._warn_repeat(e)
        self.epoch, self.position = new_epoch, pos % self.n_windows
        self.samples_seen += count

    def _warn_repeat(self, epoch: int) -> None:
        if self.rank != 0:
            return
        warnings.warn(
            f"the run needs more tokens than the {self.split} split holds "
            f"({self.n_windows} windows of {self.seq_len} tokens): starting epoch {epoch + 1}, "
            f"so every window will have been seen {epoch + 1} times (repeat count {epoch})",
            DataRepeatWarning,
            stacklevel=4,
        )

    # ------------------------------------------------------------------ batches
    def _windows(self, idx: np.ndarray) -> torch.Tensor:
        """(len(idx), seq_len+1) int64 tensor of the windows starting at idx*seq_len."""
        T = self.seq_len
        if isinstance(self.tokens, np.ndarray):  # one memmap: a single fancy-indexed read
            offsets = idx.astype(np.int64)[:, None] * T + np.arange(T + 1)
            w = np.asarray(self.tokens[offsets], dtype=np.int64)
        else:  # several shards: windows may straddle a file boundary
            w = (
                np.stack(
                    [
                        np.asarray(self.tokens[int(i) * T : int(i) * T + T + 1], np.int64)
                        for i in idx
                    ]
                )
                if len(idx)
                else np.zeros((0, T + 1), np.int64)
            )
        return torch.from_numpy(w)

    def _pairs(self, w: torch.Tensor, micro_batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(m[:, :-1].contiguous(), m[:, 1:].contiguous()) for m in w.split(micro_batch)]

    def next_step(
        self, global_batch_seqs: int, micro_batch: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches (x, y), each (micro_batch, seq_len) long, for one step."""
        G, ws = int(global_batch_seqs), self.world_size
        if G <= 0 or micro_batch <= 0:
            raise CgptError(f"global batch ({G}) and micro-batch ({micro_batch}) must be positive")
        if G % ws:
            raise CgptError(f"global batch {G} is not divisible by the {ws} data-parallel ranks")
        share = G // ws
        if share % micro_batch:
            raise CgptError(
                f"each rank's share of {share} sequences is not divisible by "
                f"micro_batch {micro_batch}"
            )
        idx = self._stream(self.rank * share, share)
        self._advance(G)
        return self._pairs(self._windows(idx), micro_batch)

    def val_batches(
        self, num_batches: int, batch_size: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation batches: the first ``num_batches*batch_size*world_size`` windows
        of this loader's split in file order, this rank's contiguous share. The same data on
        every call and in every run, so val losses are comparable. A split with fewer windows
        uses all of them (an equal number per rank)."""
        total = num_batches * batch_size * self.world_size
        if self.n_windows < self.world_size:
            raise CgptError(
                f"the {self.split} split of {str(self.data.dir)!r} holds "
                f"{len(self.tokens)} tokens: too few for one window of "
                f"{self.seq_len + 1} tokens per rank ({self.world_size} ranks); "
                "raise --val-fraction in cgpt prepare or lower plan.seq_len"
            )
        per_rank = min(total, self.n_windows) // self.world_size
        start = self.rank * per_rank
        idx = np.arange(start, start + per_rank)
        return self._pairs(self._windows(idx), batch_size)

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """The whole state, the same on every rank (global position)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "samples_seen": self.samples_seen,
            "seq_len": self.seq_len,
            "split": self.split,
            "n_windows": self.n_windows,
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (
            ("seq_len", self.seq_len),
            ("seed", self.seed),
            ("split", self.split),
            ("n_windows", self.n_windows),
        ):
            if key in state and state[key] != mine:
                raise CgptError(
                    f"the data loader state in the checkpoint has {key}="
                    f"{state[key]!r} but this run has {key}={mine!r}; resume with "
                    "the same data, seq_len and seed"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position < self.n_windows or epoch < 0:
            raise CgptError(
                f"data loader state position {position} / epoch {epoch} is out of "
                f"range for {self.n_windows} windows"
            )
        self.epoch, self.position = epoch, position
        self.samples_seen = int(state.get("samples_seen", epoch * self.n_windows + position))
