"""`cgpt launch --slurm`: the sbatch script's text, and its behaviour run under stand-ins
for SLURM's programs that behave as the real ones do in everything the script relies on
(tests/slurm_standins: srun forwards SIGUSR1 but answers its own SIGTERM with SIGKILL to the
tasks, scancel --signal reaches every process of the steps and not the batch shell, ...),
including the time-limit path end to end on CPU ranks through both launchers: warning ->
every rank checkpoints the same step -> requeue recorded -> the requeued job resumes and
matches an uninterrupted run bitwise.

Injection: newlines, quotes, `$(...)`, backticks and `;` are fed through every option and
every config string that reaches the script. Values of #SBATCH lines (names, time) and any
control character are refused with one line before anything is written; values that are
legitimate (paths, --set values) must reach the launcher intact, as one argument each, when
the script runs with stand-in sbatch/srun/scontrol, and no PWNED marker may appear."""

import json
import os
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import child_env, losses, metrics_steps, wait_until, write_launch_config

from cgpt.launch import slurm
from cgpt.launch.cli import main
from cgpt.launch.launchers import Topology, free_port, train_args
from cgpt.model.errors import CgptError


def sbatch_lines(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            out[key] = value
    return out


def srun_command(text: str) -> list[str]:
    """The per-node command inside `bash -c '...'` of the srun line (after the USR1 trap)."""
    line = text[text.index("bash -c ") + len("bash -c ") :].splitlines()[0]
    inner = shlex.split(line)[0]
    prefix = 'trap "" USR1; '
    assert inner.startswith(prefix), inner  # the launcher inherits SIGUSR1 ignored
    return shlex.split(inner[len(prefix) :])


def test_script_is_valid_bash_with_the_topology(tmp_path, capsys):
    cfg = write_launch_config(tmp_path, global_batch=64)
    assert (
        main(
            [
                "launch",
                str(cfg),
                "--slurm",
                "--nodes",
                "4",
                "--gpus-per-node",
                "8",
                "--partition",
                "gpu",
                "--account",
                "proj1",
                "--time",
                "2-00:00:00",
            ]
        )
        == 0
    )
    path = tmp_path / "run" / "slurm.sbatch"
    assert str(path) in capsys.readouterr().out
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    text = path.read_text()
    opts = sbatch_lines(text)
    assert opts["nodes"] == "4" and opts["gpus-per-node"] == "8"
    assert opts["ntasks-per-node"] == "1" and opts["cpus-per-task"] == "64"
    assert opts["partition"] == "gpu" and opts["account"] == "proj1"
    assert opts["time"] == "2-00:00:00" and opts["signal"] == "B:USR1@300" and "requeue" in opts
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in text
    cmd = srun_command(text)
    assert cmd[0] == "exec" and Path(cmd[1]).name == "torchrun"
    i = cmd.index
    assert cmd[i("--nnodes") + 1] == "4" and cmd[i("--nproc_per_node") + 1] == "8"
    assert cmd[i("--node_rank") + 1] == "$SLURM_NODEID"
    assert cmd[i("--master_addr") + 1] == "$MASTER_ADDR"
    assert cmd[i("-m") + 1 :] == [
        "cgpt.train",
        str(cfg.resolve()),
        "--set",
        "runtime.micro_batch=2",
        "--resume",
    ]


def test_deepspeed_variant_uses_the_allocation_hostfile(tmp_path, capsys):
    cfg = write_launch_config(tmp_path, global_batch=16)
    assert (
        main(
            [
                "launch",
                str(cfg),
                "--slurm",
                "--nodes",
                "2",
                "--gpus-per-node",
                "8",
                "--launcher",
                "deepspeed",
                "--dry-run",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    cmd = srun_command(text)
    assert Path(cmd[1]).name == "deepspeed"
    assert cmd[cmd.index("--hostfile") + 1] == "$HOSTFILE"
    assert "--no_ssh" in cmd and cmd[cmd.index("--node_rank") + 1] == "$SLURM_NODEID"
    assert not (tmp_path / "run" / "slurm.sbatch").exists()  # --dry-run writes nothing


def test_time_limits():
    assert slurm.time_limit_seconds("90") == 5400
    assert slurm.time_limit_seconds("10:30") == 630
    assert slurm.time_limit_seconds("12:00:00") == 43200
    assert slurm.time_limit_seconds("1-02") == 93600
    assert slurm.time_limit_seconds("1-00:00:10") == 86410
    with pytest.raises(CgptError, match="not a SLURM time"):
        slurm.time_limit_seconds("tomorrow")
    with pytest.raises(CgptError, match="shorter than"):
        slurm.render_sbatch(Topology(1, 8), ["x.yaml"], "run", slurm.SlurmOptions(time="4"))


def test_submit_without_sbatch_says_so(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    cfg = write_launch_config(tmp_path)
    assert main(["launch", str(cfg), "--slurm", "--gpus-per-node", "4", "--submit"]) == 2
    err = capsys.readouterr().err.strip()
    path = tmp_path / "run" / "slurm.sbatch"
    assert "sbatch not found" in err and f"sbatch {path}" in err and path.is_file()


def _shim(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_submit_with_sbatch(tmp_path, capsys, monkeypatch):
    _shim(tmp_path, "sbatch", 'echo "Submitted batch job 42 ($1)"\n')
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert (
        main(
            [
                "launch",
                str(write_launch_config(tmp_path)),
                "--slurm",
                "--gpus-per-node",
                "4",
                "--submit",
            ]
        )
        == 0
    )
    script = tmp_path / "run" / "slurm.sbatch"
    assert f"Submitted batch job 42 ({script})" in capsys.readouterr().out


def test_slurm_needs_gpu_count(tmp_path, capsys):
    assert main(["launch", str(write_launch_config(tmp_path)), "--slurm"]) == 2
    assert "--gpus-per-node" in capsys.readouterr().err


# ---- injection: refused before anything is written ----------------------------------------

# each starts with something legitimate so that the refusal names the payload's character
EVIL = {
    "newline": "48\ntouch PWNED",
    "single-quote": "48'x",
    "double-quote": '48"x',
    "subshell": "48$(touch PWNED)",
    "backticks": "48`touch PWNED`",
    "semicolon": "48;touch PWNED",
    "space-hash": "48 #x",
}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.+,:=-")


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's refusals (a number that is not a number)
        return e.code


def assert_refused(tmp_path, capsys, argv, *words):
    """Exit 2, exactly one line on stderr naming `words`, nothing on stdout, no script,
    no run folder, no marker."""
    assert run_cli(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cgpt launch: error:"), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert out == ""
    assert not list(tmp_path.rglob("slurm.sbatch")) and not list(tmp_path.rglob(".slurm.sbatch*"))
    assert not list(tmp_path.rglob("PWNED"))
    return lines[0]


def _name_value_args(option: str, value: str) -> list[str]:
    if option == "plan.name":  # a config string, via --set (JSON is YAML: the exact string)
        return ["--set", f"plan.name={json.dumps(value)}"]
    return [option, value]


@pytest.mark.parametrize("kind", EVIL)
@pytest.mark.parametrize(
    "option", ["--partition", "--account", "--job-name", "--time", "plan.name"]
)
def test_sbatch_values_are_refused(tmp_path, capsys, option, kind):
    value = EVIL[kind]
    cfg = write_launch_config(tmp_path)
    argv = ["launch", str(cfg), "--slurm", "--gpus-per-node", "2", *_name_value_args(option, value)]
    ok = set("0123456789:-") if option == "--time" else _NAME_OK
    bad = next(c for c in value if c not in ok)
    assert_refused(tmp_path, capsys, argv, option, repr(bad))
    assert not (tmp_path / "run").exists()
    # --dry-run refuses it the same way (and prints no script)
    assert_refused(tmp_path, capsys, argv + ["--dry-run"], option, repr(bad))


@pytest.mark.parametrize("value", ["", " gpu", "gpu ", "gpu#x", "gpu\\x", "gp%u", "gpü"])
def test_partition_outside_the_name_characters(tmp_path, capsys, value):
    argv = [
        "launch",
        str(write_launch_config(tmp_path)),
        "--slurm",
        "--gpus-per-node",
        "2",
        "--partition",
        value,
    ]
    assert_refused(tmp_path, capsys, argv, "--partition")


@pytest.mark.parametrize("kind", EVIL)
@pytest.mark.parametrize(
    "option", ["--nodes", "--gpus-per-node", "--cpus-per-task", "--signal-lead", "--master-port"]
)
def test_number_options_refuse_words(tmp_path, capsys, option, kind):
    argv = [
        "launch",
        str(write_launch_config(tmp_path)),
        "--slurm",
        "--gpus-per-node",
        "2",
        option,
        EVIL[kind],
    ]
    assert_refused(tmp_path, capsys, argv, option, "invalid int value")


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--nodes", "0", "at least 1"),
        ("--nodes", "-2", "at least 1"),
        ("--gpus-per-node", "0", "at least 1"),
        ("--gpus-per-node", "-1", "at least 1"),
        ("--cpus-per-task", "0", "at least 1"),
        ("--cpus-per-task", "-8", "at least 1"),
        ("--signal-lead", "0", "1..65535"),
        ("--signal-lead", "-5", "1..65535"),
        ("--signal-lead", "70000", "1..65535"),
        ("--master-port", "0", "1..65535"),
        ("--master-port", "65536", "1..65535"),
        ("--master-port", "-1", "1..65535"),
        ("--node-rank", "1", "drop"),
        ("--master-addr", "h0", "drop"),
    ],
)
def test_slurm_numbers_out_of_range(tmp_path, capsys, option, value, words):
    argv = [
        "launch",
        str(write_launch_config(tmp_path)),
        "--slurm",
        "--nodes",
        "2",
        "--gpus-per-node",
        "2",
        option,
        value,
    ]
    assert_refused(tmp_path, capsys, argv, option, words)


def test_time_is_checked_exactly():
    for bad in ("12:00:00\n", " 12:00:00", "12:00:00 ", "１２", "1-2-3", "", "12:00:00;x"):
        with pytest.raises(CgptError, match="not a SLURM time"):
            slurm.time_limit_seconds(bad)


# the places where a path or a free string legitimately reaches the script's command lines
SLOTS = [
    "runtime.out_dir",
    "the config path",
    "--set",
    "the working directory",
    "the torchrun path",
]


def _odd_setup(tmp_path, monkeypatch, value: str, launcher: str = "torchrun"):
    """Put `value` into every legitimate slot at once: the run folder, the config's folder,
    a --set value, the working directory and the launcher's folder (the venv)."""
    cfg_dir = tmp_path / f"cfg {value}"
    cfg_dir.mkdir()
    cfg = write_launch_config(cfg_dir, global_batch=12, micro_batch=3)  # 2x2 ranks: no re-split
    out_dir = tmp_path / f"out {value}"
    work = tmp_path / f"work {value}"
    work.mkdir()
    monkeypatch.chdir(work)
    venv_bin = tmp_path / f"venv {value}" / "bin"
    venv_bin.mkdir(parents=True)
    _shim(venv_bin, launcher, 'printf "%s\\0" "$@" > "$CGPT_TEST_LOG/launcher.$$"\n')
    monkeypatch.setattr("sys.executable", str(venv_bin / "python"))
    sets = [
        f"runtime.out_dir={json.dumps(str(out_dir))}",
        f"runtime.wandb_project={json.dumps(value)}",
    ]
    argv = [
        "launch",
        str(cfg),
        "--slurm",
        "--nodes",
        "2",
        "--gpus-per-node",
        "2",
        "--launcher",
        launcher,
    ]
    for item in sets:
        argv += ["--set", item]
    return argv, cfg, out_dir, work, venv_bin / launcher, sets


@pytest.mark.parametrize("slot", SLOTS)
def test_control_characters_are_refused_in_every_path(tmp_path, capsys, monkeypatch, slot):
    """A newline is legal in a Linux file name but never in a job script: refused, one line,
    whichever path or string carries it."""
    clean = "ok"
    argv, *_ = _odd_setup(tmp_path, monkeypatch, clean)
    evil = EVIL["newline"]
    if slot == "runtime.out_dir":
        argv[argv.index(next(a for a in argv if a.startswith("runtime.out_dir=")))] = (
            f"runtime.out_dir={json.dumps(str(tmp_path / evil))}"
        )
    elif slot == "the config path":
        folder = tmp_path / f"cfg {evil}"
        folder.mkdir()
        argv[1] = str(write_launch_config(folder))
    elif slot == "--set":
        argv += ["--set", f"runtime.wandb_project={evil}"]  # the raw argument
    elif slot == "the working directory":
        (tmp_path / evil).mkdir()
        monkeypatch.chdir(tmp_path / evil)
    else:
        odd_bin = tmp_path / evil / "bin"
        odd_bin.mkdir(parents=True)
        _shim(odd_bin, "torchrun", "exit 0\n")
        monkeypatch.setattr("sys.executable", str(odd_bin / "python"))
    line = assert_refused(tmp_path, capsys, argv, slot, "'\\n'")
    assert "control character" in line


STANDINS = Path(__file__).parent / "slurm_standins"


def _slurmstepd_preexec():
    """preexec_fn that starts a batch script with the signal state slurmstepd gives it
    (fake_slurm.default_signals), not the test runner's."""
    sys.path.insert(0, str(STANDINS))
    try:
        from fake_slurm import default_signals
    finally:
        sys.path.remove(str(STANDINS))
    return default_signals


PYTHON = sys.executable  # tests below point sys.executable at a fake venv


def _stand_ins(folder: Path, nodes=("node-a", "node-b")) -> dict[str, str]:
    """sbatch, srun, scontrol and scancel on PATH: the Python stand-ins of tests/slurm_standins
    (each cites the real program's behaviour it reproduces). Returns the environment
    variables they read: their state folder and the allocation's node names."""
    folder.mkdir()
    for name in ("sbatch", "srun", "scontrol", "scancel"):
        _shim(folder, name, f'exec {shlex.quote(PYTHON)} {STANDINS / name}.py "$@"\n')
    state = folder / "slurm-state"
    state.mkdir()
    return {"CGPT_FAKE_SLURM": str(state), "CGPT_FAKE_NODES": ",".join(nodes)}


def _calls(log: Path, name: str) -> list[list[str]]:
    return [
        f.read_bytes().decode("utf-8", "surrogateescape").split("\0")[:-1]
        for f in sorted(log.glob(f"{name}.*"))
    ]


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
@pytest.mark.parametrize("kind", [k for k in EVIL if k != "newline"])
def test_odd_paths_and_values_pass_through_intact(tmp_path, capsys, monkeypatch, kind, launcher):
    """Quotes, $(...), backticks, ; and spaces in the run folder, the config path, a --set
    value, the working directory and the venv: the script is valid bash, sbatch gets the
    script's path as one argument, and run with stand-ins it hands every value to the
    launcher unchanged, one argument each, without running any of it."""
    value = EVIL[kind]
    argv, cfg, out_dir, work, launcher_path, sets = _odd_setup(
        tmp_path, monkeypatch, value, launcher
    )
    bin_, log = tmp_path / "bin", tmp_path / "log"
    for key, value in _stand_ins(bin_).items():
        monkeypatch.setenv(key, value)
    log.mkdir()
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setenv("CGPT_TEST_LOG", str(log))
    assert run_cli(argv + ["--submit"]) == 0
    out = capsys.readouterr().out
    script = out_dir / "slurm.sbatch"
    assert "Submitted batch job 77" in out
    assert _calls(log, "sbatch") == [[str(script)]]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    opts = sbatch_lines(text)
    assert "output" not in opts  # sbatch cannot carry this path: the script redirects
    assert opts["job-name"] == "cgpt-custom" and opts["nodes"] == "2"
    assert stat.S_IMODE(script.stat().st_mode) == 0o755

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(
        os.environ,
        SLURM_JOB_ID="77",
        SLURM_JOB_NODELIST="node-[a-b]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NODEID="1",
    )
    res = subprocess.run(
        ["bash", str(script)],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_slurmstepd_preexec(),
    )
    assert res.returncode == 0, res.stderr
    assert not list(tmp_path.rglob("PWNED")), "a value was run as a command"
    assert (
        "cgpt: job 77 on 2 node(s), master node-a:29500" in (out_dir / "slurm-77.out").read_text()
    )
    assert (out_dir / "hostfile.77").read_text() == "node-a slots=2\nnode-b slots=2\n"

    [srun] = _calls(log, "srun")
    assert (
        srun[:5]
        == ["--ntasks-per-node=1", "--cpus-per-task=16", "--kill-on-bad-exit=1", "bash", "-c"]
        and len(srun) == 6
    )
    [cmd] = _calls(log, "launcher")
    i = cmd.index
    if launcher == "torchrun":
        assert cmd[:10] == [
            "--nnodes",
            "2",
            "--nproc_per_node",
            "2",
            "--node_rank",
            "1",
            "--master_addr",
            "node-a",
            "--master_port",
            "29500",
        ]
    else:
        assert cmd[i("--hostfile") + 1] == str(out_dir / "hostfile.77")
        assert cmd[i("--node_rank") + 1] == "1" and cmd[i("--master_addr") + 1] == "node-a"
    # the trainer's arguments: the odd strings intact, one argument each
    assert cmd[i("cgpt.train") + 1 :] == [
        str(cfg.resolve()),
        "--set",
        sets[0],
        "--set",
        sets[1],
        "--resume",
    ]
    assert _calls(log, "scontrol") == [["show", "hostnames", "node-[a-b]"]] * 2


def test_launcher_placeholders_only_replace_launcher_options(tmp_path):
    """A trainer argument that happens to spell the script's internal stand-ins, or a flag
    name, stays as typed."""
    args = train_args(
        tmp_path / "run.yaml",
        ["runtime.wandb_project=CGPT_MASTER_ADDR", "--node_rank", "CGPT_HOSTFILE"],
        True,
    )
    for launcher in ("torchrun", "deepspeed"):
        text = slurm.render_sbatch(
            Topology(2, 2), args, tmp_path / "run", slurm.SlurmOptions(), launcher=launcher
        )
        cmd = srun_command(text)
        assert cmd[cmd.index("cgpt.train") + 1 :] == args


# ---- writing: atomic, never partial -----------------------------------------------------------


def test_script_is_written_atomically(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    old = slurm.write_sbatch("#!/bin/bash\necho old\n", run_dir)
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])

    def failing_replace(src, dst):
        events.append("replace")
        assert Path(src).parent == run_dir and Path(src).read_text() == "#!/bin/bash\nnew\n"
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CgptError, match="No space left"):
        slurm.write_sbatch("#!/bin/bash\nnew\n", run_dir)
    assert events == ["fsync", "replace"]  # the data is on disk before the rename
    assert old.read_text() == "#!/bin/bash\necho old\n"  # the old script is untouched
    assert sorted(p.name for p in run_dir.iterdir()) == ["slurm.sbatch"]  # no temp file
    monkeypatch.setattr(os, "replace", real_replace)
    path = slurm.write_sbatch("#!/bin/bash\nnew\n", run_dir)
    assert path.read_text() == "#!/bin/bash\nnew\n" and stat.S_IMODE(path.stat().st_mode) == 0o755
    assert sorted(p.name for p in run_dir.iterdir()) == ["slurm.sbatch"]


def test_run_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("not a folder")
    assert (
        main(["launch", str(write_launch_config(tmp_path)), "--slurm", "--gpus-per-node", "2"]) == 2
    )
    assert "cannot write" in capsys.readouterr().err


def test_safe_run_folder_keeps_sbatch_output(tmp_path, capsys):
    cfg = write_launch_config(tmp_path)
    assert main(["launch", str(cfg), "--slurm", "--gpus-per-node", "2", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert sbatch_lines(text)["output"] == f"{(tmp_path / 'run').resolve()}/slurm-%j.out"
    assert "exec >>" not in text


# ---- the time limit, end to end on CPU ranks ------------------------------------------------
E2E_STEPS = 40


def _e2e_run_folder(tmp_path: Path, data: Path, launcher: str) -> tuple[Path, Path, dict]:
    """A 2-rank CPU run (tiny model, periodic saves off) and its sbatch script run under the
    stand-ins (one node, `localhost`); returns the script, the run folder and the job's
    environment."""
    from helpers import make_cfg, write_run_config

    d = make_cfg(
        tmp_path,
        data,
        steps=E2E_STEPS,
        batch=8,
        eval_every=0,
        save_every=0,
        log_every=1,
        zero_stage=1,
        micro_batch=2,
    )
    cfg = write_run_config(tmp_path, d)
    run_dir = tmp_path / "run"
    text = slurm.render_sbatch(
        Topology(1, 2, master_port=free_port()),
        train_args(cfg, [], resume=True),
        run_dir,
        slurm.SlurmOptions(time="10:00", signal_lead_s=120),
        launcher=launcher,
        workdir=tmp_path,
    )
    script = slurm.write_sbatch(text, run_dir)
    env = child_env(
        PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        OMP_NUM_THREADS="1",  # torchrun sets it for its workers; the same for deepspeed
        PYTHONUNBUFFERED="1",
        SLURM_JOB_ID="77",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        **_stand_ins(tmp_path / "bin", nodes=("localhost",)),
    )
    return script, run_dir, env


def _time_limit_warning(script: Path, batch_pid: int, job: str) -> None:
    """What slurmctld does at `--signal=[B:]SIG@T` (sbatch(1) --signal): with B:, the signal
    goes to the batch shell only ("none of the other processes will be signaled"); without
    it, to every process of every job step and not the batch shell ("By default all job
    steps will be signaled, but not the batch shell itself")."""
    sys.path.insert(0, str(STANDINS))
    try:
        from fake_slurm import parse_signal, signal_container, step_pids
    finally:
        sys.path.remove(str(STANDINS))
    spec = sbatch_lines(script.read_text())["signal"]
    batch_only = spec.startswith("B:")
    sig = parse_signal(spec.removeprefix("B:").split("@")[0])
    if batch_only:
        os.kill(batch_pid, sig)
    else:
        for pid in step_pids(job):
            signal_container(pid, sig)


def _usr1_bits(pid: int) -> tuple[bool, bool]:
    """(caught, pending) for SIGUSR1 of a process, from /proc/PID/status (SigCgt; SigPnd or
    ShdPnd): a rank catches it, a launcher started with it ignored does not."""
    bit = 1 << (signal.SIGUSR1 - 1)
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("SigCgt", "SigPnd", "ShdPnd"):
            fields[key] = int(value.strip(), 16)
    return bool(fields["SigCgt"] & bit), bool((fields["SigPnd"] | fields["ShdPnd"]) & bit)


def _warn_while_frozen(script: Path, batch_pid: int, env: dict) -> None:
    """The time-limit warning with the job's steps frozen (SIGSTOP) until every rank holds
    it pending: a tiny run on an idle machine would otherwise finish all its steps in the
    moment between "step k is in metrics.jsonl" and the signal's arrival. Freezing changes
    nothing the ranks see; they act on the warning at their next step boundary."""
    sys.path.insert(0, str(STANDINS))
    try:
        from fake_slurm import signal_container, step_pids
    finally:
        sys.path.remove(str(STANDINS))
    import psutil

    job = env["SLURM_JOB_ID"]
    saved = os.environ.get("CGPT_FAKE_SLURM")
    os.environ["CGPT_FAKE_SLURM"] = env["CGPT_FAKE_SLURM"]  # the stand-ins' state folder
    try:
        tasks = step_pids(job)
    finally:
        if saved is None:
            del os.environ["CGPT_FAKE_SLURM"]
        else:
            os.environ["CGPT_FAKE_SLURM"] = saved
    for pid in tasks:
        signal_container(pid, signal.SIGSTOP)
    procs = [p for t in tasks for p in [psutil.Process(t), *psutil.Process(t).children(True)]]
    ranks = [p.pid for p in procs if _usr1_bits(p.pid)[0]]
    try:
        assert ranks, "no process of the step catches SIGUSR1"
        _time_limit_warning(script, batch_pid, job)
        wait_until(
            lambda: all(_usr1_bits(pid)[1] for pid in ranks),
            120,
            "SIGUSR1 pending in every rank",
            poll=0.05,
        )
    finally:
        for pid in tasks:
            signal_container(pid, signal.SIGCONT)


def _run_job(script: Path, env: dict, run_dir: Path, warn_at: int | None = None):
    """Start the batch script as slurmd would (its pid recorded for scancel --batch); with
    `warn_at`, deliver the time-limit warning once metrics.jsonl has that step. Returns
    (exit code, output)."""
    proc = subprocess.Popen(
        ["bash", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_slurmstepd_preexec(),
    )
    state = Path(env["CGPT_FAKE_SLURM"])
    (state / f"batch.{env['SLURM_JOB_ID']}").write_text(str(proc.pid))
    try:
        if warn_at is not None:
            wait_until(
                lambda: any(s >= warn_at for s in metrics_steps(run_dir)),
                600,
                f"step {warn_at} in metrics.jsonl",
                poll=0.1,
                alive=lambda: proc.poll() is None,
            )
            _warn_while_frozen(script, proc.pid, env)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out


def _weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def e2e_data(tmp_path_factory) -> Path:
    from helpers import make_byte_data

    return make_byte_data(tmp_path_factory.mktemp("data") / "bytes", n_files=6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, e2e_data) -> Path:
    """The same job run to the end without a warning (the bitwise reference)."""
    tmp = tmp_path_factory.mktemp("straight")
    script, run_dir, env = _e2e_run_folder(tmp, e2e_data, "torchrun")
    rc, out = _run_job(script, env, run_dir)
    assert rc == 0, out[-4000:]
    assert not (Path(env["CGPT_FAKE_SLURM"]) / "requeue.log").exists()
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_time_limit_checkpoints_requeues_once_and_resumes_bitwise(
    tmp_path, e2e_data, uninterrupted, launcher
):
    """The issue's reproduction under SLURM's real signal semantics: the warning at step k
    (B:USR1 to the batch shell) makes every rank checkpoint the same step >= k (periodic
    saves are off), the job exits PREEMPTED and is requeued exactly once; the requeued job
    (the same script again) resumes past that step, writes each metrics row once and ends
    bitwise equal to the uninterrupted run. The old script (SIGTERM to srun) fails here:
    srun answers it with SIGKILL to the tasks and nothing is saved."""
    from cgpt.train.checkpoints import checkpoint as ckpt
    from cgpt.train.exit_codes import PREEMPTED

    k = 3
    script, run_dir, env = _e2e_run_folder(tmp_path, e2e_data, launcher)
    state = Path(env["CGPT_FAKE_SLURM"])
    rc, out = _run_job(script, env, run_dir, warn_at=k)
    assert rc == PREEMPTED, out[-4000:]
    assert "forcing job termination" not in out  # srun was never asked to kill
    stopped = ckpt.newest(run_dir / "checkpoints")[0]
    assert k <= stopped < E2E_STEPS, out[-4000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*")) == [f"step-{stopped}"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["steps"] == stopped
    assert (state / "requeue.log").read_text() == "77\n"  # requeued once, after the save
    assert f"stopped by SIGUSR1 at step {stopped}" in out

    env["SLURM_RESTART_COUNT"] = "1"  # SLURM starts the requeued job with the same id
    rc, out2 = _run_job(script, env, run_dir)
    assert rc == 0, out2[-4000:]
    assert (state / "requeue.log").read_text() == "77\n"  # a completed run is not requeued
    assert metrics_steps(run_dir) == list(range(1, E2E_STEPS + 1))  # no repeated rows
    assert losses(run_dir) == losses(uninterrupted)
    ref, got = _weights(uninterrupted), _weights(run_dir)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name


def test_standin_srun_and_scancel_behave_like_slurm(tmp_path):
    """The stand-ins' own contract (what the end-to-end test relies on): SIGUSR1 to srun and
    `scancel --signal=USR1 JOB` reach the task and its descendants, also one in a session of
    its own (as torchrun's workers are); `scancel --batch` reaches the batch shell only; a
    first SIGINT to srun only reports; SIGTERM to srun SIGKILLs the task ("forcing job
    termination"), so a task's SIGTERM handler never runs."""
    env = child_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", SLURM_JOB_ID="5")
    env.update(_stand_ins(tmp_path / "bin"))
    log = tmp_path / "signals"
    task = textwrap.dedent(f"""
        import os, signal, subprocess, sys, time
        def note(sig, _):
            with open({str(log)!r}, "a") as f:
                f.write(f"{{os.getpid()}} {{signal.Signals(sig).name}}\\n")
        for s in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            signal.signal(s, note)
        if len(sys.argv) == 1:  # the task: one child in a session of its own
            subprocess.Popen([sys.executable, __file__, "child"], start_new_session=True)
        print("up", flush=True)
        while True:
            time.sleep(0.05)
    """)
    script = tmp_path / "task.py"
    script.write_text(task)
    srun = subprocess.Popen(
        ["srun", "--ntasks-per-node=1", PYTHON, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert srun.stdout.readline().strip() == "up"
        assert srun.stdout.readline().strip() == "up"

        def got(name: str) -> int:
            text = log.read_text() if log.exists() else ""
            return sum(1 for ln in text.splitlines() if ln.endswith(" " + name))

        srun.send_signal(signal.SIGUSR1)
        wait_until(lambda: got("SIGUSR1") == 2, 60, "SIGUSR1 in the task and its child")
        subprocess.run(["scancel", "--signal=USR1", "5"], env=env, check=True)
        wait_until(lambda: got("SIGUSR1") == 4, 60, "scancel's SIGUSR1 in both")
        subprocess.run(["scancel", "--batch", "--signal=USR1", "5"], env=env, check=True)
        srun.send_signal(signal.SIGINT)  # first Ctrl-C: a status report only
        srun.send_signal(signal.SIGTERM)
        _, err = srun.communicate(timeout=60)
    finally:
        if srun.poll() is None:
            srun.kill()
    assert "interrupt (one more within 1 sec to abort)" in err
    assert "forcing job termination" in err
    assert got("SIGUSR1") == 4 and got("SIGINT") == 0 and got("SIGTERM") == 0
    assert srun.returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize(
    "rank0_code, launcher_rc, requeued, exit_code",
    [
        (75, 1, True, 75),  # torchrun with preempted ranks: 1, but rank 0 wrote 75
        (75, 75, True, 75),  # deepspeed passes the rank's 75 on
        (None, 1, False, 1),  # rank 0 died before writing: srun's code, no requeue
        (1, 1, False, 1),  # a dead rank
        (4, 1, False, 4),  # a collective timeout
        (0, 0, False, 0),  # completed
    ],
)
def test_script_requeues_only_after_a_checkpointed_stop(
    tmp_path, monkeypatch, rank0_code, launcher_rc, requeued, exit_code
):
    """The script's decision, from rank 0's code in $CGPT_EXIT_FILE (torchrun reports 1 for
    any failed worker) or srun's code when rank 0 wrote none. The launcher stand-in does what
    torchrun/deepspeed do with the ranks' result: rank 0 writes its file, the launcher exits
    with its own code."""
    write = "" if rank0_code is None else f'echo {rank0_code} > "$CGPT_EXIT_FILE"\n'
    _shim(tmp_path, "torchrun", f"{write}exit {launcher_rc}\n")
    monkeypatch.setattr(slurm, "find_program", lambda name: str(tmp_path / name))
    run_dir = tmp_path / "run"
    text = slurm.render_sbatch(
        Topology(1, 2), ["cfg.yaml", "--resume"], run_dir, slurm.SlurmOptions(), workdir=tmp_path
    )
    script = slurm.write_sbatch(text, run_dir)
    env = child_env(
        PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        SLURM_JOB_ID="9",
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_NUM_NODES="1",
        SLURM_NODEID="0",
        **_stand_ins(tmp_path / "bin", nodes=("localhost",)),
    )
    res = subprocess.run(
        ["bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_slurmstepd_preexec(),
    )
    assert res.returncode == exit_code, res.stdout + res.stderr
    log = Path(env["CGPT_FAKE_SLURM"]) / "requeue.log"
    assert (log.read_text() == "9\n") if requeued else not log.exists()
    assert not (run_dir / ".exit-code.9").exists()  # read, then removed
