"""Hugging Face conversion: cgpt GPT <-> transformers GPT2LMHeadModel folders.

Our module names are HF GPT-2's (DESIGN.md), so conversion is ONE key map used both ways
plus a transpose of the four Conv1D weights (HF stores them (in, out), nn.Linear (out, in)).
``export_hf`` writes a folder that ``AutoModelForCausalLM.from_pretrained`` loads without
``trust_remote_code`` and, when transformers is importable, loads it back and compares
logits before the folder appears under its final name. ``import_hf`` reads such a folder
(e.g. a downloaded official Cerebras-GPT checkpoint) into a GPT.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, cast

import torch

from cgpt.model.config import GPTConfig
from cgpt.model.errors import CgptError
from cgpt.model.gpt import GPT
from cgpt.model.io import (
    LM_HEAD,
    WTE,
    atomic_dir,
    build_from_state_dict,
    check_file,
    is_tied,
    load_model,
    read_safetensors,
    read_torch_weights,
    save_file_atomic,
    save_model,
)
from cgpt.model.mup_export import fold_mup

# ---- the key map ---------------------------------------------------------------------------
# (our name, HF name, Conv1D transpose); "{i}" is the block index. The HF checkpoint layout
# of GPT2LMHeadModel; the tied lm_head.weight is handled apart (absent when tied).
# HF keeps these four as Conv1D, weight (in, out): transposed relative to our nn.Linear.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# shard above this, as huggingface_hub / save_pretrained: 13B fp32 (52 GB) is 11 shards
DEFAULT_SHARD_SIZE = "5GB"
_BLOCK = (
    "ln_1.weight",
    "ln_1.bias",
    "attn.c_attn.weight",
    "attn.c_attn.bias",
    "attn.c_proj.weight",
    "attn.c_proj.bias",
    "ln_2.weight",
    "ln_2.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)
KEY_MAP: list[tuple[str, str, bool]] = [
    ("transformer.wte.weight", "transformer.wte.weight", False),
    ("transformer.wpe.weight", "transformer.wpe.weight", False),
    *[(f"transformer.h.{{i}}.{k}", f"transformer.h.{{i}}.{k}", k in CONV1D) for k in _BLOCK],
    ("transformer.ln_f.weight", "transformer.ln_f.weight", False),
    ("transformer.ln_f.bias", "transformer.ln_f.bias", False),
]
_LAYER = re.compile(r"\.h\.(\d+)\.")
_OURS = {ours: (hf, t) for ours, hf, t in KEY_MAP}
_HF = {hf: (ours, t) for ours, hf, t in KEY_MAP}
# Buffers older transformers saved with every block (the causal mask): not weights.
_HF_BUFFERS = (".attn.bias", ".attn.masked_bias")


def _convert(sd: dict[str, torch.Tensor], table: dict, where: str) -> dict[str, torch.Tensor]:
    """Rename (and transpose Conv1D weights of) every key in ``sd`` through ``table``."""
    out = {}
    for key, tensor in sd.items():
        m = _LAYER.search(key)
        template = _LAYER.sub(".h.{i}.", key) if m else key
        if template not in table:
            raise CgptError(f"{where}: unexpected tensor {key!r}; not a GPT-2 weight name")
        name, transpose = table[template]
        name = name.format(i=m.group(1)) if m else name
        out[name] = tensor.detach().t().contiguous() if transpose else tensor.detach()
    return out


def to_hf_state_dict(model_or_sd: GPT | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF GPT2LMHeadModel tensors (CPU) from a GPT or a state dict in our naming.

    ``lm_head.weight`` is included only when it is a tensor of its own (untied head).
    """
    if isinstance(model_or_sd, GPT):
        if model_or_sd.config.mup is not None:
            raise CgptError(
                "a μP model's multipliers must be folded into its weights first "
                "(export_hf does it through cgpt.model.mup_export.fold_mup)"
            )
        sd = model_or_sd.state_dict()
    else:
        sd = dict(model_or_sd)
    head = sd.pop(LM_HEAD, None)
    hf = {k: v.cpu() for k, v in _convert(sd, _OURS, "state dict").items()}
    if head is not None and not _same_tensor(head, sd[WTE]):
        hf[LM_HEAD] = head.detach().cpu().contiguous()
    return hf


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and (a.data_ptr() == b.data_ptr() or torch.equal(a, b)))


def _normalize_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop mask buffers; add the ``transformer.`` prefix a GPT2Model checkpoint lacks."""
    out = {}
    for k, v in sd.items():
        if k.endswith(_HF_BUFFERS):
            continue
        if not k.startswith(("transformer.", "lm_head.")):
            k = "transformer." + k
        out[k] = v
    return out


def _expected_shapes(cfg: GPTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {
            k: tuple(v.shape)
            for k, v in GPT(GPTConfig(**{**cfg.to_dict(), "mup": None})).state_dict().items()
            if k != LM_HEAD
        }


def from_hf_state_dict(
    sd: dict[str, torch.Tensor], cfg: GPTConfig, tied: bool = True, where: str = "HF checkpoint"
) -> tuple[dict[str, torch.Tensor], bool]:
    """(state dict in our naming, tied) from HF GPT-2 tensors, checked against ``cfg``.

    As transformers does, a tied config ignores any stored ``lm_head.weight``; an untied one
    needs it (and is treated as tied when it equals the embedding).
    """
    sd = _normalize_hf_keys(sd)
    head = sd.pop(LM_HEAD, None)
    expected = _expected_shapes(cfg)
    for hf_key, tensor in sd.items():
        m = _LAYER.search(hf_key)
        entry = _HF.get(_LAYER.sub(".h.{i}.", hf_key) if m else hf_key)
        if entry is None:
            continue  # reported as unexpected by _convert below
        our_key = entry[0].format(i=m.group(1)) if m else entry[0]
        want = expected.get(our_key)
        want = tuple(reversed(want)) if want is not None and entry[1] else want
        if want is not None and tuple(tensor.shape) != want:
            raise CgptError(
                f"{where}: {hf_key} has shape {tuple(tensor.shape)} but config.json implies {want}"
            )
    ours = _convert(sd, _HF, where)
    if not tied:
        if head is None:
            raise CgptError(f"{where}: tie_word_embeddings is false but lm_head.weight is missing")
        if _same_tensor(head, ours.get(WTE, head)):
            tied = True
        else:
            ours[LM_HEAD] = head.detach()
    return ours, tied


# ---- config.json ---------------------------------------------------------------------------
def gpt_config_to_hf(
    cfg: GPTConfig,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    tie_word_embeddings: bool = True,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """config.json for GPT2LMHeadModel (fields: docs/REFERENCE.md, Architecture).

    Without a tokenizer, bos/eos default to the last id: GPT-2 BPE's <|endoftext|> is 50256
    = vocab_size - 1 (docs/REFERENCE.md, Architecture: vocab 50257).
    """
    eos = cfg.vocab_size - 1 if eos_token_id is None else eos_token_id
    bos = eos if bos_token_id is None else bos_token_id
    name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner,
        "n_positions": cfg.n_positions,
        "n_ctx": cfg.n_positions,
        "vocab_size": cfg.vocab_size,
        "activation_function": "gelu",  # exact erf GELU, not GPT-2's gelu_new
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "initializer_range": cfg.init_std,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "summary_first_dropout": cfg.dropout,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": tie_word_embeddings,
        "use_cache": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "dtype": name,
        "torch_dtype": name,  # transformers 5 reads "dtype", 4.x "torch_dtype"
    }


def hf_config_to_gpt(d: dict, where: str = "config.json") -> tuple[GPTConfig, bool]:
    """(GPTConfig, tie_word_embeddings) from a HF config dict; refuses what we can't run."""
    if d.get("model_type") != "gpt2":
        raise CgptError(
            f"{where}: model_type is {d.get('model_type')!r}; cgpt imports GPT-2 "
            "architecture models (model_type 'gpt2') only"
        )
    act = d.get("activation_function", "gelu_new")  # HF GPT2Config's default
    if act != "gelu":
        raise CgptError(
            f"{where}: activation_function {act!r} is not supported; cgpt uses the "
            "exact erf GELU ('gelu'), and 'gelu_new' (tanh) gives different outputs"
        )
    for key, bad in (
        ("scale_attn_weights", False),
        ("scale_attn_by_inverse_layer_idx", True),
        ("add_cross_attention", True),
    ):
        if d.get(key, not bad) == bad:
            raise CgptError(
                f"{where}: {key}={bad} is not supported (cgpt scales attention "
                "by 1/sqrt(d_head) in every layer and has no cross-attention)"
            )
    # reorder_and_upcast_attn only changes precision (scores in fp32), not the math: accepted.
    pdrops = {float(d.get(k, 0.0)) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    try:
        cfg = GPTConfig(
            n_layer=d["n_layer"],
            n_embd=d["n_embd"],
            n_head=d["n_head"],
            n_inner=d.get("n_inner"),
            n_positions=d.get("n_positions", 1024),
            vocab_size=d["vocab_size"],
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
            init_std=d.get("initializer_range", 0.02),
            dropout=max(pdrops),
        )
    except KeyError as e:
        raise CgptError(f"{where}: required field {e.args[0]!r} is missing") from None
    except CgptError as e:
        raise CgptError(f"{where}: {e}") from None
    return cfg, bool(d.get("tie_word_embeddings", True))


# ---- tokenizer -----------------------------------------------------------------------------
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


# GPT-2 BPE's end-of-text token, which Cerebras-GPT inherits (docs/REFERENCE.md, Architecture);
# GPT-2 also uses it as bos (transformers' GPT2Tokenizer defaults bos = eos = it)
GPT2_EOS = "<|endoftext|>"
_EOS_FALLBACKS = (GPT2_EOS, "</s>", "<eos>")


def load_rust_tokenizer(tok_dir: str | os.PathLike):
    """(``tokenizers.Tokenizer``, files that define it) of a HF tokenizer folder:
    ``tokenizer.json``, or GPT-2's original ``vocab.json`` + ``merges.txt`` (byte-level BPE,
    no prefix space: what transformers' GPT-2 converter builds from them)."""
    from tokenizers import Tokenizer

    tok_dir = Path(tok_dir)
    if not tok_dir.is_dir():
        raise CgptError(f"tokenizer folder {tok_dir} does not exist")
    path = tok_dir / "tokenizer.json"
    try:
        if path.is_file():
            return Tokenizer.from_file(str(path)), ["tokenizer.json"]
        if (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file():
            return _gpt2_bpe(tok_dir), ["vocab.json", "merges.txt"]
    except Exception as e:  # tokenizers raises plain Exception subclasses on bad files
        raise CgptError(
            f"{tok_dir} holds no readable tokenizer: {str(e).splitlines()[0]}"
        ) from None
    raise CgptError(
        f"{tok_dir} is not a Hugging Face tokenizer folder (no tokenizer.json, nor "
        "vocab.json + merges.txt)"
    )


def _gpt2_bpe(tok_dir: Path):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    tok = Tokenizer(BPE.from_file(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _configured_specials(tok_dir: Path) -> dict:
    """bos/eos token strings as the folder's special_tokens_map.json and tokenizer_config.json
    name them (tokenizer_config.json wins, as in transformers)."""
    out: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tok_dir / name).is_file():
            d = read_json(tok_dir / name)
            for role in ("bos", "eos"):
                v = d.get(f"{role}_token")
                v = v.get("content") if isinstance(v, dict) else v
                if isinstance(v, str):
                    out[role] = v
    return out


def special_ids(tok_dir: str | os.PathLike, tok=None) -> dict:
    """The ONE rule for a tokenizer folder's bos/eos (prepare's meta.json eos_id, the
    export's config.json, generation_config.json and tokenizer_config.json all use it):

    eos: the configured ``eos_token`` if it is in the vocab, else the first of
    <|endoftext|>, </s>, <eos> that is (None if none is); bos: the configured ``bos_token``
    if it is in the vocab, else eos (GPT-2's convention). Returns ids and token strings.
    """
    tok_dir = Path(tok_dir)
    tok = tok if tok is not None else load_rust_tokenizer(tok_dir)[0]
    conf = _configured_specials(tok_dir)
    eos_tok = next(
        (
            t
            for t in ([conf["eos"]] if "eos" in conf else []) + list(_EOS_FALLBACKS)
            if tok.token_to_id(t) is not None
        ),
        None,
    )
    bos_tok = conf.get("bos") if tok.token_to_id(conf.get("bos") or "") is not None else eos_tok
    return {
        "bos": tok.token_to_id(bos_tok) if bos_tok else None,
        "eos": tok.token_to_id(eos_tok) if eos_tok else None,
        "bos_token": bos_tok,
        "eos_token": eos_tok,
    }


def tokenizer_info(tok_dir: str | os.PathLike) -> dict:
    """{'vocab_size', 'bos', 'eos', 'bos_token', 'eos_token', 'files'} of a HF tokenizer
    folder (tokenizer.json, or vocab.json + merges.txt); bos/eos by :func:`special_ids`."""
    tok, files = load_rust_tokenizer(tok_dir)
    return {
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        **special_ids(tok_dir, tok),
        "files": files,
    }


def _copy_tokenizer(tok_dir: Path, dst: Path) -> list[str]:
    names = [n for n in TOKENIZER_FILES if (tok_dir / n).is_file()]
    names += sorted(p.name for p in tok_dir.glob("*.model"))  # sentencepiece model
    for n in names:
        shutil.copyfile(tok_dir / n, dst / n)  # a new file: the umask's mode
    return names


def _write_tokenizer(tok_dir: Path, dst: Path, info: dict, n_positions: int) -> None:
    """The tokenizer files of ``tok_dir`` made complete and consistent with config.json:
    a tokenizer.json (built from vocab.json + merges.txt when the folder has none, with the
    end-of-text token special, as transformers treats it), and tokenizer_config.json /
    special_tokens_map.json naming the bos/eos of :func:`special_ids` and
    ``model_max_length`` = the model's n_positions."""
    from tokenizers import AddedToken

    _copy_tokenizer(tok_dir, dst)
    tc = dst / "tokenizer_config.json"
    conf = read_json(tc) if tc.is_file() else {}
    if not (dst / "tokenizer.json").is_file():
        tok = _gpt2_bpe(tok_dir)
        specials = {t for t in (info["eos_token"], info["bos_token"]) if t}
        tok.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t in sorted(specials)]
        )
        tok.save(str(dst / "tokenizer.json"))
    # the exact tokenizer.json, not a class that may rewrite its pre-tokenizer
    conf.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    conf["model_max_length"] = n_positions
    for role in ("bos", "eos"):
        conf[f"{role}_token"] = info[f"{role}_token"]
    _write_json(tc, conf)
    smap = (
        read_json(dst / "special_tokens_map.json")
        if (dst / "special_tokens_map.json").is_file()
        else {}
    )
    smap.update({f"{r}_token": info[f"{r}_token"] for r in ("bos", "eos") if info[f"{r}_token"]})
    _write_json(dst / "special_tokens_map.json", smap)


# ---- export --------------------------------------------------------------------------------
def _export_state(model: GPT) -> tuple[dict[str, torch.Tensor], dict]:
    """Our-naming state dict ready for HF (μP multipliers folded) + config.json overrides."""
    if model.config.mup is None:
        return model.state_dict(), {}
    sd, overrides = fold_mup(model)
    return sd, dict(overrides or {})


def export_hf(
    model: GPT,
    out_dir: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    verify: bool = True,
    force: bool = False,
    max_shard_size: int | str = DEFAULT_SHARD_SIZE,
) -> Path:
    """Write ``out_dir`` as a transformers GPT2LMHeadModel folder (weights in the model's dtype).

    config.json, generation_config.json, model.safetensors (or, above ``max_shard_size``,
    model-0000K-of-0000N.safetensors shards with model.safetensors.index.json, as
    ``save_pretrained`` writes them), and the tokenizer files of ``tokenizer_dir``. With
    ``verify`` (and transformers importable) the written folder is loaded back and its
    logits compared with ``model``'s; a mismatch raises CgptError and nothing is left at
    ``out_dir``.
    """
    sd, overrides = _export_state(model)
    hf_sd = to_hf_state_dict(sd)
    tied = LM_HEAD not in hf_sd
    tok = tokenizer_info(tokenizer_dir) if tokenizer_dir is not None else None
    if tok and tok["vocab_size"] > model.config.vocab_size:
        raise CgptError(
            f"tokenizer {tokenizer_dir} has {tok['vocab_size']} tokens but the model's "
            f"vocab_size is {model.config.vocab_size}: wrong tokenizer for this model"
        )
    if tok and tok["eos"] is None:
        raise CgptError(
            f"tokenizer {tokenizer_dir} has no end-of-text token (no eos_token in its "
            f"config, nor any of {', '.join(_EOS_FALLBACKS)}): config.json cannot name one"
        )
    dtype = hf_sd[WTE].dtype
    bos: int | None = tok["bos"] if tok else None
    eos: int | None = tok["eos"] if tok else None
    config = gpt_config_to_hf(model.config, bos, eos, tied, dtype)
    config.update(overrides)
    gen = {
        "_from_model_config": True,
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
    }
    with atomic_dir(out_dir, force) as tmp:
        _save_weights(hf_sd, tmp, max_shard_size)
        del hf_sd
        _write_json(tmp / "config.json", config)
        _write_json(tmp / "generation_config.json", gen)
        if tokenizer_dir is not None and tok is not None:  # tok is read from tokenizer_dir
            _write_tokenizer(Path(tokenizer_dir), tmp, tok, model.config.n_positions)
        if verify:
            if transformers_available():
                compare_with_hf(model, tmp)
                if tokenizer_dir is not None:
                    check_exported_tokenizer(tmp, tokenizer_dir)
            else:
                warnings.warn(
                    "transformers is not installed: the export was not verified", stacklevel=2
                )
    return Path(out_dir)


def _save_weights(hf_sd: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str) -> None:
    """One model.safetensors, or shards + index (huggingface_hub's split, HF's file names)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    try:
        split = split_torch_state_dict_into_shards(hf_sd, max_shard_size=max_shard_size)
    except ValueError as e:  # an unparsable size such as "5 gigs"
        raise CgptError(f"max shard size {max_shard_size!r}: {e}") from None
    for filename, names in split.filename_to_tensors.items():
        save_file_atomic({n: hf_sd[n] for n in names}, folder / filename, {"format": "pt"})
    if split.is_sharded:
        _write_json(
            folder / "model.safetensors.index.json",
            {"metadata": split.metadata, "weight_map": split.tensor_to_filename},
        )


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    try:
        d = json.loads(check_file(path, "file").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CgptError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise CgptError(f"{path} is not a JSON object")
    return d


# ---- import --------------------------------------------------------------------------------
def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a HF folder: model.safetensors, a sharded index, or pytorch_model.bin."""
    for single, reader in (
        ("model.safetensors", lambda p: read_safetensors(p)[0]),
        ("pytorch_model.bin", read_torch_weights),
    ):
        if (folder / single).is_file():
            return reader(folder / single)
        index = folder / f"{single}.index.json"
        if index.is_file():
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            if not shards:
                raise CgptError(f"{index} has no weight_map")
            sd = {}
            for name in shards:
                path = (folder / name).resolve()
                if path.parent != folder.resolve():  # a shard name must not leave the folder
                    raise CgptError(f"{index}: shard {name!r} is outside {folder}")
                sd.update(reader(path))
            return sd
    raise CgptError(f"{folder} has no model.safetensors (nor a sharded index or pytorch_model.bin)")


def import_hf(
    path: str | os.PathLike, verify: bool = False, device: str | torch.device = "cpu"
) -> GPT:
    """A GPT holding the weights of a HF GPT-2 folder (dtype as stored).

    With ``verify`` (needs transformers) transformers loads the same folder and the logits
    of both are compared; a mismatch raises CgptError.
    """
    folder = Path(path)
    if not folder.exists():
        raise CgptError(f"Hugging Face folder {folder} does not exist")
    if not folder.is_dir():
        raise CgptError(
            f"{folder} is not a folder; import-hf reads a Hugging Face model folder "
            "(config.json + model.safetensors)"
        )
    if not (folder / "config.json").is_file():
        raise CgptError(f"{folder} has no config.json; not a Hugging Face model folder")
    cfg, tied = hf_config_to_gpt(read_json(folder / "config.json"), str(folder / "config.json"))
    ours, tied = from_hf_state_dict(read_hf_weights(folder), cfg, tied, str(folder))
    model = build_from_state_dict(cfg, ours, tied, str(folder), device)
    if verify:
        if not transformers_available():
            raise CgptError("verification needs transformers (pip install 'cgpt[hf]')")
        compare_with_hf(model, folder)
    return model


# ---- verification --------------------------------------------------------------------------
def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def load_hf_model(folder: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """transformers' GPT2LMHeadModel from ``folder``, refusing one with missing weights."""
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    kw = {"dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype": dtype}
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a verification step, not a user-facing download
    try:
        # with output_loading_info it returns (model, info); transformers' stubs say model only
        model, info = cast(
            tuple[Any, dict[str, Any]],
            AutoModelForCausalLM.from_pretrained(
                str(folder), local_files_only=True, output_loading_info=True, **kw
            ),
        )
    except (OSError, ValueError) as e:
        raise CgptError(f"transformers cannot load {folder}: {str(e).splitlines()[0]}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad or type(model).__name__ != "GPT2LMHeadModel":
        raise CgptError(
            f"transformers loaded {folder} as {type(model).__name__} with {bad}; "
            "the folder is not a complete GPT2LMHeadModel"
        )
    return model.eval()


PROBE_TEXT = "Hello world, the round trip: 42 tabs\tand  spaces\n\nnew lines ✓ é 日本"


def check_exported_tokenizer(folder: str | os.PathLike, source_dir: str | os.PathLike) -> None:
    """transformers' AutoTokenizer on an exported folder agrees with config.json (bos/eos
    ids, model_max_length = n_positions) and encodes a probe text exactly as the source
    tokenizer (read by ``tokenizers``, as `cgpt prepare` read it) does."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # any failure here means users can't load the export
        raise CgptError(f"transformers cannot load the exported tokenizer: {e}") from None
    cfg = read_json(folder / "config.json")
    src = load_rust_tokenizer(source_dir)[0]
    want = src.encode(PROBE_TEXT, add_special_tokens=False).ids
    got = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    checks = [
        ("bos id", tok.bos_token_id, cfg["bos_token_id"]),
        ("eos id", tok.eos_token_id, cfg["eos_token_id"]),
        ("model_max_length", tok.model_max_length, cfg["n_positions"]),
        ("probe text ids", got, want),
    ]
    bad = [f"{n}: tokenizer {a} vs {b}" for n, a, b in checks if a != b]
    if bad:
        raise CgptError(
            f"the exported tokenizer disagrees with config.json or its source {source_dir}: "
            + "; ".join(bad)
        )


@torch.no_grad()
def compare_with_hf(
    model: GPT,
    folder: str | os.PathLike,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    seed: int = 0,
    check_tokenizer: bool = False,
) -> float:
    """Max |logit difference| between ``model`` and transformers' load of ``folder``.

    Both run in fp32 (a bf16/fp16 model is upcast for the comparison and restored after;
    that round trip is exact), on a few random batches of different lengths.
    """
    if check_tokenizer:
        from transformers import AutoTokenizer

        try:
            AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # any failure here means users can't load the export
            raise CgptError(f"transformers cannot load the exported tokenizer: {e}") from None
    hf = load_hf_model(folder)
    param = next(model.parameters())
    dtype, device, was_training = param.dtype, param.device, model.training
    hf.to(device)
    cfg, gen = model.config, torch.Generator().manual_seed(seed)
    worst = 0.0
    try:
        model.float().eval()
        for batch, T in ((2, min(cfg.n_positions, 64)), (1, min(cfg.n_positions, 256)), (3, 1)):
            idx = torch.randint(cfg.vocab_size, (batch, T), generator=gen).to(device)
            ours, theirs = model(idx).float(), hf(idx).logits.float()
            diff = (ours - theirs).abs()
            worst = max(worst, diff.max().item())
            if not torch.all(diff <= atol + rtol * theirs.abs()):
                raise CgptError(
                    f"exported logits differ from the model's: max |diff| "
                    f"{diff.max().item():.3g} (atol {atol}, rtol {rtol}) at batch "
                    f"{tuple(idx.shape)}: the conversion is wrong"
                )
    finally:
        model.to(dtype).train(was_training)
        del hf
    return worst


__all__ = [
    "KEY_MAP",
    "to_hf_state_dict",
    "from_hf_state_dict",
    "gpt_config_to_hf",
    "hf_config_to_gpt",
    "export_hf",
    "import_hf",
    "compare_with_hf",
    "load_hf_model",
    "read_hf_weights",
    "tokenizer_info",
    "special_ids",
    "load_rust_tokenizer",
    "check_exported_tokenizer",
    "save_model",
    "load_model",
    "is_tied",
]
