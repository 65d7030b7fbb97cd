"""`sftlab data distill` (SDFT): the agreement rule by hand, fallback and counts, resume after a kill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.config import SamplingSettings
from sftlab.data.distill import SDFT_SYSTEM, check_rewrite, distill_records, normalize_answer, rewrite_prompt
from sftlab.data.records import Message, Origin, Record
from sftlab.recipes.distill import run_distill, stats_path


def _pc(prompt: str, completion: str) -> Record:
    return Record("prompt_completion", Origin("t", 1), prompt=prompt, completion=completion)


def test_rouge_rule_by_hand() -> None:
    """reference "the cat sat on the mat", rewrite "the cat lay on the mat": the longest common
    subsequence is "the cat on the mat", 5 of 6 tokens each way, so P = R = F = 5/6 = 0.833."""
    verdict = check_rewrite("The cat lay on the mat.", "the cat sat on the mat", 0.8, 3)
    assert verdict.rouge_l == pytest.approx(5 / 6) and verdict.kept
    assert not check_rewrite("The cat lay on the mat.", "the cat sat on the mat", 0.85, 3).kept


def test_short_answers_need_an_exact_normalised_match() -> None:
    assert normalize_answer("The  Paris!") == "paris"
    assert check_rewrite("Paris.", "paris", 0.4, 3).kept
    assert check_rewrite("the answer is 42", "42", 0.4, 3).reason == "short answer differs"


def test_distill_records_keeps_agreeing_rewrites_and_falls_back_otherwise() -> None:
    long_ref = "Drink water, sleep eight hours and walk every day to stay healthy."
    records = [
        _pc("Tips?", long_ref),
        _pc("Tips?", long_ref),
        _pc("Tips?", long_ref),
        _pc("Tips?", long_ref),
        _pc("Capital of France?", "Paris"),
        _pc("Capital of France?", "Paris"),
        Record("text", Origin("t", 7), text="plain text passes through"),
    ]
    rewrites = [
        "To stay healthy, drink water, sleep eight hours and walk every day.",  # agrees: kept
        "Bananas are yellow.",  # unrelated: ROUGE-L far below 0.4
        "Here is my response based on the reference answer: drink water.",  # talks about the task
        "   ",  # empty
        "Paris.",  # short, same answer
        "Lyon",  # short, another answer
        None,  # text: no rewrite prompt
    ]
    rows, verdicts, stats = distill_records(records, rewrites, rouge_threshold=0.4, short_answer_words=3)
    assert [v.kept if v else None for v in verdicts] == [True, False, False, False, True, False, None]
    assert (stats.kept, stats.fell_back, stats.passed_through, stats.rewritable) == (2, 4, 1, 6)
    assert dict(stats.fallback_reasons) == {"rouge-l below threshold": 1, "talks about the task": 1, "empty": 1,
                                            "short answer differs": 1}
    assert rows[0]["completion"] == rewrites[0] and rows[4]["completion"] == "Paris."
    assert [rows[i]["completion"] for i in (1, 2, 3)] == [long_ref] * 3 and rows[5]["completion"] == "Paris"
    assert rows[6] == {"text": "plain text passes through"}
    # The agreeing rewrite, had generation stopped at the token limit, is unfinished: it falls back.
    cut = [True] + [False] * 6
    rows, verdicts, stats = distill_records(records, rewrites, 0.4, 3, cut_off=cut)
    assert verdicts[0].reason == "cut off at the token limit" and rows[0]["completion"] == long_ref
    assert stats.kept == 1 and stats.fallback_reasons["cut off at the token limit"] == 1


def test_rewrite_prompt_is_the_papers_template() -> None:
    record = Record("prompt_completion", Origin("t", 1), prompt="Name a colour.", completion="Blue.")
    assert rewrite_prompt(record) == [
        Message("system", SDFT_SYSTEM),
        Message("user", "### Instruction:\nName a colour.\n\n### Reference Answer:\nBlue."),
    ]
    multi = Record("conversation", Origin("t", 2), messages=[Message("user", "a"), Message("assistant", "b"),
                                                              Message("user", "c"), Message("assistant", "d")])
    assert rewrite_prompt(multi) is None


@pytest.fixture()
def sft_file(tmp_path, shared_data) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[2000:2006]
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(records))
    return path


class Killed(Exception):
    """Stands in for a kill during generation."""


def _patch_generate(monkeypatch, kill_after: int | None = None) -> list[int]:
    from transformers.generation.utils import GenerationMixin

    calls: list[int] = []
    original = GenerationMixin.generate

    def counted(model, *args, **kwargs):
        if kill_after is not None and len(calls) == kill_after:
            raise Killed
        calls.append(1)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", counted)
    return calls


def test_killed_distill_resumes_without_regenerating_finished_batches(
    tiny_model_dir, sft_file, tmp_path, monkeypatch
) -> None:
    sampling = SamplingSettings(num_samples=1, max_new_tokens=8, batch_size=2)  # 6 records: 3 batches
    kwargs = dict(sampling=sampling, max_length=256, cache_dir=tmp_path / "cache")
    out = tmp_path / "distilled.jsonl"

    calls = _patch_generate(monkeypatch, kill_after=2)
    with pytest.raises(Killed):
        run_distill(str(tiny_model_dir), sft_file, out, **kwargs)
    assert len(calls) == 2 and not out.exists()

    monkeypatch.undo()
    calls = _patch_generate(monkeypatch)
    stats = run_distill(str(tiny_model_dir), sft_file, out, **kwargs)
    assert len(calls) == 1  # only the batch the kill interrupted
    # A random tiny model writes nothing like the references: every rewrite fails the rule and falls back.
    assert (stats.records, stats.rewritable, stats.kept, stats.fell_back) == (6, 6, 0, 6)
    originals = json.loads(sft_file.read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [{k: r[k] for k in ("instruction", "input", "output")} for r in originals]
    saved = json.loads(stats_path(out).read_text())
    assert saved["fell_back"] == 6 and sum(saved["fallback_reasons"].values()) == 6
    assert saved["answer_tokens"] > 0 and saved["rule"]["rouge_threshold"] == 0.4

    # Through the CLI, with every batch cached: nothing is generated, and the same file comes out.
    monkeypatch.undo()
    calls = _patch_generate(monkeypatch)
    again = tmp_path / "again.jsonl"
    code = main(["data", "distill", "--model", str(tiny_model_dir), str(sft_file), str(again), "--batch-size", "2",
                 "--max-new-tokens", "8", "--max-length", "256", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0 and calls == [] and again.read_text() == out.read_text()


@pytest.fixture(scope="module")
def terse_model_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    """The tiny random model with its weight matrices drawn wider (std 0.3, not 0.02), so that it writes
    varied tokens rather than one newline over and over, and its final layer norm's bias moved along
    the EOS row of the (tied) output head, so that it often ends an answer within a few tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3)
        eos_row = model.get_output_embeddings().weight[tiny_tokenizer.eos_token_id].clone()
        model.transformer.ln_f.bias += 7.0 * eos_row / eos_row.norm() ** 2  # +7 on the EOS logit
    out = tmp_path_factory.mktemp("terse")
    model.save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out


def test_distill_keeps_the_rewrites_that_pass(terse_model_dir, sft_file, tmp_path) -> None:
    """With the ROUGE-L threshold at 0 every finished, non-empty rewrite that does not talk about the task
    is kept; the kept ones are the model's rewrites, and the distilled set reads back as training data."""
    from sftlab.data.readers import read_records

    out = tmp_path / "distilled.jsonl"
    stats = run_distill(str(terse_model_dir), sft_file, out, rouge_threshold=0.0, short_answer_words=0,
                        sampling=SamplingSettings(num_samples=1, max_new_tokens=12, batch_size=6),
                        max_length=212, cache_dir=tmp_path / "cache")
    assert stats.kept + stats.fell_back == 6
    assert stats.fell_back == sum(stats.fallback_reasons.values())
    assert set(stats.fallback_reasons) <= {"empty", "talks about the task", "cut off at the token limit"}
    assert stats.kept > 0
    originals = [r["output"] for r in json.loads(sft_file.read_text())]
    outputs = [json.loads(line)["output"] for line in out.read_text().splitlines()]
    assert sum(o != r for o, r in zip(outputs, originals)) == stats.kept
    assert len(read_records([out]).records) == 6


def test_bad_flags_are_user_errors(tiny_model_dir, sft_file, tmp_path, capsys) -> None:
    assert main(["data", "distill", "--model", str(tiny_model_dir), str(sft_file), str(sft_file)]) == 2
    assert main(["data", "distill", "--model", str(tiny_model_dir), str(sft_file), str(tmp_path / "o.jsonl"),
                 "--rouge-threshold", "2"]) == 2
    assert "rouge-threshold" in capsys.readouterr().err


def test_rewrites_longer_than_the_models_positions_are_a_user_error(tiny_model_dir, sft_file, tmp_path, capsys):
    # The tiny model knows 256 positions: prompts are cut to fit beside the rewrite, and a rewrite that
    # alone fills them is refused with the reason (it used to end in an embedding IndexError).
    assert main(["data", "distill", "--model", str(tiny_model_dir), str(sft_file), str(tmp_path / "o.jsonl"),
                 "--max-new-tokens", "256", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "knows 256 positions" in capsys.readouterr().err


def test_a_sweep_strategy_trains_on_a_distilled_set(tmp_path) -> None:
    """A strategy names the distilled file in its train overlay; the others keep the sweep's own set."""
    import yaml

    from sftlab.recipes.sweep import load_sweep, plan, train_config

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base_model": "base",
        "out": str(tmp_path / "sweep"),
        "train": {"train_file": "train.jsonl"},
        "strategies": [{"name": "full"}, {"name": "sdft", "train": {"train_file": "train.distilled.jsonl"}},
                       {"name": "asft", "train": {"preset": "asft"}}],
        "audit": {"prompts": "prompts.jsonl"},
    }))
    cfg = load_sweep(str(path))
    configs = {spec.strategy.name: train_config(cfg, spec) for spec in plan(cfg)}
    assert configs["full"].train_file == ["train.jsonl"]
    assert configs["sdft"].train_file == ["train.distilled.jsonl"]
    assert configs["asft"].loss == "dft" and configs["asft"].kl_to_base is not None
