"""Precision: what ``dtype: auto`` picks (a CPU with bf16 units by model width, bf16 GPU), how a forced dtype meets the
bf16/fp16 switches, and bf16-autocast training on a tiny model: matmuls run in bf16, master weights stay fp32,
and the loss curve stays within 1% of fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import GPT2Config

from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.models import load
from sftlab.models.load import CPU_BF16_MIN_WIDTH, cpu_has_native_bf16, resolve_dtype
from sftlab.recipes.train import finish_train, prepare_train, training_precision

from conftest import needs_on_this_machine


def _config(width: int) -> GPT2Config:
    """A config of the given width (GPT-2's ``n_embd``, which it also answers as ``hidden_size``)."""
    return GPT2Config(n_embd=width, n_head=1, n_layer=1, vocab_size=64)


@pytest.mark.parametrize(("name", "dtype"), [("float32", torch.float32), ("fp32", torch.float32),
                                             ("bfloat16", torch.bfloat16), ("bf16", torch.bfloat16),
                                             ("float16", torch.float16), (torch.float16, torch.float16)])
def test_explicit_dtypes_pass_through(name, dtype):
    assert resolve_dtype(name, "cpu", _config(64)) is dtype


def test_unknown_dtype_is_a_user_error():
    with pytest.raises(UserError, match="unknown dtype 'half'"):
        resolve_dtype("half", "cpu")


@pytest.mark.parametrize(("amx", "width", "expected"), [
    (True, CPU_BF16_MIN_WIDTH, torch.bfloat16),
    (True, 576, torch.bfloat16),  # SmolLM2-135M
    (True, CPU_BF16_MIN_WIDTH - 1, torch.float32),
    (True, 64, torch.float32),  # the test models: bf16 measured slower there
    (False, 576, torch.float32),  # no bf16 units: bf16 matmuls are emulated
])
def test_auto_on_cpu_takes_bf16_only_with_bf16_units_and_a_wide_model(monkeypatch, amx, width, expected):
    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: amx)
    assert resolve_dtype("auto", "cpu", _config(width)) is expected
    assert resolve_dtype(None, "cpu", _config(width)) is expected


def test_auto_on_cpu_without_a_config_stays_fp32(monkeypatch):
    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") is torch.float32


@pytest.mark.parametrize(("supported", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cuda_follows_bf16_support_whatever_the_width(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
    assert resolve_dtype("auto", "cuda", _config(64)) is expected


def test_bf16_unit_detection_agrees_with_the_kernel_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        needs_on_this_machine("/proc/cpuinfo", "a Linux kernel's CPU flags to cross-check against")
    flags = {f for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for f in line.split()}
    assert cpu_has_native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)


def _cfg(model_dir: Path, train_file: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model_name_or_path=str(model_dir), train_file=[str(train_file)], output_dir=str(out), max_length=96,
                per_device_train_batch_size=8, logging_steps=1, save_strategy="no", learning_rate=3e-3, max_steps=12)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize(("kw", "message"), [({"bf16": True, "dtype": "float32"}, "contradicts bf16"),
                                             ({"fp16": True, "dtype": "bfloat16"}, "contradicts fp16")])
def test_a_dtype_that_contradicts_a_switch_is_refused(kw, message, tmp_path):
    with pytest.raises(ValidationError, match=message):
        _cfg(tmp_path, tmp_path / "x.json", tmp_path, **kw)


@pytest.mark.parametrize(("kw", "width", "amx", "expected"), [
    ({}, 576, True, "bf16"),
    ({}, 64, True, "fp32"),
    ({}, 576, False, "fp32"),
    ({"dtype": "float32"}, 576, True, "fp32"),
    ({"dtype": "bfloat16"}, 64, False, "bf16"),
    ({"bf16": True}, 64, False, "bf16"),
    ({"bf16": True, "dtype": "bfloat16"}, 64, False, "bf16"),
    ({"fp16": True}, 576, True, "fp16"),
])
def test_training_precision(monkeypatch, tmp_path, kw, width, amx, expected):
    monkeypatch.setattr(load, "cpu_has_native_bf16", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_precision(_cfg(tmp_path, tmp_path / "x.json", tmp_path, **kw), _config(width)) == expected


@pytest.fixture(scope="module")
def alpaca_file(tmp_path_factory, shared_data) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:96]
    path = tmp_path_factory.mktemp("alpaca") / "alpaca_96.json"
    path.write_text(json.dumps(records))
    return path


def _train(model_dir: Path, alpaca_file: Path, out: Path, dtype: str) -> tuple[list[float], set[torch.dtype], dict]:
    """Train 12 steps; returns the per-step train losses, the dtypes the first MLP projection computed in,
    and the saved run's summary."""
    session = prepare_train(_cfg(model_dir, alpaca_file, out, dtype=dtype, seed=3))
    # Short rows under CPU bf16 train with eager attention (SDPA's CPU kernel is slow there); fp32 keeps SDPA.
    assert session.trainer.model.config._attn_implementation == ("eager" if dtype == "bfloat16" else "sdpa")
    seen: set[torch.dtype] = set()
    proj = session.trainer.model.model.layers[0].mlp.up_proj
    proj.register_forward_hook(lambda module, args, output: seen.add(output.dtype))
    loss_fn = session.trainer.loss_fn

    def spy(logits, *args, **kwargs):
        seen.add(logits.dtype)  # the logits arrive in autocast's dtype (no float32 copy of them is made)
        return loss_fn(logits, *args, **kwargs)

    session.trainer.loss_fn = spy
    finish_train(session)
    assert all(p.dtype == torch.float32 for p in session.trainer.model.parameters())  # master weights
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    return losses, seen, json.loads((out / "summary.json").read_text())


def test_bf16_autocast_training_tracks_fp32_within_one_percent(tiny_llama_dir, alpaca_file, tmp_path):
    fp32, fp32_seen, fp32_summary = _train(tiny_llama_dir, alpaca_file, tmp_path / "fp32", "float32")
    bf16, bf16_seen, bf16_summary = _train(tiny_llama_dir, alpaca_file, tmp_path / "bf16", "bfloat16")
    assert fp32_seen == {torch.float32} and bf16_seen == {torch.bfloat16}
    assert (fp32_summary["precision"], bf16_summary["precision"]) == ("fp32", "bf16 autocast")
    assert len(fp32) == len(bf16) == 12
    assert fp32[-1] < 0.95 * fp32[0]  # it learned: the comparison is over a moving curve, not a flat one
    worst = max(abs(b - f) / f for f, b in zip(fp32, bf16))
    assert worst < 0.01, (fp32, bf16)
    assert bf16 != fp32  # bf16 did change the arithmetic


@pytest.mark.parametrize(("precision", "device", "length", "expected"), [
    ("bf16", "cpu", 96, "eager"), ("bf16", "cpu", load.CPU_BF16_EAGER_MAX_LENGTH, "eager"),
    ("bf16", "cpu", load.CPU_BF16_EAGER_MAX_LENGTH + 1, None), ("fp32", "cpu", 96, None), ("bf16", "cuda", 96, None),
])
def test_training_attention(precision, device, length, expected):
    assert load.training_attention(precision, device, length) == expected


@pytest.mark.parametrize(("compute", "device", "expected"), [
    (torch.float32, "cpu", (torch.float32, None)),
    (torch.bfloat16, "cpu", (torch.float32, torch.bfloat16)),  # fp32 weights, bf16 matmuls under autocast
    (torch.bfloat16, "cuda", (torch.bfloat16, None)),
    (torch.float16, "cuda:1", (torch.float16, None)),
])
def test_inference_precision_plan(compute, device, expected):
    assert load.weights_and_autocast(compute, device) == expected


def _audit_inputs(model_dir: Path, shared_data: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """Three Alpaca prompts, a tinyshakespeare excerpt as reference text, and a copy of ``model_dir`` to audit."""
    import shutil

    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": r["instruction"]}) + "\n" for r in alpaca[:3]))
    reference = tmp_path / "ref.txt"
    reference.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[100_000:102_000])
    tuned = tmp_path / "tuned"
    shutil.copytree(model_dir, tuned)
    return prompts, reference, tuned


def _audit(base: Path, tuned: Path, prompts: Path, reference: Path, out: Path, cache: Path, dtype: str,
           monkeypatch) -> tuple[dict, set[tuple[torch.dtype, torch.dtype]]]:
    """A small audit on CPU; returns report.json and the (weight, output) dtypes every Linear computed in."""
    from sftlab.config import AuditConfig
    from sftlab.recipes import audit

    seen: set[tuple[torch.dtype, torch.dtype]] = set()
    real_load = load.load_model

    def load_and_watch(*args, **kwargs):
        model = real_load(*args, **kwargs)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda m, a, o: seen.add((m.weight.dtype, o.dtype)))
        return model

    monkeypatch.setattr(audit, "load_model", load_and_watch)
    cfg = AuditConfig(base=str(base), tuned=[str(tuned)], prompts=str(prompts), reference=[str(reference)],
                      out=str(out), cache_dir=str(cache), device="cpu", dtype=dtype, max_length=128,
                      bootstrap_samples=100, sampling={"num_samples": 2, "max_new_tokens": 8, "batch_size": 8})
    audit.run_audit(cfg)
    return json.loads((out / "report.json").read_text()), seen


def test_audit_in_bf16_runs_matmuls_in_bf16_on_fp32_weights_and_caches_apart(
        tiny_llama_dir, tiny_tokenizer, shared_data, tmp_path, monkeypatch):
    prompts, reference, tuned = _audit_inputs(tiny_llama_dir, shared_data, tmp_path)
    cache = tmp_path / "cache"
    fp32, fp32_seen = _audit(tiny_llama_dir, tuned, prompts, reference, tmp_path / "a32", cache, "float32",
                             monkeypatch)
    cached = set(cache.rglob("*"))
    bf16, bf16_seen = _audit(tiny_llama_dir, tuned, prompts, reference, tmp_path / "a16", cache, "bfloat16",
                             monkeypatch)
    assert fp32_seen == {(torch.float32, torch.float32)}
    assert bf16_seen == {(torch.float32, torch.bfloat16)}
    assert set(cache.rglob("*")) > cached  # bf16 sampled anew instead of reusing the fp32 samples
    assert (fp32["meta"]["dtype"], bf16["meta"]["dtype"]) == ("float32", "bfloat16")
    ppl = [r["sections"]["forgetting"]["perplexity"]["ref"][tiny_llama_dir.name]["perplexity"] for r in (fp32, bf16)]
    assert ppl[0] != ppl[1] and abs(ppl[1] / ppl[0] - 1) < 0.01, ppl  # teacher-forced scoring agrees within 1%


def test_a_bf16_audit_dithers_by_default_every_models_linear_weights_alike_and_caches_apart(
        tiny_llama_dir, shared_data, tmp_path, monkeypatch):
    from sftlab.config import AuditConfig
    from sftlab.recipes import audit
    from sftlab.train.weight_rounding import linear_weights

    prompts, reference, tuned = _audit_inputs(tiny_llama_dir, shared_data, tmp_path)
    cache = tmp_path / "cache"
    loaded: list[torch.nn.Module] = []
    real_load = audit.load_model

    def load_and_keep(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(audit, "load_model", load_and_keep)

    def run(rounding: str) -> dict:
        cfg = AuditConfig(base=str(tiny_llama_dir), tuned=[str(tuned)], prompts=str(prompts),
                          reference=[str(reference)], out=str(tmp_path / rounding), cache_dir=str(cache), device="cpu",
                          dtype="bfloat16", bf16_weight_rounding=rounding, max_length=128, bootstrap_samples=100,
                          sampling={"num_samples": 2, "max_new_tokens": 8, "batch_size": 8})
        audit.run_audit(cfg)
        return json.loads((tmp_path / rounding / "report.json").read_text())

    nearest = run("nearest")
    cached = set(cache.rglob("*"))
    dithered = run("auto")  # a bf16 audit: auto is dithered
    assert (nearest["meta"]["weight_rounding"], dithered["meta"]["weight_rounding"]) == ("nearest", "dithered")
    assert set(cache.rglob("*")) > cached  # dithered models sampled anew, not served the nearest-cast samples
    weights = [[p.detach() for p in linear_weights(model, trainable_only=False)] for model in loaded[2:]]
    # Every linear weight of both dithered models holds bf16 values, and the base and its identical copy were
    # rounded with the same thresholds (the same values), so their views differ only where their weights do.
    assert all(torch.equal(w, w.to(torch.bfloat16).float()) for w in weights[0])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
    ppl = [r["sections"]["forgetting"]["perplexity"]["ref"][tiny_llama_dir.name]["perplexity"] for r in (nearest, dithered)]
    assert ppl[0] != ppl[1] and abs(ppl[1] / ppl[0] - 1) < 0.01, ppl  # another rounding, the same model within 1%


def test_a_dithered_audit_of_a_fp32_audit_is_a_user_error(tiny_llama_dir, tmp_path):
    from sftlab.config import AuditConfig
    from sftlab.errors import UserError
    from sftlab.recipes import audit

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hello"}) + "\n")
    cfg = AuditConfig(base=str(tiny_llama_dir), tuned=[str(tiny_llama_dir) + "=same"], prompts=str(prompts),
                      out=str(tmp_path / "audit"), device="cpu", dtype="float32", bf16_weight_rounding="dithered")
    with pytest.raises(UserError, match="dithered applies to a bf16 audit"):
        audit.run_audit(cfg)
    assert not (tmp_path / "audit").exists()
