"""Cerebras-GPT-μP plans: the published μP recipe for five sizes, and μP for custom shapes.

Hyperparameters tuned on a 40M proxy transfer to every width through m = d_model/256
(docs/REFERENCE.md, Cerebras-GPT-μP); a custom shape gets them when at least the proxy's
width. The model honours the ``mup`` section (cgpt.model.gpt); this module only writes plans.
Recipe and scope: docs/DESIGN-NOTES.md, plan/mup.

    python -m cgpt.train.plan.mup --write-configs configs/   # configs/cerebras-gpt-*-mup.yaml
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from cgpt.model.config import MuPConfig
from cgpt.model.errors import CgptError
from cgpt.model.sizes import canonical_name
from cgpt.train.plan.cluster import with_cluster
from cgpt.train.plan.devices import get_device
from cgpt.train.plan.published import CONFIG_DATA, CONFIG_GPU, CONFIG_GPUS, plan_published
from cgpt.train.plan.result import slug

# docs/REFERENCE.md, Cerebras-GPT-μP (constants of the 40M proxy)
# the model-side constants are MuPConfig's defaults (one definition, in cgpt.model.config)
BASE_WIDTH = MuPConfig.base_width
BASE_LR = 6e-3
BASE_MIN_LR = 6e-4  # 10% of the base LR
BASE_INIT_STD = MuPConfig.base_init_std
EMBEDDINGS_MULTIPLIER = MuPConfig.embeddings_multiplier
OUTPUT_MULTIPLIER = MuPConfig.output_multiplier  # logits × OUTPUT_MULTIPLIER / m


@dataclass(frozen=True)
class MuPSize:
    """One row of the μP table in docs/REFERENCE.md, Cerebras-GPT-μP (published values, 4 d.p.)."""

    name: str
    width_mult: float
    logits_multiplier: float
    hidden_init_std: float
    decay: str


MUP_SIZES: dict[str, MuPSize] = {
    s.name: s
    for s in [
        MuPSize("111M", 3, 0.3333, 0.0462, "linear"),
        MuPSize("256M", 4.25, 0.2353, 0.0388, "linear"),
        MuPSize("590M", 6, 0.1667, 0.0327, "linear"),
        MuPSize("1.3B", 8, 0.125, 0.0283, "cosine"),
        MuPSize("2.7B", 10, 0.1, 0.0253, "cosine"),
    ]
}


def mup_config(base_width: int = BASE_WIDTH) -> MuPConfig:
    return MuPConfig(
        base_width=base_width,
        embeddings_multiplier=EMBEDDINGS_MULTIPLIER,
        output_multiplier=OUTPUT_MULTIPLIER,
        attn_scale_by_d_head=True,
        base_init_std=BASE_INIT_STD,
    )


def mup_recipe(n_embd: int, n_layer: int, base_width: int = BASE_WIDTH) -> dict:
    """The derived per-layer numbers (what the model and optimizer will do), for reports."""
    m = n_embd / base_width
    return {
        "base_width": base_width,
        "width_mult": m,
        "base_lr": BASE_LR,
        "base_min_lr": BASE_MIN_LR,
        "hidden_lr_scale": 1.0 / m,
        "embeddings_multiplier": EMBEDDINGS_MULTIPLIER,
        "logits_multiplier": OUTPUT_MULTIPLIER / m,
        "attention_scale": "1/d_head",
        "init_std_embeddings": BASE_INIT_STD,
        "init_std_hidden": BASE_INIT_STD / math.sqrt(m),
        "init_std_out_proj": BASE_INIT_STD / math.sqrt(2 * m * n_layer),
    }


def apply_mup(plan, base_width: int = BASE_WIDTH):
    """The μP version of a standard Plan (cgpt.train.plan.planner.Plan; returns a new one).

    Published plans: only the five μP sizes. Rule-based plans: any width >= base_width.
    """
    if plan.model.mup is not None:
        raise CgptError(f"plan {plan.name!r} already uses μP")
    published = plan.source == "published"
    if published:
        key = canonical_name(plan.name)
        if key not in MUP_SIZES:
            raise CgptError(
                f"Cerebras-GPT-μP exists for {', '.join(MUP_SIZES)} only, not "
                f"{key}; for another size plan a custom shape with --layers/--width"
            )
        row = MUP_SIZES[key]
        decay = row.decay  # docs/REFERENCE.md, Cerebras-GPT-μP: linear/cosine
    else:
        decay = plan.decay
    if plan.model.n_embd < base_width:
        raise CgptError(
            f"μP needs a width of at least the base width {base_width} (the tuned "
            f"proxy's d_model), got n_embd {plan.model.n_embd}; plan a wider model "
            f"or set a smaller base width"
        )
    model = replace(plan.model, mup=mup_config(base_width))
    phases = plan.batch_schedule
    if phases:
        phases = tuple(p.model_copy(update={"decay": decay}) for p in phases)
    recipe = mup_recipe(model.n_embd, model.n_layer, base_width)
    note = (
        f"μP (docs/REFERENCE.md, Cerebras-GPT-μP): base LR {BASE_LR:g} -> {BASE_MIN_LR:g}, "
        f"hidden matrices at LR/m with m = {recipe['width_mult']:g}, embeddings ×"
        f"{EMBEDDINGS_MULTIPLIER:g}, logits ×1/m, attention /d_head; init stds "
        f"{BASE_INIT_STD:g} / {recipe['init_std_hidden']:.4g} / "
        f"{recipe['init_std_out_proj']:.4g} replace model.init_std and out_init_std"
    )
    return plan.replace(
        name=f"{plan.name}-mup",
        model=model,
        lr=BASE_LR,
        min_lr=BASE_MIN_LR,
        decay=decay,
        batch_schedule=phases,
        notes=plan.notes + (note,),
        mup_recipe=recipe,
    )


def plan_published_mup(name: str):
    """The published Cerebras-GPT-μP recipe of one of the five sizes."""
    return apply_mup(plan_published(name))


# ---- configs/ ----------------------------------------------------------------------------
def mup_run_config(name: str):
    """The run config shipped as configs/cerebras-gpt-<size>-mup.yaml (same target cluster
    and runtime settings as the standard configs of cgpt.train.plan.planner)."""
    plan = with_cluster(plan_published_mup(name), CONFIG_GPUS, get_device(CONFIG_GPU))
    return plan.to_run_config(
        CONFIG_DATA,
        runtime={
            "out_dir": f"runs/{slug(name)}-mup",
            "eval_every": 1000,
            "save_every": 1000,
            "log_every": 10,
        },
    )


def config_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{slug(name)}-mup.yaml"


def write_configs(folder: str | Path) -> list[str]:
    paths = []
    for name in MUP_SIZES:
        path = config_path(folder, name)
        mup_run_config(name).save(path)
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-configs", metavar="DIR", required=True)
    for p in write_configs(ap.parse_args().write_configs):
        print(p)
