"""`cgpt eval`: lm-eval scores equal lm-eval's own `--model hf` on the same exported folder;
known answers (a model that learned the answers scores far above chance, a random one at
chance); bits per byte by hand; the paper's table; the trainer hook; bad input is one line.

Everything is offline and local: a byte-level BPE tokenizer trained here, tiny GPTs built
here, lm-eval task YAMLs over jsonl files written here (``dataset_path: json``).
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import EOS, byte_bpe, child_env

from cgpt.launch.cli import main
from cgpt.model import GPT, PUBLISHED, CgptError, GPTConfig
from cgpt.model.io import save_model

pytest.importorskip("lm_eval", reason="cgpt eval needs lm-evaluation-harness (.[eval])")
pytest.importorskip("transformers", reason="lm-eval's HF backend needs transformers")

from cgpt.train.eval import harness, paper  # noqa: E402
from cgpt.train.eval.heldout import BYTES_KEY, heldout_loss, split_bytes  # noqa: E402

COLORS = ["red", "blue", "green", "gold"]
TASKS = ["cgpt_mc", "cgpt_ll", "cgpt_roll", "cgpt_lambada"]
BOOT = "1000"  # bootstrap iterations, the same on both sides of every comparison
REPO = Path(__file__).resolve().parent.parent


# ---- the local world: tokenizer, facts, tasks ---------------------------------------------
def _names(n: int = 40) -> list[str]:
    rng = random.Random(7)
    out: list[str] = []
    while len(out) < n:
        w = rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") + rng.choice("bdgkmnprstxz")
        if w not in out and w not in ("the", "red", "big", "dog", "pet", "bad"):
            out.append(w)
    return out


def make_tokenizer(folder: Path, texts: list[str], vocab_size: int = 512) -> Path:
    """A byte-level BPE trained on ``texts``, saved as an HF folder (tokenizer.json +
    tokenizer_config.json) that AutoTokenizer loads."""
    tok = byte_bpe(texts, vocab_size)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS,
                "bos_token": EOS,
                "model_max_length": 128,
                "clean_up_tokenization_spaces": False,
            }
        )
    )
    return folder


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _yaml(folder: Path, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(f"task: {name}\n{body}\nmetadata:\n  version: 1.0\n")


def _data(files: dict[str, str]) -> str:
    lines = "".join(f"    {split}: {path}\n" for split, path in files.items())
    return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n{lines}"


MC = """{data}test_split: test
training_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true"""
# the lambada_openai YAML of lm-eval, on our passages: predict the last word
LAMBADA = """{data}test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true"""
LL = """{data}test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{continuation}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true"""
ROLL = """{data}test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Demo-size matmuls gain nothing from threads and lose a lot when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-world")
    rng = random.Random(0)
    facts = {n: rng.choice(COLORS) for n in _names()}
    sentences = [f"the {n} {c}." for n, c in facts.items()]
    tok = make_tokenizer(root / "tok", sentences * 20)
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok / "tokenizer.json")).get_vocab_size()
    mc = _jsonl(
        root / "mc.jsonl",
        [
            {"question": f"the {n}", "choices": COLORS, "answer": COLORS.index(c)}
            for n, c in facts.items()
        ],
    )
    ll = _jsonl(
        root / "ll.jsonl",
        [{"context": f"the {n}", "continuation": f" {c}."} for n, c in facts.items()],
    )
    lam = _jsonl(root / "lambada.jsonl", [{"text": f"the {n} {c}"} for n, c in facts.items()])
    roll = _jsonl(root / "roll.jsonl", [{"text": s} for s in sentences])
    tiny = _jsonl(
        root / "tiny.jsonl",
        [
            {"question": f"the {n}", "choices": COLORS, "answer": COLORS.index(c)}
            for n, c in list(facts.items())[:3]
        ],
    )
    tasks = root / "tasks"
    _yaml(tasks, "cgpt_mc", MC.format(data=_data({"test": mc, "train": mc})))
    _yaml(tasks, "cgpt_ll", LL.format(data=_data({"test": ll})))
    _yaml(tasks, "cgpt_roll", ROLL.format(data=_data({"test": roll})))
    _yaml(tasks, "cgpt_lambada", LAMBADA.format(data=_data({"test": lam})))
    _yaml(tasks, "cgpt_tiny", MC.format(data=_data({"test": tiny, "train": tiny})))
    _yaml(
        tasks, "cgpt_fixed0", MC.format(data=_data({"test": mc, "train": mc})) + "\nnum_fewshot: 0"
    )
    _yaml(tasks, "cgpt_hub", MC.replace("{data}", "dataset_path: cgpt-test/no-such-dataset\n"))
    long = _jsonl(root / "long.jsonl", [{"context": "the", "continuation": " ".join(sentences)}])
    _yaml(tasks, "cgpt_long", LL.format(data=_data({"test": long})))
    # the paper's seven task names, on our local data (lm-eval lets --include-path override
    # a task name): the side-by-side table without the Hub
    ptasks = root / "paper_tasks"
    for name in ("hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "openbookqa"):
        _yaml(ptasks, name, MC.format(data=_data({"test": mc, "train": mc})))
    _yaml(ptasks, "lambada_openai", LAMBADA.format(data=_data({"test": lam})))
    return SimpleNamespace(
        root=root,
        tok=tok,
        vocab=vocab,
        facts=facts,
        sentences=sentences,
        tasks=tasks,
        paper_tasks=ptasks,
    )


def tiny_gpt(vocab: int, seed: int = 0, n_positions: int = 128) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        GPTConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, n_positions=n_positions)
    ).eval()


@pytest.fixture(scope="module")
def random_model(world):
    path = world.root / "random.safetensors"
    save_model(tiny_gpt(world.vocab), path)
    return path


def run_cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def eval_cmd(model, *extra, tok=None, tasks=None, include=None) -> list:
    """`eval MODEL [--tokenizer TOK] [--tasks TASKS] [--include-path DIR] --device cpu EXTRA...`
    (the arguments of `cgpt eval`; None leaves an option out)."""
    argv = ["eval", model]
    for flag, value in (("--tokenizer", tok), ("--tasks", tasks), ("--include-path", include)):
        if value is not None:
            argv += [flag, value]
    return [*argv, "--device", "cpu", *extra]


def eval_argv(model, world, out, *extra):
    """All of TASKS on the local world, batch 4, BOOT bootstrap iterations, into OUT."""
    return eval_cmd(
        model,
        "--batch-size",
        "4",
        "--bootstrap-iters",
        BOOT,
        "--out",
        out,
        *extra,
        tok=world.tok,
        tasks=",".join(TASKS),
        include=world.tasks,
    )


def lm_eval_reference(folder: Path, world, tasks=TASKS) -> dict:
    """lm-eval's own `--model hf` run (what its CLI calls) on a Hugging Face folder."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(world.tasks), include_defaults=False)
    return lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder)},
        tasks=list(tasks),
        task_manager=tm,
        device="cpu",
        batch_size=4,
        bootstrap_iters=int(BOOT),
        log_samples=False,
    )


def assert_same_scores(report: dict, ref_results: dict, tasks=TASKS) -> None:
    raw = report["results"]  # lm-eval's block, where lm-eval's results file has it
    for t in tasks:
        theirs = {k: v for k, v in ref_results[t].items() if "," in k}
        assert theirs, t
        for key, v in theirs.items():
            assert raw[t][key] == v, (t, key, raw[t][key], v)  # exactly, not approximately
            metric = key.split(",")[0]
            if not metric.endswith("_stderr") and isinstance(v, float):
                assert report["tasks"][t]["metrics"][metric] == v


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- scores equal lm-eval's own; known answers of a random model ---------------------------
@pytest.mark.slow  # lm-eval's own HF model beside ours (7 s): the whole suite runs it
def test_scores_equal_lm_eval_hf_and_random_model_is_at_chance(
    world, random_model, tmp_path, capsys
):
    from cgpt.model.hf import export_hf
    from cgpt.model.io import load_model

    out = tmp_path / "r.json"
    rc, stdout, _ = run_cli(eval_argv(random_model, world, out), capsys)
    assert rc == 0
    report = json.loads(out.read_text())
    assert "cgpt_mc" in stdout and "acc_norm" in stdout and "bits_per_byte" in stdout
    # the same weights, exported independently: byte-identical safetensors, identical scores
    folder = export_hf(load_model(random_model), tmp_path / "hf", tokenizer_dir=world.tok)
    assert report["model"]["weights_sha256"] == sha256(folder / "model.safetensors")
    assert report["model"]["source_sha256"] == sha256(random_model)
    assert_same_scores(report, lm_eval_reference(folder, world)["results"])
    # an HF folder as SRC is evaluated as it is: the same numbers again
    rc, _, _ = run_cli(
        eval_cmd(
            folder,
            "--batch-size",
            "4",
            "--bootstrap-iters",
            BOOT,
            "--out",
            tmp_path / "hf.json",
            tasks="cgpt_mc,cgpt_roll",
            include=world.tasks,
        ),
        capsys,
    )
    assert rc == 0
    via_hf = json.loads((tmp_path / "hf.json").read_text())
    assert via_hf["model"]["kind"] == "hf"
    assert via_hf["model"]["weights_sha256"] == report["model"]["weights_sha256"]
    for t in ("cgpt_mc", "cgpt_roll"):
        assert via_hf["results"][t] == report["results"][t]
    # provenance: lm-eval version, task versions, config hashes, seeds
    import lm_eval

    assert report["lm_eval"]["version"] == lm_eval.__version__
    for t in TASKS:
        entry = report["tasks"][t]
        assert entry["version"] == 1.0 and entry["n_shot"] == 0
        assert re.fullmatch(r"[0-9a-f]{64}", entry["config_sha256"])
    assert report["settings"]["fewshot_seed"] == 1234
    assert report["settings"]["seeds"]["fewshot_random_seed"] == 1234
    # known answers: a random-init model is at chance
    m = {t: report["tasks"][t]["metrics"] for t in TASKS}
    assert abs(m["cgpt_mc"]["acc"] - 0.25) <= 0.2  # 40 questions, 4 choices: sd 0.07
    assert m["cgpt_lambada"]["acc"] <= 0.1 and m["cgpt_ll"]["acc"] <= 0.1
    # near-uniform logits: ln(vocab) nats for every token of the rolling documents
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(world.tok / "tokenizer.json"))
    tokens = sum(len(tk.encode(s).ids) for s in world.sentences)
    nbytes = sum(len(s.encode()) for s in world.sentences)
    uniform_bpb = math.log(world.vocab) * tokens / nbytes / math.log(2)
    assert m["cgpt_roll"]["bits_per_byte"] == pytest.approx(uniform_bpb, rel=0.05)


# ---- the paper's table --------------------------------------------------------------------
def test_paper_table_is_docs_reference_once():
    text = (REPO / "docs/REFERENCE.md").read_text()
    section = text.split("## Zero-shot accuracy", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("| ") and r[2].isdigit()]
    table = {}
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        table[cells[0]] = [float(c) for c in cells[1:]]
    assert set(table) == set(paper.PAPER_ZERO_SHOT) == set(PUBLISHED)
    for size, vals in table.items():
        ours = paper.PAPER_ZERO_SHOT[size]
        assert [ours[t] for t in paper.SUITE_TASKS] + [ours["avg"]] == vals
        assert sum(vals[:7]) / 7 == pytest.approx(vals[7], abs=0.0015)  # avg = plain mean
    # the numbers live in one place in the code
    row = re.compile(r"0?\.268\D{1,12}0?\.594\D{1,12}0?\.488")  # 111M's first three columns
    hits = [
        p
        for d in ("train", "launch", "model")
        for p in (REPO / d).rglob("*.py")
        if row.search(p.read_text())
    ]
    assert [p.name for p in hits] == ["paper.py"]


def test_published_shape_is_matched_and_compared():
    p = PUBLISHED["111M"]
    shape = {"n_layer": p.n_layer, "n_embd": p.n_embd, "n_head": p.n_head, "vocab_size": 50257}
    assert paper.match_published(shape) == ("111M", None)
    size, note = paper.match_published({**shape, "vocab_size": 50304})
    assert size is None and "--compare-paper 111M" in note
    assert paper.match_published({**shape, "n_layer": 3}) == (None, None)
    assert paper.paper_size("cerebras-gpt-1.3b") == "1.3B"
    with pytest.raises(CgptError, match="valid names"):
        paper.paper_size("7B")
    scores = {t: {"acc": 0.3, "acc_norm": 0.4} for t in paper.SUITE_TASKS}
    scores["winogrande"] = {"acc": 0.5}
    rows = paper.compare(scores, "111M")
    assert [r.task for r in rows] == [*paper.SUITE_TASKS, "avg"]
    assert rows[0].diff == pytest.approx(0.3 - 0.268)
    assert rows[-1].ours == pytest.approx((0.3 * 6 + 0.5) / 7)
    assert paper.suite_average(scores, "acc_norm") == pytest.approx((0.4 * 6 + 0.5) / 7)
    assert paper.expand_tasks(["piqa", "cerebras-gpt"]) == list(paper.SUITE_TASKS[1:2]) + [
        t for t in paper.SUITE_TASKS if t != "piqa"
    ]


def test_suite_side_by_side_with_the_paper(world, random_model, tmp_path, capsys):
    argv = eval_cmd(
        random_model,
        "--suite",
        "cerebras-gpt",
        "--limit",
        "8",
        "--bootstrap-iters",
        "0",
        tok=world.tok,
        include=world.paper_tasks,
    )
    rc, out, _ = run_cli([*argv, "--compare-paper", "111m", "--out", tmp_path / "p.json"], capsys)
    assert rc == 0
    assert "vs Cerebras-GPT 111M" in out and "HellaSwag" in out and "OpenBookQA" in out
    assert "average" in out and "0.315" in out and "acc *" in out
    rep = json.loads((tmp_path / "p.json").read_text())
    accs = [rep["tasks"][t]["metrics"]["acc"] for t in paper.SUITE_TASKS]
    assert rep["suite"]["average"] == pytest.approx(sum(accs) / 7)
    rows = {r["task"]: r for r in rep["paper"]["rows"]}
    assert rows["hellaswag"]["paper"] == 0.268
    assert rows["hellaswag"]["diff"] == pytest.approx(rows["hellaswag"]["ours"] - 0.268)
    assert rows["avg"]["paper"] == 0.315 and rep["paper"]["matched_by"] == "--compare-paper"
    # a shape that is no published size: a note, not a made-up comparison
    rc, out, _ = run_cli(argv, capsys)
    assert rc == 0 and "none of the published sizes" in out and "vs Cerebras-GPT" not in out


# ---- held-out loss ------------------------------------------------------------------------
def _patch_meta(folder: Path, **split_bytes) -> None:
    from cgpt.train.data.shards import meta_checksum

    meta = json.loads((folder / "meta.json").read_text())
    for split, n in split_bytes.items():
        meta["splits"][split][BYTES_KEY] = n
    meta["meta_sha256"] = meta_checksum(meta)
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def test_bits_per_byte_equals_hand_computation(tmp_path, capsys):
    from cgpt.train.data.shards import write_token_data

    rng = np.random.default_rng(0)
    val = rng.integers(1, 50, 45)
    val[[9, 30, 44]] = 0  # EOS ends three documents
    write_token_data(tmp_path / "data", rng.integers(0, 50, 100), val, vocab_size=50, eos_id=0)
    _patch_meta(tmp_path / "data", val=321, train=400)
    model = GPT(GPTConfig(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # logits far from uniform
    save_model(model, tmp_path / "m.safetensors")

    res = heldout_loss(model, tmp_path / "data", "val", seq_len=8, batch=2, device="cpu")
    stream = torch.tensor([0, *val.tolist()])
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(val), 8):
            y = stream[s + 1 : s + 9]
            x = stream[s : s + len(y)]
            logp = F.log_softmax(model(x[None]).double()[0], -1)
            total -= logp[torch.arange(len(y)), y].sum().item()
    assert (res["tokens"], res["bytes"], res["bytes_from"]) == (45, 321, "meta.json")
    assert res["nats_per_token"] == pytest.approx(total / 45, rel=1e-6)
    assert res["bits_per_byte"] == pytest.approx(total / 321 / math.log(2), rel=1e-6)
    assert res["bits_per_byte"] == pytest.approx(
        res["nats_per_token"] * res["tokens"] / res["bytes"] / math.log(2), rel=1e-12
    )

    out = tmp_path / "h.json"
    rc, stdout, _ = run_cli(
        eval_cmd(
            tmp_path / "m.safetensors", "--data", tmp_path / "data", "--seq-len", "8", "--out", out
        ),
        capsys,
    )
    assert rc == 0 and "bits/byte" in stdout and f"{res['bits_per_byte']:.4f}" in stdout
    h = json.loads(out.read_text())["heldout"]
    assert h["bits_per_byte"] == pytest.approx(res["bits_per_byte"], rel=1e-6)  # batch 16
    assert "tasks" not in json.loads(out.read_text())  # --data alone runs no lm-eval task


def test_byte_count_recomputed_from_the_tokenizer_or_explained(world, tmp_path, capsys):
    from cgpt.train.data.shards import write_token_data
    from cgpt.train.data.tokenizer import load_tokenizer

    tok = load_tokenizer(world.tok)
    docs = [*world.sentences[:5], "the zib rouge-é ✓."]  # multi-byte characters
    ids = np.array([i for d in docs for i in [*tok.encode(d), tok.eos_id]])
    write_token_data(
        tmp_path / "with",
        ids,
        ids,
        tok.vocab_size,
        tok.eos_id,
        tokenizer_fingerprint=tok.fingerprint,
        tokenizer_dir=str(world.tok),
    )
    n, how = split_bytes(tmp_path / "with", "val")
    assert n == sum(len(d.encode("utf-8")) for d in docs) and "recomputed" in how
    model = tiny_gpt(world.vocab)
    save_model(model, tmp_path / "m.safetensors")
    rc, out, _ = run_cli(eval_cmd(tmp_path / "m.safetensors", "--data", tmp_path / "with"), capsys)
    assert rc == 0 and "recomputed by decoding" in out
    # neither meta.json's count nor a tokenizer: one line saying to re-run prepare
    write_token_data(tmp_path / "without", ids, ids, tok.vocab_size, tok.eos_id)
    rc, out, err = run_cli(
        [
            "eval",
            tmp_path / "m.safetensors",
            "--data",
            tmp_path / "without",
            "--out",
            tmp_path / "x.json",
        ],
        capsys,
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "re-run `cgpt prepare`" in err and "splits.val.text_bytes" in err
    assert not (tmp_path / "x.json").exists()


# ---- the trainer's hook -------------------------------------------------------------------
def test_run_tasks_hook_returns_flat_metrics_and_leaves_the_trainer_alone(world):
    model = tiny_gpt(world.vocab, seed=3).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    states = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    t = time.perf_counter()
    flat = harness.run_tasks(
        model,
        world.tok,
        ["cgpt_mc", "cgpt_lambada"],
        limit=20,
        include_path=str(world.tasks),
        device="cpu",
    )
    wall = time.perf_counter() - t
    assert set(flat) == {
        "eval/cgpt_mc/acc",
        "eval/cgpt_mc/acc_norm",
        "eval/cgpt_lambada/acc",
        "eval/cgpt_lambada/perplexity",
    }
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat.values())
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert random.getstate() == states[0]
    assert np.array_equal(np.random.get_state()[1], states[1])
    assert torch.equal(torch.get_rng_state(), states[2])
    print(f"run_tasks: 2 local tasks x 20 examples, demo-size model: {wall:.2f}s")


# ---- bad input: exit 2, one line, nothing written ------------------------------------------
def _bad(world, random_model, tmp_path, case):
    small = tmp_path / "small.safetensors"

    def mc(model, *extra, tasks="cgpt_mc", tok=world.tok):
        return eval_cmd(model, *extra, tok=tok, tasks=tasks, include=world.tasks)

    return {
        "not a model": mc(world.root / "mc.jsonl"),
        "folder not a model": mc(world.tasks),
        "tokenizer vocab": mc(small),
        "no tokenizer": mc(random_model, tok=None),
        "fewshot pool": mc(random_model, "--num-fewshot", "5", tasks="cgpt_tiny"),
        "fewshot fixed": mc(random_model, "--num-fewshot", "5", tasks="cgpt_fixed0"),
        "hub dataset": mc(random_model, tasks="cgpt_hub"),
        "hub model": mc("hf:cerebras/Cerebras-GPT-111M", tok=None),
        "bad paper size": mc(random_model, "--compare-paper", "7B"),
        "zero limit": mc(random_model, "--limit", "0"),
        "zero batch": mc(random_model, "--batch-size", "0"),
        "model_args key": mc(random_model, "--model_args", "parallelize=True"),
        "model_args clash": mc(random_model, "--model_args", f"pretrained={small}"),
        "samples without out": ["eval", random_model, "--tokenizer", world.tok, "--log_samples"],
    }[case]


BAD = {
    "not a model": "not a readable safetensors file",
    "folder not a model": "has no model.safetensors",
    "tokenizer vocab": "wrong tokenizer for this model",
    "no tokenizer": "pass --tokenizer DIR",
    "fewshot pool": "--num-fewshot 5 needs 6",
    "fewshot fixed": "fixes num_fewshot: 0",
    "hub dataset": "HF_DATASETS_OFFLINE=1",
    "hub model": "not in the local Hugging Face cache",
    "bad paper size": "valid names",
    "zero limit": "--limit must be a positive number, got 0.0",
    "zero batch": "--batch-size must be a positive integer, got 0",
    "model_args key": "cgpt eval takes pretrained=..., dtype=...",
    "model_args clash": "contradicts SRC",
    "samples without out": "--log_samples needs --output_path (or --out)",
}
# the cases whose own argv names no --out (the test adds one; this case must not get it)
NO_OUT = {"samples without out"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(world, random_model, tmp_path, capsys, case):
    save_model(tiny_gpt(64), tmp_path / "small.safetensors")  # vocab 64 < the tokenizer's
    out = tmp_path / "out.json"
    extra = [] if case in NO_OUT else ["--out", out]
    t = time.perf_counter()
    rc, stdout, err = run_cli([*_bad(world, random_model, tmp_path, case), *extra], capsys)
    assert rc == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cgpt eval: error: "), err
    assert BAD[case] in lines[0]
    assert not out.exists() and stdout == ""
    assert time.perf_counter() - t < 10  # in seconds, not after retries


def test_lm_eval_spellings_write_lm_eval_shaped_results_and_samples(
    world, random_model, tmp_path, capsys
):
    """lm-eval's flag names: --model hf --model_args ... --output_path DIR --log_samples give
    DIR/MODEL/results_DATE.json with lm-eval's blocks at the top level and lm-eval's
    samples_TASK_DATE.jsonl beside it, one record per document; the scores equal --out's."""
    rc, _, _ = run_cli(
        [
            "eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={random_model},tokenizer={world.tok}",
            "dtype=float32",
            "--tasks",
            "cgpt_mc,cgpt_ll",
            "--include_path",
            world.tasks,
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--bootstrap_iters",
            BOOT,
            "--output_path",
            tmp_path / "res",
            "--log_samples",
        ],
        capsys,
    )
    assert rc == 0
    (model_dir,) = (tmp_path / "res").iterdir()  # lm-eval's sanitized model name
    assert model_dir.name == re.sub(r"[\"<>:/|\\?*\[\]]+", "__", str(random_model))
    (results,) = model_dir.glob("results_*.json")
    report = json.loads(results.read_text())
    for block in ("results", "versions", "n-shot", "configs", "config", "higher_is_better"):
        assert block in report, block
    assert set(report["results"]) == {"cgpt_mc", "cgpt_ll"}
    assert report["n-shot"] == {"cgpt_mc": 0, "cgpt_ll": 0}
    assert report["settings"]["dtype"] == "float32"
    stamp = results.stem.removeprefix("results_")
    for task in ("cgpt_mc", "cgpt_ll"):
        rows = [
            json.loads(line)
            for line in (model_dir / f"samples_{task}_{stamp}.jsonl").read_text().splitlines()
        ]
        assert [r["doc_id"] for r in rows] == list(range(len(world.facts)))
        for key in ("doc", "target", "arguments", "resps", "filtered_resps", "doc_hash", "acc"):
            assert key in rows[0], key
        # the per-sample records are the ones the score was computed from
        assert sum(r["acc"] for r in rows) / len(rows) == report["results"][task]["acc,none"]
    # the same evaluation through cgpt's own spelling gives the same scores
    out = tmp_path / "plain.json"
    rc, _, _ = run_cli(eval_argv(random_model, world, out), capsys)
    assert rc == 0
    plain = json.loads(out.read_text())
    for task in ("cgpt_mc", "cgpt_ll"):
        assert plain["results"][task] == report["results"][task]


def test_continuation_longer_than_the_context_is_one_line(world, tmp_path, capsys):
    """lm-eval's HFLM stops on a bare AssertionError; we name the task and both lengths (the
    check runs where lm-eval tokenizes, so lm-eval's progress lines come before it)."""
    model = tmp_path / "short.safetensors"
    save_model(tiny_gpt(world.vocab, n_positions=32), model)
    out = tmp_path / "out.json"
    argv = eval_cmd(model, "--out", out, tok=world.tok, tasks="cgpt_long", include=world.tasks)
    rc, stdout, err = run_cli(argv, capsys)
    assert rc == 2 and "Traceback" not in err and not out.exists()
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"cgpt eval: error: task cgpt_long: a continuation is \d+ tokens long but the "
        r"model's context is 32 tokens; .*",
        last,
    ), last
    assert int(re.search(r"is (\d+) tokens", last).group(1)) > 32


def test_existing_out_and_missing_lm_eval(world, random_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.json"
    out.write_text("mine")
    rc, _, err = run_cli(eval_argv(random_model, world, out), capsys)
    assert rc == 2 and "--force" in err and out.read_text() == "mine"
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed
    rc, _, err = run_cli(eval_argv(random_model, world, tmp_path / "o.json"), capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "pip install -e '.[eval]'" in err and not (tmp_path / "o.json").exists()


def test_unreachable_hub_fails_fast_when_not_offline(
    world, random_model, tmp_path, capsys, monkeypatch
):
    """No offline variables set and the Hub does not answer: one quick probe, then offline
    (cached files only), and the uncached dataset is one line at once, not 20 s of retries."""
    import datasets.config as dcfg
    from huggingface_hub import constants

    for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(dcfg, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(harness, "_HUB_STATE", {})  # this process has not asked the Hub yet
    t = time.perf_counter()
    rc, _, err = run_cli(
        eval_cmd(
            random_model,
            "--out",
            tmp_path / "o.json",
            tok=world.tok,
            tasks="cgpt_hub",
            include=world.tasks,
        ),
        capsys,
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "did not answer" in err and "--include-path" in err
    assert time.perf_counter() - t < 10 and not (tmp_path / "o.json").exists()


def test_cli_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in (
        "--suite",
        "--tasks",
        "--include-path",
        "--num-fewshot",
        "--limit",
        "--batch-size",
        "--device",
        "--dtype",
        "--out",
        "--compare-paper",
        "--data",
        "--split",
        "hf:NAME",
    ):
        assert opt in out


# ---- slow: a model that learned the answers; lm-eval's real CLI; the full task index ------
def train_on_facts(world, steps: int = 150) -> GPT:
    """A demo-size GPT trained briefly (plain torch) on text that contains the answers."""
    from cgpt.train.data.tokenizer import load_tokenizer

    tok = load_tokenizer(world.tok)
    rng = random.Random(1)
    lines, ids = list(world.sentences), []
    for _ in range(60):
        rng.shuffle(lines)
        ids += tok.encode("\n".join(lines)) + [tok.eos_id]
    data = torch.tensor(ids)
    model = tiny_gpt(world.vocab, seed=1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):  # one thread (the module's fixture): ~20 ms a step
        ix = torch.randint(len(data) - 65, (16,), generator=gen)
        x = torch.stack([data[i : i + 64] for i in ix])
        y = torch.stack([data[i + 1 : i + 65] for i in ix])
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.slow
def test_trained_model_scores_far_above_chance_and_equals_lm_eval_cli(
    world, random_model, tmp_path, capsys
):
    import shutil

    from cgpt.model.hf import export_hf

    model = train_on_facts(world)
    run = tmp_path / "run"  # a run folder: final weights + its tokenizer
    run.mkdir()
    save_model(model, run / "model.safetensors")
    shutil.copytree(world.tok, run / "tokenizer")
    out = tmp_path / "trained.json"
    rc, _, _ = run_cli(
        eval_cmd(
            run, "--batch-size", "4", "--out", out, tasks=",".join(TASKS), include=world.tasks
        ),
        capsys,
    )  # lm-eval's default bootstrap, as its CLI (which fixes it)
    assert rc == 0
    rep = json.loads(out.read_text())
    assert rep["model"]["tokenizer"] == str(run / "tokenizer")
    m = {t: rep["tasks"][t]["metrics"] for t in TASKS}
    assert m["cgpt_mc"]["acc"] >= 0.9  # chance 0.25
    assert m["cgpt_lambada"]["acc"] >= 0.9 and m["cgpt_ll"]["acc"] >= 0.8  # chance ~0
    rc, _, _ = run_cli(eval_argv(random_model, world, tmp_path / "random.json"), capsys)
    rand = json.loads((tmp_path / "random.json").read_text())["tasks"]
    assert m["cgpt_roll"]["bits_per_byte"] < 0.5 * rand["cgpt_roll"]["metrics"]["bits_per_byte"]
    assert m["cgpt_lambada"]["perplexity"] < 2 < rand["cgpt_lambada"]["metrics"]["perplexity"]

    # lm-eval's real command line on the same weights: the same numbers
    folder = export_hf(model, tmp_path / "hf", tokenizer_dir=world.tok)
    assert sha256(folder / "model.safetensors") == rep["model"]["weights_sha256"]
    lm_eval_cli = Path(sys.executable).with_name("lm_eval")
    proc = subprocess.run(
        [
            str(lm_eval_cli),
            "--model",
            "hf",
            "--model_args",
            f"pretrained={folder}",
            "--tasks",
            ",".join(TASKS),
            "--include_path",
            str(world.tasks),
            "--device",
            "cpu",
            "--batch_size",
            "4",
            "--output_path",
            str(tmp_path / "lm_eval_out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result_file,) = (tmp_path / "lm_eval_out").rglob("results_*.json")
    assert_same_scores(rep, json.loads(result_file.read_text())["results"])


@pytest.mark.slow
def test_unknown_task_names_list_close_ones(world, random_model, tmp_path, capsys):
    rc, _, err = run_cli(
        eval_cmd(
            random_model,
            "--out",
            tmp_path / "o.json",
            tok=world.tok,
            tasks="cgpt_mcq,hellaswg",
            include=world.tasks,
        ),
        capsys,
    )
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "'cgpt_mcq' (close: cgpt_mc" in err and "'hellaswg' (close: hellaswag" in err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow
def test_paper_suite_from_the_hub_fails_in_seconds_offline(random_model, world, tmp_path, capsys):
    t = time.perf_counter()
    rc, _, err = run_cli(
        eval_cmd(random_model, "--out", tmp_path / "o.json", tok=world.tok), capsys
    )  # default: --suite
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "task hellaswag needs the Hugging Face dataset" in err and "--include-path" in err
    assert time.perf_counter() - t < 60 and not (tmp_path / "o.json").exists()


@pytest.mark.slow  # a fresh process importing lm-eval
def test_errors_are_one_line_in_a_real_process(world, random_model, tmp_path):
    """The same as the in-process checks, through the installed `cgpt` (no traceback, no
    library noise on stderr)."""
    cgpt = Path(sys.executable).with_name("cgpt")
    argv = eval_cmd(
        random_model,
        "--out",
        tmp_path / "o.json",
        tok=world.tok,
        tasks="cgpt_hub",
        include=world.tasks,
    )
    proc = subprocess.run(
        [str(cgpt), *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "cgpt-test/no-such-dataset" in proc.stderr
    assert not (tmp_path / "o.json").exists()


@pytest.mark.slow  # two trainings with lm-eval inside
def test_in_loop_eval_rows_at_the_right_steps_and_not_repeated_on_resume(world, tmp_path):
    """runtime.eval_tasks: rank 0 runs lm-eval at every evaluation; the rows land in
    metrics.jsonl with the val loss, and a resumed run does not write them twice."""
    import yaml
    from tokenizers import Tokenizer

    from cgpt.train.data.shards import write_token_data
    from cgpt.train.metrics import read_metrics

    tok = Tokenizer.from_file(str(world.tok / "tokenizer.json"))
    eos = world.vocab - 1
    ids = [t for s in world.sentences * 8 for t in tok.encode(s).ids + [eos]]
    cut = int(len(ids) * 0.9)
    write_token_data(
        tmp_path / "data",
        np.array(ids[:cut]),
        np.array(ids[cut:]),
        world.vocab,
        eos,
        tokenizer_dir=str(world.tok),
    )
    cfg = {
        "model": {
            "n_layer": 2,
            "n_embd": 32,
            "n_head": 2,
            "n_positions": 32,
            "vocab_size": world.vocab,
        },
        "data": {"path": str(tmp_path / "data"), "tokenizer": str(world.tok)},
        "plan": {
            "params": 30000,
            "seq_len": 32,
            "tokens": 32 * 4 * 6,
            "steps": 6,
            "global_batch_seqs": 4,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 1,
            "decay_steps": 5,
        },
        "runtime": {
            "out_dir": str(tmp_path / "run"),
            "micro_batch": 4,
            "zero_stage": 0,
            "precision": "fp32",
            "eval_every": 3,
            "eval_batches": 1,
            "save_every": 2,
            "log_every": 1,
            "wandb": "off",
            "export_hf": False,
            "eval_tasks": ["cgpt_tiny"],
            "eval_limit": 3,
            "eval_include_path": str(world.tasks),
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--set", "runtime.max_steps=4"]) == 0
    assert (
        main(["train", str(tmp_path / "run"), "--resume", "--set", "runtime.max_steps=null"]) == 0
    )
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in rows if "eval/cgpt_tiny/acc" in r]
    # every eval_every steps, and at the end of each run (the first stopped at step 4); the
    # resumed run continues from the step-4 checkpoint without repeating a row
    assert [r["step"] for r in evals] == [3, 4, 6]
    assert all(0.0 <= r["eval/cgpt_tiny/acc"] <= 1.0 and "val_loss" in r for r in evals)
    # a bad task list is refused before the run folder is touched
    cfg["runtime"].update(out_dir=str(tmp_path / "bad"), eval_tasks=["no_such_task_xyz"])
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    assert not (tmp_path / "bad").exists()
