"""``bf16_weight_rounding``: the dithered rounding by hand, its exact undoing, its lack of bias, when ``auto``
picks it, and what the trainer runs on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from sftlab.config import TrainConfig
from sftlab.errors import UserError
from sftlab.recipes.train import finish_train, prepare_train
from sftlab.train.weight_rounding import (
    HALF,
    SLICE,
    DitheredBf16,
    dithered_weights,
    resolve_rounding,
    restore_master,
    round_dithered,
    round_in_place,
)


def _from_bits(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int32).view(torch.float32)


def test_each_weight_rounds_up_where_its_dropped_bits_reach_its_threshold():
    # 1.0 is 0x3F800000 and the next bf16 value up is 0x3F810000; -1.0 is 0xBF800000 (sign bit set).
    # The dropped 16 bits are 0x4000 (a quarter of the step) or 0xC000 (three quarters). A weight rounds up
    # where dropped + offset + 0x8000 reaches 0x10000.
    signed = lambda u: u - (1 << 32) if u >= 1 << 31 else u  # noqa: E731 (an int32's bits as a Python int)
    x = _from_bits([signed(u) for u in (0x3F804000, 0x3F804000, 0x3F804000, 0xBF804000, 0x3F80C000, 0x3F80C000)])
    offset = torch.tensor([0, 0x3FFF, 0x4000, 0x4000, -0x4000, -0x4001], dtype=torch.int16)
    got = round_dithered(x, offset, torch.empty_like(x))
    expected = [0x3F800000, 0x3F800000, 0x3F810000, 0xBF810000, 0x3F810000, 0x3F800000]
    assert got.view(torch.int32).tolist() == [signed(u) for u in expected]
    assert torch.equal(got.to(torch.bfloat16).float(), got)  # bf16 holds every result exactly


def test_the_master_is_rebuilt_bit_for_bit_from_its_rounded_value_its_remainder_and_its_offset():
    generator = torch.Generator().manual_seed(0)
    # Random weights of both signs over many exponents, plus the edge cases: dropped bits all ones (the
    # carry crosses into the exponent: 0x3F7FFFFF rounds up to 1.0), zero, -0 and a bf16-exact value.
    # Over two and a half slices (the functions work SLICE elements at a time), edge cases in the last one.
    n = 2 * SLICE + SLICE // 2 - 5
    normal = torch.randn(n, generator=generator)
    scales = 10.0 ** torch.randint(-6, 3, (n,), generator=generator)
    edges = torch.tensor([0, 0x3F7FFFFF, -0x40800001, -(1 << 31), 0x3F810000], dtype=torch.int32)
    x = torch.cat([normal * scales, edges.view(torch.float32)])
    offset = torch.randint(-HALF, HALF, x.shape, dtype=torch.int16, generator=generator)
    offset[-4] = HALF - 1  # the largest offset: 0x3F7FFFFF must carry
    expected = round_dithered(x, offset, torch.empty_like(x))
    # The rule, computed whole in int64 on the magnitude's bits: add offset + HALF, clear the low 16 bits.
    bits = x.view(torch.int32).long() & 0xFFFFFFFF
    rule = ((bits + offset.long() + HALF) & 0xFFFF0000) & 0xFFFFFFFF
    assert torch.equal(expected.view(torch.int32).long() & 0xFFFFFFFF, rule)
    master = x.clone()
    remainder = torch.empty(x.shape, dtype=torch.int16)
    rounded = round_in_place(master, offset, remainder)  # as training does
    assert torch.equal(rounded.view(torch.int32), expected.view(torch.int32))
    assert torch.equal(rounded, rounded.to(torch.bfloat16).float())
    assert rounded[-4].item() == 1.0 and rounded[-1].item() == x[-1].item()  # carried; on the grid, kept
    assert torch.equal(restore_master(rounded, offset, remainder).view(torch.int32), x.view(torch.int32))


def test_a_weight_penalty_measures_the_masters_while_the_weights_are_dithered():
    from sftlab.train.regularizers import L2SP, Anchor

    model = torch.nn.Linear(64, 64)
    anchor = Anchor(model)
    with torch.no_grad():
        model.weight.add_(1e-5)  # a move far under a bf16 step
    l2sp = L2SP(anchor, lam=1.0)
    exact = l2sp.penalty(model, {}, None).item()
    dither = DitheredBf16(dithered_weights(model), seed=0)
    anchor.rounding = dither
    with dither.applied():
        seen = model.weight.detach()
        assert torch.equal(seen, seen.to(torch.bfloat16).float())  # the parameter holds its dithered value
        error = dither.rounding_error(model.weight)
        assert error is not None and error.abs().max().item() > 1e-5  # rounding moves weights further
        penalty = l2sp.penalty(model, {}, None)
        penalty.backward()
    assert dither.rounding_error(model.weight) is None  # nothing applied
    assert penalty.item() == pytest.approx(exact, rel=1e-4)
    # The gradient is lambda * (master - anchor): 1e-5 for every weight, the bias (not moved) 0.
    assert torch.allclose(model.weight.grad, torch.full_like(model.weight, 1e-5), rtol=1e-3)
    assert torch.equal(model.bias.grad, torch.zeros_like(model.bias))


def test_a_bf16_weight_is_left_where_it_is_by_every_threshold():
    # A base shipped in bf16 has every weight on the grid: dithering must not move any of them.
    x = torch.randn(20_000).to(torch.bfloat16).float()
    offset = torch.randint(-HALF, HALF, x.shape, dtype=torch.int16)
    assert torch.equal(round_dithered(x, offset, torch.empty_like(x)), x)


def test_auto_dithers_bf16_steps_that_are_not_sharded_and_an_explicit_setting_stands():
    assert resolve_rounding("auto", bf16=True) == "dithered"
    assert resolve_rounding("auto", bf16=False) == "nearest"
    assert resolve_rounding("auto", bf16=True, sharded=True) == "nearest"  # untested under FSDP / DeepSpeed
    assert resolve_rounding("nearest", bf16=True) == "nearest"
    assert resolve_rounding("dithered", bf16=True) == "dithered"
    TrainConfig(model_name_or_path="m", train_file=["x.json"], fsdp={}, dtype="float32")  # auto refuses nothing


def test_zero_offsets_round_to_nearest_as_autocast_does():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 0.05
    # An exact tie (dropped bits 0x8000, one float in 65,536) rounds half up here and to even in the cast.
    x = x[(x.view(torch.int32) & 0xFFFF) != HALF]
    assert torch.equal(round_dithered(x, torch.zeros(x.shape, dtype=torch.int16), torch.empty_like(x)),
                       x.to(torch.bfloat16).float())


def test_dithering_is_unbiased_where_nearest_drops_a_small_update():
    # 100,000 weights on the bf16 grid, all moved by a fifth of their bf16 step: a fine-tuning step too small
    # for round-to-nearest, which keeps every one of them where it was.
    n = 100_000
    start = (torch.rand(n, generator=torch.Generator().manual_seed(0)) * 0.04 + 0.03).to(torch.bfloat16).float()
    step = torch.nextafter(start.to(torch.bfloat16), torch.tensor(1.0, dtype=torch.bfloat16)).float() - start
    moved = start + step / 5
    assert torch.equal(moved.to(torch.bfloat16).float(), start)
    param = torch.nn.Parameter(moved.clone())
    dither = DitheredBf16([param], seed=0)
    with dither.applied():
        seen = param.data.clone()
    assert torch.equal(param.data, moved)  # the master is back
    up = (seen > start).float()
    assert torch.all((seen == start) | (seen == start + step))  # one step up or none
    # Each rounds up with probability 1/5: the share is 0.2 within 5 standard deviations (0.0063).
    assert up.mean().item() == pytest.approx(0.2, abs=5 * (0.2 * 0.8 / n) ** 0.5)
    assert (seen - moved).mean().abs().item() < 5 * (0.2 * 0.8 / n) ** 0.5 * step.mean().item()


def test_only_trainable_linear_weights_are_dithered_once_each():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4),
                                torch.nn.Linear(4, 10, bias=False))
    model[3].weight = model[0].weight  # tied head, as in SmolLM2
    model[1].bias.requires_grad_(False)
    chosen = dithered_weights(model)
    assert [id(p) for p in chosen] == [id(model[1].weight), id(model[0].weight)]


@pytest.mark.parametrize(("kw", "message"), [
    ({"fsdp": {}}, "not tested with fsdp"),
    ({"dtype": "float32"}, "applies to bf16 steps; this run is float32"),
    ({"fp16": True}, "applies to bf16 steps; this run is fp16"),
])
def test_dithering_is_refused_where_it_cannot_apply_or_is_untested(kw, message):
    with pytest.raises(ValidationError, match=message):
        TrainConfig(model_name_or_path="m", train_file=["x.json"], bf16_weight_rounding="dithered", **kw)


def _config(model_dir: Path, data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(model_name_or_path=str(model_dir), train_file=[str(data)], output_dir=str(out),
                       max_length=128, per_device_train_batch_size=2, max_steps=3, logging_steps=1,
                       save_strategy="no", learning_rate=1e-3, seed=0, **kw)


def test_auto_that_resolves_to_fp32_is_a_user_error(tiny_model_dir, shared_data, tmp_path):
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps(json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:8]))
    with pytest.raises(UserError, match="trains this model in fp32 here"):
        prepare_train(_config(tiny_model_dir, data, tmp_path / "run", bf16_weight_rounding="dithered"))  # fp32 here


def test_a_bf16_run_dithers_by_default_its_forwards_and_evals_and_the_optimizer_and_saved_model_see_the_masters(
        tiny_llama_dir, shared_data, tmp_path):
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    data, eval_data = tmp_path / "alpaca.json", tmp_path / "eval.json"
    data.write_text(json.dumps(records[:8]))
    eval_data.write_text(json.dumps(records[8:10]))
    session = prepare_train(_config(tiny_llama_dir, data, tmp_path / "run", dtype="bfloat16", eval_file=str(eval_data),
                                    eval_strategy="steps", eval_steps=3, per_device_eval_batch_size=2))
    trainer = session.trainer
    proj = trainer.model.model.layers[0].self_attn.q_proj
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    proj.register_forward_pre_hook(lambda module, args: seen[module.training].append(module.weight.detach().clone()))
    finish_train(session)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["weight_rounding"] == "dithered"  # bf16 steps: auto dithers
    # Every training forward (3 steps) and every eval forward (one batch at step 0, one at step 3) ran on
    # bf16 values.
    assert (len(seen[True]), len(seen[False])) == (3, 2)
    assert all(torch.equal(w, w.to(torch.bfloat16).float()) for w in seen[True] + seen[False])
    master = proj.weight.detach()
    assert not torch.equal(master, master.to(torch.bfloat16).float())  # the master keeps its fp32 bits
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.weight"], master)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
