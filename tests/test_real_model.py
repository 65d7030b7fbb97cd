"""Every training and audit path on the real SmolLM2-135M-Instruct (Llama, tied embedding, ChatML, 49k vocab).

Kept short: two trained runs shared by the module (full fine-tuning with NEFTune, L2-SP and EWC; LoRA
with KL-to-base), each two or three optimizer steps on 16 Alpaca records cut to 64 tokens, and an audit
of the full run on two prompts with 8 new tokens each.
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from sftlab.cli import main
from sftlab.config import TrainConfig
from sftlab.data.records import Message, Origin, Record
from sftlab.data.tokenize import encode_prompt, encode_record
from sftlab.models.load import load_model, load_tokenizer
from sftlab.models.tokens import IGNORE_INDEX
from sftlab.recipes.train import finish_train, prepare_train
from sftlab.train.adapters import apply_method, count_parameters, merge_adapter
from sftlab.train.interpolate import interpolate_dirs
from sftlab.train.neftune import attach_neftune
from sftlab.train.regularizers import EWC, L2SP, KLToBase

pytestmark = pytest.mark.slow

PARAMETERS = 134_515_008  # SmolLM2-135M, its tied embedding counted once
VOCAB = 49_152
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _tied(model: torch.nn.Module) -> bool:
    return model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.fixture(scope="module")
def tok(smollm2_dir: Path):
    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="module")
def probe(tok) -> torch.Tensor:
    """A chat prompt's ids, [1, T], for comparing logits."""
    return torch.tensor([encode_prompt(tok, [Message("user", "Give me three tips for staying healthy.")])])


@pytest.fixture(scope="module")
def base(smollm2_dir: Path) -> torch.nn.Module:
    return load_model(str(smollm2_dir), dtype="float32")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("real_data")
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    (d / "train.json").write_text(json.dumps(alpaca[:16]))
    (d / "fisher.txt").write_text("\n\n".join(
        p.strip() for p in (shared_data / "tinyshakespeare" / "input.txt").read_text()[:4000].split("\n\n")[:4]))
    return {"train": d / "train.json", "fisher": d / "fisher.txt", "root": d}


def _train(model_dir: Path, data: dict[str, Path], out: Path, steps: int, **kw) -> dict:
    """A short run through sftlab's own trainer; keeps the trained model and its regularizers in memory."""
    cfg = TrainConfig(
        model_name_or_path=str(model_dir), train_file=[str(data["train"])], output_dir=str(out),
        max_length=64, per_device_train_batch_size=4, max_steps=steps, logging_steps=1, save_strategy="no",
        **kw)
    session = prepare_train(cfg)
    result = finish_train(session)
    trainer = session.trainer
    trainer.optimizer = trainer.lr_scheduler = None  # the AdamW state is not needed after the run
    gc.collect()
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # A bf16 run's model keeps accelerate's autocast wrapper on its forward; unwrapped, it computes in fp32 as
    # the saved and reloaded model does.
    model = trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return {"out": result, "model": model.eval(), "regularizers": trainer.regularizers,
            "logs": [m for m in logs if "loss" in m], "summary": json.loads((out / "summary.json").read_text())}


@pytest.fixture(scope="module")
def full_run(smollm2_dir: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Full fine-tuning, 2 steps, with NEFTune, L2-SP and EWC (Fisher on 2 passages)."""
    return _train(smollm2_dir, data, tmp_path_factory.mktemp("real_full") / "run", steps=2, learning_rate=1e-4,
                  neftune_noise_alpha=5.0, l2sp={"lambda": 0.01},
                  ewc={"lambda": 100.0, "fisher_corpus": str(data["fisher"]), "fisher_samples": 2})


@pytest.fixture(scope="module")
def lora_run(smollm2_dir: Path, data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """LoRA with the default all-linear targets and KL-to-base, 3 steps."""
    return _train(smollm2_dir, data, tmp_path_factory.mktemp("real_lora") / "run", steps=3, method="lora",
                  learning_rate=5e-3, kl_to_base={"beta": 0.5})


def test_chatml_masking_of_a_two_turn_chat_by_hand(tok) -> None:
    chat = [Message("user", "Hi there"), Message("assistant", "Hello!"),
            Message("user", "Name a fruit."), Message("assistant", "An apple.")]
    example = encode_record(Record("conversation", Origin("hand", 1), messages=chat), tok, max_length=512)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    # The template inserts its default system prompt. Masked: that, the user turns and each assistant
    # header. Trained: each answer with its <|im_end|>, SmolLM2's EOS. The "\n" the template writes
    # after <|im_end|> is masked: generation stops at EOS, so the model never writes it.
    pieces = [
        (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
         "<|im_start|>assistant\n", False),
        ("Hello!<|im_end|>", True),
        ("\n<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n", False),
        ("An apple.<|im_end|>", True),
        ("\n", False),
    ]
    want_ids = [t for text, _ in pieces for t in ids(text)]
    want_labels = [t if trained else IGNORE_INDEX for text, trained in pieces for t in ids(text)]
    assert example.input_ids == want_ids
    assert example.labels == want_labels
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == im_end and tok.bos_token_id == tok.convert_tokens_to_ids("<|im_start|>")
    trained = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(trained) == "Hello!<|im_end|>An apple.<|im_end|>"
    assert trained.count(im_end) == 2 and example.input_ids.count(im_end) == 5
    # The whole text is the template's own rendering, and a prompt is exactly its generation prompt.
    turns = [{"role": m.role, "content": m.content} for m in chat]
    assert tok.decode(example.input_ids) == tok.apply_chat_template(turns, tokenize=False)
    assert encode_prompt(tok, chat[:1]) == ids(tok.apply_chat_template(turns[:1], tokenize=False,
                                                                       add_generation_prompt=True))


@pytest.mark.parametrize(("targets", "adapted", "trainable"), [
    ("all-linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 2_442_240),
    ("peft-default", {"q_proj", "v_proj"}, 460_800),
])
def test_lora_finds_llamas_target_modules(smollm2_dir: Path, targets: str, adapted: set[str], trainable: int) -> None:
    # On the meta device: the shapes without the weights.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(smollm2_dir)))
    cfg = TrainConfig(model_name_or_path=str(smollm2_dir), train_file=["unused.jsonl"], method="lora",
                      lora={"target_modules": targets})
    peft_model = apply_method(cfg, model)
    names = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in peft_model.named_parameters() if "lora_A" in n}
    assert names == adapted
    # r 8 on each of 30 blocks: q, o 8*(576+576); k, v 8*(576+192); gate, up, down 8*(576+1536).
    got, total = count_parameters(peft_model)
    assert got == trainable and total == PARAMETERS + trainable
    assert round(100 * got / PARAMETERS, 2) == (1.82 if targets == "all-linear" else 0.34)


def test_full_run_trains_every_remedy_on_the_real_model(full_run: dict) -> None:
    logs, summary = full_run["logs"], full_run["summary"]
    assert summary["global_step"] == 2 and summary["trainable_params"] == PARAMETERS
    for m in logs:
        for key in ("loss/task", "loss/l2sp", "loss/ewc"):
            assert math.isfinite(m[key]), (key, m)
    assert logs[0]["loss/l2sp"] == 0.0 and logs[-1]["loss/l2sp"] > 0  # the weights left their anchor
    assert logs[-1]["loss/ewc"] > 0
    assert logs[-1]["neftune/noised_forwards"] == 2 and logs[-1]["neftune/alpha"] == 5.0


def test_weight_penalties_count_the_tied_embedding_once(full_run: dict) -> None:
    model = full_run["model"]
    l2sp = next(r for r in full_run["regularizers"] if isinstance(r, L2SP))
    ewc = next(r for r in full_run["regularizers"] if isinstance(r, EWC))
    # One anchored tensor for the embedding and the head; the anchors cover every weight once.
    assert l2sp.anchor is ewc.anchor
    names = l2sp.anchor.names
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    assert sum(p.numel() for p in l2sp.anchor.params) == PARAMETERS
    start = dict(zip(names, l2sp.anchor.start))
    sqrt_fisher = dict(zip(names, ewc.sqrt_fisher))
    with torch.no_grad():
        penalty_l2, penalty_ewc = l2sp.penalty(model, {}, None).item(), ewc.penalty(model, {}, None).item()
        # By hand, in float64, over the model's parameters as named_parameters lists them (each once).
        hand_l2 = hand_ewc = embedding = 0.0
        for name, param in model.named_parameters():
            sq = (param.double() - start[name].double()).square()
            hand_l2 += 0.5 * l2sp.lam * float(sq.sum())
            hand_ewc += 0.5 * ewc.lam * float((sqrt_fisher[name].double().square() * sq).sum())
            if name == "model.embed_tokens.weight":
                embedding = float(sq.sum())
                rows_with_fisher = (sqrt_fisher[name].sum(dim=1) > 0).float().mean().item()
    # (float32 norms over 134.5M weights against a float64 sum: agreement to 1e-3.)
    assert penalty_l2 == pytest.approx(hand_l2, rel=1e-3)
    assert penalty_ewc == pytest.approx(hand_ewc, rel=1e-3)
    # Counting the head as a second tensor would add the embedding's share again (3% here), far more
    # than the tolerance.
    assert 0.5 * l2sp.lam * embedding > 0.01 * hand_l2
    # The Fisher of the tied tensor has its gradient from both uses: the two Fisher passages hold a few
    # hundred distinct tokens, yet nearly every row gets some through the output head.
    assert rows_with_fisher > 0.9


def test_full_model_saves_and_reloads_with_the_same_logits(full_run: dict, base, probe) -> None:
    model, out = full_run["model"], full_run["out"]
    # The same attention kernel as the run (bf16 training picks eager for short rows): SDPA and eager differ
    # by ~1e-4 in the logits, which is not what this test is about.
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), use_safetensors=True,
                                                    attn_implementation=model.config._attn_implementation).eval()
    assert _tied(reloaded) and _tied(model)
    assert torch.equal(_logits(reloaded, probe), _logits(model, probe))
    assert not torch.allclose(_logits(base, probe), _logits(model, probe), atol=1e-4)  # it really trained


def test_wise_ft_is_exact_at_both_ends_and_keeps_the_tie(full_run: dict, smollm2_dir: Path, base, tmp_path) -> None:
    a0, a1 = interpolate_dirs(str(smollm2_dir), str(full_run["out"]), [0.0, 1.0], tmp_path)
    tuned = full_run["model"]
    for path, want in ((a0, base), (a1, tuned)):
        got = AutoModelForCausalLM.from_pretrained(str(path), use_safetensors=True)
        assert _tied(got)
        mine, theirs = got.state_dict(), want.state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
        del got


def test_kl_to_base_is_taken_against_the_adapter_disabled_model(lora_run: dict, base, probe) -> None:
    logs = lora_run["logs"]
    # Step 1: LoRA's B is 0, so the tuned model is the base and the KL is 0; it grows as the adapter learns.
    assert abs(logs[0]["loss/kl_to_base"]) < 1e-6
    assert logs[-1]["loss/kl_to_base"] > 1e-4
    model = lora_run["model"]
    kl = next(r for r in lora_run["regularizers"] if isinstance(r, KLToBase))
    assert kl.peft_model is model and kl.base_copy is None  # no second copy of the model
    inputs = {"input_ids": probe, "labels": probe}
    with torch.no_grad():
        # Scored against the plain base's own logits, the penalty is 0: under disable_adapter the
        # model is the base. Against the adapted model's, it is not.
        assert kl.penalty(model, inputs, base(input_ids=probe)).item() == pytest.approx(0.0, abs=1e-6)
        assert kl.penalty(model, inputs, model(input_ids=probe)).item() > 1e-4


def test_lora_adapter_reloads_and_merges_with_the_tie_kept(lora_run: dict, smollm2_dir: Path, base, probe,
                                                          tmp_path) -> None:
    from peft import PeftModel

    model, adapter = lora_run["model"], lora_run["out"]
    assert adapter.name == "adapter"
    want = _logits(model, probe)
    fresh = load_model(str(smollm2_dir), dtype="float32", attn_implementation=model.config._attn_implementation)
    reloaded = PeftModel.from_pretrained(fresh, str(adapter)).eval()
    assert torch.allclose(_logits(reloaded, probe), want, atol=1e-5)
    del reloaded, fresh
    merged_dir = merge_adapter(adapter, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), use_safetensors=True).eval()
    assert _tied(merged)
    # W + (alpha/r) B A folded in float32: the logits (up to 30 in size) agree to 1e-3, and the adapter
    # moved them by far more than that.
    assert torch.allclose(_logits(merged, probe), want, atol=1e-3)
    assert (_logits(base, probe) - want).abs().max() > 1e-2
    # all-linear leaves the tied embedding and head alone.
    assert torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_neftune_noises_the_real_embedding_by_each_rows_length(base, tok) -> None:
    alpha, d = 5.0, base.config.hidden_size
    ids = torch.tensor([tok("Stay hydrated: drink plenty of water every day.", add_special_tokens=False)["input_ids"]])
    ids = torch.cat([ids, ids], 0)
    length = ids.size(1)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # row 1: 6 real tokens, then padding
    hook = attach_neftune(base, alpha, pad_token_id=tok.pad_token_id)
    seen: list[torch.Tensor] = []
    capture = base.get_input_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    base.train()
    try:
        with torch.no_grad():
            base(input_ids=ids, attention_mask=mask)
    finally:
        base.eval()
        capture.remove()
        hook.remove()
    noise = seen[0] - base.get_input_embeddings().weight.detach()[ids]
    for row, real in ((0, length), (1, 6)):
        bound = alpha / math.sqrt(real * d)
        block = noise[row, :real].abs()
        assert bound * 0.99 < block.max().item() <= bound * (1 + 1e-5)
        assert block.mean().item() == pytest.approx(bound / 2, rel=0.05)  # U(-1, 1) scaled: mean |x| is half the bound
    assert torch.count_nonzero(noise[1, 6:]) == 0  # padding stays clean


def test_audit_fills_every_section_on_the_real_model(full_run: dict, smollm2_dir: Path, shared_data: Path,
                                                     tmp_path) -> None:
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    files = {name: tmp_path / name for name in ("prompts.jsonl", "sft.jsonl", "eval.jsonl", "ref.txt", "piqa.jsonl")}
    files["prompts.jsonl"].write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n"
                                              for r in alpaca[300:302]))
    files["sft.jsonl"].write_text("".join(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n"
                                          for r in alpaca[:16]))
    files["eval.jsonl"].write_text("".join(json.dumps({"prompt": r["instruction"], "completion": r["output"]}) + "\n"
                                           for r in alpaca[400:402]))
    files["ref.txt"].write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[100_000:101_000])
    files["piqa.jsonl"].write_text("".join((shared_data / "piqa" / "dev.jsonl").read_text().splitlines(True)[:4]))
    out = tmp_path / "audit"
    code = main(["audit", "--base", str(smollm2_dir), "--tuned", str(full_run["out"]),
                 "--prompts", str(files["prompts.jsonl"]), "--sft-data", str(files["sft.jsonl"]),
                 "--reference", str(files["ref.txt"]), "--benchmark", str(files["piqa.jsonl"]),
                 "--eval-set", str(files["eval.jsonl"]), "--out", str(out),
                 "sampling.num_samples=2", "sampling.max_new_tokens=8", "max_length=128", "bootstrap_samples=100"])
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    sec = doc["sections"]
    assert {"diversity", "shift", "copying", "forgetting", "task"} <= set(sec)
    tuned = [m for m in doc["models"] if m != next(iter(doc["models"]))]
    assert len(tuned) == 1
    for m in tuned:
        sh = sec["shift"]["models"][m]
        assert sh["n_answers"] == 2 and sh["n_positions"] > 0
        assert sum(sh["class_fraction"].values()) == pytest.approx(1.0)
        assert math.isfinite(sh["mean_kl"]) and sh["mean_kl"] > 0
        assert math.isfinite(sec["copying"]["models"][m]["all_copy_rate"])
        for metric in sec["diversity"]["metrics"]:
            assert math.isfinite(sec["diversity"]["models"][m]["per_input"][metric]["mean"]), metric
    forgetting = sec["forgetting"]
    assert forgetting["mc_score"] == "acc"
    for m in doc["models"]:
        assert forgetting["multiple_choice"]["piqa"][m]["n"] == 4
        assert 0 <= forgetting["multiple_choice"]["piqa"][m]["accuracy"] <= 1
        assert math.isfinite(forgetting["perplexity"]["ref"][m]["perplexity"])
        assert sec["task"]["models"][m]["n"] == 2


def test_shift_ranks_over_the_whole_49k_vocabulary(base, tok, probe) -> None:
    from sftlab.audit.shift import score_shift

    last = _logits(base, probe)[0, -1]
    top, bottom = int(last.argmax()), int(last.argmin())
    context = probe[0].tolist()
    # The base against itself: its own top token has rank 1 and its least likely token a rank near
    # 49,152 (exactly that unless others tie with it): ranks over the whole vocabulary, no top-k cut.
    got = score_shift(base, base, [context] * 2, [context] * 2, [[top], [bottom]], tok.pad_token_id)
    assert got[0].ranks.tolist() == [1]
    assert VOCAB - 100 < got[1].ranks[0] <= VOCAB
