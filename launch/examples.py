"""The "Examples:" block of each verb's --help, in one table (cli.build_parser adds it to a
verb whose help has none). tests/test_cli.py runs every example line: for real where it is
cheap (plan, configs, --dry-run), else as far as argument parsing.

A line is ``cgpt VERB ARGS`` and, after two or more spaces, what it does.
"""

from __future__ import annotations

EXAMPLES: dict[str, list[str]] = {
    "plan": [
        "cgpt plan 111M                       the published 111M recipe",
        "cgpt plan --params 400M --gpu h100 --gpus 8    the rules at any size, on 8 H100s",
        "cgpt plan --flops 1e21 --json        compute-optimal for a FLOP budget, as JSON",
    ],
    "tokenizer": [
        "cgpt tokenizer train --vocab-size 1024 --out tok/stdlib    on the offline default corpus",
        "cgpt tokenizer gpt2 --out tok/gpt2   GPT-2's own BPE (Cerebras-GPT's)",
    ],
    "tokenizer train": [
        "cgpt tokenizer train --vocab-size 1024 --out tok/stdlib    on the offline default corpus",
        "cgpt tokenizer train --input corpus.jsonl --vocab-size 32000 --out tok/corpus",
    ],
    "prepare": [
        "cgpt prepare --tokenizer tok/stdlib --out data/stdlib    the offline default corpus",
        "cgpt prepare --input corpus.jsonl --tokenizer tok/gpt2 --out data/corpus",
    ],
    "train": [
        "cgpt train demo-cpu                  a shipped config by name (`cgpt configs`)",
        "cgpt train run.yaml --set runtime.micro_batch=4    a config from `cgpt plan --write`",
        "cgpt train runs/demo --resume        continue a stopped run from its last checkpoint",
    ],
    "bench": [
        "cgpt bench 111M --steps 5            tokens/s and MFU of the 111M model",
        "cgpt bench demo-cpu --hf             a config's model next to transformers' GPT-2",
    ],
    "launch": [
        "cgpt launch cerebras-gpt-111m --gpus-per-node 8 --dry-run    print the command",
        "cgpt launch run.yaml --hostfile hosts --gpus-per-node 8    many nodes over pdsh",
        "cgpt launch cerebras-gpt-111m --slurm --nodes 2 --gpus-per-node 4 --dry-run",
    ],
    "demo": [
        "cgpt demo                            the whole pipeline on this CPU (minutes)",
        "cgpt demo --out runs/demo2 --max-steps 50",
    ],
    "sweep": [
        "cgpt sweep sweep-cpu --dry-run       the points, tokens and FLOPs; writes nothing",
        "cgpt sweep sweep-cpu                 run it (CPU, 10-20 minutes), then fit",
        "cgpt sweep fit runs/sweep-cpu        refit a sweep folder",
    ],
    "mup": [
        "cgpt mup coord-check                 activation scale vs width (coord_check.png)",
        "cgpt mup transfer --steps 100        loss vs LR per width (lr_transfer.png)",
    ],
    "mup coord-check": [
        "cgpt mup coord-check --widths 64,128,256 --steps 3",
    ],
    "mup transfer": [
        "cgpt mup transfer --widths 64,128 --steps 100",
    ],
    "export": [
        "cgpt export runs/demo hf/demo        a run's final model (or newest checkpoint)",
        "cgpt export runs/demo/checkpoints/step-100 hf/demo-100 --dtype bfloat16",
    ],
    "import-hf": [
        "cgpt import-hf models/cerebras-gpt-111m cgpt-111m.safetensors",
    ],
    "branch": [
        "cgpt branch runs/stable --step 1000 --out runs/branch-1000",
    ],
}


def examples_block(lines: list[str]) -> str:
    """The epilog text for ``lines``."""
    return "Examples:\n" + "".join(f"  {line}\n" for line in lines)
