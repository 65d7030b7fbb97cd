"""WiSE-FT: weight-space interpolation between a base and a fine-tuned model.

Wortsman et al. 2022, "Robust fine-tuning of zero-shot models" (CVPR): for each alpha,

    theta_alpha = (1 - alpha) * theta_base + alpha * theta_tuned

over every floating-point tensor of the state dict (integer buffers, if any, are the tuned model's).
alpha = 0 is the base and alpha = 1 the tuned model, bit for bit: the mix is ``torch.lerp``, which is
exact at both ends. Alphas outside [0, 1] extrapolate (as in task arithmetic) and are allowed.

A PEFT adapter dir as ``tuned`` is merged into its base first. The mix is computed in float32 and
saved in the base checkpoint's own dtype, so a bf16 base gives bf16 outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from rich.progress import Progress

from sftlab.errors import UserError
from sftlab.io import replace_dir, restore_aside, staging_dir
from sftlab.models.load import load_model, load_tokenizer
from sftlab.train.callbacks import disable_library_bars

_SAVED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def interpolate_state_dicts(
    base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 - alpha) * base + alpha * tuned for every floating tensor; others from ``tuned``.

    Both dicts must have the same keys and shapes (a UserError names the first mismatch).
    """
    if base.keys() != tuned.keys():
        extra = sorted(set(base) ^ set(tuned))
        raise UserError(f"base and tuned models have different weights (e.g. {extra[0]!r}): not the same architecture")
    out = {}
    for key, b in base.items():
        t = tuned[key]
        if b.shape != t.shape:
            raise UserError(f"weight {key!r} has shape {tuple(b.shape)} in base but {tuple(t.shape)} in tuned")
        out[key] = torch.lerp(b.float(), t.float(), alpha).to(b.dtype) if b.is_floating_point() else t.clone()
    return out


def _saved_dtype(model_dir: str) -> torch.dtype:
    """The dtype a model dir's config records (float32 when it records none)."""
    cfg_path = Path(model_dir) / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    return _SAVED_DTYPES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"), torch.float32)


def alpha_dir_name(alpha: float) -> str:
    """``alpha_0.25`` for 0.25: the sub-dir one alpha is written to."""
    return f"alpha_{alpha:g}"


def interpolate_dirs(base: str, tuned: str, alphas: list[float], out: str | Path,
                     allow_pickle: bool = False) -> list[Path]:
    """Write one model dir per alpha under ``out`` (``out/alpha_<a>``), with the tokenizer; returns them.

    ``tuned`` is a full model dir or a PEFT adapter dir (merged into its base first). Each dir also
    holds ``interpolation.json`` naming its base, tuned and alpha. ``allow_pickle`` lets ``*.bin`` pickled
    weights load (``--allow-pickle``).
    """
    if not alphas:
        raise UserError("give at least one alpha (for example --alphas 0.25,0.5,0.75)")
    bad = [a for a in alphas if not math.isfinite(a)]
    if bad:
        raise UserError(f"alphas must be finite numbers, got {bad[0]}")
    alphas = list(dict.fromkeys(alphas))
    disable_library_bars()
    base_model = load_model(base, dtype=torch.float32, allow_pickle=allow_pickle)
    tuned_model = load_model(tuned, dtype=torch.float32, merge_adapter=True, allow_pickle=allow_pickle)
    # Float32 upcasts are exact, so alpha 0 and 1 cast back to the saved dtype reproduce the inputs.
    target_dtype = _saved_dtype(base)
    # Cloned: the state dict shares storage with base_model, which each alpha overwrites.
    base_sd = {k: v.detach().clone() for k, v in base_model.state_dict().items()}
    tuned_sd = {k: v.detach() for k, v in tuned_model.state_dict().items()}
    tokenizer = load_tokenizer(tuned)  # an adapter dir without one falls back to its base's
    out = Path(out)
    written = []
    with Progress(transient=True) as progress:
        task = progress.add_task("WiSE-FT", total=len(alphas))
        for alpha in alphas:
            mixed = interpolate_state_dicts(base_sd, tuned_sd, alpha)
            base_model.load_state_dict(mixed)
            target = out / alpha_dir_name(alpha)
            # Built aside and moved in whole: a sweep reads these dirs, and a kill must not leave half of one.
            restore_aside(target)
            staged = staging_dir(target)
            base_model.to(target_dtype).save_pretrained(str(staged))
            base_model.to(torch.float32)
            tokenizer.save_pretrained(str(staged))
            (staged / "interpolation.json").write_text(
                json.dumps({"method": "wise-ft", "base": str(base), "tuned": str(tuned), "alpha": alpha}, indent=2)
            )
            written.append(replace_dir(staged, target))
            progress.advance(task)
    for path in written:
        print(f"wrote {path}")
    return written
