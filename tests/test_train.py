"""`sftlab train` end to end on tiny models: full and LoRA fine-tuning, exact gradient accumulation,
loss components, the NaN guard, early stopping. (Resume after SIGKILL and the 2-process run are in
test_train_resume.py and test_train_ddp.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from sftlab.cli import main
from sftlab.config import TrainConfig
from sftlab.data.records import Message
from sftlab.data.tokenize import render_prompt
from sftlab.recipes.train import finish_train, prepare_train, run_train
from sftlab.train.losses import cross_entropy
from sftlab.train.trainer import NonFiniteLossError


@pytest.fixture(scope="module")
def alpaca_file(tmp_path_factory, shared_data) -> Path:
    """240 records of the real Alpaca sample."""
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:240]
    path = tmp_path_factory.mktemp("alpaca") / "alpaca_240.json"
    path.write_text(json.dumps(records))
    return path


def _cfg(model_dir: Path, train_file: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        model_name_or_path=str(model_dir),
        train_file=[str(train_file)],
        output_dir=str(out),
        max_length=96,
        per_device_train_batch_size=8,
        logging_steps=1,
        save_strategy="no",
        learning_rate=3e-3,
    )
    return TrainConfig(**{**base, **kw})


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def eval_losses(run_dir: Path) -> list[float]:
    return [m["eval_loss"] for m in metrics(run_dir) if "eval_loss" in m]


def _generate(model, tokenizer) -> torch.Tensor:
    prompt = render_prompt(tokenizer, [Message("user", "Give three tips for staying healthy.")])
    ids = tokenizer(prompt, return_tensors="pt")
    out = model.generate(
        **ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return out[0, ids["input_ids"].shape[1] :]


@pytest.mark.slow
def test_full_finetune_lowers_eval_loss_and_reloads(tiny_model_dir, alpaca_file, tmp_path):
    out = run_train(_cfg(tiny_model_dir, alpaca_file, tmp_path / "run", eval_fraction=0.1, packing=True))
    assert out == tmp_path / "run" / "model"
    losses = eval_losses(tmp_path / "run")
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5, losses
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "data" / "quarantine.jsonl").is_file()
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    assert stats["records"] == {"train": 216, "eval": 24}
    assert stats["train_epochs"][0]["real_token_fraction"] > 0.9  # packed rows are nearly full

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(_generate(model, tokenizer)) == 8
    assert not (out / "training_args.bin").exists()  # nothing pickled in the shared model dir


@pytest.mark.slow
def test_lora_lowers_eval_loss_reloads_with_peft_and_merges(tiny_model_dir, alpaca_file, tmp_path):
    from peft import PeftModel

    cfg = _cfg(tiny_model_dir, alpaca_file, tmp_path / "run", method="lora", learning_rate=5e-2, eval_fraction=0.1,
               max_length=160,
               lora={"r": 8, "alpha": 16, "target_modules": ["c_attn", "c_proj", "c_fc"]})
    out = run_train(cfg)
    assert out == tmp_path / "run" / "adapter"
    losses = eval_losses(tmp_path / "run")
    # A LoRA of rank 8 on a random-init 64-wide model moves slowly; a frozen or unapplied adapter would
    # leave the eval loss exactly where it started.
    assert losses[-1] < losses[0] - 0.05, losses

    # Plain PEFT loads the adapter onto the base it recorded; it generates.
    recorded = json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(recorded) == tiny_model_dir.resolve()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(recorded), str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert len(_generate(peft_model, tokenizer)) == 8

    # `sftlab merge` gives a plain model with the same outputs.
    assert main(["merge", "--adapter", str(out), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.randint(2, 500, (2, 16))
    with torch.no_grad():
        assert torch.allclose(peft_model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5)
    assert torch.equal(_generate(merged, tokenizer), _generate(peft_model, tokenizer))


class SquaredNorm:
    """A per-step penalty c * ||theta||^2 (a stand-in for L2-SP) to check how penalties are scaled."""

    name = "sqnorm"

    def __init__(self, c: float) -> None:
        self.c = c

    def penalty(self, model, inputs, outputs) -> torch.Tensor:
        return self.c * sum((p**2).sum() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("penalty", [False, True])
def test_gradient_accumulation_is_exact(penalty, tiny_model_dir, alpaca_file, tmp_path):
    """One SGD step on 8 padded rows of different lengths: batch 8, 4x2 and 2x4 give the same weights.

    This holds only if the task loss is normalised by the target-token count of the whole accumulated
    batch (num_items_in_batch) and each per-step penalty enters once per step, whatever the split.
    Without a penalty the output head runs on scored positions only; the penalty (which, not saying
    otherwise, may read logits) makes the trainer keep full logits: both paths are checked.
    """
    weights = []
    for bs, ga in [(8, 1), (4, 2), (2, 4)]:
        run = tmp_path / f"bs{bs}"
        cfg = _cfg(tiny_model_dir, alpaca_file, run, per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                   max_steps=1, optim="sgd", learning_rate=0.5, dropout=0.0, max_grad_norm=0.0)
        run_train(cfg, regularizers=[SquaredNorm(1e-3)] if penalty else [])
        weights.append(load_file(str(run / "model" / "model.safetensors")))
        if penalty:
            logged = next(m for m in metrics(run) if "loss" in m)
            assert logged["loss"] == pytest.approx(logged["loss/task"] + logged["loss/sqnorm"], rel=1e-5)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for name, w in weights[0].items():
        assert not torch.equal(w, base[name]) or "bias" in name or "ln" in name  # the step moved the weights
        for other in weights[1:]:
            torch.testing.assert_close(other[name], w, rtol=0, atol=2e-6)


@pytest.mark.parametrize("method", ["prompt", "prefix", "ia3", "dora", "freeze"])
def test_every_method_trains_through_the_recipe(method, tiny_model_dir, alpaca_file, tmp_path):
    run = tmp_path / "run"
    out = run_train(_cfg(tiny_model_dir, alpaca_file, run, method=method, max_steps=2, learning_rate=1e-2))
    assert out.name == ("model" if method == "freeze" else "adapter")
    losses = [m["loss"] for m in metrics(run) if "loss" in m]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # two finite steps


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(tiny_model_dir, alpaca_file, tmp_path):
    """Injected NaN: the 7th training loss is multiplied by NaN (a loss_fn wrapper, programmatic run)."""
    calls = {"n": 0}

    def poisoned(logits, labels, num_items_in_batch=None):
        calls["n"] += 1
        loss = cross_entropy(logits, labels, num_items_in_batch)
        return loss * float("nan") if calls["n"] == 7 else loss

    run = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, alpaca_file, run, max_steps=12, save_strategy="steps", save_steps=2, save_total_limit=2)
    with pytest.raises(NonFiniteLossError, match=r"nan at step 7.*checkpoint-6; it is intact"):
        run_train(cfg, loss_fn=poisoned)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-4", "checkpoint-6"]  # nothing saved at or after the bad step
    assert not (run / "model").exists()
    state = json.loads((run / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    assert all(m["step"] <= 6 for m in metrics(run))

    # The checkpoint is intact: a rerun resumes from it and finishes.
    run_train(cfg)
    assert json.loads((run / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())["global_step"] == 12
    # The saved model is checkpoint-12's weights, moved on from the start: compare what each one predicts.
    ids = torch.tensor([list(range(5, 37))])
    with torch.no_grad():
        final, last_checkpoint, start = (
            AutoModelForCausalLM.from_pretrained(str(path)).eval()(input_ids=ids).logits
            for path in (run / "model", run / "checkpoints" / "checkpoint-12", tiny_model_dir))
    torch.testing.assert_close(final, last_checkpoint, rtol=0, atol=0)
    assert (final - start).abs().max() > 1e-3


@pytest.mark.slow
def test_early_stopping_stops_when_eval_loss_stops_improving(tiny_model_dir, alpaca_file, tmp_path):
    # 20 records and a high learning rate overfit fast: eval loss (on a separate eval_file) turns up and
    # patience 2 ends the run.
    records = json.loads(alpaca_file.read_text())
    small, held = tmp_path / "small.json", tmp_path / "eval.json"
    small.write_text(json.dumps(records[:20]))
    held.write_text(json.dumps(records[20:40]))
    cfg = _cfg(tiny_model_dir, small, tmp_path / "run", eval_file=str(held), learning_rate=2e-2, num_train_epochs=100,
               per_device_train_batch_size=4, eval_strategy="steps", eval_steps=5, early_stopping_patience=2)
    run_train(cfg)
    state_steps = [m["step"] for m in metrics(tmp_path / "run") if "eval_loss" in m]
    losses = eval_losses(tmp_path / "run")
    best = min(losses)
    assert state_steps[-1] < 500  # 100 epochs would be 500 steps
    assert losses[-1] > best and losses[-2] > best  # stopped after 2 evaluations without improvement
    # The saved model is the best checkpoint's, not the last step's.
    best_step = state_steps[1:][losses[1:].index(min(losses[1:]))]
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    kept = load_file(str(tmp_path / "run" / "checkpoints" / f"checkpoint-{best_step}" / "model.safetensors"))
    assert all(torch.equal(saved[k], kept[k]) for k in kept)

    # Run again: the stopped run is complete, so nothing more trains.
    run_train(cfg)
    assert [m["step"] for m in metrics(tmp_path / "run") if "eval_loss" in m] == state_steps


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt2-prompt-tuning"])
def test_scoring_only_labelled_positions_changes_nothing(arch, tiny_model_dir, tiny_llama_dir):
    """The output head run on scored positions only gives the same loss and gradients as full logits."""
    from sftlab.train.adapters import apply_method
    from sftlab.train.head_outputs import scored_positions_only

    model_dir = tiny_llama_dir if arch == "llama" else tiny_model_dir
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if arch.endswith("prompt-tuning"):  # prepends 16 virtual tokens to every sequence
        model = apply_method(TrainConfig(model_name_or_path="x", train_file=["x"], method="prompt"), model)
    model.eval()  # no dropout: both passes see the same function
    torch.manual_seed(0)
    ids = torch.randint(2, 500, (3, 20))
    labels = ids.clone()
    labels[0, :12] = -100  # a masked prompt
    labels[1, :5] = -100
    labels[1, 15:] = -100  # padding
    labels[2, :] = -100  # nothing to learn in this row
    mask = (labels != -100) | (torch.arange(20) < 15)

    def loss_and_grads(gathered: bool):
        model.zero_grad()
        if gathered:
            with scored_positions_only(model.get_output_embeddings(), labels) as new_labels:
                logits = model(input_ids=ids, attention_mask=mask).logits
            assert logits.shape[:2] == (1, int((labels[:, 1:] != -100).sum()) + 1)
            loss = cross_entropy(logits, new_labels)
        else:
            logits = model(input_ids=ids, attention_mask=mask).logits
            loss = cross_entropy(logits[:, logits.size(1) - 20 :], labels)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full, full_grads = loss_and_grads(False)
    part, part_grads = loss_and_grads(True)
    torch.testing.assert_close(part, full, rtol=1e-6, atol=1e-6)
    assert full_grads.keys() == part_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(part_grads[name], full_grads[name], rtol=1e-5, atol=1e-7)


def test_bad_records_are_quarantined_and_counted(tiny_model_dir, alpaca_file, tmp_path, capsys):
    good = json.loads(alpaca_file.read_text())[:30]
    lines = [json.dumps(r) for r in good[:15]]
    lines += [
        '{"instruction": "Say hi", "input": "", "output": "   "}',  # whitespace-only response
        "{broken json",
        '{"instruction": 5, "output": "x"}',  # wrong type
    ]
    lines += [json.dumps(r) for r in good[15:]]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    run_train(_cfg(tiny_model_dir, data, run, max_steps=1))
    quarantined = [json.loads(line) for line in (run / "data" / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(q["line"] for q in quarantined) == [16, 17, 18]
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert stats["records"]["train"] == 30 and sum(stats["rejected"].values()) == 3
    assert "3 quarantined" in capsys.readouterr().out


@pytest.mark.parametrize(("optim", "cls"), [("radam", torch.optim.RAdam), ("sgd", torch.optim.SGD),
                                            ("adamw", torch.optim.AdamW)])
def test_optim_reaches_the_trainer(optim, cls, tiny_model_dir, alpaca_file, tmp_path):
    from sftlab.recipes.train import prepare_train

    session = prepare_train(_cfg(tiny_model_dir, alpaca_file, tmp_path / "run", optim=optim, weight_decay=0.1))
    optimizer = session.trainer.create_optimizer()
    assert isinstance(getattr(optimizer, "optimizer", optimizer), cls)
    decays = sorted({group["weight_decay"] for group in optimizer.param_groups})
    assert decays == [0.0, 0.1]  # biases and norms are not decayed


def test_keep_checkpoints_false_drops_them_only_once_the_run_has_finished(tiny_model_dir, alpaca_file, tmp_path,
                                                                         capsys):
    run = tmp_path / "run"
    cfg = _cfg(tiny_model_dir, alpaca_file, run, max_steps=4, save_strategy="steps", save_steps=2,
               keep_checkpoints=False)
    seen: list[str] = []
    session = prepare_train(cfg)
    # The checkpoints exist while the run trains (an interrupted run resumes from them)...
    session.trainer.add_callback(_ListCheckpoints(run / "checkpoints", seen))
    finish_train(session)
    assert seen == ["checkpoint-2"]
    # ... and are gone once the model and summary.json are written.
    assert not (run / "checkpoints").exists()
    assert (run / "model" / "model.safetensors").is_file() and (run / "summary.json").is_file()
    assert run_train(cfg) == run / "model"  # still a finished run: a rerun does nothing
    assert "finished earlier with this config" in " ".join(capsys.readouterr().out.split())  # rich wraps lines


class _ListCheckpoints(TrainerCallback):
    """Records the checkpoint dirs present at each step's end."""

    def __init__(self, checkpoints: Path, seen: list[str]) -> None:
        self.checkpoints, self.seen = checkpoints, seen

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            self.seen.extend(sorted(p.name for p in self.checkpoints.glob("checkpoint-*")))
