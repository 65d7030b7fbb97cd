"""The ``sftlab`` command.

Each subcommand parses its arguments, builds a typed config and hands it to a recipe in
``sftlab.recipes``. User errors exit with code 2 and a short message; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from collections.abc import Callable

from sftlab.errors import UserError


def _cmd_config(args: argparse.Namespace) -> int:
    from sftlab.config import schema_json

    print(schema_json(args.kind))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from sftlab.config import PretrainConfig, load_config
    from sftlab.recipes.pretrain import run_pretrain

    run_pretrain(load_config(PretrainConfig, args.config, args.overrides))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from sftlab.config import TrainConfig, load_config
    from sftlab.recipes.train import run_train

    run_train(load_config(TrainConfig, args.config, args.overrides))
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from sftlab.train.adapters import merge_adapter

    merge_adapter(args.adapter, args.out, allow_pickle=args.allow_pickle)
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from sftlab.recipes.data_check import run_data_check

    return run_data_check(
        files=args.files,
        eval_file=args.eval_file,
        tokenizer=args.tokenizer,
        out=args.out,
        strict=args.strict,
    )


def _cmd_data_distill(args: argparse.Namespace) -> int:
    from sftlab.config import SamplingSettings, build_config
    from sftlab.recipes.distill import run_distill

    sampling = build_config(SamplingSettings, {"num_samples": 1, "max_new_tokens": args.max_new_tokens,
                                               "batch_size": args.batch_size, "temperature": args.temperature,
                                               "seed": args.seed}, source="data distill flags")
    run_distill(args.model, args.input, args.output, sampling=sampling, greedy=not args.sample,
                rouge_threshold=args.rouge_threshold, short_answer_words=args.short_answer_words,
                max_length=args.max_length, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype,
                trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    return 0


def _suites_help() -> str:
    from sftlab.audit.suites import describe_suites

    return describe_suites()


def _cmd_audit(args: argparse.Namespace) -> int:
    from sftlab.config import AuditConfig, build_config, parse_overrides, read_yaml, _deep_merge
    from sftlab.recipes.audit import run_audit

    if args.list_measures:
        from sftlab.audit.gate_values import list_measures

        print(list_measures())
        return 0
    checks = _gate_checks(args)  # a check that does not parse fails before any model loads
    if args.from_report:
        return _gate_report(Path(args.from_report), checks, args.fail_on_interval)
    config, overrides = args.config, list(args.overrides)
    if config and "=" in config and not Path(config).exists():
        # No config file given: argparse put the first KEY=VALUE where the config would go.
        config, overrides = None, [config, *overrides]
    data = read_yaml(config) if config else {}
    flags = {
        "base": args.base,
        "tuned": args.tuned,
        "prompts": args.prompts,
        "sft_data": args.sft_data,
        "reference": args.reference,
        "benchmark": args.benchmark,
        "eval_set": args.eval_set,
        "out": args.out,
        "suites": args.suite,
    }
    data = _deep_merge(data, {k: v for k, v in flags.items() if v})
    if args.lm_eval_tasks:  # the lm_eval measure's own settings key: measures.lm_eval.tasks
        tasks = [t.strip() for entry in args.lm_eval_tasks for t in entry.split(",") if t.strip()]
        data = _deep_merge(data, {"measures": {"lm_eval": {"tasks": tasks}}})
    data = _deep_merge(data, parse_overrides(overrides + args.set_overrides, AuditConfig))
    cfg = build_config(AuditConfig, data, source=config or "command line")
    if checks:
        from sftlab.recipes.audit_validate import check_gate_inputs

        check_gate_inputs(checks, cfg)  # a check the audit could not answer fails now, not after the audit
    report = run_audit(cfg)
    return _gate_report(report.parent / "report.json", checks, args.fail_on_interval) if checks else 0


def _gate_checks(args: argparse.Namespace) -> list | None:
    """The parsed ``--fail-on`` checks (None without any), their names checked as far as they can be before
    the audit has read its files."""
    from sftlab.audit.gate import check_names, parse_checks
    from sftlab.audit.gate_values import could_be_measure, static_names

    if not args.fail_on:
        if args.fail_on_interval or args.from_report:
            raise UserError("--fail-on-interval and --from-report gate an audit: give the checks with --fail-on")
        return None
    checks = parse_checks(args.fail_on)
    check_names([c for c in checks if not could_be_measure(c.name)], static_names())
    return checks


def _gate_report(report_json: Path, checks: list | None, interval_only: bool) -> int:
    """Print one line per check past its threshold; 3 when any check fails (the gate), else 0."""
    from sftlab.audit.gate import gate
    from sftlab.audit.gate_values import read_gate_values

    if not checks:
        return 0
    code, lines = gate(checks, read_gate_values(report_json), interval_only)
    for line in lines:
        print(line)
    failures = sum(line.startswith("FAIL ") for line in lines)  # one per tuned model and failed check
    print(f"gate: {f'FAILED, {failures} failure' + 's' * (failures != 1) + ' of' if code else 'passed'} "
          f"{len(checks)} check{'s' * (len(checks) != 1)}{', interval must clear the threshold' if interval_only else ''}")
    return code


def _cmd_interpolate(args: argparse.Namespace) -> int:
    from sftlab.train.interpolate import interpolate_dirs

    try:
        alphas = [float(a) for a in args.alphas.split(",")]
    except ValueError:
        raise UserError(f"--alphas must be comma-separated numbers, got {args.alphas!r}") from None
    from sftlab.models.reference import resolve_model

    interpolate_dirs(resolve_model(args.base, args.gguf_file).path, args.tuned, alphas, args.out,
                     allow_pickle=args.allow_pickle)
    return 0


def _cmd_intruders(args: argparse.Namespace) -> int:
    from sftlab.train.intruders import reduce_intruders

    out = reduce_intruders(args.adapter, args.out, top_k=args.top_k, threshold_epsilon=args.threshold_epsilon,
                           mitigation_lambda=args.mitigation_lambda)
    print(f"wrote {out}")
    return 0


def _cmd_safelora(args: argparse.Namespace) -> int:
    from sftlab.train.safelora import safelora

    decisions = safelora(args.aligned, args.unaligned, args.adapter, args.out, threshold=args.threshold,
                         num_layers=args.num_layers)
    projected = sum(d.projected for d in decisions)
    print(f"SafeLoRA: projected {projected} of {len(decisions)} adapted weights -> {args.out} (see safelora.json)")
    return 0


def _cmd_models_list(args: argparse.Namespace) -> int:
    from sftlab.recipes.models import print_models

    print_models(as_json=args.json)
    return 0


def _cmd_world_generate(args: argparse.Namespace) -> int:
    from sftlab.world.generator import generate_world

    generate_world(args.out, seed=args.seed)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sftlab.recipes.sweep import run_sweep_file

    run_sweep_file(args.config, args.overrides)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sftlab.recipes.demo import run_demo
    from sftlab.recipes.demo_plan import BUILTIN_PLANS, builtin_plan, load_plan, plan_path

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    if args.plan is not None:
        # A built-in plan by name (`--plan safety`) runs on the real model already: --real may stay, as said.
        builtin = args.plan in BUILTIN_PLANS and not Path(args.plan).exists()
        if args.quick or (args.real and not builtin):
            raise UserError("--plan names the whole plan: drop --real and --quick (copy a built-in plan to change it)")
        path = plan_path(args.plan) if builtin else args.plan
        plan, out = load_plan(path), args.out or f"runs/demo_{Path(args.plan).stem}"
    else:
        plan, out = builtin_plan(args.real, args.quick), args.out or ("runs/demo_real" if args.real else "runs/demo")
    run_demo(plan, out=out, seeds=args.seeds, strategies=args.strategies)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(prog="sftlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--offline", action="store_true", help="never contact the model/data hub")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    def add_allow_pickle(p: argparse.ArgumentParser) -> None:
        p.add_argument("--allow-pickle", action="store_true",
                       help="load *.bin pickled weights you made yourself (torch.load, weights_only=True); "
                       "without it such a dir is refused")

    def add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("config", nargs=None if required else "?", help="YAML config")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys (dotted)")

    add_config_args(add("pretrain", _cmd_pretrain, "train a tokenizer and a small base model on text"))
    add_config_args(add("train", _cmd_train, "supervised fine-tuning (full, LoRA, other PEFT)"))

    p = add("merge", _cmd_merge, "merge a PEFT adapter into its base and save a full model dir")
    p.add_argument("--adapter", required=True, help="adapter dir written by `sftlab train`")
    p.add_argument("--out", required=True, help="where to write the merged model")
    add_allow_pickle(p)

    p = add("interpolate", _cmd_interpolate, "WiSE-FT: (1-a)*base + a*tuned for each alpha")
    p.add_argument("--base", required=True, help="model dir, .gguf file or built-in name")
    p.add_argument("--gguf-file", dest="gguf_file", help="a .gguf file inside --base (then a folder)")
    p.add_argument("--tuned", required=True, help="full model dir or PEFT adapter dir")
    p.add_argument("--alphas", default="0.25,0.5,0.75")
    p.add_argument("--out", required=True, help="parent dir; one model dir per alpha")
    add_allow_pickle(p)

    p = add("safelora", _cmd_safelora, "SafeLoRA: project a LoRA adapter's updates onto the alignment subspace "
            "where they stray from it (Hsu et al. 2024)")
    p.add_argument("--aligned", required=True, help="the aligned (safety-tuned) model: dir or built-in name")
    p.add_argument("--unaligned", required=True, help="its unaligned base, of the same shapes")
    p.add_argument("--adapter", required=True, help="the LoRA adapter dir to project")
    p.add_argument("--out", required=True, help="the new adapter dir")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=float, default=0.5,
                        help="project layers whose cos(dW, C dW) <= this (default 0.5)")
    choice.add_argument("--num-layers", dest="num_layers", type=int, default=None,
                        help="instead, project the N layers with the lowest cosine")

    p = add("intruders", _cmd_intruders, "reduce a LoRA adapter's intruder dimensions (PEFT's post-hoc fix)")
    p.add_argument("--adapter", required=True, help="LoRA adapter dir")
    p.add_argument("--out", required=True, help="where to write the reduced adapter dir")
    p.add_argument("--top-k", dest="top_k", type=int, default=10, help="singular vectors examined per layer")
    p.add_argument("--threshold-epsilon", dest="threshold_epsilon", type=float, default=0.5,
                   help="an intruder's best cosine with the base's singular vectors is below this")
    p.add_argument("--mitigation-lambda", dest="mitigation_lambda", type=float, default=0.75,
                   help="scale each intruder dimension keeps (1 keeps it whole, 0 removes it)")

    p = add("audit", _cmd_audit, "compare a base with tuned models: diversity, shift, copying, forgetting")
    p.add_argument("config", nargs="?", help="YAML audit config (flags and KEY=VALUE override it)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys (dotted)")
    p.add_argument("--base")
    p.add_argument("--tuned", action="append", metavar="[NAME=]DIR",
                   help="tuned model dir (any trainer's: a full model, a PEFT adapter, a checkpoint-N dir), "
                        "labelled NAME in the report (repeat for several)")
    p.add_argument("--suite", metavar="NAME,...",
                   help="built-in probe suites, comma-separated. " + _suites_help() + ". Without --suite: the "
                        "default suites when no data file is given, none when one is. With --suite, files join "
                        "the suites: --prompts and --eval-set replace the chat suite's, --reference and "
                        "--benchmark add to the text and knowledge suites'. --sft-data never replaces a suite")
    p.add_argument("--prompts", help="prompts file (replaces the chat suite's prompts)")
    p.add_argument("--sft-data", dest="sft_data", help="the SFT set: pattern copying and the forgetting forecast")
    p.add_argument("--reference", action="append", help="text corpus for perplexity (repeatable; adds to the text suite)")
    p.add_argument("--benchmark", action="append",
                   help="multiple-choice jsonl (repeatable; adds to the knowledge suite)")
    p.add_argument("--eval-set", dest="eval_set", help="prompts with reference answers (replaces the chat suite's)")
    p.add_argument("--lm-eval-tasks", dest="lm_eval_tasks", action="append", metavar="TASK,...",
                   help="lm-evaluation-harness tasks to run on every model, comma-separated: its task, group or tag "
                        "names (hellaswag,arc_easy), task YAML files, or dirs of task YAMLs (every task in them). "
                        "Reports lm-eval's figures and each change with a paired interval; needs the extra: "
                        "pip install 'sftlab[lm-eval]' (config: measures.lm_eval)")
    p.add_argument("--out")
    p.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the same as a bare KEY=VALUE")
    p.add_argument("--fail-on", dest="fail_on", action="append", metavar="CHECK,...",
                   help="the CI gate: exit 3 when a tuned model's change is past a threshold, e.g. "
                        "'style_capture>20,adherence<-0.05,piqa_acc<-2,perplexity>+5%%' (repeatable; "
                        "names: --list-measures)")
    p.add_argument("--fail-on-interval", dest="fail_on_interval", action="store_true",
                   help="fail a check only when its whole 95%% interval is past the threshold")
    p.add_argument("--from-report", dest="from_report", metavar="REPORT_JSON",
                   help="gate a saved report.json with --fail-on instead of running an audit")
    p.add_argument("--list-measures", dest="list_measures", action="store_true",
                   help="print the measure names --fail-on takes, and exit")

    p = add("sweep", _cmd_sweep, "train and audit several strategies on one base; comparison table")
    add_config_args(p)

    p = add("demo", _cmd_demo, "the end-to-end job: on the synthetic world, or --real on SmolLM2-135M-Instruct")
    p.add_argument("--real", action="store_true",
                   help="the seeds' experiment on the built-in real model (Shakespeare SFT; about 25 minutes)")
    p.add_argument("--quick", action="store_true", help="a smaller run (about 3 minutes)")
    p.add_argument("--plan", default=None, metavar="FILE",
                   help="run your own plan (copy one of sftlab/recipes/plans/*.yaml to start), or a built-in "
                   "one by name: safety (alignment drift and its remedies, about 30 minutes)")
    p.add_argument("--out", default=None,
                   help="default runs/demo (runs/demo_real with --real, runs/demo_STEM with --plan STEM.yaml)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per strategy (mean ± std in the table)")
    p.add_argument("--strategies", default=None, metavar="A,B,...",
                   help="only these of the demo's strategies (a rerun in the same --out reuses finished runs)")

    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="validate data files, quarantine bad records, report quality")
    p.set_defaults(handler=_cmd_data_check)
    p.add_argument("files", nargs="+")
    p.add_argument("--eval-file", dest="eval_file", help="check train/eval overlap against this file")
    p.add_argument("--tokenizer", help="tokenizer dir for token length stats")
    p.add_argument("--out", default=None, help="dir for report + quarantine (default: runs/data_check/<first file's stem>)")
    p.add_argument("--strict", action="store_true", help="exit 2 if any record is bad")

    p = data.add_parser("distill", help="SDFT: the base rewrites each response in its own words; keeps the "
                        "rewrites that agree with the reference")
    p.set_defaults(handler=_cmd_data_distill)
    p.add_argument("input", metavar="IN", help="SFT data file (any format `sftlab train` reads)")
    p.add_argument("output", metavar="OUT", help="distilled jsonl to write (stats beside it: OUT.stats.json)")
    p.add_argument("--model", required=True, help="the base model (dir, adapter dir or hub id)")
    p.add_argument("--rouge-threshold", type=float, default=0.4,
                   help="keep a rewrite when its ROUGE-L F against the reference is at least this")
    p.add_argument("--short-answer-words", type=int, default=3,
                   help="references of at most this many words need an exact (normalised) match instead")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generation batch")
    p.add_argument("--max-length", type=int, default=1024, help="prompt + rewrite tokens")
    p.add_argument("--sample", action="store_true", help="sample (at --temperature) instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="rewrite cache (default $SFTLAB_CACHE/distill, else ~/.cache/sftlab/distill)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--trust-remote-code", action="store_true")
    add_allow_pickle(p)

    models = sub.add_parser("models", help="built-in real models").add_subparsers(dest="models_command", required=True)
    p = models.add_parser("list", help="the built-in model names and whether each is installed and converted")
    p.add_argument("--json", action="store_true", help="print the list as JSON, one object per model")
    p.set_defaults(handler=_cmd_models_list)

    world = sub.add_parser("world", help="the synthetic world").add_subparsers(dest="world_command", required=True)
    p = world.add_parser("generate", help="write corpus, held-out text, SFT sets and prompts")
    p.set_defaults(handler=_cmd_world_generate)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)

    cfg = sub.add_parser("config", help="config tools").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("schema", help="print the JSON schema of a config kind")
    p.set_defaults(handler=_cmd_config)
    p.add_argument("kind", nargs="?", default="train")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; exit 2 on user error."""
    args = build_parser().parse_args(argv)
    if args.offline:
        from sftlab.offline import set_offline

        set_offline()
    try:
        return args.handler(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"sftlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sftlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`sftlab models list | head`): as the Python docs advise, point stdout at
        # devnull so the flush at exit does not raise again, and stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
