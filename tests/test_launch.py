"""`cgpt launch`: hostfiles, the batch re-split, and the exact launcher commands.

The commands are checked by parsing them with the launchers' own argument parsers
(deepspeed.launcher.runner, torch.distributed.run) and deriving the world size the way the
launchers do, so a flag they would reject or read differently fails here.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import write_launch_config

from cgpt.launch import launchers as L
from cgpt.launch.cli import main
from cgpt.launch.hostfile import Host, format_hostfile, parse_hostfile, read_hostfile
from cgpt.model.errors import CgptError
from cgpt.train.config import parse_run_config


def launch_dry(capsys, *argv) -> list[str]:
    """Run `cgpt launch --dry-run ...`; return the printed command as argv."""
    assert main(["launch", "--dry-run", *map(str, argv)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    import shlex

    return shlex.split(out[-1])


def ds_world(cmd: list[str]) -> tuple[object, dict]:
    """Parse a deepspeed command with DeepSpeed's parser; the ranks per host it would run."""
    from deepspeed.launcher import runner

    assert Path(cmd[0]).name == "deepspeed"
    args = runner.parse_args(cmd[1:])
    pool = runner.fetch_hostfile(args.hostfile) or {"localhost": 1}
    active = runner.parse_inclusion_exclusion(pool, args.include, args.exclude)
    return args, runner.apply_num_nodes_and_gpus(active, args.num_nodes, args.num_gpus)


# ---- hostfiles --------------------------------------------------------------------------


def test_hostfile_parses_like_deepspeed(tmp_path):
    from deepspeed.launcher import runner

    text = "# two nodes\nnode-0 slots=8\n\n  node-1   slots=8  \n"
    assert parse_hostfile(text) == [Host("node-0", 8), Host("node-1", 8)]
    path = tmp_path / "hosts"
    path.write_text(format_hostfile(parse_hostfile(text)))
    assert dict(runner.fetch_hostfile(str(path))) == {"node-0": 8, "node-1": 8}
    assert read_hostfile(path) == parse_hostfile(text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("node-0 slots=8\nnode-1 8\n", "line 2"),
        ("node-0 slots=8\nnode-0 slots=8\n", "listed twice"),
        ("node-0 slots=0\n", "at least 1"),
        ("# only a comment\n", "no hosts"),
        ("node-0 slots=8 gpus=2\n", "line 1"),
        (
            "node-0 slots=8\nn$(touch${IFS}PWNED) slots=8\n",
            "line 2: host 'n$(touch${IFS}PWNED)' contains '$'",
        ),
        ("`touch${IFS}PWNED` slots=1\n", "contains '`'"),
        ("node-0;id slots=1\n", "contains ';'"),
        ("-oProxyCommand slots=1\n", "starts with '-'"),
    ],
)
def test_bad_hostfile_is_one_clear_error(tmp_path, capsys, text, words):
    hosts = tmp_path / "hosts"
    hosts.write_text(text)
    cfg = write_launch_config(tmp_path)
    assert main(["launch", str(cfg), "--hostfile", str(hosts), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cgpt launch: error:") and words in err[0]


def test_missing_hostfile(tmp_path, capsys):
    assert (
        main(["launch", str(write_launch_config(tmp_path)), "--hostfile", str(tmp_path / "nope")])
        == 2
    )
    assert "not found" in capsys.readouterr().err


# ---- the batch split ----------------------------------------------------------------------


def test_resplit_keeps_global_batch_and_lowers_micro_batch(tmp_path):
    plan = parse_run_config(yaml.safe_load(write_launch_config(tmp_path).read_text())).plan
    assert L.resolve_micro_batch(plan, 4, 1) == (4, None)
    micro, note = L.resolve_micro_batch(plan, 4, 2)  # 6 per rank: 4 does not divide it
    assert micro == 3 and "micro-batch 3" in note and "2 gradient-accumulation" in note
    assert L.resolve_micro_batch(plan, 4, 12)[0] == 1
    with pytest.raises(CgptError, match="cannot be split over 5"):
        L.resolve_micro_batch(plan, 4, 5)
    with pytest.raises(CgptError, match="cannot be split over 24"):  # more ranks than sequences
        L.resolve_micro_batch(plan, 1, 24)


def test_resplit_covers_every_batch_phase(tmp_path):
    phases = [
        {"global_batch_seqs": 12, "steps": 4, "warmup_steps": 2, "decay_steps": 2},
        {"global_batch_seqs": 18, "steps": 6, "warmup_steps": 0, "decay_steps": 6},
    ]
    raw = yaml.safe_load(write_launch_config(tmp_path, batch_schedule=phases).read_text())
    plan = parse_run_config(raw).plan
    assert L.resolve_micro_batch(plan, 6, 2)[0] == 3  # 6 and 9 per rank: 3 fits both
    with pytest.raises(CgptError, match="18"):
        L.resolve_micro_batch(plan, 1, 4)  # 12 splits over 4 ranks, 18 does not


def test_launch_passes_the_resplit_to_the_trainer(tmp_path, capsys):
    cmd = launch_dry(capsys, write_launch_config(tmp_path), "--gpus-per-node", "2")
    assert cmd[-2:] == ["--set", "runtime.micro_batch=3"]


def test_unsplittable_batch_starts_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    assert main(["launch", str(write_launch_config(tmp_path)), "--gpus-per-node", "5"]) == 2
    err = capsys.readouterr().err
    assert "cannot be split over 5" in err and "use a global batch of" in err


# ---- the commands -----------------------------------------------------------------------


def test_deepspeed_single_node(tmp_path, capsys):
    cfg = write_launch_config(tmp_path)
    cmd = launch_dry(
        capsys, cfg, "--gpus-per-node", 2, "--master-port", 29555, "--set", "runtime.zero_stage=2"
    )
    args, active = ds_world(cmd)
    assert sum(len(v) for v in active.values()) == 2 and args.num_nodes == 1
    assert args.master_port == 29555 and args.module and args.no_local_rank
    assert args.user_script == "cgpt.train"
    assert args.user_args[0] == str(cfg.resolve())
    assert "runtime.zero_stage=2" in args.user_args


def test_deepspeed_hostfile_multi_node(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("gpu-a slots=4\ngpu-b slots=4\ngpu-c slots=4\n")
    cmd = launch_dry(
        capsys,
        write_launch_config(tmp_path, global_batch=24),
        "--hostfile",
        hosts,
        "--nodes",
        2,
        "--master-port",
        29600,
    )
    args, active = ds_world(cmd)
    assert list(active) == ["gpu-a", "gpu-b"] and sum(len(v) for v in active.values()) == 8
    assert args.hostfile == str(hosts.resolve()) and args.master_addr == "gpu-a"
    assert args.master_port == 29600 and not args.no_ssh and args.launcher == "pdsh"


def test_deepspeed_no_ssh_node_rank(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("node0 slots=1\nnode1 slots=1\n")
    cmd = launch_dry(
        capsys,
        write_launch_config(tmp_path),
        "--hostfile",
        hosts,
        "--no-ssh",
        "--node-rank",
        1,
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        29601,
    )
    args, active = ds_world(cmd)
    assert args.no_ssh and args.node_rank == 1 and args.master_addr == "127.0.0.1"
    assert sum(len(v) for v in active.values()) == 2


def test_torchrun_multi_node(tmp_path, capsys):
    from torch.distributed.run import get_args_parser

    cfg = write_launch_config(tmp_path, global_batch=16)
    cmd = launch_dry(
        capsys,
        cfg,
        "--launcher",
        "torchrun",
        "--nodes",
        2,
        "--gpus-per-node",
        4,
        "--node-rank",
        1,
        "--master-addr",
        "10.1.2.3",
        "--resume",
    )
    assert Path(cmd[0]).name == "torchrun"
    a = get_args_parser().parse_args(cmd[1:])
    assert (a.nnodes, a.nproc_per_node, a.node_rank) == ("2", "4", 1)
    assert (a.master_addr, a.master_port) == ("10.1.2.3", L.DEFAULT_MASTER_PORT)
    assert a.module and a.training_script == "cgpt.train"
    assert a.training_script_args == [
        str(cfg.resolve()),
        "--set",
        "runtime.micro_batch=2",
        "--resume",
    ]


def test_multi_node_needs_a_master(tmp_path, capsys):
    assert (
        main(
            [
                "launch",
                str(write_launch_config(tmp_path)),
                "--launcher",
                "torchrun",
                "--nodes",
                "2",
                "--dry-run",
            ]
        )
        == 2
    )
    assert "--master-addr" in capsys.readouterr().err
    assert (
        main(
            [
                "launch",
                str(write_launch_config(tmp_path)),
                "--nodes",
                "2",
                "--master-addr",
                "h0",
                "--dry-run",
            ]
        )
        == 2
    )
    assert "need --hostfile" in capsys.readouterr().err


# ---- bad input: nothing starts --------------------------------------------------------------


def _no_process(*a, **k):
    raise AssertionError(f"a process was started: {a}")


def test_missing_launcher_binary(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    cfg = write_launch_config(tmp_path)
    for launcher in L.LAUNCHERS:
        assert main(["launch", str(cfg), "--launcher", launcher]) == 2
        err = capsys.readouterr().err
        assert f"{launcher} not found" in err and str(empty) in err


def test_missing_pdsh_for_hostfile(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # the venv's deepspeed is still found
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=1\nb slots=1\n")
    assert main(["launch", str(write_launch_config(tmp_path)), "--hostfile", str(hosts)]) == 2
    assert "pdsh not found" in capsys.readouterr().err


def test_occupied_master_port(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["launch", str(write_launch_config(tmp_path)), "--master-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"master port {port}" in err and "in use" in err


def test_port_check_ignores_other_machines():
    L.check_port_free("192.0.2.1", 22)  # TEST-NET address: not ours, nothing to check


# ---- running --------------------------------------------------------------------------------


def test_a_stop_reaches_the_ranks_and_not_the_launcher(tmp_path):
    """SIGTERM to `cgpt launch` becomes SIGUSR1 to the processes under the launcher; the
    launcher itself inherits SIGUSR1 ignored and is not signalled (deepspeed's launcher and
    torchrun kill their workers on SIGTERM/SIGINT). Rank 0's code comes back through
    $CGPT_EXIT_FILE although this launcher exits 1 (as torchrun does for a failed worker)."""
    marker = tmp_path / "got"
    rank = textwrap.dedent(f"""
        import os, signal, sys, time, pathlib
        from cgpt.train.exit_codes import PREEMPTED, write_exit_file
        def on_usr1(*_):
            pathlib.Path({str(marker)!r}).write_text("USR1")
            write_exit_file(PREEMPTED)
            sys.exit(PREEMPTED)
        signal.signal(signal.SIGUSR1, on_usr1)
        print("ready", flush=True)
        time.sleep(60)
    """)
    launcher = textwrap.dedent(f"""
        import signal, subprocess, sys
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, "USR1 not ignored"
        def on_term(*_):
            open({str(tmp_path / "launcher-got-TERM")!r}, "w").close()
        signal.signal(signal.SIGTERM, on_term)
        rank = subprocess.Popen([sys.executable, "-c", {rank!r}])
        rank.wait()
        sys.exit(1)  # torchrun: any failed worker -> 1
    """)
    parent = (
        "import sys; from cgpt.launch.cmd_launch import run_forwarding_signals as r; "
        f"sys.exit(r([sys.executable, '-c', {launcher!r}]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", parent], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    from cgpt.train.exit_codes import PREEMPTED

    assert proc.returncode == PREEMPTED, err
    assert marker.read_text() == "USR1"
    assert not (tmp_path / "launcher-got-TERM").exists()
    assert "every rank saves a checkpoint" in err


@pytest.mark.parametrize(
    "launcher_rc, rank0, expected",
    [
        (0, 0, 0),
        (75, 75, 75),  # deepspeed passes the worker's code on
        (1, 75, 75),  # torchrun: 1 for any failed worker; rank 0 said preempted
        (1, 3, 3),
        (247, 1, 1),  # rank 1 SIGKILLed (deepspeed: sys.exit(-9)), rank 0 reported it
        (247, None, 1),  # nobody reported anything
        (254, None, 1),
        (0, None, 0),
        (2, None, 2),
        (1, 0, 1),  # rank 0 completed but another rank failed
    ],
)
def test_launch_exit_codes(launcher_rc, rank0, expected, capsys):
    from cgpt.launch.cmd_launch import launch_exit_code

    assert launch_exit_code(launcher_rc, rank0) == expected


def test_exit_code_table_is_documented_and_distinct():
    """One definition (cgpt.train.exit_codes), every code distinct, each in README's table
    with its meaning; the module imports without torch."""
    import re

    code = (
        "import sys, cgpt.train.exit_codes as X; "
        "assert 'torch' not in sys.modules; print(sorted(X.MEANING))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    from cgpt.train import exit_codes as X

    codes = [X.OK, X.FAILURE, X.USER_ERROR, X.DIVERGED, X.COLLECTIVE_TIMEOUT, X.PREEMPTED]
    assert len(set(codes + [X.INTERRUPTED])) == 7 and X.PREEMPTED not in (0, 1, 2)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\d+)` \| (.+?) \|$", readme, re.M))
    assert {int(c) for c in rows} == set(X.MEANING), rows


def _two_rank_run(tmp_path: Path) -> tuple[Path, dict, str, Path]:
    """A 40-step byte-level run (ZeRO-1) for `cgpt launch --gpus-per-node 2`, logging every
    step: its config, the environment, the cgpt executable and the run folder."""
    from helpers import child_env, make_byte_data, make_cfg, write_run_config

    data = make_byte_data(tmp_path / "data", n_files=6)
    d = make_cfg(tmp_path, data, steps=3000, eval_every=0, save_every=0, zero_stage=1, log_every=1)
    d["runtime"]["max_steps"] = 40
    env = child_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cgpt = str(Path(sys.executable).parent / "cgpt")
    return write_run_config(tmp_path, d), env, cgpt, tmp_path / "run"


@pytest.mark.slow
def test_ctrl_c_on_a_two_rank_launch_saves_and_exits_preempted(tmp_path):
    """The issue's reproduction: Ctrl-C (SIGINT to the terminal's foreground process group)
    on `cgpt launch --gpus-per-node 2`: every rank saves the same step, no traceback, the
    documented exit code; the printed command, run as printed, continues the run."""
    import shlex

    from helpers import metrics_steps, wait_until

    from cgpt.train.checkpoints import checkpoint as ckpt
    from cgpt.train.exit_codes import PREEMPTED

    cfg, env, cgpt, run = _two_rank_run(tmp_path)
    proc = subprocess.Popen(
        [cgpt, "launch", str(cfg), "--gpus-per-node", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the "terminal" below
    )
    try:
        wait_until(
            lambda: len(metrics_steps(run)) >= 2,
            600,
            "two training steps",
            0.1,
            lambda: proc.poll() is None,
        )
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at a terminal does
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == PREEMPTED, out[-4000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-4000:]
    stopped = ckpt.newest(run / "checkpoints")[0]
    assert 2 <= stopped < 40 and f"stopped by SIGUSR1 at step {stopped}" in out
    line = [ln for ln in out.splitlines() if "resume with: " in ln][-1]
    command = line.split("resume with: ", 1)[1]
    assert command == f"cgpt launch {run} --gpus-per-node 2 --resume"
    res = subprocess.run(
        [cgpt, *shlex.split(command)[1:]],
        env=env,
        cwd=tmp_path / "data",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert metrics_steps(run) == list(range(1, 41))


@pytest.mark.slow
def test_a_closed_terminal_under_a_two_rank_launch_saves_and_exits_preempted(tmp_path):
    """`cgpt launch --gpus-per-node 2` on a terminal that closes: cgpt launch gets SIGHUP
    and every later write to the terminal (its own, the launcher's, the ranks') fails with
    EIO. Every rank still saves the same step, the run exits 75 and nothing is left
    running. (Before: cgpt launch died on its own notice, exit 1, and the ranks at their
    next progress line, with no checkpoint.)"""
    import psutil
    from helpers import Terminal, metrics_steps, wait_until

    from cgpt.train.checkpoints import checkpoint as ckpt
    from cgpt.train.exit_codes import PREEMPTED

    cfg, env, cgpt, run = _two_rank_run(tmp_path)
    term = Terminal([cgpt, "launch", str(cfg), "--gpus-per-node", "2"], env)
    try:
        wait_until(lambda: len(metrics_steps(run)) >= 2, 600, "two steps", 0.1, term.alive)
        under = psutil.Process(term.proc.pid).children(recursive=True)
        term.close()
        assert term.proc.wait(timeout=600) == PREEMPTED, term.output[-4000:].decode()
        wait_until(
            lambda: all(not p.is_running() or p.status() == "zombie" for p in under),
            60,
            "the launcher and ranks to exit",
        )
    finally:
        term.kill()
    stopped = ckpt.newest(run / "checkpoints")[0]
    assert 2 <= stopped < 40
    assert json.loads((run / "summary.json").read_text())["status"] == "preempted"


# ---- numbers and names out of range: one line, nothing starts ---------------------------------


def _refused(capsys, argv: list[str], *words: str) -> str:
    """`cgpt launch ARGV` exits 2 with one line on stderr that contains `words`."""
    try:
        rc = main(["launch", *argv])
    except SystemExit as e:  # argparse's refusals (a number that is not a number)
        rc = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and out == "", (rc, out, err)
    assert lines[0].startswith("cgpt launch: error:")
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--gpus-per-node", "0"], ["--gpus-per-node must be at least 1, got 0"]),
        (["--gpus-per-node", "-1"], ["--gpus-per-node must be at least 1, got -1"]),
        (["--nodes", "0"], ["--nodes must be at least 1, got 0"]),
        (["--nodes", "-3"], ["--nodes must be at least 1, got -3"]),
        (
            ["--nodes", "2", "--master-addr", "h0", "--launcher", "torchrun", "--node-rank", "2"],
            ["--node-rank 2 is outside 0..1"],
        ),
        (["--node-rank", "-1"], ["--node-rank -1 is outside 0..0"]),
        (["--node-rank", "1"], ["--node-rank 1 is outside 0..0"]),
        (["--master-port", "0"], ["--master-port must be in 1..65535, got 0"]),
        (["--master-port", "65536"], ["--master-port must be in 1..65535, got 65536"]),
        (["--master-port", "-1"], ["--master-port must be in 1..65535, got -1"]),
        (["--gpus-per-node", "two"], ["--gpus-per-node", "invalid int value: 'two'"]),
        (["--nodes", "1\n2"], ["--nodes", "invalid int value: '1\\n2'"]),
        (["--master-port", "$(touch PWNED)"], ["--master-port", "invalid int value"]),
        (["--master-addr", "h0;touch PWNED"], ["--master-addr", "';'"]),
        (["--master-addr", "$(touch PWNED)"], ["--master-addr", "'$'"]),
        (["--master-addr=-oProxyCommand"], ["--master-addr", "starts with '-'"]),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_bad_numbers_start_nothing(tmp_path, capsys, monkeypatch, extra, words, dry_run):
    """`--gpus-per-node 0` used to run 1 process and `--nodes 0` one node: now every count,
    rank and port outside its range is one line and exit 2, and no process starts."""
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    argv = [str(write_launch_config(tmp_path)), *extra] + (["--dry-run"] if dry_run else [])
    _refused(capsys, argv, *words)
    assert not list(tmp_path.rglob("PWNED"))


def test_zero_nodes_with_a_hostfile_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=1\nb slots=1\n")
    _refused(
        capsys,
        [str(write_launch_config(tmp_path)), "--hostfile", str(hosts), "--nodes", "0", "--dry-run"],
        "--nodes must be at least 1, got 0",
    )
    _refused(
        capsys,
        [
            str(write_launch_config(tmp_path)),
            "--hostfile",
            str(hosts),
            "--gpus-per-node",
            "0",
            "--dry-run",
        ],
        "--gpus-per-node must be at least 1",
    )


def test_topology_checks_for_callers():
    with pytest.raises(CgptError, match="--nodes must be at least 1"):
        L.make_topology(nodes=0)
    with pytest.raises(CgptError, match="--gpus-per-node must be at least 1"):
        L.make_topology(gpus_per_node=0, default_gpus=4)
    with pytest.raises(CgptError, match="whole number"):
        L.make_topology(gpus_per_node=1.5)
    with pytest.raises(CgptError, match="outside 0..1"):
        L.make_topology(nodes=2, node_rank=True, master_addr="h")  # True is not a rank 1
    assert L.make_topology(gpus_per_node=None, default_gpus=3).gpus_per_node == 3


@pytest.mark.parametrize(
    "value, bad",
    [
        ("$(touch PWNED)", "$"),
        ("a;touch PWNED", ";"),
        ("a`touch PWNED`", "`"),
        ('a"b', '"'),
        ("a'b", "'"),
        ("a%n", "%"),
    ],
)
def test_pdsh_remote_shell_refuses_shell_characters(tmp_path, capsys, monkeypatch, value, bad):
    """DeepSpeed's pdsh backend hands the command to a shell on every node: a --set value
    that shell would run or change is refused; the per-node starts take it as it is."""
    monkeypatch.setattr(subprocess, "Popen", _no_process)
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=1\nb slots=1\n")
    cfg = str(write_launch_config(tmp_path))
    item = f"runtime.wandb_project={value}"
    line = _refused(
        capsys,
        [cfg, "--hostfile", str(hosts), "--set", item, "--dry-run"],
        "--set",
        repr(bad),
        "pdsh",
    )
    assert "--no-ssh" in line
    cmd = launch_dry(
        capsys, cfg, "--hostfile", hosts, "--set", item, "--no-ssh", "--master-port", 29602
    )
    assert item in cmd  # one argument, unchanged
    cmd = launch_dry(capsys, cfg, "--launcher", "torchrun", "--set", item)
    assert item in cmd
    assert not list(tmp_path.rglob("PWNED"))


def test_pdsh_accepts_plain_values_with_spaces(tmp_path, capsys):
    hosts = tmp_path / "hosts"
    hosts.write_text("a slots=1\nb slots=1\n")
    cmd = launch_dry(
        capsys,
        write_launch_config(tmp_path),
        "--hostfile",
        hosts,
        "--set",
        "runtime.wandb_project=my project",
        "--master-port",
        29603,
    )
    assert "runtime.wandb_project=my project" in cmd


@pytest.mark.parametrize("name, code", [("Preempted", 75), ("Diverged", 3), ("RankDied", 1)])
def test_cli_exits_with_a_typed_errors_code(monkeypatch, capsys, name, code):
    """A CgptError that carries an exit code (cgpt.train.exit_codes) ends any verb with that
    code and one line, e.g. `cgpt demo` interrupted after its checkpoint exits 75."""
    import cgpt.launch.cmd_launch as cmd
    from cgpt.train import exit_codes as X

    def stop(args):
        raise getattr(X, name)("stopped")

    monkeypatch.setattr(cmd, "cmd_launch", stop)
    assert main(["launch", "run.yaml"]) == code
    assert capsys.readouterr().err == "cgpt launch: error: stopped\n"
