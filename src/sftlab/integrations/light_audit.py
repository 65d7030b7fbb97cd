"""A light audit of a model against its base, run in memory while the model trains (:class:`AuditCallback`).

It is the audit's own pipeline on a small input, called on live models instead of model dirs: the chat suite's
first prompts (style capture, adherence), the text suite's first paragraphs (perplexity) and the SFT set's
prompts (the forgetting forecast), through :func:`sftlab.recipes.audit.run_model`, ``forecast_run``, the
style measure's data, the forgetting table and the forecast measure's section. So a value logged at step N
equals what ``sftlab audit`` reports for the checkpoint saved at step N with the same settings
(:func:`audit_config`).

The base's samples and perplexity are computed once; each audit samples the tuned model and scores the
forecast along its answers, which needs both models at once: the base must then compute with its own weights
(see :func:`sftlab.integrations.audit_callback.frozen_copy`).
"""

from __future__ import annotations

import tempfile
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sftlab.audit import forgetting
from sftlab.audit.embed import Embedder, resolve_embedding_model
from sftlab.audit.gate_value import GateValue
from sftlab.audit.gate_values import gate_values
from sftlab.config import AuditConfig, build_config
from sftlab.models.load import context_limit

BASE, TUNED = "base", "tuned"


@dataclass(frozen=True)
class LightAuditSettings:
    """How much the light audit reads and samples (small: it runs inside training)."""

    chat_prompts: int = 4
    num_samples: int = 4
    max_new_tokens: int = 32
    text_paragraphs: int = 4
    forecast_prompts: int = 4
    bootstrap_samples: int = 200
    batch_size: int = 8
    max_length: int = 256
    seed: int = 0
    embedding_model: str | None = "auto"


def audit_config(settings: LightAuditSettings, base: str, tuned: str, sft_data: str | None,
                 out: str = "runs/audit") -> AuditConfig:
    """The ``sftlab audit`` config whose report gives the same figures as the light audit with ``settings``."""
    s = settings
    return build_config(AuditConfig, {
        "base": base, "tuned": [tuned], "out": out, "suites": ["chat", "text"], "sft_data": sft_data,
        "suite_items": {"chat_prompts": s.chat_prompts, "text_paragraphs": s.text_paragraphs},
        "sampling": {"num_samples": s.num_samples, "max_new_tokens": s.max_new_tokens,
                     "batch_size": s.batch_size, "seed": s.seed},
        "forecast_prompts": s.forecast_prompts if sft_data else 0, "bootstrap_samples": s.bootstrap_samples,
        "max_length": s.max_length, "dtype": "float32", "embedding_model": s.embedding_model or "none",
    }, source="AuditCallback")


class _NoBars:
    """The audit's progress interface, silent (training has its own bar)."""

    def step(self, label: str, total: int) -> Callable[[int], None]:
        return lambda n: None


class LightAudit:
    """The light audit's inputs, the base's cached results, and one audit of a tuned model at a time."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, sft_data: str | None, settings: LightAuditSettings,
                 device: str) -> None:
        from sftlab.recipes.audit_inputs import read_inputs

        self.tok, self.settings, self.device = tokenizer, settings, device
        self.cfg = audit_config(settings, "base", "tuned", sft_data)
        self.inputs = read_inputs(self.cfg)
        path = resolve_embedding_model(settings.embedding_model)
        self.embedder = Embedder(path, device) if path else None
        self.cache = Path(tempfile.mkdtemp(prefix="sftlab-audit-callback-"))
        self.base_run: Any = None
        self.prompt_embeddings = (self.embedder.embed([m[-1].content for m in self.inputs.messages])
                                  if self.embedder else None)

    def _run(self, model: torch.nn.Module, name: str, label: str) -> Any:
        from sftlab.recipes.audit import run_model

        limit = context_limit(model, self.cfg.max_length)  # type: ignore[arg-type]
        return run_model(model, self.tok, name, label, self.inputs, self.cfg, _NoBars(), self.cache,  # type: ignore[arg-type]
                         limit)

    def run_base(self, base: torch.nn.Module, disabled: AbstractContextManager[Any] | None = None) -> None:
        """The base's samples and perplexity, once (``disabled``: the context in which ``base`` is the base)."""
        with disabled or nullcontext():
            self.base_run = self._run(base, BASE, "base model")

    def measure(self, model: PreTrainedModel, base: torch.nn.Module, step: int) -> dict[str, GateValue]:
        """The gateable changes of ``model`` against the base, as the audit's report would give them."""
        from sftlab.audit.measures import forecast as forecast_measure
        from sftlab.audit.measures.context import AuditContext
        from sftlab.audit.measures.style import style_data
        from sftlab.recipes.audit import forecast_run

        cfg, inputs = self.cfg, self.inputs
        tuned = self._run(model, TUNED, f"training step {step}")
        limit = context_limit(model, cfg.max_length)
        runs = {BASE: self.base_run, TUNED: tuned}
        if inputs.sft_prompts:
            tuned.forecast_kl = forecast_run(cfg, inputs.sft_prompts, model, self.tok, base, self.tok,  # type: ignore[arg-type]
                                             TUNED, f"training step {step}", _NoBars(), self.cache, limit)  # type: ignore[arg-type]
        embeddings = ({m: [self.embedder.embed(t) for t in r.samples] for m, r in runs.items()}
                      if self.embedder else None)
        ctx = AuditContext(cfg, self.cache, BASE, {BASE: "", TUNED: ""}, inputs.messages,
                           {m: r.samples for m, r in runs.items()}, {m: r.greedy for m, r in runs.items()},
                           inputs=inputs, runs=runs, tokenizer=self.tok, embeddings=embeddings,
                           prompt_embeddings=self.prompt_embeddings)
        sections: dict[str, Any] = {"style": style_data(ctx)}
        if inputs.references:
            sections["forgetting"] = forgetting.forgetting_table(
                {c: {m: r.perplexity[c] for m, r in runs.items()} for c in inputs.references}, {}, BASE,
                cfg.bootstrap_samples, cfg.sampling.seed, mc_score=cfg.mc_score)
        forecast = forecast_measure.MEASURE.section(ctx)  # the standalone audit's own forecast table
        if forecast is not None:
            sections["forecast"] = forecast.data
        return gate_values({"base": BASE, "models": {BASE: "", TUNED: ""}, "sections": sections})[TUNED]
