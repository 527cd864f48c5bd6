"""TokenLoader: determinism, resume, data-parallel shares, epochs, validation batches."""

import numpy as np
import pytest
import torch

from cgpt.model.errors import CgptError
from cgpt.train.data import loader as loader_mod
from cgpt.train.data.loader import ORDER, TokenLoader, WindowOrder
from cgpt.train.data.shards import ShardWriter, open_token_data, write_token_data

SEQ = 8


@pytest.fixture(autouse=True)
def _fresh_repeat_notices(monkeypatch):
    """The repeat notice is once per source per process: each test starts afresh."""
    monkeypatch.setattr(loader_mod, "REPEATS_SHOWN", set())


@pytest.fixture
def data(tmp_path):
    # token t at position t (mod vocab) makes every window identify itself
    train = np.arange(SEQ * 40 + 1) % 1000
    val = (np.arange(SEQ * 10 + 1) + 7) % 1000
    write_token_data(tmp_path / "d", train, val, vocab_size=1000, eos_id=999)
    return open_token_data(tmp_path / "d")


def _starts(batches):
    """Window index of every row of every (x, y) micro-batch."""
    return [int(x[i, 0]) // SEQ for x, _ in batches for i in range(x.shape[0])]


def test_windows_and_targets(data):
    ld = TokenLoader(data, SEQ, seed=3)
    assert ld.n_windows == 40
    ((x, y),) = ld.next_step(4, 4)
    assert x.shape == y.shape == (4, SEQ) and x.dtype == torch.long
    torch.testing.assert_close(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y):
        start = int(row_x[0])
        assert start % SEQ == 0
        assert row_x.tolist() == list(range(start, start + SEQ))
        assert row_y.tolist() == list(range(start + 1, start + SEQ + 1))


def test_order_depends_on_seed_and_is_deterministic(data):
    a = _starts(TokenLoader(data, SEQ, seed=1).next_step(8, 2))
    b = _starts(TokenLoader(data, SEQ, seed=1).next_step(8, 2))
    c = _starts(TokenLoader(data, SEQ, seed=2).next_step(8, 2))
    assert a == b and a != c


def test_one_epoch_covers_every_window_once(data):
    ld = TokenLoader(data, SEQ, seed=0)
    seen = []
    for _ in range(5):
        seen += _starts(ld.next_step(8, 4))
    assert sorted(seen) == list(range(40))
    assert ld.epoch == 1 and ld.position == 0 and ld.samples_seen == 40


def test_resume_gives_the_same_next_batches(data):
    ref = TokenLoader(data, SEQ, seed=5)
    for _ in range(3):
        ref.next_step(6, 3)
    state = ref.state_dict()
    expected = [ref.next_step(6, 3) for _ in range(10)]  # crosses into epoch 2
    fresh = TokenLoader(data, SEQ, seed=5)
    fresh.load_state_dict(dict(state))
    got = [fresh.next_step(6, 3) for _ in range(10)]
    for e, g in zip(expected, got):
        for (ex, ey), (gx, gy) in zip(e, g):
            assert torch.equal(ex, gx) and torch.equal(ey, gy)
    assert fresh.state_dict() == ref.state_dict()


def test_two_ranks_disjoint_and_cover_the_epoch(data):
    r0, r1 = (TokenLoader(data, SEQ, rank=r, world_size=2, seed=9) for r in (0, 1))
    s0, s1 = [], []
    for _ in range(5):
        s0 += _starts(r0.next_step(8, 2))
        s1 += _starts(r1.next_step(8, 2))
    assert not set(s0) & set(s1)
    assert sorted(s0 + s1) == list(range(40))
    assert r0.state_dict() == r1.state_dict()  # the state is global, not per rank


def test_same_global_step_for_any_data_parallel_split(data):
    single = TokenLoader(data, SEQ, seed=4)
    ranks = [TokenLoader(data, SEQ, rank=r, world_size=2, seed=4) for r in (0, 1)]
    for _ in range(7):
        ((x, y),) = single.next_step(6, 6)
        b0, b1 = (ld.next_step(6, 3) for ld in ranks)
        assert len(b0) == len(b1) == 1
        assert torch.equal(torch.cat([b0[0][0], b1[0][0]]), x)
        assert torch.equal(torch.cat([b0[0][1], b1[0][1]]), y)


def test_resume_with_a_different_world_size(data):
    one = TokenLoader(data, SEQ, seed=2)
    one.next_step(4, 2)
    state = one.state_dict()
    ((x, _),) = one.next_step(4, 4)
    halves = []
    for r in (0, 1):
        ld = TokenLoader(data, SEQ, rank=r, world_size=2, seed=2)
        ld.load_state_dict(state)
        halves.append(ld.next_step(4, 2)[0][0])
    assert torch.equal(torch.cat(halves), x)


def test_epoch_rollover_warns_once_in_one_plain_line(data, capsys):
    ld = TokenLoader(data, SEQ, seed=0)
    for _ in range(5):  # ending exactly on the boundary repeats nothing yet
        ld.next_step(8, 8)
    assert capsys.readouterr().err == ""
    ld = TokenLoader(data, SEQ, seed=0)
    for _ in range(4):
        ld.next_step(8, 8)
    batches = ld.next_step(16, 8)  # 8 windows of epoch 1, 8 of epoch 2
    assert ld.epoch == 1 and ld.position == 8
    tail = _starts(batches)
    first_epoch = WindowOrder(40, seed=0, epoch=0)(np.arange(40))
    second_epoch = WindowOrder(40, seed=0, epoch=1)(np.arange(40))
    assert tail == list(first_epoch[32:]) + list(second_epoch[:8])
    for _ in range(20):  # epochs 3..6: said once, not every epoch
        ld.next_step(8, 8)
    assert ld.epoch == 5
    # a second loader of the same data in this process (val, a restarted loop) stays quiet
    TokenLoader(data, SEQ, seed=1).next_step(48, 8)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cgpt: warning: data "), err
    assert f"{data.dir} is repeating" in err and "epoch 2 starts" in err
    assert "Warning" not in err and ".py:" not in err  # no Python warning decoration


def test_batch_bigger_than_the_data_spans_epochs(data, capsys):
    ld = TokenLoader(data, SEQ, seed=0)
    starts = _starts(ld.next_step(100, 10))
    assert "is repeating" in capsys.readouterr().err
    assert len(starts) == 100 and ld.epoch == 2 and ld.position == 20
    assert sorted(starts[:40]) == list(range(40))


def test_bad_batch_splits(data):
    with pytest.raises(CgptError, match="not divisible by the 2 data-parallel ranks"):
        TokenLoader(data, SEQ, rank=0, world_size=2).next_step(7, 1)
    with pytest.raises(CgptError, match="not divisible by micro_batch 3"):
        TokenLoader(data, SEQ).next_step(8, 3)


def test_state_mismatch_is_a_clear_error(data):
    state = TokenLoader(data, SEQ, seed=1).state_dict()
    with pytest.raises(CgptError, match="seed=1 but this run has seed=2"):
        TokenLoader(data, SEQ, seed=2).load_state_dict(state)
    with pytest.raises(CgptError, match="seq_len"):
        TokenLoader(data, 4, seed=1).load_state_dict(state)


def test_val_batches_fixed_and_split_across_ranks(data):
    ld = TokenLoader(data, SEQ, seed=1, split="val")
    a, b = ld.val_batches(2, 3), ld.val_batches(2, 3)
    assert len(a) == 2 and all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    # in file order: window i starts with token 7 + i*SEQ
    assert [int(x[i, 0]) for x, _ in a for i in range(3)] == [7 + i * SEQ for i in range(6)]
    shares = [
        TokenLoader(data, SEQ, rank=r, world_size=2, split="val").val_batches(2, 2) for r in (0, 1)
    ]
    rows = [int(x[i, 0]) for s in shares for x, _ in s for i in range(2)]
    assert rows == [7 + i * SEQ for i in range(8)]
    # more requested than the split holds: all 10 windows, equal shares
    assert sum(x.shape[0] for x, _ in ld.val_batches(100, 4)) == 10


def test_tiny_val_split_is_a_clear_error(tmp_path):
    write_token_data(tmp_path / "d", np.arange(100), np.arange(5), 1000, 0)
    with pytest.raises(CgptError, match="val split .* fewer than one window"):
        TokenLoader(str(tmp_path / "d"), SEQ, split="val")


def test_windows_across_shard_files(tmp_path):
    train = np.arange(SEQ * 20 + 1)
    with ShardWriter(tmp_path / "d", 1000, 0, shard_tokens=37) as w:
        w.write("train", train, 1)
        w.write("val", train[:20], 0)
        w.commit()
    ld = TokenLoader(str(tmp_path / "d"), SEQ, seed=0)
    seen = []
    for x, y in ld.next_step(20, 5):
        for row_x, row_y in zip(x, y):
            s = int(row_x[0])
            assert row_x.tolist() == list(range(s, s + SEQ))
            assert row_y.tolist() == list(range(s + 1, s + SEQ + 1))
            seen.append(s // SEQ)
    assert sorted(seen) == list(range(20))


@pytest.mark.parametrize(
    "edit,pattern",
    [
        ({"vocab_size": 100}, r"edited or corrupted after prepare"),
        ({"dtype": "uint8"}, r"edited or corrupted after prepare"),
    ],
)
def test_edited_meta_fails_before_any_batch(tmp_path, edit, pattern):
    """A meta.json edited after prepare (a vocab smaller than the ids, a wrong dtype) is a
    one-line CgptError when the loader opens the data, not an IndexError in the model."""
    import json

    write_token_data(tmp_path / "d", np.arange(400) % 300, np.arange(50), 1000, 0)
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    meta.update(edit)
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CgptError, match=pattern):
        TokenLoader(str(tmp_path / "d"), SEQ)


# ---------------------------------------------------------------------- the window order
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 100, 1000, 1023, 1025, 65537])
def test_window_order_is_a_permutation(n):
    """Every index exactly once, for powers of two and not, under several keys; any subset
    of positions maps like the whole."""
    for seed, epoch in ((0, 0), (1, 0), (0, 1), (12345, 7)):
        order = WindowOrder(n, seed, epoch)
        got = order(np.arange(n))
        assert got.dtype == np.int64 and sorted(got.tolist()) == list(range(n))
        some = np.random.default_rng(n).integers(0, n, 50)
        assert np.array_equal(order(some), got[some])


def test_each_rank_reads_its_share_of_the_global_order(data):
    """The per-rank prefetch (order 2) gives exactly the global stream's slices, through
    batch-size changes, epoch boundaries and a state reload, for 1, 2 and 4 ranks."""
    schedule = [8, 8, 4, 4, 4, 12, 8, 16, 16, 4, 8, 8, 12, 12, 4]  # 40 windows an epoch
    for ws in (1, 2, 4):
        loaders = [TokenLoader(data, SEQ, rank=r, world_size=ws, seed=3) for r in range(ws)]
        seen = 0
        for i, G in enumerate(schedule):
            if i == 9:  # a resume: fresh loaders from the saved state
                state = loaders[0].state_dict()
                loaders = [TokenLoader(data, SEQ, rank=r, world_size=ws, seed=3) for r in range(ws)]
                for ld in loaders:
                    ld.load_state_dict(state)
            got = [s for ld in loaders for s in _starts(ld.next_step(G, G // ws))]
            e, p = divmod(seen, 40)
            want = [
                int(WindowOrder(40, 3, (p + k) // 40 + e)(np.array([(p + k) % 40]))[0])
                for k in range(G)
            ]
            assert got == want, (ws, i)
            seen += G


def test_window_order_depends_on_seed_and_epoch():
    n = 1000
    a, b, c = (WindowOrder(n, s, e)(np.arange(n)) for s, e in ((3, 0), (4, 0), (3, 1)))
    assert np.array_equal(a, WindowOrder(n, 3, 0)(np.arange(n)))
    # different keys: about n/n = 1 fixed agreement expected, far from n
    assert (a == b).sum() < 10 and (a == c).sum() < 10


def test_window_order_statistics_at_a_million():
    """n = 1e6 (not a power of two, so cycle-walking is exercised): position and index
    are uncorrelated, a 100 x 100 grid (position block x index block) is filled evenly
    (chi-square), and neighbouring positions land far apart."""
    n = 1_000_000
    pos = np.arange(n)
    idx = WindowOrder(n, seed=1, epoch=0)(pos)
    assert np.corrcoef(pos, idx)[0, 1] ** 2 < (4 / np.sqrt(n)) ** 2  # |r| < 4 sigma
    grid = np.zeros((100, 100))
    np.add.at(grid, (pos * 100 // n, idx * 100 // n), 1)
    expected = n / 10_000
    chi2 = ((grid - expected) ** 2 / expected).sum()
    dof = 99 * 99  # rows and columns both sum to n/100 exactly: a contingency table
    assert abs(chi2 - dof) < 5 * np.sqrt(2 * dof), chi2
    gaps = np.abs(np.diff(idx))  # consecutive positions: |difference| ~ n/3 on average
    assert abs(gaps.mean() / n - 1 / 3) < 0.01
    # low bits are balanced too: index parity vs position parity
    agree = ((idx & 1) == (pos & 1)).mean()
    assert abs(agree - 0.5) < 4 * 0.5 / np.sqrt(n)


_MEMORY_PROBE = """
import numpy as np, sys
sys.path.insert(0, {tests!r})
from helpers import zero_token_data
from cgpt.train.data.loader import TokenLoader

def rss_kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

data = zero_token_data({n}, 8)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = rss_kb("VmRSS")
ld = TokenLoader(data, 8, rank=1, world_size=4, seed=3)
assert ld.n_windows == {n}
for _ in range(50):
    ld.next_step(64, 4)
ld.position = {n} - 100  # the end of the epoch: a step straddles into epoch 2
for _ in range(5):
    ld.next_step(64, 4)
state = ld.state_dict()
assert state["order"] == 2 and state["epoch"] == 1
print(rss_kb("VmHWM") - before)
"""


@pytest.mark.slow  # a subprocess importing torch: ~5 s
def test_loader_memory_is_constant_at_125m_windows(tmp_path):
    """n_windows = 1.25e8 (the old order materialised a 1 GB permutation per epoch): the
    peak RSS grows by under 10 MB while the loader is built and serves steps, including
    one across the epoch boundary."""
    import subprocess
    import sys
    from pathlib import Path

    code = _MEMORY_PROBE.format(tests=str(Path(__file__).parent), n=125_000_000)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    growth_kb = int(r.stdout.split()[-1])
    assert growth_kb < 10 * 1024, f"peak RSS grew by {growth_kb} kB"


def test_new_runs_use_the_bijection_and_old_states_keep_their_permutation(data):
    """States saved before the order key existed resume in the old materialised order
    (numpy permutation per epoch) and keep it; new states record order 2."""
    ld = TokenLoader(data, SEQ, seed=5)
    assert ORDER == 2 and ld.state_dict()["order"] == 2
    ld.next_step(8, 8)
    old_state = {k: v for k, v in ld.state_dict().items() if k != "order"}
    old = TokenLoader(data, SEQ, seed=5)
    old.load_state_dict(old_state)
    starts = _starts(old.next_step(8, 8))
    assert starts == list(np.random.default_rng([5, 0]).permutation(40)[8:16])
    assert old.state_dict()["order"] == 1  # and it stays the old order
    again = TokenLoader(data, SEQ, seed=5)
    again.load_state_dict(old.state_dict())
    assert _starts(again.next_step(8, 8)) == list(
        np.random.default_rng([5, 0]).permutation(40)[16:24]
    )
    new = TokenLoader(data, SEQ, seed=5)
    new.load_state_dict(ld.state_dict())
    assert _starts(new.next_step(8, 8)) == list(WindowOrder(40, 5, 0)(np.arange(8, 16)))


def test_unknown_order_is_a_clear_error(data):
    state = TokenLoader(data, SEQ, seed=1).state_dict()
    with pytest.raises(CgptError, match="order=9, which this version"):
        TokenLoader(data, SEQ, seed=1).load_state_dict({**state, "order": 9})
