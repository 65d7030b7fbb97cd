"""WiSE-FT: alpha 0 and 1 reproduce base and tuned weights exactly; adapters are merged; the CLI works."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sftlab.cli import main
from sftlab.train.interpolate import interpolate_dirs


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _perturbed_copy(base_dir: Path, out: Path, tokenizer, dtype: torch.dtype = torch.float32) -> Path:
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def test_alpha_zero_and_one_reproduce_the_inputs(tiny_model_dir: Path, tiny_tokenizer, tmp_path: Path) -> None:
    tuned = _perturbed_copy(tiny_model_dir, tmp_path / "tuned", tiny_tokenizer)
    dirs = interpolate_dirs(str(tiny_model_dir), str(tuned), [0.0, 0.5, 1.0], tmp_path / "wise")
    assert [d.name for d in dirs] == ["alpha_0", "alpha_0.5", "alpha_1"]
    base_w, tuned_w = _weights(tiny_model_dir), _weights(tuned)
    w0, w_half, w1 = (_weights(d) for d in dirs)
    assert w0.keys() == base_w.keys() == w1.keys() == tuned_w.keys()
    for key in base_w:
        assert torch.equal(w0[key], base_w[key]), key
        assert torch.equal(w1[key], tuned_w[key]), key
        torch.testing.assert_close(w_half[key], 0.5 * base_w[key] + 0.5 * tuned_w[key])
    assert not torch.equal(base_w["transformer.h.0.mlp.c_fc.weight"], tuned_w["transformer.h.0.mlp.c_fc.weight"])


def test_bf16_base_stays_bf16(tiny_model_dir: Path, tiny_tokenizer, tmp_path: Path) -> None:
    base = _perturbed_copy(tiny_model_dir, tmp_path / "base16", tiny_tokenizer, dtype=torch.bfloat16)
    tuned = _perturbed_copy(base, tmp_path / "tuned16", tiny_tokenizer, dtype=torch.bfloat16)
    (d0, d1) = interpolate_dirs(str(base), str(tuned), [0.0, 1.0], tmp_path / "wise")
    for out, src in ((d0, base), (d1, tuned)):
        got, want = _weights(out), _weights(src)
        assert all(t.dtype == torch.bfloat16 and torch.equal(t, want[k]) for k, t in got.items())


def test_cli_with_a_lora_adapter_merges_first(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False),
    )
    adapter = tmp_path / "adapter"
    model.save_pretrained(str(adapter))
    merged = {k: v.detach() for k, v in model.merge_and_unload().state_dict().items()}

    out = tmp_path / "wise"
    assert main(["interpolate", "--base", str(tiny_model_dir), "--tuned", str(adapter),
                 "--alphas", "0,1", "--out", str(out)]) == 0
    w0, w1 = _weights(out / "alpha_0"), _weights(out / "alpha_1")
    base_w = _weights(tiny_model_dir)
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(merged[key], base_w[key])
    for k in base_w:
        assert torch.equal(w0[k], base_w[k]), k
        torch.testing.assert_close(w1[k], merged[k])
    # Each output is a plain model dir: loads with transformers, with its tokenizer.
    reloaded = AutoModelForCausalLM.from_pretrained(str(out / "alpha_1"))
    tok = AutoTokenizer.from_pretrained(str(out / "alpha_1"))
    ids = tok("hello there", return_tensors="pt")["input_ids"]
    assert reloaded(input_ids=ids).logits.shape[-1] == len(tok)


def test_cli_rejects_mismatched_models_and_bad_alphas(tiny_model_dir: Path, tiny_tokenizer, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from sftlab.models.tiny import build_config

    other = tmp_path / "other"
    config = build_config(len(tiny_tokenizer), "gpt2", "tiny", max_position_embeddings=256, n_layer=2, n_embd=32,
                          n_head=4, eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(other))
    tiny_tokenizer.save_pretrained(str(other))
    args = ["interpolate", "--base", str(tiny_model_dir), "--tuned", str(other), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert "shape" in capsys.readouterr().err
    assert main([*args[:-2], "--alphas", "0.5,x", "--out", str(tmp_path / "o")]) == 2
    assert main([*args[:-2], "--alphas", "nan", "--out", str(tmp_path / "o")]) == 2
