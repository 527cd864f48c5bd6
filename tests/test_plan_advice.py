"""Every suggestion `cgpt plan` prints works when followed literally (issue 23 item 4): each
refusal below names flags; the test applies each alternative it offers to the same command
line and asserts the planner accepts it."""

from __future__ import annotations

import re

import pytest

from cgpt.launch.cli import main

VALUED = ("--nodes", "--gpus", "--batch-seqs", "--zero-stage", "--micro-batch", "--gpu", "--decay")
SWITCHES = ("--rules", "--activation-checkpointing")
OPPOSITE = {"--activation-checkpointing": "--no-activation-checkpointing"}


def suggestions(message: str) -> list[list[str]]:
    """Each alternative of a refusal as the flags it names: alternatives are separated by
    ' or ', ', ' and '; ', a flag's value is the word after it. The advice follows the first
    '; ' (before it the refusal may quote the flags typed)."""
    out = []
    advice = message.split("; ", 1)[1] if "; " in message else message
    for chunk in re.split(r" or |, |; ", advice):
        words = chunk.replace("(", " ").replace(")", " ").split()
        flags: list[str] = []
        for i, w in enumerate(words):
            if w in VALUED and i + 1 < len(words):
                flags += [w, words[i + 1]]
            elif w in SWITCHES:
                flags.append(w)
        if flags:
            out.append(flags)
    return out


def drops(message: str) -> list[str]:
    """The flags a refusal says to drop ('drop --x')."""
    return re.findall(r"drop (--[a-z-]+)", message)


def follow(argv: list[str], flags: list[str]) -> list[str]:
    """``argv`` with ``flags`` applied: a named flag replaces the one typed (value too)."""
    out = list(argv)
    i = 0
    while i < len(flags):
        flag = flags[i]
        value = [flags[i + 1]] if flag in VALUED else []
        for name in (flag, OPPOSITE.get(flag)):
            if name in out:
                j = out.index(name)
                del out[j : j + (2 if name in VALUED else 1)]
        out += [flag, *value]
        i += 1 + len(value)
    return out


def _refusal(argv, capsys) -> str:
    assert main(["plan", *argv]) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


CASES = [  # (command, how many alternatives it must offer at least)
    (["13B", "--nodes", "16", "--gpus-per-node", "8", "--gpu", "h100"], 3),  # cc73e43: 144
    (["1.3B", "--gpus", "64", "--gpu", "h100"], 4),  # cc73e43: batch 512 without --rules
    (["--params", "400M", "--batch-seqs", "100", "--gpus", "64", "--gpu", "h100"], 3),
    (["111M", "--gpus", "8", "--gpu", "h100", "--micro-batch", "4"], 3),
    (["13B", "--gpus", "1", "--gpu", "h100"], 1),
    (["13B", "--nodes", "1", "--gpus-per-node", "2", "--gpu", "a100"], 1),
    (["13B", "--gpus", "8", "--gpu", "h100", "--zero-stage", "1"], 2),
    (
        [
            "590M",
            "--gpus",
            "1",
            "--gpu",
            "h100",
            "--micro-batch",
            "44",
            "--zero-stage",
            "3",
            "--no-activation-checkpointing",
        ],
        1,
    ),  # fmt: skip
    (["--layers", "2", "--width", "64", "--batch-seqs", "32", "--micro-batch", "3"], 3),
    (["111M", "--lr", "1e-3"], 1),
    (["111M", "--vocab-size", "1000"], 1),
    (["--params", "100M", "--cooldown-fraction", "0.3"], 1),
    (["111M", "--gpus", "8"], 1),
    (["--gpu-hours", "10"], 1),
]


@pytest.mark.parametrize("argv, least", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_every_suggestion_is_accepted_when_followed(argv, least, capsys):
    err = _refusal(argv, capsys)
    alternatives = suggestions(err)
    assert len(alternatives) >= least, err
    for flags in alternatives:
        fixed = follow(argv, flags)
        assert main(["plan", *fixed]) == 0, (err, fixed, capsys.readouterr().err)
        capsys.readouterr()


def test_drop_advice_is_accepted(capsys):
    argv = ["--flops", "1e21", "--inference-tokens", "1e12", "--tokens-per-param", "30"]
    err = _refusal(argv, capsys)
    (flag,) = drops(err)
    fixed = argv[: argv.index(flag)] + argv[argv.index(flag) + 2 :]
    assert main(["plan", *fixed]) == 0


def test_split_advice_names_every_phase():
    """13B has two batch phases (720, then 1080): every suggested rank count splits both."""
    from cgpt.launch.cmd_plan import flag_of
    from cgpt.train.checks import FieldError
    from cgpt.train.plan import planner as P
    from cgpt.train.plan.devices import get_device

    with pytest.raises(FieldError) as e:
        P.with_cluster(P.plan_published("13B"), 128, get_device("h100"), per_node=8)
    advice = e.value.spelled(flag_of)  # as `cgpt plan` prints it
    nodes = [int(f[1]) for f in suggestions(advice) if f[0] == "--nodes"]
    assert nodes and all(720 % (8 * n) == 0 and 1080 % (8 * n) == 0 for n in nodes)
