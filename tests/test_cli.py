"""The `cgpt` command line as a user meets it: quick commands stay quick (no torch), packaged
configs by name, closed pipes, advice that names real programs, and help that answers.

Every command here runs in a fresh process (``python -m cgpt.launch``, what the ``cgpt``
console script calls), so what it imports and prints is what a user's shell sees.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import child_env

from cgpt.launch.cli import build_parser, command_parsers

REPO = Path(__file__).resolve().parents[1]
# what the quick commands must not load (issue 24 item 1: each costs seconds to import)
HEAVY = {"torch", "deepspeed", "transformers", "lm_eval", "datasets"}
# and what nothing but a fit needs (DESIGN.md's list of deferred imports); `cgpt plan` prints
# the paper's downstream-accuracy mapping, fitted with scipy, so only the plan may load it
FIT = {"scipy"}


def cgpt(*args: str, cwd: Path | None = None, timeout: float = 120, **kw):
    """Run ``cgpt ARGS`` in a fresh process; the CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "cgpt.launch", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def imported_by(code: str, cwd: Path) -> set[str]:
    """Top-level packages imported by ``python -X importtime -c CODE`` (its stderr report:
    ``import time: self | cumulative | <indent>module``)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "cgpt" in names, proc.stderr[-2000:]  # the report was read
    return names


def run_main(argvs: list[list[str]]) -> str:
    """Code that runs ``cgpt ARGV`` for each ARGV in one process (exit 0 expected; --help
    and --version exit through SystemExit(0))."""
    return (
        "import contextlib, io\n"
        "from cgpt.launch.cli import main\n"
        f"for argv in {argvs!r}:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    assert not rc, (argv, rc)\n"
    )


# ---- item 1: quick commands are quick ------------------------------------------------------
@pytest.mark.parametrize(
    "argvs",
    [
        [["--version"], ["--help"]],
        [
            ["plan", "111M"],
            ["plan", "--params", "400M", "--recipe", "olmo", "--json"],
            ["plan", "--flops", "1e20", "--decay", "wsd"],
            ["plan", "111M", "--gpu", "h100", "--gpus", "8"],  # with the memory estimate
        ],
    ],
    ids=["version-help", "plan"],
)
def test_quick_commands_import_no_torch(argvs, tmp_path):
    loaded = imported_by(run_main(argvs), tmp_path)
    heavy = HEAVY if argvs[0][0] == "plan" else HEAVY | FIT
    assert not loaded & heavy, f"cgpt {argvs}: imported {sorted(loaded & heavy)}"


def test_every_help_imports_no_torch(tmp_path):
    """`--help` of every verb (and sub-verb) in one process: nothing heavy loads."""
    argvs = [[*path, "--help"] for path, _ in command_parsers(build_parser())]
    assert len(argvs) > 10  # the walk found the verbs
    loaded = imported_by(run_main(argvs), tmp_path)
    assert not loaded & (HEAVY | FIT), f"--help imported {sorted(loaded & (HEAVY | FIT))}"


def test_launch_dry_run_imports_no_torch(tmp_path):
    """`cgpt launch RUN --dry-run` builds the launcher command without torch (the GPU count
    comes from --gpus-per-node; only without it is this machine's count asked of torch)."""
    run = str(REPO / "configs" / "demo-cpu.yaml")
    argvs = [["launch", run, "--dry-run", "--gpus-per-node", "2"]]
    argvs.append(["launch", run, "--dry-run", "--gpus-per-node", "4", "--slurm"])
    loaded = imported_by(run_main(argvs), tmp_path)
    heavy = loaded & (HEAVY | FIT)
    assert not heavy, f"launch --dry-run imported {sorted(heavy)}"


def test_sweep_dry_run_imports_no_torch(tmp_path):
    """`cgpt sweep SWEEP --dry-run` lists the points (branches included) without torch: the
    checkpoint names a branched sweep checks live in cgpt.train.checkpoints.layout."""
    argvs = [
        ["sweep", str(REPO / "configs" / name), "--dry-run"]
        for name in ("sweep-cpu-extrap-tuned.yaml", "sweep-cpu-wsd.yaml")
    ]
    loaded = imported_by(run_main(argvs), tmp_path)
    heavy = loaded & (HEAVY | FIT)
    assert not heavy, f"sweep --dry-run imported {sorted(heavy)}"


def test_model_package_loads_gpt_on_first_use(tmp_path):
    """`from cgpt.model import CgptError` is torch-free; `cgpt.model.GPT` still works."""
    import torch

    import cgpt.model as m
    from cgpt.model.gpt import GPT

    assert not imported_by("from cgpt.model import CgptError, GPTConfig", tmp_path) & HEAVY
    assert m.GPT is GPT and issubclass(m.GPT, torch.nn.Module)


# ---- item 5: shipped configs by name, from any folder ----------------------------------------
def test_configs_lists_every_shipped_config(tmp_path):
    proc = cgpt("configs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines())
    files = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    assert sorted(rows) == files
    assert all(len(about) > 10 for about in rows.values()), rows
    assert rows["cerebras-gpt-111m"].startswith("Cerebras-GPT-111M: the published recipe")
    assert "μP" in rows["cerebras-gpt-111m-mup"]
    path = cgpt("configs", "Cerebras-GPT-111M", "--path", cwd=tmp_path).stdout.strip()
    assert Path(path).read_text() == (REPO / "configs" / "cerebras-gpt-111m.yaml").read_text()
    text = cgpt("configs", "demo-cpu", cwd=tmp_path).stdout
    assert text == (REPO / "configs" / "demo-cpu.yaml").read_text()


def test_launch_and_sweep_take_a_shipped_name_from_any_folder(tmp_path):
    shipped = REPO / "configs" / "cerebras-gpt-111m.yaml"
    proc = cgpt("launch", "cerebras-gpt-111m", "--dry-run", "--gpus-per-node", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == str(shipped)  # the launched command reads that file
    proc = cgpt("sweep", "sweep-cpu", "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "L1-d16-h2" in proc.stdout and "FLOPs" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # a dry run writes nothing, here or in the package


@pytest.mark.slow  # the trainer's imports: torch and DeepSpeed load
def test_train_takes_a_shipped_name_and_a_local_file_wins(tmp_path):
    """`cgpt train cerebras-gpt-111m` in an empty folder reads the shipped 111M config: it
    gets as far as that config's data folder (data/pile, against this folder)."""
    proc = cgpt("train", "cerebras-gpt-111m", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"data folder '{tmp_path / 'data' / 'pile'}' not found" in proc.stderr
    # a file of that name in the working folder is what the user means
    (tmp_path / "cerebras-gpt-111m").write_text("model: [not, a, mapping]\n")
    proc = cgpt("launch", "cerebras-gpt-111m", "--dry-run", "--gpus-per-node", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "cerebras-gpt-111m" in proc.stderr
    assert str(REPO / "configs") not in proc.stdout + proc.stderr


def test_unknown_config_name_is_one_line_with_suggestions(tmp_path):
    proc = cgpt("train", "cerebras-111m", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cgpt train: error: 'cerebras-111m' is neither a file nor a config shipped with cgpt; "
        "did you mean cerebras-gpt-111m or cerebras-gpt-111m-mup or cerebras-gpt-13b? "
        "(`cgpt configs` lists them)"
    ]


# ---- item 6: closed pipes and advice that names real programs -------------------------------
def closed_pipe_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``cgpt ARGS`` writing into a pipe whose reader has already gone: the first write
    fails (EPIPE; Python ignores SIGPIPE), the same as `| head -1` that left before the
    rest came, but every time."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "cgpt.launch", *args],
            cwd=cwd,
            env=child_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "111M"],
        ["configs"],
        ["--version"],
        ["plan", "--help"],
    ],
    ids=["plan", "configs", "version", "plan-help"],
)
def test_closed_pipe_is_quiet(args, tmp_path):
    """Exit 141 (128 + SIGPIPE) without a word; argparse's help and version printer ignores
    a failed write itself (ArgumentParser._print_message), so those end 0 or 141."""
    proc = closed_pipe_run(*args, cwd=tmp_path)
    assert proc.stderr == "", proc.stderr
    by_argparse = {"--help", "--version"} & set(args)
    assert proc.returncode in ((0, 141) if by_argparse else (141,)), proc.returncode


def test_head_one_never_tracebacks(tmp_path):
    """The user's spelling, `cgpt ... | head -1`, twice: the race the issue saw in 1 try of 3
    ends quietly either way (exit 0 when everything fit in the pipe before head left, 141
    when it did not)."""
    cmd = f"'{sys.executable}' -m cgpt.launch configs demo-cpu | head -1"
    for _ in range(2):
        proc = subprocess.run(
            ["bash", "-c", f"set -o pipefail; {cmd}"],
            cwd=tmp_path,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        first = (REPO / "configs" / "demo-cpu.yaml").read_text().splitlines()[0]
        assert proc.stdout == first + "\n"
        assert proc.stderr == "" and proc.returncode in (0, 141), proc.stderr


def hub_scripts() -> set[str]:
    """The console scripts the installed huggingface_hub ships (its entry points)."""
    import importlib.metadata

    dist = importlib.metadata.distribution("huggingface_hub")
    return {e.name for e in dist.entry_points if e.group == "console_scripts"}


def follow_download_advice(message: str, repo: str) -> None:
    """The advice in ``message`` names a program the installed huggingface_hub ships, and
    that program's `download` takes the repo and --local-dir as advised (offline here, so
    its --help is as far as following it goes)."""
    import re
    import shutil

    m = re.search(rf"([\w-]+) download {re.escape(repo)} --local-dir DIR", message)
    assert m, message
    program = m.group(1)
    assert program in hub_scripts(), (program, hub_scripts())
    exe = shutil.which(program, path=str(Path(sys.executable).parent))
    assert exe, f"{program} is not installed next to {sys.executable}"
    proc = subprocess.run(
        [exe, "download", "--help"], env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--local-dir" in proc.stdout, proc.stderr


@pytest.mark.slow  # --init-from loads torch
def test_offline_init_from_advice_names_the_installed_hub_cli(tmp_path):
    repo = "cerebras/Cerebras-GPT-111M"
    proc = cgpt("plan", "--init-from", f"hf:{repo}", "--tokens", "2B", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot get it from the Hugging Face Hub" in proc.stderr
    assert "huggingface-cli" not in proc.stderr or "huggingface-cli" in hub_scripts()
    follow_download_advice(proc.stderr, repo)


def test_offline_eval_advice_names_the_installed_hub_cli():
    from cgpt.train.source.hub import explain_model

    repo = "cerebras/Cerebras-GPT-111M"
    message = str(explain_model(repo, OSError("not cached"), "offline"))
    follow_download_advice(message, repo)


def test_no_file_advises_huggingface_cli_unless_installed():
    """No advice, doc or test text in the tree names `huggingface-cli` while the installed
    huggingface_hub does not ship it (train/source/hub_cli.py, which picks the name, and the
    CHANGELOG's history excepted)."""
    if "huggingface-cli" in hub_scripts():
        pytest.skip("this huggingface_hub still ships huggingface-cli")
    proc = subprocess.run(
        [
            "git",
            "grep",
            "-l",
            "huggingface-cli",
            "--",
            ".",
            ":!tests/test_cli.py",
            ":!train/source/hub_cli.py",
            ":!CHANGELOG.md",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert proc.stdout == "", f"files naming huggingface-cli:\n{proc.stdout}"


# ---- item 7: help that answers ----------------------------------------------------------------
def help_texts() -> dict[tuple[str, ...], str]:
    """Every verb's --help as printed, by command path; () is `cgpt --help`."""
    parser = build_parser()
    texts = {(): parser.format_help()}
    texts.update({path: p.format_help() for path, p in command_parsers(parser)})
    return texts


def example_lines(text: str) -> list[str]:
    """The command lines of a help text's "Examples:" block: indented lines under the
    heading, each without its comment (after " #", or two spaces before words)."""
    import re

    out, inside = [], False
    for line in text.splitlines():
        if line.strip().lower() == "examples:":
            inside = True
        elif inside and line[:1] not in (" ", ""):
            inside = False
        elif inside and line.strip().startswith("cgpt "):
            cmd = re.split(r"\s+#|\s{2,}(?=[^-\s])", line.strip())[0]
            out.append(cmd)
    return out


def test_every_help_has_examples_of_its_own_verb():
    for path, text in help_texts().items():
        mine = [e for e in example_lines(text) if e.split()[1 : 1 + len(path)] == list(path)]
        assert mine, f"cgpt {' '.join(path)} --help has no example of itself:\n{text}"


def test_help_lists_choices_and_known_gpus_and_no_none_defaults():
    from cgpt.train.plan.devices import DEVICES

    parser = build_parser()
    for path, p in [((), parser), *command_parsers(parser)]:
        text = p.format_help()
        assert "(default: None)" not in text, f"cgpt {' '.join(path)} --help:\n{text}"
        for action in p._actions:
            if action.required and action.option_strings:
                assert "default" not in (action.help or ""), (path, action.option_strings)
            if action.choices and not isinstance(action, argparse._SubParsersAction):
                missing = [c for c in action.choices if str(c) not in text]
                assert not missing, (path, action.option_strings, missing)
    plan_help = " ".join(help_texts()[("plan",)].split())
    gpu = plan_help[plan_help.index("--gpu GPU device") :]
    gpu = gpu[: gpu.index("--gpus ")]
    assert all(name in gpu for name in DEVICES), gpu


def runs_for_real(argv: list[str]) -> bool:
    """Examples a test can run in full: the planner without files, configs, dry runs."""
    files = {"--write", "--data", "--init-from", "--fit"}
    planner = argv[0] == "plan" and not files & set(argv) and "--help" not in argv
    return argv[0] == "configs" or "--dry-run" in argv or planner


def test_every_example_runs_or_parses(tmp_path):
    """Each example line of every --help: run in an empty folder when cheap (plan, configs,
    --dry-run), else parsed by cgpt's own parser (its files do not exist here)."""
    examples = sorted({e for text in help_texts().values() for e in example_lines(text)})
    assert len(examples) >= 30, examples
    real, parsed = [], 0
    for line in examples:
        argv = shlex.split(line)[1:]
        if runs_for_real(argv):
            real.append(argv)
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                build_parser().parse_args(argv)
        except SystemExit as e:  # `cgpt plan --help` prints and exits 0
            assert e.code == 0, f"example does not parse: {line} (exit {e.code})"
        parsed += 1
    assert sum(a[0] == "plan" for a in real) >= 3 and parsed >= 20
    code = run_main(real).replace("assert not rc, (argv, rc)", "print('ran', argv, rc)")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=child_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = [line for line in proc.stdout.splitlines() if line.startswith("ran ")]
    assert ran == [f"ran {a} 0" for a in real], proc.stdout + proc.stderr[-3000:]
