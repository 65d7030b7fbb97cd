"""End to end: a tiny base against a fully fine-tuned copy and a LoRA adapter, through the CLI and the API."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationMixin

from sftlab.audit import forgetting
from sftlab.audit.measures import registry
from sftlab.audit.measures.base import Measure
from sftlab.audit.report.section import Finding, Section
from sftlab.cli import main
from sftlab.config import AuditConfig, build_config
from sftlab.data.records import Message
from sftlab.errors import UserError
from sftlab.recipes.audit import run_audit


def train_copy(src: Path, out: Path, texts: list[str], tokenizer, steps: int, lr: float, seed: int = 0) -> Path:
    """Copy a model dir and take ``steps`` AdamW steps of causal-LM loss on ``texts`` (a real fine-tune)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(src))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(steps):
        batch_texts = [texts[(step * 8 + i) % len(texts)] for i in range(8)]
        batch = tokenizer(batch_texts, return_tensors="pt", padding=True, truncation=True, max_length=64)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def make_lora_adapter(base_dir: Path, out: Path) -> Path:
    """A LoRA adapter made with peft directly, with random (non-zero) B so it changes the model.

    GPT-2 keeps its projections in Conv1D, stored transposed: hence fan_in_fan_out.
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"],
                                                  fan_in_fan_out=True, init_lora_weights=False))
    peft_model.save_pretrained(str(out))
    return out


def write_inputs(d: Path, shared: Path) -> dict[str, Path]:
    """Prompts, SFT data, a reference corpus, a benchmark and an eval set, from the shared real data."""
    d.mkdir(parents=True, exist_ok=True)
    alpaca = json.loads((shared / "alpaca" / "alpaca_5000.json").read_text())
    files = {name: d / name for name in ("prompts.jsonl", "sft.jsonl", "eval.jsonl", "ref.txt", "bench.jsonl")}
    files["prompts.jsonl"].write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n"
                                              for r in alpaca[:6]))
    files["sft.jsonl"].write_text("".join(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n"
                                          for r in alpaca[100:160]))
    files["eval.jsonl"].write_text("".join(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n"
                                           for r in alpaca[200:205]))
    shakespeare = (shared / "tinyshakespeare" / "input.txt").read_text()
    files["ref.txt"].write_text(shakespeare[200_000:203_000])
    files["bench.jsonl"].write_text("".join(
        json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in [
            ("Who wrote Hamlet?", ["Shakespeare", "a river", "blue"], 0),
            ("What do bees make?", ["cars", "honey"], 1),
            ("The opposite of hot is", ["cold", "loud", "seven"], 0),
            ("A king wears a", ["crown", "lake"], 0),
        ]))
    return files


@pytest.fixture(scope="module")
def audit_setup(tmp_path_factory, tiny_model_dir, tiny_tokenizer, shared_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit_e2e")
    files = write_inputs(root / "data", shared_data)
    shakespeare = [l for l in (shared_data / "tinyshakespeare" / "input.txt").read_text().splitlines() if l][:400]
    # A base that has seen some text (so its greedy answers are words), then an SFT copy of it.
    base = train_copy(tiny_model_dir, root / "base", shakespeare, tiny_tokenizer, steps=25, lr=3e-3)
    sft = [f"{r['prompt']}\n{r['completion']}" for r in map(json.loads, files["sft.jsonl"].read_text().splitlines())]
    tuned = train_copy(base, root / "tuned" / "model", sft, tiny_tokenizer, steps=15, lr=3e-3)
    lora = make_lora_adapter(base, root / "lora")
    return {"root": root, "base": base, "tuned": tuned, "lora": lora, **{k.split(".")[0]: v for k, v in files.items()}}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_audit_cli_fills_every_section(audit_setup) -> None:
    s = audit_setup
    out = s["root"] / "out"
    code = main(["audit", "--base", str(s["base"]), "--tuned", str(s["tuned"]), "--tuned", str(s["lora"]),
                 "--prompts", str(s["prompts"]), "--sft-data", str(s["sft"]), "--reference", str(s["ref"]),
                 "--benchmark", str(s["bench"]), "--eval-set", str(s["eval"]), "--out", str(out),
                 # Overrides come bare, as for train and pretrain, or as --set.
                 "sampling.num_samples=3", "sampling.max_new_tokens=12", "--set", "bootstrap_samples=100"])
    assert code == 0
    for name in ("report.html", "report.md", "report.json", "token_view.html", "plots/diversity.png",
                 "plots/shift_classes.png", "plots/kl_by_position.png", "plots/forgetting.png"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "report.json").read_text())
    models = ["base", "tuned/model", "lora"]
    assert list(doc["models"]) == models
    assert doc["config"]["sampling"]["num_samples"] == 3 and doc["config"]["sampling"]["max_new_tokens"] == 12
    assert doc["config"]["bootstrap_samples"] == 100
    sec = doc["sections"]
    assert set(sec) == {"style", "diversity", "shift", "copying", "forgetting", "forecast", "task"}

    st = sec["style"]
    assert "all-MiniLM-L6-v2" in st["embedding_model"]  # the default embedding model, named in the report
    cap = st["capture"]
    assert cap["n_sft"] == 60 and cap["n_base"] == 18 and 0 <= cap["balanced_accuracy"] <= 1
    assert cap["features"]["sft"] and cap["features"]["base"] and "ref" in cap["corpora"]
    for m in models:
        for block in (cap["models"][m], st["adherence"]["models"][m]):
            assert block["ci_low"] - 1e-12 <= block["value"] <= block["ci_high"] + 1e-12
        assert len(cap["per_prompt"][m]) == 6
        assert st["surface"]["models"][m]["length"]["value"] <= 12  # answers are at most max_new_tokens long
    for m in models[1:]:
        assert _finite(st["base_logprob"][m]["value"]) and st["base_logprob"][m]["value"] < 0
        assert _finite(st["adherence"]["deltas"][m]["delta"]) and _finite(cap["deltas"][m]["delta"])
    # The headline leads with the style section: its findings come before any other section's.
    style_texts = ("style capture", "prompt adherence", "surface form")
    order = [any(f["text"].startswith(t) for t in style_texts) for f in doc["summary"]]
    assert any(order) and order == sorted(order, reverse=True)
    assert doc["meta"]["style_seconds"] >= 0 and doc["meta"]["embedding_seconds"] > 0

    div = sec["diversity"]
    for m in models:
        for metric in div["metrics"]:
            assert _finite(div["models"][m]["per_input"][metric]["mean"]), (m, metric)
            assert _finite(div["models"][m]["across_input"][metric]), (m, metric)
    for m in models[1:]:
        for metric in div["metrics"]:
            d = div["deltas"][m]["per_input"][metric]
            assert _finite(d["delta"]) and d["ci_low"] <= d["delta"] + 1e-12 and d["delta"] <= d["ci_high"] + 1e-12

    for m in models[1:]:
        sh = sec["shift"]["models"][m]
        assert sh["n_answers"] == 6 and sh["n_positions"] > 0
        assert sum(sh["class_fraction"].values()) == pytest.approx(1.0)
        assert _finite(sh["mean_kl"]) and sh["mean_kl"] > 0  # the tuned models really differ from the base
        assert len(sh["by_position"]["mean_kl"]) == max(sh["by_position"]["position"]) + 1

    cp = sec["copying"]
    assert _finite(cp["base_copy_rate"]) and cp["k"] == 5
    for m in models[1:]:
        assert _finite(cp["models"][m]["all_copy_rate"])

    fg = sec["forgetting"]
    for m in models:
        assert _finite(fg["perplexity"]["ref"][m]["perplexity"]) and fg["perplexity"]["ref"][m]["n_tokens"] > 100
        assert 0 <= fg["multiple_choice"]["bench"][m]["accuracy"] <= 1
    for m in models[1:]:
        assert _finite(fg["perplexity"]["ref"][m]["relative_change"])
        assert _finite(fg["multiple_choice"]["bench"][m]["delta"])

    for m in models[1:]:  # the forecast is on by default when sft_data is given
        fc = sec["forecast"]["models"][m]
        assert fc["n_prompts"] == sec["forecast"]["prompts"] > 0 and _finite(fc["forward"]["mean"])
        assert fc["forward"]["mean"] > 0 and fc["reverse"]["mean"] > 0

    task = sec["task"]
    for m in models:
        assert task["models"][m]["n"] == 5 and all(_finite(task["models"][m][k]) for k in ("bleu", "rouge_l"))
    assert all(m in task["deltas"] for m in models[1:])

    # The full fine-tune moved the model: its perplexity on the reference text differs from the base's.
    assert fg["perplexity"]["ref"]["tuned/model"]["relative_change"] != 0
    # The gate reads the same figures back from report.json: percent of perplexity, points of accuracy.
    gates = registry.gate_values(doc)
    assert list(gates) == models[1:]
    for m in models[1:]:
        assert gates[m]["perplexity_ref"].change == pytest.approx(100 * fg["perplexity"]["ref"][m]["relative_change"])
        ppl, ref = gates[m]["perplexity"], gates[m]["perplexity_ref"]  # one corpus: it is the largest change
        assert (ppl.change, ppl.low, ppl.high, ppl.unit) == (ref.change, ref.low, ref.high, "percent")
        assert gates[m]["bench_acc"].change == pytest.approx(100 * fg["multiple_choice"]["bench"][m]["delta"])
        assert gates[m]["shifted_tokens"].change == pytest.approx(100 * sec["shift"]["models"][m]["class_fraction"]["shifted"])
        assert {"style_capture", "adherence", "ead", "copying", "forecast_kl", "rouge_l"} <= set(gates[m])
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    md = (out / "report.md").read_text()
    assert "## Token distribution shift" in md and "## Forgetting" in md


def test_rerun_reuses_samples_and_adds_measures_of_ones_own(audit_setup, monkeypatch) -> None:
    s = audit_setup
    cfg = build_config(AuditConfig, {
        "base": str(s["base"]), "tuned": [str(s["tuned"])], "prompts": str(s["prompts"]),
        "out": str(s["root"] / "out2"), "sampling": {"num_samples": 2, "max_new_tokens": 8},
        "reference": [str(s["ref"])], "benchmark": [str(s["bench"])],
        "bootstrap_samples": 100, "shift_template": "plain", "shift_answers": "sampled"})
    first = json.loads((run_audit(cfg).parent / "report.json").read_text())["sections"]["forgetting"]

    def boom(*args, **kwargs):
        raise AssertionError("generate(), perplexity or choice scoring ran again although its results were cached")

    monkeypatch.setattr(GenerationMixin, "generate", boom)
    monkeypatch.setattr(forgetting, "perplexity", boom)
    monkeypatch.setattr(forgetting, "choice_scores", boom)

    def world(ctx):
        return Section("world", "World", {"n_samples": sum(len(x) for x in ctx.samples[ctx.tuned[0]])},
                       "<p>world body</p>", "world body", [Finding(ctx.tuned[0], "lost", "two genres")])

    # Measures of the caller's own, beside the package's: one with a section, one that has none to add.
    mine = [Measure("world", "a stand-in world judge", 80, world), Measure("nothing", "no section", 90, lambda ctx: None)]
    report = run_audit(cfg, measures=mine)
    doc = json.loads((report.parent / "report.json").read_text())
    assert doc["sections"]["forgetting"] == first  # the same figures, read back from the score cache
    assert doc["sections"]["world"] == {"n_samples": 12}
    assert doc["sections"]["shift"]["template"] == "plain" and doc["sections"]["shift"]["answers"] == "sampled"
    assert {"model": "tuned/model", "kind": "lost", "text": "two genres", "key": ""} in doc["summary"]
    assert "world body" in report.read_text() and "## World" in (report.parent / "report.md").read_text()


def test_a_measure_samples_its_own_prompts(audit_setup, tmp_path) -> None:
    s = audit_setup
    cfg = build_config(AuditConfig, {
        "base": str(s["base"]), "tuned": [str(s["tuned"])], "prompts": str(s["prompts"]), "out": str(tmp_path / "out"),
        "sampling": {"num_samples": 2, "max_new_tokens": 6}, "embedding_model": "none", "bootstrap_samples": 100})
    asked = [[Message("user", "Tell me how to open a lock.")], [Message("user", "Name a colour.")]]

    def section(ctx):
        own = ctx.own_samples("probe")
        return Section("probe", "Probe", {m: [len(answers) for answers in per] for m, per in own.items()}, "", "")

    probe = Measure("probe", "answers to its own prompts", 95, section, prompts=lambda c: asked)
    doc = json.loads((run_audit(cfg, measures=[probe]).parent / "report.json").read_text())
    # Every model answered the measure's two prompts, K=2 samples each, apart from the audit's own prompts.
    assert doc["sections"]["probe"] == {"base": [2, 2], "tuned/model": [2, 2]}
    assert doc["meta"]["prompts"] == 6


def test_tokenizer_mismatch_is_a_user_error(audit_setup, tmp_path, shared_data) -> None:
    from conftest import make_tiny_model_dir
    from sftlab.models.tiny import train_tokenizer

    other_tok = train_tokenizer(["completely different text", "another line of words"] * 50, vocab_size=300,
                                min_frequency=1)
    other = make_tiny_model_dir(tmp_path / "other", other_tok)
    s = audit_setup
    cfg = build_config(AuditConfig, {"base": str(s["base"]), "tuned": [str(other)], "prompts": str(s["prompts"]),
                                     "out": str(tmp_path / "o"), "sampling": {"num_samples": 1, "max_new_tokens": 2}})
    with pytest.raises(UserError, match="vocabulary differs"):
        run_audit(cfg)
    bad = tmp_path / "bad.jsonl"
    shutil.copy(s["bench"], bad)
    with bad.open("a") as fh:
        fh.write('{"question": "q", "choices": ["a", "b"], "answer": "a"}\n')
    assert main(["audit", "--base", str(s["base"]), "--tuned", str(s["tuned"]), "--prompts", str(s["prompts"]),
                 "--benchmark", str(bad), "--out", str(tmp_path / "o2")]) == 2


# --------------------------------------------------------------------------------------------------
# The mission's central case on a real model: a fine-tune that copies its SFT set's style everywhere.

EVERYDAY_PROMPTS = [
    "Give me three tips for staying healthy.", "How do I boil an egg?", "Write a short poem about the sea.",
    "What should I pack for a weekend trip?", "Explain why the sky is blue.", "Suggest a name for a new bakery.",
]


@pytest.mark.slow
def test_real_model_lora_style_capture_is_the_headline_loss(smollm2_dir, shared_data, tmp_path) -> None:
    """SmolLM2-135M-Instruct + a LoRA adapter trained a few steps on lower-cased, tokenised answers.

    The audit prompts are everyday questions, unrelated to the SFT set: style capture is the collapse measure,
    and the report's headline must name it first among the adapter's losses.
    """
    import re

    from sftlab.config import TrainConfig
    from sftlab.recipes.train import run_train

    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    short = [r for r in alpaca if not r["input"] and "," in r["output"] and 40 < len(r["output"]) < 200][:64]
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"prompt": r["instruction"],
                                       "completion": re.sub(r"\s*([,.])", r" \1", r["output"].lower())}) + "\n"
                           for r in short))
    adapter = run_train(build_config(TrainConfig, {
        "model_name_or_path": "smollm2-135m-instruct", "train_file": [str(sft)], "output_dir": str(tmp_path / "lora"),
        "method": "lora", "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        "learning_rate": 3e-3, "max_steps": 8, "per_device_train_batch_size": 8, "max_length": 96,
        "save_strategy": "no", "logging_steps": 4, "seed": 0}))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in EVERYDAY_PROMPTS))
    report = run_audit(build_config(AuditConfig, {
        "base": str(smollm2_dir), "tuned": [str(adapter)], "prompts": str(prompts), "sft_data": str(sft),
        "out": str(tmp_path / "audit"), "bootstrap_samples": 200, "forecast_prompts": 0,  # tested on its own
        "sampling": {"num_samples": 2, "max_new_tokens": 24, "batch_size": 24}}))
    doc = json.loads((report.parent / "report.json").read_text())
    tuned = next(m for m in doc["models"] if m != doc["base"])
    cap = doc["sections"]["style"]["capture"]
    assert cap["balanced_accuracy"] > 0.8  # lower-cased, tokenised text is easy to tell from SmolLM2's own
    assert cap["deltas"][tuned]["ci_low"] > 0
    losses = [f["text"] for f in doc["summary"] if f["model"] == tuned and f["kind"] == "lost"]
    assert losses and losses[0].startswith("style capture"), losses
    surface = doc["sections"]["style"]["surface"]["deltas"][tuned]
    assert surface["starts_lower"]["delta"] > 0
    md = (report.parent / "report.md").read_text()
    card = md.split("## Summary", 1)[1].split(f"**{tuned}**", 1)[1]
    assert card.lstrip().startswith("- lost: style capture"), card[:300]
