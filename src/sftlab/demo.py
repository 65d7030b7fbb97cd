"""``sftlab demo``: the default end-to-end job, on the synthetic world.

1. Generate the world (skipped when ``OUT/world`` already holds the same one).
2. Pretrain a tiny GPT-2 base on its corpus (skipped when ``OUT/base/model`` is there: the base is cached).
3. Sweep strategies on the one-genre ``narrow`` SFT set (movie reviews only): each is trained, audited on
   open prompts, genre prompts, fact questions and held-out text, and judged by the world's grammar.
4. Print the table and the path of the HTML report.

``--quick`` is a smaller world, a shorter pretraining and two strategies: what the tests run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sftlab.config import PretrainConfig, SweepConfig, build_config
from sftlab.errors import UserError
from sftlab.io import remove_tree, write_atomic
from sftlab.offline import set_offline
from sftlab.world.generator import WorldSizes, generate_world, generator_fingerprint

# The eight strategies of the full demo. Learning rates: LoRA moves a few parameters and needs a larger one.
FULL_STRATEGIES: list[dict[str, Any]] = [
    {"name": "full"},
    # LoRA on c_attn only (PEFT's GPT-2 default, sftlab's before all-linear), as docs/results.md records it.
    {"name": "lora", "train": {"method": "lora", "learning_rate": 3.0e-3,
                               "lora": {"r": 16, "alpha": 32, "target_modules": ["c_attn"]}}},
    {"name": "full+neftune5", "train": {"neftune_noise_alpha": 5}},
    {"name": "full+replay0.2", "train": {"replay": {"corpus": "{world}/corpus/train.jsonl", "ratio": 0.2}}},
    {"name": "full+ewc", "train": {"ewc": {"lambda": 2000.0, "fisher_corpus": "{world}/corpus/train.jsonl",
                                           "fisher_samples": 64}}},
    {"name": "full+kl", "train": {"kl_to_base": {"beta": 0.5, "direction": "forward", "on": "response"}}},
    {"name": "gem", "train": {"loss": "gem"}},
    {"name": "wise0.5", "interpolate": {"source": "full", "alpha": 0.5}},
]
# The newer remedies, run with ``--strategies`` (``all``: every one). With them the demo took 20 minutes on
# 2 cores, over its 15-minute budget, so the default plan keeps to the eight above (docs/benchmarks.md).
# SDFT's distillation adds about 2 minutes (1,000 greedy rewrites on the tiny base).
NEWER_REMEDIES: list[dict[str, Any]] = [
    {"name": "dft", "train": {"loss": "dft"}},
    {"name": "asft", "train": {"preset": "asft"}},
    # Self-replay: the base's own greedy answers to the broad SFT set's instructions (every genre), where
    # full+replay0.2 replays the pretraining corpus, at the same share of tokens.
    {"name": "full+self-replay", "train": {"replay": {"source": "self", "prompts": "{world}/sft/broad/train.jsonl",
                                                      "ratio": 0.2}}},
    # SDFT: the narrow reviews rewritten by the base itself (``sftlab data distill``), kept where they agree.
    {"name": "sdft", "train": {"train_file": "{distilled}"}},
]
ALL_STRATEGIES = FULL_STRATEGIES + NEWER_REMEDIES
# The distillation for strategies that name ``{distilled}``: greedy rewrites as long as the audit's answers.
DISTILL_SAMPLING = {"num_samples": 1, "max_new_tokens": 96, "batch_size": 64}


@dataclass(frozen=True)
class DemoPlan:
    """Everything the demo runs, at one size."""

    world: WorldSizes
    pretrain: dict[str, Any]
    train: dict[str, Any]
    strategies: list[dict[str, Any]]
    sampling: dict[str, Any]
    seeds: list[int] = field(default_factory=lambda: [0])
    fact_questions: int = 40


# Sampling is nucleus (top_p 0.9) at temperature 1 for every model alike. The 1.35M-parameter base keeps about
# 1% of its probability per position on rare sub-word tokens; at top_p 1 one such stray token makes about 30% of
# its samples unparseable, which would measure that tail rather than the modes (docs/results.md has both).
FULL = DemoPlan(
    world=WorldSizes(),
    pretrain={"max_length": 128, "max_steps": 900, "per_device_train_batch_size": 16, "learning_rate": 5.0e-3,
              "warmup_steps": 0.05, "tokenizer": {"vocab_size": 4096}, "model": {"architecture": "gpt2", "size": "tiny"}},
    train={"max_length": 128, "packing": True, "learning_rate": 1.0e-3, "num_train_epochs": 2,
           "per_device_train_batch_size": 16, "warmup_steps": 0.05, "logging_steps": 10, "save_steps": 200},
    strategies=FULL_STRATEGIES,
    sampling={"num_samples": 8, "max_new_tokens": 96, "batch_size": 64, "temperature": 1.0, "top_p": 0.9},
)

# The quick plan's base has no dropout: on CPU, GPT-2's dropout masks cost about a third of a step of this
# 1.3M-parameter model, and the tests need the collapse, not the full plan's regularised base.
QUICK = DemoPlan(
    world=WorldSizes(corpus_docs=12_000, heldout_per_genre=20, known_people=60, new_people=10, sft_train=300,
                     sft_eval=40),
    pretrain={"max_length": 128, "max_steps": 350, "per_device_train_batch_size": 16, "learning_rate": 5.0e-3,
              "warmup_steps": 0.05, "tokenizer": {"vocab_size": 4096},
              "model": {"architecture": "gpt2", "size": "tiny", "dropout": 0.0}},
    train={"max_length": 128, "packing": True, "learning_rate": 1.0e-3, "num_train_epochs": 2,
           "per_device_train_batch_size": 16, "warmup_steps": 0.05, "logging_steps": 10, "save_steps": 200},
    strategies=[FULL_STRATEGIES[0], FULL_STRATEGIES[-1]],
    sampling={"num_samples": 4, "max_new_tokens": 96, "batch_size": 64, "temperature": 1.0, "top_p": 0.9},
    fact_questions=16,
)


def select_strategies(strategies: list[dict[str, Any]], names: str | None) -> list[dict[str, Any]]:
    """The strategies named in ``names`` (comma-separated, as ``--strategies`` takes them), in the plan's
    order; all of them when ``names`` is empty or ``all``."""
    if not names or names.strip() == "all":
        return strategies
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    known = [s["name"] for s in strategies]
    unknown = sorted(wanted - set(known))
    if unknown:
        raise UserError(f"--strategies: no strategy {', '.join(unknown)} in this demo; it has {', '.join(known)}")
    chosen = [s for s in strategies if s["name"] in wanted]
    for s in chosen:
        source = s.get("interpolate", {}).get("source")
        if source and source not in wanted:
            raise UserError(f"--strategies: {s['name']} interpolates {source}; name {source} too")
    return chosen


def ensure_world(world_dir: Path, seed: int, sizes: WorldSizes, console: Console) -> str:
    """Generate the world unless the same one (seed, sizes, generator code) is there; returns its identity."""
    manifest = world_dir / "world.json"
    identity = json.dumps({"seed": seed, "sizes": asdict(sizes), "generator": generator_fingerprint()},
                          sort_keys=True)
    meta = _read_manifest(manifest)
    if meta is not None:
        cached = json.dumps({k: meta.get(k) for k in ("seed", "sizes", "generator")}, sort_keys=True)
        if cached == identity:
            console.print(f"[dim]world: cached at {world_dir}[/dim]")
            return identity
    console.print(f"world: generating into {world_dir}")
    generate_world(world_dir, seed=seed, sizes=sizes)
    return identity


def _read_manifest(path: Path) -> dict | None:
    """A world's manifest, or None when it is missing or torn (then the world is made again)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) else None


def ensure_base(base_dir: Path, cfg: PretrainConfig, world: str, console: Console) -> Path:
    """Pretrain the base unless a finished one with the same config, on the same world, is in ``base_dir``."""
    from sftlab.recipes.pretrain import run_pretrain
    from sftlab.train.trainer import read_saved_config

    model_dir = base_dir / "model"
    saved = base_dir / "config.yaml"
    stamp = base_dir / "world.stamp"  # the corpus path alone would not notice a regenerated world
    same = stamp.is_file() and stamp.read_text() == world and read_saved_config(saved) == cfg.model_dump(
        mode="json", by_alias=True)
    if same and (model_dir / "config.json").is_file():
        console.print(f"[dim]base: cached at {model_dir}[/dim]")
        return model_dir
    if not same and base_dir.exists():
        # A base from another world or recipe: its checkpoints must not be resumed. (The sweep runs made on it
        # become stale by themselves: their settings hash the base's files.)
        console.print(f"base: {base_dir} was made from another world or recipe, rebuilding it")
        remove_tree(base_dir, base_dir.parent)
    console.print("base: pretraining a tiny GPT-2 on the world's corpus")
    base_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(stamp, world)  # before training, so an interrupted pretraining resumes on this world
    return run_pretrain(cfg)


def audit_prompts(world_dir: Path, n_questions: int) -> Path:
    """Open prompts, genre prompts and the first questions on test people's facts, in one prompts file."""
    rows: list[dict[str, Any]] = []
    for rel in ("prompts/open.jsonl", "prompts/genre.jsonl"):
        rows += [json.loads(line) for line in (world_dir / rel).read_text().splitlines() if line.strip()]
    questions = [json.loads(line) for line in (world_dir / "sft/qa_known/test.jsonl").read_text().splitlines()]
    rows += questions[:n_questions]
    path = world_dir / "prompts" / "audit.jsonl"
    write_atomic(path, "".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    return path


def uses_distilled(strategies: list[dict[str, Any]]) -> bool:
    """Whether any of ``strategies`` trains on the distilled SFT set (names ``{distilled}``)."""
    return "{distilled}" in json.dumps(strategies)


def ensure_distilled(strategies: list[dict[str, Any]], model: str, train_file: Path, out: Path,
                     sampling: dict[str, Any], console: Console) -> None:
    """Distil ``train_file`` into ``out`` with ``model`` when a strategy needs it and ``out`` is not there yet.

    ``run_distill`` writes ``out`` atomically at the end, and a killed distillation resumes from its batch
    cache, so an existing file is a finished one.
    """
    from sftlab.config import SamplingSettings
    from sftlab.recipes.distill import run_distill

    if uses_distilled(strategies) and not out.is_file():
        run_distill(model, train_file, out, sampling=SamplingSettings(**sampling), console=console)


def distilled_path(base_dir: Path) -> Path:
    """Where the world demo keeps the base's rewrites of the narrow set: inside the base's own dir, which
    :func:`ensure_base` removes with the base, so a rebuilt base never trains on an old base's rewrites."""
    return base_dir / "narrow_distilled.jsonl"


def sweep_config(plan: DemoPlan, out: Path, world_dir: Path, base: Path) -> SweepConfig:
    """The demo's sweep: the plan's strategies on the narrow SFT set, audited on world prompts and text."""
    world = str(world_dir)
    strategies = json.loads(json.dumps(plan.strategies).replace("{world}", world)
                            .replace("{distilled}", str(distilled_path(out / "base"))))
    data = {
        "base_model": str(base),
        "out": str(out / "sweep"),
        "seeds": plan.seeds,
        "world": world,
        "train": {**plan.train, "train_file": f"{world}/sft/narrow/train.jsonl",
                  "eval_file": f"{world}/sft/narrow/eval.jsonl"},
        "strategies": strategies,
        "audit": {
            "prompts": str(audit_prompts(world_dir, plan.fact_questions)),
            "sft_data": f"{world}/sft/narrow/train.jsonl",
            "reference": [f"{world}/heldout/all.jsonl"],
            "benchmark": [f"{world}/bench/facts_mc.jsonl"],
            "sampling": plan.sampling,
            # Narrow-tuned models share one greedy answer per prompt (the most typical review), which would
            # give every strategy the same shifted share; their samples differ.
            "shift_answers": "sampled",
            "bootstrap_samples": 500,
        },
    }
    return build_config(SweepConfig, data, source="demo")


def run_demo(out: str = "runs/demo", quick: bool = False, seeds: int = 1, strategies: str | None = None) -> Path:
    """Run the whole demo into ``out`` (only the ``strategies`` named, when given); returns the path of the
    sweep's HTML report."""
    from sftlab.sweep import run_sweep
    from sftlab.world.section import world_section

    set_offline()
    console = Console()
    plan = QUICK if quick else FULL
    if seeds > 1:
        plan = DemoPlan(**{**plan.__dict__, "seeds": list(range(seeds))})
    if strategies:
        plan = DemoPlan(**{**plan.__dict__, "strategies": select_strategies(ALL_STRATEGIES, strategies)})
    root = Path(out)
    world_dir = root / "world"
    world = ensure_world(world_dir, seed=0, sizes=plan.world, console=console)
    pretrain = build_config(
        PretrainConfig,
        {**plan.pretrain, "corpus": [str(world_dir / "corpus" / "train.jsonl")], "output_dir": str(root / "base")},
        source="demo",
    )
    base = ensure_base(root / "base", pretrain, world, console)
    ensure_distilled(plan.strategies, str(base), world_dir / "sft" / "narrow" / "train.jsonl",
                     distilled_path(root / "base"), DISTILL_SAMPLING, console)
    cfg = sweep_config(plan, root, world_dir, base)
    return run_sweep(cfg, extra_sections=[world_section(world_dir)], redo_stale=True)
