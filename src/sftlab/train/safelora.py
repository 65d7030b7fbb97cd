"""SafeLoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large
Language Models", arXiv 2405.16833): a training-free projection of a LoRA adapter toward the alignment.

For each weight W the adapter updates, with an aligned model and its unaligned base of the same shapes:

    V = W_aligned - W_unaligned                      (out x in)
    C = V V^T / ||V||_F                              (out x out; the paper's "alignment matrix")
    dW = B A                                         (the LoRA update, up to the scale alpha / r)
    cos = <dW, C dW> / (||dW||_F ||C dW||_F)
    if cos <= threshold:  B <- C B                   (so the update becomes C dW)

As in the authors' code (github.com/IBM/SafeLoRA, ``SafeLoRA.projected_weighted``): the test is ``<=``, only B
changes, and layers are chosen either by a cosine threshold (default 0.5) or as the ``num_layers`` with the
lowest cosine (the threshold is then the num_layers-th smallest cosine). Where we differ: the weights are
read straight from the safetensors files (no model is built), matched by name rather than by parameter order,
and a layer whose V is zero (alignment did not change it) is left alone rather than divided by zero.
The scale alpha / r cancels out of the cosine and commutes with C, so it plays no part.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sftlab.errors import UserError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LayerDecision:
    """One adapted weight: its cosine between dW and C dW, and whether its B was projected."""

    weight: str
    cosine: float | None
    projected: bool


def alignment_matrix(aligned: torch.Tensor, unaligned: torch.Tensor) -> torch.Tensor | None:
    """C = V V^T / ||V||_F with V = aligned - unaligned (float32); None when V is zero."""
    v = aligned.float() - unaligned.float()
    norm = torch.linalg.matrix_norm(v)
    return None if norm == 0 else v @ v.T / norm


def projection_cosine(c: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> float:
    """cos(dW, C dW) over the flattened matrices, with dW = B A."""
    dw = lora_b.float() @ lora_a.float()
    return float(torch.nn.functional.cosine_similarity((c @ dw).reshape(1, -1), dw.reshape(1, -1)).item())


class _Weights:
    """Lazy access to a model dir's safetensors tensors by name (one file or shards)."""

    def __init__(self, root: Path, what: str) -> None:
        files = sorted(root.glob("*.safetensors"))
        if not files:
            raise UserError(f"{what} {root}: no .safetensors weights (SafeLoRA reads safetensors only)")
        self.where: dict[str, Path] = {}
        for f in files:
            with safe_open(f, framework="pt") as fh:
                self.where.update(dict.fromkeys(fh.keys(), f))
        self.root, self.what = root, what

    def get(self, name: str) -> torch.Tensor:
        for key in (name, name.removeprefix("model."), f"model.{name}"):
            if key in self.where:
                with safe_open(self.where[key], framework="pt") as fh:
                    return fh.get_tensor(key)
        raise UserError(f"{self.what} {self.root} has no weight {name}: is it the same architecture as the adapter's base?")


def _model_dir(name_or_path: str, what: str) -> Path:
    from sftlab.models.builtin import resolve_model_source

    path = Path(resolve_model_source(name_or_path))
    if not (path / "config.json").is_file():
        raise UserError(f"--{what} {name_or_path}: not a model dir (no config.json)")
    return path


def _read_adapter(adapter: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file() or not (adapter / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"--adapter {adapter}: not a PEFT adapter dir (needs adapter_config.json and {ADAPTER_WEIGHTS})")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise UserError(f"--adapter {adapter}: SafeLoRA projects plain LoRA adapters, this one is "
                        f"{'DoRA' if config.get('use_dora') else config.get('peft_type')}")
    return config, load_file(adapter / ADAPTER_WEIGHTS)


def safelora(
    aligned: str, unaligned: str, adapter: str | Path, out: str | Path,
    threshold: float = 0.5, num_layers: int | None = None,
) -> list[LayerDecision]:
    """Write ``out``: ``adapter`` with B projected (B <- C B) in the layers SafeLoRA selects.

    ``threshold``: project every layer with cos(dW, C dW) <= threshold. ``num_layers``: instead, the
    ``num_layers`` layers with the lowest cosine. The new dir holds the adapter's other files unchanged and
    ``safelora.json`` (the rule and each layer's cosine). Models whose shapes differ, an adapter whose weights
    the models lack, or an existing non-empty ``out`` are UserErrors.
    """
    adapter, out = Path(adapter), Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; pick a new dir")
    config, tensors = _read_adapter(adapter)
    aligned_w = _Weights(_model_dir(aligned, "aligned"), "the aligned model")
    unaligned_w = _Weights(_model_dir(unaligned, "unaligned"), "the unaligned model")
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))

    candidates = []  # (weight name, key of lora_B, C, cosine)
    for key_a in sorted(k for k in tensors if k.endswith(".lora_A.weight")):
        key_b = key_a.replace(".lora_A.", ".lora_B.")
        weight = key_a.removeprefix(_PREFIX).replace(".lora_A.weight", ".weight")
        w_al, w_un = aligned_w.get(weight), unaligned_w.get(weight)
        if w_al.shape != w_un.shape:
            raise UserError(f"the aligned and unaligned models differ in shape at {weight}: {tuple(w_al.shape)} vs "
                            f"{tuple(w_un.shape)}; SafeLoRA needs an aligned model and its own unaligned base")
        if fan_in_fan_out:  # GPT-2's Conv1D stores (in, out); the update B A is (out, in)
            w_al, w_un = w_al.T, w_un.T
        lora_a, lora_b = tensors[key_a], tensors[key_b]
        if (lora_b.shape[0], lora_a.shape[1]) != tuple(w_al.shape):
            raise UserError(f"the adapter's update of {weight} is {lora_b.shape[0]} x {lora_a.shape[1]}, the models' "
                            f"weight is {tuple(w_al.shape)}: the adapter was trained on another base")
        c = alignment_matrix(w_al, w_un)
        candidates.append((weight, key_b, c, None if c is None else projection_cosine(c, lora_a, lora_b)))

    scored = sorted(cos for *_, cos in candidates if cos is not None)
    if num_layers is not None:
        if num_layers < 1:
            raise UserError(f"--num-layers must be at least 1, got {num_layers}")
        threshold = scored[min(num_layers, len(scored)) - 1] if scored else threshold
    decisions = []
    for weight, key_b, c, cos in candidates:
        project = cos is not None and cos <= threshold
        if project:
            tensors[key_b] = (c @ tensors[key_b].float()).to(tensors[key_b].dtype).contiguous()
        decisions.append(LayerDecision(weight, cos, project))
    _write_adapter(adapter, out, tensors, {"aligned": aligned, "unaligned": unaligned, "adapter": str(adapter),
                                           "threshold": threshold, "num_layers": num_layers,
                                           "projected": sum(d.projected for d in decisions),
                                           "layers": [asdict(d) for d in decisions]})
    return decisions


def _write_adapter(source: Path, out: Path, tensors: dict[str, torch.Tensor], report: dict) -> None:
    """The new adapter dir, built in a temporary sibling and renamed into place: all of it or nothing."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for f in source.iterdir():
            if f.is_file() and f.name != ADAPTER_WEIGHTS:
                shutil.copy2(f, tmp / f.name)
        save_file(tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (tmp / "safelora.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
