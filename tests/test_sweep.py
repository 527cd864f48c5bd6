"""`cgpt sweep`: a tiny real sweep end to end (results, fit, plot), a diverging point that
does not stop it, resume (finished points skipped, an interrupted point continued from its
checkpoint), and bad input."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from helpers import (
    SWEEP_SIZES,
    Terminal,
    child_env,
    make_sweep_data,
    metrics_steps,
    sweep_dict,
    wait_until,
    write_sweep,
)

from cgpt.launch.cli import main as cli
from cgpt.model.errors import CgptError
from cgpt.train.exit_codes import PREEMPTED
from cgpt.train.lock import LOCK_NAME, FolderLock
from cgpt.train.sweeps.sweep import fit_sweep_dir, load_sweep, parse_sweep, plan_points


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_sweep_data(tmp_path_factory.mktemp("data") / "bytes")


@pytest.mark.slow
def test_sweep_end_to_end_failure_resume(tmp_path, data, capsys):
    d = sweep_dict(tmp_path, data)
    d["sizes"].append({"n_layer": 1, "n_embd": 12, "n_head": 2, "lr": 1e30})  # diverges
    path = write_sweep(tmp_path, d)
    out = tmp_path / "sweep"
    assert cli(["sweep", str(path)]) == 0
    text = capsys.readouterr().out
    recs = {r["name"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(recs) == 4
    bad = recs.pop("L1-d12-h2")
    assert bad["status"] == "failed" and "loss became" in bad["reason"], bad
    for r in recs.values():
        assert r["status"] == "ok" and np.isfinite(r["val_loss"]) and r["wall_s"] > 0
        assert r["tokens"] > 0 and r["flops"] > 0 and 0 < r["non_embedding_params"] < r["params"]
        assert Path(r["run_dir"], "summary.json").is_file()
    assert "3 points ok, 1 failed" in text
    fit = json.loads((out / "fit.json").read_text())
    assert fit["loss_law"]["n_points"] == 3 and fit["tokens_per_param"] == 2
    assert [e["name"] for e in fit["excluded"]] == ["L1-d12-h2"]
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"

    # resume: finished and failed points are skipped, nothing is retrained
    stamps = {n: Path(r["run_dir"], "summary.json").stat().st_mtime_ns for n, r in recs.items()}
    assert cli(["sweep", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.count("finished earlier") == 3 and "failed earlier" in text
    assert "L1-d12-h2: failed earlier (" in text and "skipped; --retry-failed reruns it" in text
    assert stamps == {
        n: Path(r["run_dir"], "summary.json").stat().st_mtime_ns for n, r in recs.items()
    }
    # the printed suggestion, followed: only the failed point trains again (and fails again)
    assert cli(["sweep", str(path), "--retry-failed", "--no-fit"]) == 0
    text = capsys.readouterr().out
    assert text.count("finished earlier") == 3 and "L1-d12-h2: FAILED: " in text
    assert (out / "logs" / "L1-d12-h2.log").read_text().count("-m cgpt.train") == 2

    # an interrupted point (no completed summary) continues from its checkpoint
    victim = Path(recs["L2-d16-h2"]["run_dir"])
    (victim / "summary.json").unlink()
    assert cli(["sweep", str(path)]) == 0
    log = (out / "logs" / "L2-d16-h2.log").read_text()
    assert "--resume" in log and "resumed from" in log
    assert json.loads((victim / "summary.json").read_text())["status"] == "completed"

    # the planner takes the fit
    capsys.readouterr()
    assert (
        cli(["plan", "--layers", "2", "--width", "64", "--fit", str(out / "fit.json"), "--json"])
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert plan["loss_law"]["b"] == pytest.approx(fit["loss_law"]["b"])
    assert plan["tokens_per_param"] == pytest.approx(2, rel=0.05)


def test_isoflop_points_hit_their_budgets(tmp_path, data):
    d = sweep_dict(tmp_path, data, isoflop={"budgets": [2e9, 4e9, 8e9], "sizes": SWEEP_SIZES})
    del d["tokens_per_param"], d["sizes"]
    sweep = parse_sweep(d)
    points = plan_points(sweep, 257)
    assert len(points) == 9 and sweep.kind == "isoflop"
    for p in points:  # whole steps only: a point may fall short of its budget by one batch
        per_step = p.cfg.plan.train_flops / p.cfg.plan.steps
        assert p.budget - per_step <= p.cfg.plan.train_flops <= p.budget
    assert len({p.cfg.data.path for p in points}) == 1


def test_bad_sweep_files(tmp_path, data):
    d = sweep_dict(tmp_path, data)
    d["sizes"][1]["data"] = "/elsewhere"
    with pytest.raises(CgptError, match=r"sizes\[1\] sets data: every point .* the sweep.s data"):
        parse_sweep(d)
    both = sweep_dict(tmp_path, data, isoflop={"budgets": [1e9], "sizes": SWEEP_SIZES})
    with pytest.raises(CgptError, match="either sizes/params .* or isoflop"):
        parse_sweep(both)
    with pytest.raises(CgptError, match="unknown key 'plan.learning_rate'"):
        parse_sweep(
            sweep_dict(
                tmp_path, data, plan={"global_batch_seqs": 8, "lr": 1e-3, "learning_rate": 1}
            )
        )
    missing = sweep_dict(tmp_path, data, data={"path": str(tmp_path / "nope")})
    assert cli(["sweep", str(write_sweep(tmp_path, missing))]) == 2
    with pytest.raises(CgptError, match="sweep file .* not found"):
        load_sweep(tmp_path / "absent.yaml")
    short = sweep_dict(tmp_path, data, tokens_per_param=0.5)
    with pytest.raises(CgptError, match="only .* steps"):
        plan_points(parse_sweep(short), 257)
    assert not (tmp_path / "sweep").exists()  # nothing written for bad input


def _fake_sweep_dir(tmp: Path, records: list[dict]) -> Path:
    out = tmp / "fake"
    out.mkdir()
    (out / "sweep.yaml").write_text(
        yaml.safe_dump({"name": "fake", "kind": "tokens_per_param", "tokens_per_param": 20})
    )
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _rec(i: int, **kw) -> dict:
    c = 1e12 * 4**i
    return {
        "name": f"p{i}",
        "status": "ok",
        "params": 1e4 * 2**i,
        "tokens": 2e5 * 2**i,
        "flops": c,
        "val_loss": (c / 1e16) ** -0.1 + 1.5,
        "data_id": "A",
        **kw,
    }


def test_fit_refuses_mixed_data_and_says_how_many_more(tmp_path, capsys):
    out = _fake_sweep_dir(tmp_path, [_rec(0), _rec(1), _rec(2, data_id="B")])
    with pytest.raises(CgptError, match="different data or tokenizers"):
        fit_sweep_dir(out)
    assert not (out / "fit.json").exists()
    out2 = tmp_path / "few"
    out2.mkdir()
    (out2 / "sweep.yaml").write_text(yaml.safe_dump({"name": "few", "kind": "tokens_per_param"}))
    (out2 / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [_rec(0), _rec(1), _rec(2, val_loss=float("nan"))])
    )
    assert cli(["sweep", "fit", str(out2)]) == 2
    err = capsys.readouterr().err
    assert "has 2: add 1 more" in err and err.count("\n") == 1
    fit = json.loads((out2 / "fit.json").read_text())  # what could be fitted is still written
    assert fit["excluded"][0]["name"] == "p2" and "nan" in fit["excluded"][0]["reason"]
    assert cli(["sweep", "fit"]) == 2
    assert cli(["sweep", "fit", str(tmp_path / "nowhere")]) == 2


@pytest.mark.parametrize("name", ["sweep-cpu.yaml", "sweep-isoflop-cpu.yaml"])
def test_ready_configs_plan(name):
    """The shipped CPU sweeps parse, plan, and are sized as the issue asks: at least five
    sizes (or 3 budgets x 4 sizes), where the non-embedding part of the model matters."""
    sweep = load_sweep(Path(__file__).parents[1] / "configs" / name)
    points = plan_points(sweep, 512)  # the sweeps' 512-token sentencepiece vocab
    shapes = {(p.cfg.model.n_layer, p.cfg.model.n_embd) for p in points}
    if sweep.kind == "isoflop":
        assert len(sweep.isoflop.budgets) >= 3 and len(shapes) >= 4
        assert len(points) == len(sweep.isoflop.budgets) * len(shapes)
    else:
        assert len(shapes) >= 5
        flops = [p.cfg.plan.train_flops for p in points]
        assert flops == sorted(flops)
    from cgpt.model.sizes import num_non_embedding_params, num_params

    largest = max((p.cfg.model for p in points), key=num_params)
    assert num_non_embedding_params(largest) > 0.5 * num_params(largest)
    assert all(p.cfg.runtime.out_dir.endswith(f"runs/{p.name}") for p in points)


def test_resume_refuses_changed_data(tmp_path, data):
    from cgpt.train.sweeps.sweep import run_sweep

    path = write_sweep(tmp_path, sweep_dict(tmp_path, data))
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "results.jsonl").write_text(
        json.dumps({"name": "L1-d8-h2", "status": "ok", "val_loss": 3.0, "data_id": "other"}) + "\n"
    )
    with pytest.raises(CgptError, match="data in .* changed since L1-d8-h2"):
        run_sweep(path, log=lambda m: None)
    assert not (out / "runs").exists() and not (out / "sweep.yaml").exists()


def test_dry_run_writes_nothing(tmp_path, capsys):
    """A dry run of a sweep whose data is missing says it would train a tokenizer and prepare
    the data, lists the points, and leaves no sweep, data or tokenizer folder behind."""
    d = sweep_dict(tmp_path, tmp_path / "data")
    d["data"]["prepare"] = {"source": "stdlib:max_docs=20", "vocab_size": 400}
    path = write_sweep(tmp_path, d)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would train a 400-token sentencepiece tokenizer on 'stdlib:max_docs=20'" in out
    assert f"would prepare the data: 'stdlib:max_docs=20' -> {tmp_path / 'data'}" in out
    assert all(name in out for name in ("L1-d8-h2", "L1-d16-h2", "L2-d16-h2"))
    assert "dry run: nothing written" in out
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "data").exists()
    assert not (tmp_path / "data-tokenizer").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_dry_run_with_existing_data(tmp_path, data, capsys):
    path = write_sweep(tmp_path, sweep_dict(tmp_path, data))
    stamp = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert cli(["sweep", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"data: {data} (" in out and "vocab 257" in out and "would train" not in out
    assert not (tmp_path / "sweep").exists()
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamp


def _edited_meta(folder: Path) -> None:
    meta = json.loads((folder / "meta.json").read_text())
    meta["dtype"] = "uint8"
    (folder / "meta.json").write_text(json.dumps(meta))


def _missing_no_recipe(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder)


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (_edited_meta, r"meta.json was edited or corrupted after prepare"),
        (
            _missing_no_recipe,
            r"data folder .* not found; create it with `cgpt prepare` or add "
            r"data.prepare",
        ),
    ],
)
def test_dry_run_bad_data_one_line(damage, pattern, tmp_path, capsys):
    import hashlib
    import re

    folder = make_sweep_data(tmp_path / "data")
    damage(folder)
    path = write_sweep(tmp_path, sweep_dict(tmp_path, folder))

    def digest():
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(tmp_path.rglob("*"))
        }

    before = digest()
    capsys.readouterr()
    assert cli(["sweep", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and re.search(pattern, err), err
    assert digest() == before


@pytest.mark.slow
def test_tuned_sweep_records_every_trial_and_fits_the_best(tmp_path, data, capsys):
    d = sweep_dict(tmp_path, data, lr="tuned", lr_grid=[0.3, 3.0])
    d["sizes"] = [dict(s) for s in SWEEP_SIZES[1:]]  # 2 sizes x 2 LRs
    d["plan"]["warmup_tokens_per_param"] = 1
    path = write_sweep(tmp_path, d)
    out = tmp_path / "sweep"
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert {r["lr_mult"] for r in recs} == {0.3, 3.0}
    assert {r["group"] for r in recs} == {"L1-d16-h2", "L2-d16-h2"}
    for g in {r["group"] for r in recs}:
        trials = [r for r in recs if r["group"] == g]
        assert trials[0]["lr"] == pytest.approx(trials[1]["lr"] * 0.1)
        assert sum(r["best"] for r in trials) == 1
        best = min(trials, key=lambda r: r["val_loss"])
        assert best["best"]
    # warmup tokens = 1 x params (at least one step)
    for r in recs:
        assert r["warmup_steps"] == max(1, -(-r["params"] // (8 * 32)))
    # a rerun skips every finished trial; the fit uses the best trial per size only
    capsys.readouterr()
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4
    from cgpt.train.sweeps.sweep import best_trials

    keep, trials = best_trials(recs)
    assert sorted(r["name"] for r in keep) == sorted(r["name"] for r in recs if r["best"])
    assert set(trials["groups"]) == {"L1-d16-h2", "L2-d16-h2"}
    # a grid of two: the best is always at an edge, and the fit says so
    assert len(trials["warnings"]) == 2 and "widen lr_grid" in trials["warnings"][0]
    # the fit of the two best points: too few for the law, the check names the fitted points
    with pytest.raises(CgptError, match="add 1 more"):
        fit_sweep_dir(out, n_boot=0, log=lambda m: None)
    fit = json.loads((out / "fit.json").read_text())
    assert fit["lr_trials"]["groups"]["L1-d16-h2"]["best"] in {r["name"] for r in keep}
    assert fit["excluded"] == []


def test_tuned_and_mup_points_plan(tmp_path, data):
    d = sweep_dict(tmp_path, data, lr="tuned")
    points = plan_points(parse_sweep(d), 257)
    assert len(points) == 3 * 3  # default grid [0.5, 1, 2]
    assert [p.name for p in points[:3]] == ["L1-d8-h2-lrx0.5", "L1-d8-h2-lrx1", "L1-d8-h2-lrx2"]
    assert [p.cfg.plan.lr for p in points[:3]] == pytest.approx([1.5e-3, 3e-3, 6e-3])
    # isoflop x tuned: one group per budget and size
    iso = sweep_dict(tmp_path, data, lr="tuned", lr_grid=[1, 2])
    iso["isoflop"] = {"budgets": [2e9, 4e9], "sizes": SWEEP_SIZES}
    del iso["tokens_per_param"], iso["sizes"]
    pts = plan_points(parse_sweep(iso), 257)
    assert len(pts) == 12 and len({p.group for p in pts}) == 6
    # μP: the base LR at every width, the model's mup section at the sweep's base width
    m = sweep_dict(tmp_path, data, lr="mup")
    m["plan"]["lr_base_width"] = 8
    for p in plan_points(parse_sweep(m), 257):
        assert p.cfg.model.mup is not None and p.cfg.model.mup.base_width == 8
        assert p.cfg.plan.lr == 3e-3 and p.cfg.plan.min_lr == pytest.approx(3e-4)
    m["plan"]["lr_base_width"] = 16  # L1-d8 is narrower than the base
    with pytest.raises(CgptError, match="L1-d8-h2.*at least the base width"):
        plan_points(parse_sweep(m), 257)
    # batch from DeepSeek's law when global_batch_seqs is left out; micro-batch adapted
    b = sweep_dict(tmp_path, data)
    del b["plan"]["global_batch_seqs"]
    with pytest.raises(CgptError, match="global_batch_seqs is missing"):
        parse_sweep(b)
    b["plan"]["recipe"] = "deepseek"
    for p in plan_points(parse_sweep(b), 257):
        assert p.cfg.plan.global_batch_seqs % p.cfg.runtime.micro_batch == 0
    # bad combinations
    for bad, msg in (
        ({"lr_grid": [1, 2]}, "lr_grid goes with lr: tuned or lr: mup"),
        ({"lr": "tuned", "lr_grid": [1, 1]}, "twice"),
        ({"lr": "tuned", "lr_grid": [0, 1]}, "positive"),
        ({"lr": "sometimes"}, "lr"),
    ):
        with pytest.raises(CgptError, match=msg):
            parse_sweep(sweep_dict(tmp_path, data, **bad))
    own = sweep_dict(tmp_path, data, lr="mup")
    own["sizes"][0]["lr"] = 1e-3
    with pytest.raises(CgptError, match="remove the sizes' and targets' lr"):
        parse_sweep(own)


def test_ready_tuned_config_plans():
    """configs/sweep-cpu-tuned.yaml: 4 sizes x 3 LR trials, warmup = params tokens, and the
    non-embedding part is a large share of every size (the header's 40-67%)."""
    from cgpt.model.sizes import num_non_embedding_params, num_params

    sweep = load_sweep(Path(__file__).parents[1] / "configs" / "sweep-cpu-tuned.yaml")
    points = plan_points(sweep, 512)
    assert sweep.lr == "tuned" and len(points) == 12 and len({p.group for p in points}) == 4
    for p in points:
        m, pl = p.cfg.model, p.cfg.plan
        assert num_non_embedding_params(m) >= 0.4 * num_params(m)
        assert pl.warmup_steps == -(-num_params(m) // pl.global_batch_tokens)
        assert pl.warmup_steps < 0.1 * pl.steps


def _long_sweep(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    """One size trained long enough (500 steps) to be stopped mid-run; returns the
    sweep file and the point's run folder."""
    d = sweep_dict(tmp_path, data, sizes=[SWEEP_SIZES[0]], tokens_per_param=40)
    d["runtime"] |= {"save_every": 100000, "log_every": 1}
    path = write_sweep(tmp_path, d)
    [point] = plan_points(load_sweep(path), 257)
    return path, Path(point.cfg.runtime.out_dir)


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["SIGTERM-to-the-sweep", "Ctrl-C"])
def test_a_stop_to_the_sweep_reaches_its_trainer(tmp_path, data, ctrl_c):
    """SIGTERM to `cgpt sweep` only (`kill PID`, a container stop), or Ctrl-C (SIGINT to the
    terminal's process group: the sweep and its trainer): the point's trainer saves a
    checkpoint and stops, the sweep records it and exits 75 (PREEMPTED) rather than dying
    and leaving the trainer running on its own, and the printed command continues the point
    to the end."""
    path, run_dir = _long_sweep(tmp_path, data)
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cgpt.launch.cli", "sweep", str(path), "--no-fit"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        start_new_session=True,  # a group of its own: SIGTERM reaches the sweep alone
    )
    wait_until(
        lambda: metrics_steps(run_dir), 120, "the first step", alive=lambda: sweep.poll() is None
    )
    trainer = json.loads((run_dir / LOCK_NAME).read_text())["pid"]
    if ctrl_c:
        os.killpg(sweep.pid, signal.SIGINT)  # its own session: the "terminal" group
    else:
        sweep.send_signal(signal.SIGTERM)
    out, err = sweep.communicate(timeout=120)
    assert sweep.returncode == PREEMPTED, err
    assert not psutil.pid_exists(trainer) or psutil.Process(trainer).status() == "zombie"
    [rec] = map(json.loads, (tmp_path / "sweep" / "results.jsonl").read_text().splitlines())
    assert rec["status"] == "interrupted" and rec["steps"] > 0, rec
    assert list(run_dir.glob("checkpoints/step-*")), "no checkpoint saved"
    command = err.strip().splitlines()[-1].split("`")[1]  # the printed `cgpt sweep FILE`
    assert command == f"cgpt sweep {path}"
    done = subprocess.run(
        [sys.executable, "-m", "cgpt.launch.cli", *command.split()[1:], "--no-fit"],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "resumed from" in (tmp_path / "sweep" / "logs" / f"{rec['name']}.log").read_text()
    [rec] = map(json.loads, (tmp_path / "sweep" / "results.jsonl").read_text().splitlines())
    assert rec["status"] == "ok"


@pytest.mark.slow
def test_a_closed_terminal_stops_the_sweep_like_a_stop_signal(tmp_path, data):
    """`cgpt sweep` on a terminal that closes: SIGHUP to the sweep, and every later write to
    the terminal fails. The point's trainer saves, the sweep records the point as
    interrupted and exits 75, and no trainer is left running."""
    path, run_dir = _long_sweep(tmp_path, data)
    cmd = [sys.executable, "-m", "cgpt.launch.cli", "sweep", str(path), "--no-fit"]
    term = Terminal(cmd, child_env())
    try:
        wait_until(lambda: metrics_steps(run_dir), 120, "the first step", alive=term.alive)
        trainer = json.loads((run_dir / LOCK_NAME).read_text())["pid"]
        term.close()
        assert term.proc.wait(timeout=120) == PREEMPTED, term.output[-3000:].decode()
    finally:
        term.kill()
    assert not psutil.pid_exists(trainer) or psutil.Process(trainer).status() == "zombie"
    [rec] = map(json.loads, (tmp_path / "sweep" / "results.jsonl").read_text().splitlines())
    assert rec["status"] == "interrupted" and rec["steps"] > 0, rec
    assert list(run_dir.glob("checkpoints/step-*")), "no checkpoint saved"


def test_a_point_held_by_a_live_trainer_stops_the_sweep_and_records_nothing(tmp_path, data, capsys):
    """A trainer left running (its sweep killed with SIGKILL) holds the point's run folder:
    the next sweep says so in one line and records no failure (which would skip the point
    and train the next one beside the old trainer); followed ("wait for it to finish"), the
    same command trains the point."""
    path, run_dir = _long_sweep(tmp_path, data)
    with FolderLock(run_dir):  # as the live trainer holds it
        assert cli(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cgpt sweep: error: point L1-d8-h2: run folder ") and (
        f"is in use by pid {os.getpid()}" in err
    ), err
    assert "wait for it to finish or stop it" in err and len(err.splitlines()) == 1
    results = tmp_path / "sweep" / "results.jsonl"
    assert not results.exists() or not results.read_text().strip()
    # the holder has finished (the lock above is released): the same command trains the point
    assert cli(["sweep", str(path), "--no-fit"]) == 0
    [rec] = map(json.loads, results.read_text().splitlines())
    assert rec["status"] == "ok"


@pytest.mark.slow
def test_a_sweep_whose_every_point_failed_says_so_in_one_line(tmp_path, data, capsys):
    """Nothing finished (here the one point diverges): the fit says what it needs in one line
    and exits 2; before, drawing no point on log axes ended in matplotlib's traceback."""
    d = sweep_dict(tmp_path, data, sizes=[{**SWEEP_SIZES[0], "lr": 1e30}])
    assert cli(["sweep", str(write_sweep(tmp_path, d))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "cgpt sweep: the fit needs more: the law L(C) = (C/a)^-b + c needs at least 3 "
        "frontier points with a finite loss, has 0: add 3 more"
    ]
    assert cli(["sweep", "fit", str(tmp_path / "sweep")]) == 2
    assert "Traceback" not in capsys.readouterr().err
