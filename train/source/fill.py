"""A run config's model section taken from its ``init.source``.

:func:`fill_model_section` runs once per run, at the trainer's entry, on the raw YAML before
``parse_run_config`` (which reads nothing): the run's model section is the source's; an
explicit model field that contradicts it (a shape field, or μP on one side only) is one line
naming the field. Dropout and the init scales may be set freely.
"""

from __future__ import annotations

from cgpt.model.errors import CgptError, ConfigError
from cgpt.train.source.model_source import resolve

# the fields that fix the weights' shapes or the function they compute: taken from the source
STRUCTURAL = ("n_layer", "n_embd", "n_head", "n_inner", "n_positions", "vocab_size")
FUNCTIONAL = ("layer_norm_epsilon",)


def mup_reason(spec: str, source_mup: bool) -> str:
    """Why a μP source and a standard model section (or the reverse) cannot be one run."""
    if source_mup:
        return (
            f"init.source {spec} is a μP model but the model section has no mup: μP scales "
            "the embeddings and logits and attention by 1/d_head, so its weights compute "
            "another function without those multipliers (and their LRs differ); keep the "
            "source's mup section, or export it to HF first (the multipliers are folded in)"
        )
    return (
        f"init.source {spec} is a standard-parametrization model but the model section sets "
        "mup: the μP multipliers would change the function its weights compute and the "
        "per-layer LRs they were trained with; drop model.mup"
    )


def fill_model_section(data: dict) -> dict:
    """A raw run-config dict with its model section taken from ``init.source``; an explicit
    model field that contradicts the source raises ConfigError naming it. A run folder's
    record (``init.sha256`` set) is taken as it is: the source is not read again."""
    init = data.get("init")
    if not isinstance(init, dict) or not init.get("source"):
        return data
    given = data.get("model") or {}
    if not isinstance(given, dict):
        return data  # pydantic reports the bad model section
    if init.get("sha256") and given:
        return data
    try:
        src = resolve(init["source"], weights=False)
    except CgptError as e:
        raise ConfigError(str(e)) from None
    theirs = src.shape.to_dict()
    if given.get("mup") is not None and "mup" not in theirs:
        raise ConfigError(mup_reason(src.spec, False))
    if "mup" in theirs and "mup" in given and given["mup"] is None:
        raise ConfigError(mup_reason(src.spec, True))
    if "mup" in theirs and given.get("mup") is not None and given["mup"] != theirs["mup"]:
        raise ConfigError(
            f"model.mup is {given['mup']!r} but init.source {src.spec} was trained with "
            f"mup {theirs['mup']!r}; drop model.mup (it is taken from the source)"
        )
    for key in STRUCTURAL + FUNCTIONAL:
        if given.get(key) is not None and given[key] != theirs.get(key):
            raise ConfigError(
                f"model.{key} is {given[key]!r} but init.source {src.spec} has {key} = "
                f"{theirs.get(key)!r}; drop model.{key} (the model section is taken from "
                "the source)"
            )
    return {**data, "model": {**theirs, **{k: v for k, v in given.items() if v is not None}}}


__all__ = ["FUNCTIONAL", "STRUCTURAL", "fill_model_section", "mup_reason"]
