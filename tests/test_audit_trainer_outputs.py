"""Any trainer's output as --tuned: TRL SFTTrainer's LoRA adapter (recording a hub base), full model dir,
checkpoint-N dir and a merged dir, audited as saved; and the dirs that are not, refused in one paragraph."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sftlab.cli import main
from sftlab.config import AuditConfig, build_config
from sftlab.models.builtin import resolve_model_source
from sftlab.models.load import load_model, load_tokenizer
from sftlab.recipes.audit import template_notes
from trl_runs import HUB_BASE, chat_records, point_adapter_at_hub, train_with_trl

BASE = "smollm2-135m-instruct"
# A small suite: 2 chat prompts, 4 PIQA items, 1 WikiText paragraph.
SMALL = ["suite_items.chat_prompts=2", "suite_items.knowledge_items=4", "suite_items.text_paragraphs=1",
         "sampling.num_samples=2", "sampling.max_new_tokens=8", "bootstrap_samples=100", "embedding_model=none",
         "max_length=128"]


@pytest.fixture(scope="module")
def trl_outputs(tmp_path_factory, shared_data: Path) -> dict[str, Path]:
    """A TRL LoRA run and a TRL full run of SmolLM2 (2 steps each), saved as TRL saves them, and the LoRA merged."""
    root = tmp_path_factory.mktemp("trl_outputs")
    base = resolve_model_source(BASE)
    records = chat_records(shared_data, 8)
    train_with_trl(base, root / "lora", records, lora=True, steps=2)
    point_adapter_at_hub(root / "lora")  # as an adapter trained from the hub records its base
    train_with_trl(base, root / "full", records, lora=False, steps=2, save_steps=2)
    merged = load_model(str(root / "lora"), torch.float32, merge_adapter=True, base=base)
    merged.save_pretrained(str(root / "merged"))
    load_tokenizer(base).save_pretrained(str(root / "merged"))
    return {"root": root, "lora": root / "lora", "full": root / "full", "checkpoint": root / "full_run" / "checkpoint-2",
            "merged": root / "merged"}


def test_trl_outputs_audit_as_saved(trl_outputs, capsys) -> None:
    t = trl_outputs
    assert json.loads((t["lora"] / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_BASE
    assert (t["checkpoint"] / "optimizer.pt").is_file()  # a real trainer checkpoint, optimizer state and all
    out = t["root"] / "audit"
    code = main(["audit", "--base", BASE, *(f"--tuned={n}={t[n]}" for n in ("lora", "merged", "full", "checkpoint")),
                 "--out", str(out), *SMALL])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((out / "report.json").read_text())
    assert list(doc["models"])[1:] == ["lora", "merged", "full", "checkpoint"]
    ppl = next(iter(doc["sections"]["forgetting"]["perplexity"].values()))
    # The adapter, put on --base, is the merged model (up to bf16 rounding when the audit runs in bf16).
    assert ppl["lora"]["perplexity"] == pytest.approx(ppl["merged"]["perplexity"], rel=1e-2)
    assert ppl["lora"]["relative_change"] != 0 and ppl["full"]["relative_change"] != 0  # both fine-tunes moved
    # The checkpoint at step 2 is the final model of a 2-step run.
    assert ppl["checkpoint"]["perplexity"] == pytest.approx(ppl["full"]["perplexity"], rel=1e-6)
    assert doc["meta"]["chat_templates"] == {}


def test_a_different_chat_template_is_noted(trl_outputs, tmp_path: Path) -> None:
    copy = tmp_path / "retemplated"
    copy.mkdir()
    for f in trl_outputs["full"].iterdir():
        if f.name != "chat_template.jinja":
            os.link(f, copy / f.name)
    (copy / "chat_template.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    cfg = build_config(AuditConfig, {"base": BASE, "tuned": [str(copy)]})
    base_tok = load_tokenizer(BASE)
    notes = template_notes(cfg, {"base": BASE, "retemplated": str(copy)}, base_tok)
    assert list(notes) == ["retemplated"] and "own template" in notes["retemplated"]
    assert template_notes(cfg, {"base": BASE, "full": str(trl_outputs["full"])}, base_tok) == {}


def _refused(capsys, tuned: Path, tmp_path: Path) -> str:
    capsys.readouterr()
    code = main(["audit", "--base", BASE, "--tuned", f"x={tuned}", "--out", str(tmp_path / "out"), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    err = err[err.index("sftlab: error:"):]
    assert err.count("\n") == 1, err  # one paragraph
    assert not (tmp_path / "out").exists()  # refused before any model ran
    return err


def test_an_adapter_for_another_architecture_is_refused(tmp_path: Path, tiny_model_dir: Path, tiny_llama_dir: Path,
                                                         capsys) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    gpt2 = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                          LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    gpt2.save_pretrained(str(tmp_path / "gpt2_lora"))
    err = _refused(capsys, tmp_path / "gpt2_lora", tmp_path)
    assert "does not fit the base model" in err and "'transformer.h.0.attn.c_attn'" in err
    llama = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir)),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    llama.save_pretrained(str(tmp_path / "llama_lora"))  # the same layer names as SmolLM2, other widths
    err = _refused(capsys, tmp_path / "llama_lora", tmp_path)
    assert "64 wide where the base's layer is 576" in err


def test_a_dir_that_is_no_model_is_refused(trl_outputs, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("my run\n")
    assert "neither a model dir" in _refused(capsys, tmp_path / "notes", tmp_path)
    err = _refused(capsys, trl_outputs["root"] / "full_run", tmp_path)  # a run dir: its checkpoints are named
    assert "checkpoint-2" in err
