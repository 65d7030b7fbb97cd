"""On-policy self-distillation (sftlab.train.onpolicy_distill), on a tiny model.

- The divergence on a 3-token vocabulary against hand-computed values, in every mode and direction,
  with the answer-then-batch averaging and the sampled-token gradient.
- A teacher that sees exactly what the student sees gives zero loss and zero gradient.
- The samples are the student's own: with resample_every 1, the answers of step 2 are what a direct
  sampling call on the weights after step 1 gives with that step's seed (and not what the starting
  weights give); with resample_every 2 they are step 1's, reused.
- The base teacher keeps scoring as the starting model after updates (full FT: a frozen copy; LoRA: the
  adapter switched off).
- Prompts: the demonstration lands in the teacher's last user turn only.
- `sftlab train` with an on_policy_distill section runs end to end; clashing keys are config errors.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, TrainerCallback

from sftlab.config import SamplingSettings, TrainConfig
from sftlab.data.records import Message, Origin, Record
from sftlab.data.tokenize import encode_prompt
from sftlab.errors import UserError
from sftlab.models.generate import generate
from sftlab.recipes.train import finish_train, prepare_train
from sftlab.train.onpolicy_distill import (
    RECORD_INDEX_KEY,
    DistillPrompt,
    OnPolicyDistiller,
    Teacher,
    build_prompts,
    distillation_loss,
    fill_template,
    token_divergence,
)
from sftlab.train.remedies.on_policy_distill import OnPolicyDistillSettings



# --------------------------------------------------------------------------------------------------
# The divergence by hand

# One answer position, vocabulary of 3: student p = (0.7, 0.2, 0.1), teacher q = (0.2, 0.3, 0.5).
P, Q = (0.7, 0.2, 0.1), (0.2, 0.3, 0.5)


def _logits(probs: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(probs, dtype=torch.float64).log().view(1, 1, 3)


def test_divergence_on_three_tokens_by_hand() -> None:
    s, t, y = _logits(P), _logits(Q), torch.tensor([[2]])
    reverse = 0.7 * math.log(0.7 / 0.2) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.5)
    forward = 0.2 * math.log(0.2 / 0.7) + 0.3 * math.log(0.3 / 0.2) + 0.5 * math.log(0.5 / 0.1)
    # Top 2 of the student: tokens 0 and 1; renormalised, p' = (7/9, 2/9) and q' = (0.4, 0.6).
    top2_reverse = 7 / 9 * math.log((7 / 9) / 0.4) + 2 / 9 * math.log((2 / 9) / 0.6)
    top2_forward = 0.4 * math.log(0.4 / (7 / 9)) + 0.6 * math.log(0.6 / (2 / 9))
    sampled = (math.log(0.1) - math.log(0.5)) * math.log(0.1)  # stopgrad(log p(y) - log q(y)) * log p(y), y = 2
    cases = {
        ("full_logits", "reverse"): reverse, ("full_logits", "forward"): forward,
        ("topk_logits", "reverse"): top2_reverse, ("topk_logits", "forward"): top2_forward,
        ("sampled_token", "reverse"): sampled,
    }
    for (mode, direction), expected in cases.items():
        value = token_divergence(s, t, y, mode, direction, top_k=2)
        assert value.shape == (1, 1)
        assert value.item() == pytest.approx(expected, abs=1e-6), (mode, direction)
    with pytest.raises(ValueError):
        token_divergence(s, t, y, "sampled_token", "forward")


def test_gradients_by_hand() -> None:
    """Reverse KL's gradient to the student logits is p * (log p - log q - KL); the sampled-token
    estimator's is (log p(y) - log q(y)) * (onehot(y) - p); the teacher gets none."""
    p, q = torch.tensor(P, dtype=torch.float64), torch.tensor(Q, dtype=torch.float64)
    kl = (p * (p.log() - q.log())).sum()
    s = _logits(P).requires_grad_(True)
    t = _logits(Q).requires_grad_(True)
    token_divergence(s, t, torch.tensor([[2]]), "full_logits", "reverse").sum().backward()
    assert torch.allclose(s.grad.view(3), p * (p.log() - q.log() - kl), atol=1e-9)
    assert t.grad is None or torch.count_nonzero(t.grad) == 0
    s.grad = None
    token_divergence(s, t, torch.tensor([[2]]), "sampled_token", "reverse").sum().backward()
    expected = (math.log(0.1) - math.log(0.5)) * (torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) - p)
    assert torch.allclose(s.grad.view(3), expected, atol=1e-9)


def test_loss_averages_each_answer_then_the_batch() -> None:
    per_token = torch.tensor([[1.0, 3.0, 100.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert distillation_loss(per_token, mask).item() == pytest.approx(((1 + 3) / 2 + 4) / 2)


# --------------------------------------------------------------------------------------------------
# Prompts


def _record(user: str, answer: str, system: str | None = None) -> Record:
    messages = ([Message("system", system)] if system else []) + [Message("user", user), Message("assistant", answer)]
    return Record(kind="conversation", origin=Origin("mem", 1), messages=messages)


def test_teacher_prompt_holds_the_demonstration_in_the_last_user_turn(tiny_tokenizer) -> None:
    record = _record("Name a {fruit}.", "An apple.", system="Be brief.")
    template = "{prompt}\nExample: {demonstration}"
    (prompt,) = build_prompts([record], tiny_tokenizer, template)
    system, user = Message("system", "Be brief."), Message("user", "Name a {fruit}.")
    assert prompt.student == encode_prompt(tiny_tokenizer, [system, user])
    assert prompt.teacher == encode_prompt(
        tiny_tokenizer, [system, Message("user", "Name a {fruit}.\nExample: An apple.")])
    assert fill_template("{prompt}|{demonstration}", "a {demonstration}", "b") == "a {demonstration}|b"
    with pytest.raises(UserError, match="plain text"):
        build_prompts([Record(kind="text", origin=Origin("mem", 2), text="just text")], tiny_tokenizer, template)


# --------------------------------------------------------------------------------------------------
# Teacher equal to student


@pytest.mark.parametrize("mode", ["full_logits", "topk_logits", "sampled_token"])
@pytest.mark.parametrize("kind", ["live", "base"])
def test_teacher_equal_to_student_gives_zero_loss_and_gradient(tiny_model_dir, tiny_tokenizer, kind, mode) -> None:
    """Teacher prompt = student prompt: the teacher is the student (live, or base before any update)."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()  # no dropout: one network, one function
    # Prompts of different lengths: the shorter one is left-padded.
    records = [_record("Write a long line about the sea, the wind and the rain, please.", "x"), _record("Hi.", "x")]
    built = build_prompts(records, tiny_tokenizer, "{prompt}{demonstration}")
    prompts = [DistillPrompt(p.student, p.student) for p in built]
    settings = OnPolicyDistillSettings(teacher=kind, mode=mode, max_new_tokens=6, top_k=5)
    distiller = OnPolicyDistiller(settings, prompts, tiny_tokenizer, Teacher(kind, model), seed=0, max_length=256)
    loss = distiller(model, {RECORD_INDEX_KEY: torch.tensor([0, 1])}, step=0)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "the loss must reach the weights"
    assert max(g.abs().max().item() for g in grads) < 1e-6


# --------------------------------------------------------------------------------------------------
# Through the trainer


@pytest.fixture(scope="module")
def sft_file(tmp_path_factory, shared_data) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:4]
    path = tmp_path_factory.mktemp("onpolicy_data") / "sft.json"
    path.write_text(json.dumps(records))
    return path


def _config(model_dir: Path, sft: Path, run: Path, **distill) -> TrainConfig:
    return TrainConfig(
        model_name_or_path=str(model_dir), train_file=[str(sft)], output_dir=str(run), max_length=128,
        per_device_train_batch_size=4, max_steps=2, learning_rate=5e-2, logging_steps=1, save_strategy="no",
        dropout=0.0, seed=3, on_policy_distill={"max_new_tokens": 8, **distill},
    )


class WeightsAfterStep(TrainerCallback):
    """Keeps a copy of the model as it is after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.model = step, None

    def on_step_end(self, args, state, control, model=None, **kwargs) -> None:
        if state.global_step == self.step:
            self.model = copy.deepcopy(model).eval()


def _record_samples(distiller: OnPolicyDistiller) -> list[tuple[int, list[int], list[list[int]]]]:
    calls: list[tuple[int, list[int], list[list[int]]]] = []
    sample = distiller.sample

    def recording(model, indices, step):
        answers = sample(model, indices, step)
        calls.append((step, list(indices), answers))
        return answers

    distiller.sample = recording
    return calls


def _direct_samples(model, tokenizer, distiller: OnPolicyDistiller, indices: list[int], step: int) -> list[list[int]]:
    """What the audit's sampler gives for these prompts with the seed of ``step`` (EOS appended as the
    distiller does)."""
    s = distiller.settings
    sampling = SamplingSettings(num_samples=1, temperature=s.temperature, top_p=1.0, top_k=0,
                                max_new_tokens=s.max_new_tokens, batch_size=len(indices),
                                seed=distiller.sample_seed(step))
    out = generate(model, tokenizer, [distiller.prompts[i].student for i in indices], sampling, greedy=False,
                   max_length=128)
    eos = tokenizer.eos_token_id
    return [ids[0] + [eos] if len(ids[0]) < s.max_new_tokens else ids[0] for ids in out.token_ids]


def test_samples_are_regenerated_from_the_updated_weights(tiny_model_dir, tiny_tokenizer, sft_file, tmp_path) -> None:
    session = prepare_train(_config(tiny_model_dir, sft_file, tmp_path / "run", resample_every=1))
    distiller = session.trainer.objective
    start = copy.deepcopy(session.trainer.model).eval()
    calls = _record_samples(distiller)
    after_first = WeightsAfterStep(1)
    session.trainer.add_callback(after_first)
    finish_train(session)

    assert [c[0] for c in calls] == [0, 1], "one sampling per step"
    step, indices, answers = calls[1]
    assert sorted(indices) == [0, 1, 2, 3]
    assert answers == _direct_samples(after_first.model, tiny_tokenizer, distiller, indices, step)
    # The check can tell: the starting weights, same seed, answer differently.
    assert answers != _direct_samples(start, tiny_tokenizer, distiller, indices, step)
    assert calls[0][2] == _direct_samples(start, tiny_tokenizer, distiller, calls[0][1], 0)


def test_resample_every_two_reuses_the_answers(tiny_model_dir, sft_file, tmp_path) -> None:
    session = prepare_train(_config(tiny_model_dir, sft_file, tmp_path / "run", resample_every=2, teacher="live"))
    distiller = session.trainer.objective
    calls = _record_samples(distiller)
    used: list[dict[int, list[int]]] = []
    answers = distiller.answers

    def recording(model, indices, step):
        out = answers(model, indices, step)
        used.append(dict(zip(indices, out)))
        return out

    distiller.answers = recording
    finish_train(session)
    assert [c[0] for c in calls] == [0]
    assert len(used) == 2 and used[0] == used[1]


def test_sftlab_train_runs_end_to_end(tiny_model_dir, sft_file, tmp_path) -> None:
    from sftlab.cli import main

    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model_dir), "train_file": str(sft_file), "eval_file": str(sft_file),
        "output_dir": str(run), "max_length": 128, "per_device_train_batch_size": 2, "max_steps": 3,
        "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
        "on_policy_distill": {"mode": "topk_logits", "top_k": 20, "max_new_tokens": 8},
    }))
    assert main(["--offline", "train", str(config)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 3
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logs if "loss" in m]
    assert len(train) == 3 and all(math.isfinite(m["loss"]) for m in train)
    assert all(m["onpolicy/sampled"] == 2 for m in train)  # 2 prompts a step, each answered afresh
    assert all(1 <= m["onpolicy/answer_tokens"] <= 8 for m in train)
    assert summary["eval_loss_last"] is not None  # the eval set is still scored by cross-entropy
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("extra, message", [
    ({"kl_to_base": {"beta": 0.1}}, "kl_to_base"),
    ({"loss": "dft"}, "dft"),
    ({"fsdp": {}}, "fsdp"),
    ({"on_policy_distill": {"demo_template": "{prompt} only"}}, "demonstration"),
    ({"on_policy_distill": {"mode": "sampled_token", "direction": "forward"}}, "reverse"),
])
def test_clashing_settings_are_config_errors(tiny_model_dir, sft_file, extra, message) -> None:
    base = {"model_name_or_path": str(tiny_model_dir), "train_file": [str(sft_file)], "on_policy_distill": {}}
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**base, **extra})
    if "on_policy_distill" not in extra:  # the same keys without on_policy_distill are fine
        TrainConfig(**{**base, "on_policy_distill": None, **extra})


@pytest.mark.parametrize("method", ["full", "lora"])
def test_base_teacher_keeps_the_starting_weights(tiny_model_dir, tiny_tokenizer, sft_file, tmp_path, method) -> None:
    """After updates, the base teacher scores as the starting model does (a frozen copy; with LoRA, the model
    with its adapter off), while the trained student has moved."""
    from sftlab.train.onpolicy_distill import _batch, answer_logits

    cfg = _config(tiny_model_dir, sft_file, tmp_path / "run", teacher="base")
    if method == "lora":
        cfg = TrainConfig(**{**cfg.model_dump(by_alias=True), "method": "lora",
                             "lora": {"r": 4, "alpha": 8, "target_modules": ["c_attn", "c_fc"]}})
    session = prepare_train(cfg)
    distiller = session.trainer.objective
    finish_train(session)
    start = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    model = session.trainer.model.eval()
    batch = _batch([p.teacher for p in distiller.prompts[:2]], [[5, 6, 7], [8]], tiny_tokenizer.pad_token_id,
                   torch.device("cpu"))
    with torch.no_grad():
        expected = answer_logits(start, batch, 3)
        student = answer_logits(model, batch, 3)
    assert torch.allclose(distiller.teacher.logits(model, batch, 3), expected, atol=1e-5)
    assert not torch.allclose(student, expected, atol=1e-3), "the student must have moved for the check to tell"
