"""SafeLoRA on a tiny Llama: the projection against a hand computation, the layer choice, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model_dir
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from sftlab.cli import main
from sftlab.errors import UserError
from sftlab.train.safelora import ADAPTER_WEIGHTS, safelora


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_llama_dir: Path) -> tuple[Path, Path]:
    """(aligned, adapter): the tiny Llama plus a seeded perturbation, and a LoRA adapter with random B."""
    root = tmp_path_factory.mktemp("safelora")
    weights = load_file(next(tiny_llama_dir.glob("*.safetensors")))
    gen = torch.Generator().manual_seed(0)
    aligned = root / "aligned"
    aligned.mkdir()
    for f in tiny_llama_dir.iterdir():
        if f.suffix != ".safetensors":
            (aligned / f.name).write_bytes(f.read_bytes())
    save_file({k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in weights.items()},
              aligned / "model.safetensors")
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape))
    model.save_pretrained(root / "adapter")
    return aligned, root / "adapter"


def by_hand(aligned: Path, unaligned: Path, adapter: Path) -> dict[str, tuple[float, np.ndarray]]:
    """For each lora_B key: cos(dW, C dW) and C B, in numpy, from the formulas of Hsu et al. 2024."""
    wa = {k: v.double().numpy() for k, v in load_file(aligned / "model.safetensors").items()}
    wu = {k: v.double().numpy() for k, v in load_file(next(unaligned.glob("*.safetensors"))).items()}
    lora = {k: v.double().numpy() for k, v in load_file(adapter / ADAPTER_WEIGHTS).items()}
    out = {}
    for key_b in (k for k in lora if "lora_B" in k):
        weight = key_b.removeprefix("base_model.model.").replace(".lora_B.weight", ".weight")
        v = wa[weight] - wu[weight]
        c = v @ v.T / np.sqrt((v ** 2).sum())
        dw = lora[key_b] @ lora[key_b.replace("lora_B", "lora_A")]
        cdw = c @ dw
        cos = (dw * cdw).sum() / np.sqrt((dw ** 2).sum() * (cdw ** 2).sum())
        out[key_b] = (float(cos), c @ lora[key_b])
    return out


def test_projection_matches_the_hand_computation(pair, tiny_llama_dir: Path, tmp_path: Path) -> None:
    aligned, adapter = pair
    expected = by_hand(aligned, tiny_llama_dir, adapter)
    cosines = sorted(cos for cos, _ in expected.values())
    threshold = (cosines[1] + cosines[2]) / 2  # the two lowest-cosine layers fall under it
    decisions = safelora(str(aligned), str(tiny_llama_dir), adapter, tmp_path / "out", threshold=threshold)
    before, after = load_file(adapter / ADAPTER_WEIGHTS), load_file(tmp_path / "out" / ADAPTER_WEIGHTS)
    assert sum(d.projected for d in decisions) == 2 == len(decisions) - 2
    for key_b, (cos, projected_b) in expected.items():
        decision = next(d for d in decisions if key_b.endswith(d.weight.replace(".weight", ".lora_B.weight")))
        assert decision.cosine == pytest.approx(cos, abs=1e-5)
        if cos <= threshold:
            np.testing.assert_allclose(after[key_b].numpy(), projected_b, rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(after[key_b], before[key_b])
        key_a = key_b.replace("lora_B", "lora_A")
        assert torch.equal(after[key_a], before[key_a])  # A never changes
    report = json.loads((tmp_path / "out" / "safelora.json").read_text())
    assert report["projected"] == 2 and (tmp_path / "out" / "adapter_config.json").is_file()


def test_num_layers_projects_the_lowest_cosines(pair, tiny_llama_dir: Path, tmp_path: Path) -> None:
    aligned, adapter = pair
    decisions = safelora(str(aligned), str(tiny_llama_dir), adapter, tmp_path / "out", num_layers=1)
    lowest = min(decisions, key=lambda d: d.cosine)
    assert [d.weight for d in decisions if d.projected] == [lowest.weight]


def test_models_of_different_shapes_exit_2(pair, tiny_tokenizer, tmp_path: Path, capsys) -> None:
    aligned, adapter = pair
    wider = make_tiny_model_dir(tmp_path / "wide", tiny_tokenizer, architecture="llama", n_embd=32)
    code = main(["safelora", "--aligned", str(aligned), "--unaligned", str(wider), "--adapter", str(adapter),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "differ in shape" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_not_an_adapter_is_a_user_error(pair, tiny_llama_dir: Path, tmp_path: Path) -> None:
    aligned, _ = pair
    with pytest.raises(UserError, match="not a PEFT adapter"):
        safelora(str(aligned), str(tiny_llama_dir), tiny_llama_dir, tmp_path / "out")
