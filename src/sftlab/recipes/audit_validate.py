"""What an audit checks before any model runs: every model dir, and room for each prompt and its answer.

An audit samples the base first, for minutes on a real model; an unusable tuned dir or a prompt that cannot
fit must fail before that, not after. Only configs and tokenizers are read here, never weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from sftlab.config import AuditConfig
from sftlab.data.records import Message
from sftlab.data.tokenize import encode_prompt
from sftlab.errors import UserError
from sftlab.models.load import is_adapter_dir, load_config, load_tokenizer


def model_positions(config: PretrainedConfig) -> int | None:
    """The positions a model knows (GPT-2's ``n_positions`` is mapped to this name), or None when unbounded."""
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


def check_model_dir(path: str) -> None:
    """A UserError for a local dir that is neither a model (config.json) nor a PEFT adapter (adapter_config.json),
    pointing at its checkpoint-N dirs when it is a trainer's output dir."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file() or is_adapter_dir(p):
        return
    checkpoints = sorted((c for c in p.glob("checkpoint-*") if c.name.removeprefix("checkpoint-").isdigit()),
                         key=lambda c: int(c.name.removeprefix("checkpoint-")))
    hint = (f" It holds a trainer's checkpoints: pass one of them, e.g. the last, {checkpoints[-1]}"
            if checkpoints else "")
    raise UserError(f"{path} is neither a model dir (no config.json) nor a PEFT adapter dir (no "
                    f"adapter_config.json), so there is nothing to audit in it.{hint}")


def validate_inputs(cfg: AuditConfig, models: Mapping[str, str],
                    prompt_sets: Mapping[str, Sequence[list[Message]]]) -> list[str]:
    """Raise a UserError unless every model can run every prompt of ``prompt_sets`` (named by their file).

    Each model must be a model dir or a PEFT adapter (whose recorded base must be one), and must have room
    for a prompt and ``sampling.max_new_tokens``: with none, a model with learned position embeddings ends
    in an IndexError. Generation cuts prompts from the left to the model's room (``max_length``, capped at
    its positions, minus the new tokens). A cut the user asked for with ``max_length`` passes silently;
    one that the model's positions force is returned as a note for the console, one per model, since it
    drops the start of a prompt (often the template's header) unasked.
    """
    new = cfg.sampling.max_new_tokens
    notes: list[str] = []
    for name, path in models.items():
        check_model_dir(path)  # a trainer's run dir gets its checkpoints named
        positions = model_positions(load_config(path, cfg.trust_remote_code, base=cfg.base))
        if positions is None:
            continue
        room = min(cfg.max_length, positions)
        if new >= room:
            raise UserError(
                f"model {name} ({path}) has {positions} positions and max_length is {cfg.max_length}: "
                f"sampling.max_new_tokens {new} leaves no room for a prompt; set sampling.max_new_tokens "
                f"below {room}, e.g. {room // 2}")
        if positions >= cfg.max_length:
            continue
        tok = load_tokenizer(path, cfg.trust_remote_code, base=cfg.base)
        lengths = [(len(encode_prompt(tok, messages)), source, i)
                   for source, prompts in prompt_sets.items() for i, messages in enumerate(prompts)]
        cut = [entry for entry in lengths if entry[0] + new > positions]
        if cut:
            longest, source, i = max(cut)
            notes.append(
                f"model {name} has {positions} positions: {len(cut)} of {len(lengths)} prompts are cut from the "
                f"left to leave room for sampling.max_new_tokens {new} (the longest, {source} prompt {i + 1}, "
                f"from {longest} to {positions - new} tokens). Set max_length: {positions} to make the cut your "
                f"choice, or lower sampling.max_new_tokens to {max(positions - longest, 1)}")
    return notes


def _safety_chosen(cfg: AuditConfig) -> bool:
    from sftlab.recipes.audit_inputs import chosen_suites

    return "safety" in cfg.measures or any(s.measure == "safety" for s in chosen_suites(cfg))


# What a --fail-on check needs from the audit's inputs, and how to give it: without it the measure is not in
# the report, and the gate would find that out only after the audit had run (minutes to tens of minutes).
_GATE_NEEDS: dict[str, tuple[Callable[[AuditConfig], bool], str]] = {
    "style_capture": (lambda c: bool(c.sft_data), "the SFT data its style classifier learns from: add --sft-data FILE"),
    "copying": (lambda c: bool(c.sft_data), "the SFT data it looks for copied spans in: add --sft-data FILE"),
    "forecast_kl": (lambda c: bool(c.sft_data) and c.forecast_prompts > 0,
                    "the SFT data's prompts: add --sft-data FILE (and keep forecast_prompts above 0)"),
    "adherence": (lambda c: c.embedding_model != "none", "a sentence encoder: drop embedding_model=none"),
}
_GATE_NEEDS["refusal"] = _GATE_NEEDS["over_refusal"] = (
    _safety_chosen, "the safety suite: add it, --suite chat,knowledge,text,safety")


def check_gate_inputs(checks: Sequence[Any], cfg: AuditConfig) -> None:
    """A UserError, before any model runs, for a ``--fail-on`` check on a measure this audit's inputs cannot give."""
    for check in checks:
        if check.name.startswith("lmeval_") and "lm_eval" not in cfg.measures:
            raise UserError(f"--fail-on: {check.text!r} checks an lm-eval task, and this audit runs none: add "
                            "--lm-eval-tasks TASK,... or drop the check")
        need = _GATE_NEEDS.get(check.name)
        if need is not None and not need[0](cfg):
            raise UserError(f"--fail-on: {check.text!r} cannot be checked, since {check.name} needs {need[1]}; or "
                            "drop the check")
