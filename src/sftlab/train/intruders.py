"""Intruder-dimension reduction: a post-hoc fix for a trained LoRA adapter, through PEFT's own function.

Shuttleworth et al. 2024 ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", arXiv:2410.21228) find that
LoRA adds new high-ranking singular vectors, "intruder dimensions", nearly orthogonal to every singular vector
of the pre-trained weight, and that they go with forgetting. PEFT 0.22
(``peft.tuners.lora.intruders.reduce_intruder_dimension``, PEFT #2999) finds them per layer among the ``top_k``
left singular vectors of W + dW whose best absolute cosine with the base's falls below ``threshold_epsilon``,
scales them by ``mitigation_lambda`` (1 keeps them, 0 removes them: W + dW + (lambda - 1) * intruders; PEFT's
docstring calls lambda the share subtracted, its code and the paper's Figure 8 the share kept) and refactors the
update into the adapter's rank. sftlab calls that function as it is, and writes the result as an adapter dir
like the input.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from sftlab.errors import UserError
from sftlab.models.load import is_adapter_dir, load_model, load_tokenizer
from sftlab.train.callbacks import disable_library_bars

REDUCED = "intruder_reduced"  # PEFT's name for the adapter it adds; renamed to the default one before saving
RECORD_FILE = "intruders.json"


def reduce_intruders(
    adapter: str | Path,
    out: str | Path,
    top_k: int = 10,
    threshold_epsilon: float = 0.5,
    mitigation_lambda: float = 0.75,
) -> Path:
    """Write ``adapter`` with its intruder dimensions reduced to ``out`` (an adapter dir on the same base).

    ``out/intruders.json`` records the source, the settings and each layer's intruder count. The dir is
    written beside ``out`` first and renamed into place when complete.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    adapter, out = Path(adapter), Path(out)
    if not is_adapter_dir(adapter):
        raise UserError(f"{adapter}: not a PEFT adapter dir (no adapter_config.json); intruder reduction "
                        "post-processes a LoRA adapter")
    if not 0 <= mitigation_lambda <= 1 or top_k < 1 or threshold_epsilon <= 0:
        raise UserError("intruder reduction takes top_k >= 1, threshold_epsilon > 0 and mitigation_lambda in [0, 1]; "
                        f"got {top_k}, {threshold_epsilon}, {mitigation_lambda}")
    disable_library_bars()
    model = load_model(str(adapter), dtype=torch.float32)
    config = model.peft_config["default"]
    if config.peft_type != "LORA" or getattr(config, "use_dora", False):
        raise UserError(f"{adapter}: intruder reduction applies to LoRA adapters (PEFT's function reads the update "
                        f"as B A), not {'DoRA' if getattr(config, 'use_dora', False) else config.peft_type}")
    counts: dict[str, int] = {}

    def record(line: str) -> None:  # PEFT reports "<layer>: Intruders: N" or "<layer>: No intruders"
        layer, _, what = line.partition(": ")
        if what.startswith("Intruders:") or what == "No intruders":
            counts[layer] = int(what.split(":")[1]) if what.startswith("Intruders:") else 0

    with torch.no_grad():
        reduce_intruder_dimension(model, old_adapter_name="default", new_adapter_name=REDUCED, top_k=top_k,
                                  threshold_epsilon=threshold_epsilon, mitigation_lambda=mitigation_lambda,
                                  logging_sink=record)
        # Saved as the default adapter, so the dir loads as the input did (PEFT saves any other name in a subdir).
        set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name=REDUCED), adapter_name="default")
    model.set_adapter("default")
    model.delete_adapter(REDUCED)
    staged = out.parent / f".{out.name}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    model.save_pretrained(str(staged))
    load_tokenizer(str(adapter)).save_pretrained(str(staged))
    (staged / RECORD_FILE).write_text(json.dumps({
        "method": "intruder-dimension reduction (peft.tuners.lora.intruders.reduce_intruder_dimension)",
        "source": str(adapter), "top_k": top_k, "threshold_epsilon": threshold_epsilon,
        "mitigation_lambda": mitigation_lambda, "intruders_per_layer": counts,
    }, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.rename(staged, out)
    return out
