"""Deterministic, resumable, data-parallel batches of next-token windows.

All ranks walk one global stream of ``seq_len + 1``-token windows in a keyed order per
epoch; a step of ``G`` sequences takes the next ``G``, rank ``r`` the ``r``-th slice. The
state is the global position alone, so a resume sees the batches an uninterrupted run would,
at any data-parallel size. Windows and the two orders: docs/DESIGN-NOTES.md, data/loader.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import Any

import numpy as np
import torch

from cgpt.model.errors import CgptError
from cgpt.train.data.shards import TokenData, open_token_data

# (data folder, split) whose repeat this process has announced: once per source, because a
# line every epoch buries the log; the same set serves single and mixed sources
REPEATS_SHOWN: set[tuple[str, str]] = set()


def announce_repeat(data: TokenData, split: str, message: str) -> None:
    """One plain line on stderr (not a Python warning, which adds a file:line and a source
    line) when a source starts repeating, at most once per source per process."""
    key = (str(data.dir), split)
    if key in REPEATS_SHOWN:
        return
    REPEATS_SHOWN.add(key)
    print(f"cgpt: warning: {message}", file=sys.stderr, flush=True)


ORDER = 2  # the window order of new runs (module docstring); 1: the materialised permutation
ORDERS = (1, 2)
_ROUNDS = 4
_PREFETCH = 1 << 15  # window indices a rank computes per call and keeps (256 KB, order 2)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def step_share(global_batch_seqs: int, micro_batch: int, world_size: int) -> tuple[int, int]:
    """(G, each rank's share) of an optimizer step of ``global_batch_seqs`` sequences;
    CgptError unless G and micro_batch are positive, G splits evenly over the ranks and a share into
    micro-batches."""
    G, ws = int(global_batch_seqs), world_size
    if G <= 0 or micro_batch <= 0:
        raise CgptError(f"global batch ({G}) and micro-batch ({micro_batch}) must be positive")
    if G % ws:
        raise CgptError(f"global batch {G} is not divisible by the {ws} data-parallel ranks")
    share = G // ws
    if share % micro_batch:
        raise CgptError(
            f"each rank's share of {share} sequences is not divisible by micro_batch {micro_batch}"
        )
    return G, share


def micro_batch_pairs(w: torch.Tensor, micro_batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) pairs of ``micro_batch`` windows each: x the first seq_len tokens, y the last."""
    return [(m[:, :-1].contiguous(), m[:, 1:].contiguous()) for m in w.split(micro_batch)]


class WindowOrder:
    """A keyed bijection of ``[0, n)`` (order 2): ``order(positions)`` -> window indices.

    4 rounds of an unbalanced Feistel network over ``m``-bit integers (``2**m`` >= n, the
    smallest such power of two, m >= 2) with cycle-walking. It holds only its keys."""

    def __init__(self, n: int, seed: int, epoch: int):
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        self.n = int(n)
        self._n = np.uint64(self.n)
        m = max(2, (self.n - 1).bit_length())
        digest = hashlib.blake2b(
            f"cgpt-window-order-v2:{int(seed)}:{int(epoch)}".encode(), digest_size=8 * _ROUNDS
        ).digest()
        self._rounds = []  # (key, bits of the right half, its mask, bits of the left, mask)
        lo = (m + 1) // 2  # the halves swap sizes every round
        for r in range(_ROUNDS):
            key = np.uint64(int.from_bytes(digest[8 * r : 8 * r + 8], "little"))
            hi = m - lo
            masks = np.uint64((1 << lo) - 1), np.uint64((1 << hi) - 1)
            self._rounds.append((key, np.uint64(lo), masks[0], np.uint64(hi), masks[1]))
            lo = hi

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        """The Feistel permutation of [0, 2**m), elementwise on uint64 ``x``."""
        for key, lo, lo_mask, hi, hi_mask in self._rounds:
            right = x & lo_mask
            x >>= lo  # the left half
            z = right ^ key  # splitmix64 finaliser of the right half under this round's key
            z ^= z >> _S30
            z *= _M1
            z ^= z >> _S27
            z *= _M2
            z ^= z >> _S31
            x ^= z
            x &= hi_mask
            right <<= hi
            x |= right
        return x

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Window indices (int64) at epoch positions ``positions`` (each in [0, n))."""
        x = self._encrypt(np.array(positions, dtype=np.uint64))
        out = np.flatnonzero(x >= self._n)
        while len(out):  # cycle-walking: re-encrypt those that fell outside [0, n)
            y = self._encrypt(x[out])
            x[out] = y
            out = out[y >= self._n]
        return x.astype(np.int64)


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
        self.order = ORDER  # 1 for a run resumed from a state saved before order 2
        self._order_epoch = -1
        self._order: Any = None  # this epoch's WindowOrder (order 2) or permutation (1)
        # order 2: (epoch, G, share, first start, rows of indices)
        self._ahead: tuple[int, int, int, int, np.ndarray] | None = None

    # ------------------------------------------------------------------ the global stream
    def _epoch_order(self, epoch: int) -> Any:
        """Epoch ``epoch``'s order: a WindowOrder (order 2) or a permutation array (1)."""
        if epoch != self._order_epoch:
            if self.order == 1:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            else:
                self._order = WindowOrder(self.n_windows, self.seed, epoch)
            self._order_epoch = epoch
        return self._order

    def window_order(self, epoch: int, start: int, stop: int) -> np.ndarray:
        """Window indices at positions [start, stop) of epoch ``epoch``'s order."""
        order = self._epoch_order(epoch)
        if self.order == 1:
            return order[start:stop]
        return order(np.arange(start, stop, dtype=np.uint64))

    def _my_share(self, G: int, share: int) -> np.ndarray:
        """This rank's window indices for the next step. Order 2: rows of a block computed
        in one call for this and the following steps of the epoch (same G), so numpy's
        per-call overhead is paid once per block and no rank computes another's share."""
        start = self.position + self.rank * share  # inside the current epoch
        n = self.n_windows
        if self.order == 1 or start + share > n:  # old order, or a share crossing epochs
            return self._stream(self.rank * share, share)
        ahead = self._ahead
        if ahead is not None and ahead[:3] == (self.epoch, G, share):
            k, off = divmod(start - ahead[3], G)
            if off == 0 and 0 <= k < len(ahead[4]):
                return ahead[4][k]
        rows = max(1, min(_PREFETCH // share, (n - share - start) // G + 1))
        pos = (
            start
            + G * np.arange(rows, dtype=np.uint64)[:, None]
            + np.arange(share, dtype=np.uint64)
        )
        block = self._epoch_order(self.epoch)(pos.ravel()).reshape(rows, share)
        self._ahead = (self.epoch, G, share, start, block)
        return block[0]

    def _stream(self, start: int, count: int) -> np.ndarray:
        """Window indices at global stream offsets [start, start+count) from the current
        (epoch, position); may run into later epochs."""
        return self.indices_at(self.epoch * self.n_windows + self.position + start, count)

    def indices_at(self, sample: int, count: int) -> np.ndarray:
        """Window indices of samples [sample, sample+count) of this loader's stream counted
        from its very start (sample ``s`` is position ``s % n_windows`` of epoch
        ``s // n_windows``); a mixture reads each source this way."""
        out, (epoch, pos) = [], divmod(int(sample), self.n_windows)
        while count > 0:
            take = min(count, self.n_windows - pos)
            out.append(self.window_order(epoch, pos, pos + take))
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
        announce_repeat(
            self.data,
            self.split,
            f"data {self.data.dir} is repeating: the run needs more tokens than its "
            f"{self.split} split holds ({self.n_windows} windows of {self.seq_len} tokens), "
            f"so epoch {epoch + 1} starts and every window is seen again "
            "(said once; later epochs are not announced)",
        )

    # ------------------------------------------------------------------ batches
    def _windows(self, idx: np.ndarray) -> torch.Tensor:
        """(len(idx), seq_len+1) int64 tensor of the windows starting at idx*seq_len."""
        return torch.from_numpy(self.window_array(idx))

    def window_array(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), seq_len+1) int64 array of the windows starting at idx*seq_len."""
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
        return w

    def next_step(
        self, global_batch_seqs: int, micro_batch: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches (x, y), each (micro_batch, seq_len) long, for one step."""
        G, share = step_share(global_batch_seqs, micro_batch, self.world_size)
        idx = self._my_share(G, share)
        self._advance(G)
        return micro_batch_pairs(self._windows(idx), micro_batch)

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
        return micro_batch_pairs(self._windows(idx), batch_size)

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
            "order": self.order,
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
        order = int(state.get("order", 1))  # saved before order 2: the old permutation
        if order not in ORDERS:
            raise CgptError(
                f"the data loader state in the checkpoint has order={order}, which this "
                f"version of cgpt does not know (it reads orders {', '.join(map(str, ORDERS))}); "
                "resume with the cgpt version that wrote it"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position < self.n_windows or epoch < 0:
            raise CgptError(
                f"data loader state position {position} / epoch {epoch} is out of "
                f"range for {self.n_windows} windows"
            )
        self.epoch, self.position = epoch, position
        if order != self.order:
            self.order, self._order_epoch, self._order, self._ahead = order, -1, None, None
        self.samples_seen = int(state.get("samples_seen", epoch * self.n_windows + position))
