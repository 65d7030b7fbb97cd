"""Replay: the share of trained tokens, fresh windows every epoch, reproducible from the seed; self-replay:
the base's own answers, generated once and cached."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sftlab.config import TrainConfig
from sftlab.data.dataset import build_train_dataset
from sftlab.data.mixing import ReplayPool, replay_target_tokens
from sftlab.data.readers import read_records, read_texts
from sftlab.models.tokens import IGNORE_INDEX


def test_replay_target_tokens() -> None:
    assert replay_target_tokens(800, 0.2) == 200  # 200 / (800 + 200) = 0.2
    assert replay_target_tokens(1000, 0.5) == 1000
    with pytest.raises(ValueError):
        replay_target_tokens(10, 1.0)


def test_pool_windows_hold_the_target_and_come_from_the_stream(tiny_tokenizer) -> None:
    pool = ReplayPool(["alpha beta gamma delta"] * 3 + ["one two three four five six seven"] * 5, tiny_tokenizer)
    windows = pool.sample(1000, 16, random.Random(0))
    assert sum(w.num_trained for w in windows) == 1000
    assert all(len(w.input_ids) <= 16 and w.is_replay and w.labels[0] == IGNORE_INDEX for w in windows)
    stream = pool.stream.tolist()
    for w in windows:
        n = len(w.input_ids)
        assert any(stream[s : s + n] == w.input_ids for s in range(len(stream) - n + 1))


def trained(rows: list[dict], replay: bool) -> int:
    return sum(
        1
        for r in rows
        for label, rep in zip(r["labels"], r["replay_mask"])
        if label != IGNORE_INDEX and bool(rep) == replay
    )


@pytest.mark.parametrize("packing", [False, True])
def test_replay_share_per_epoch_and_resampling(tiny_tokenizer, shared_data: Path, packing: bool) -> None:
    records = read_records([shared_data / "alpaca" / "alpaca_5000.json"]).records[:150]
    texts = read_texts(shared_data / "wikitext-2" / "valid.txt")[:150]
    cfg = TrainConfig(
        model_name_or_path="x",
        train_file=["x"],
        max_length=128,
        packing=packing,
        seed=3,
        replay={"corpus": "wikitext", "ratio": 0.25},
    )
    ds = build_train_dataset(records, tiny_tokenizer, cfg, replay_texts=texts)
    epochs = []
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        rows = [ds[i] for i in range(len(ds))]
        replay, sft = trained(rows, True), trained(rows, False)
        # counted from the rows themselves, not from the stats
        assert abs(replay / (replay + sft) - 0.25) <= 0.02 * 0.25
        assert ds.stats.replay_tokens == replay and ds.stats.trained_tokens == replay + sft
        epochs.append([r["input_ids"] for r in rows if any(r["replay_mask"])])
    assert epochs[0] != epochs[1]  # replay was resampled
    again = build_train_dataset(records, tiny_tokenizer, cfg, replay_texts=texts)
    again.set_epoch(1)
    assert [r["input_ids"] for r in again if any(r["replay_mask"])] == epochs[1]  # the seed reproduces it


# --------------------------------------------------------------------------------------------------
# Self-replay: the base model's own answers


def _prompts_file(shared_data: Path, out: Path, n: int = 5) -> Path:
    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[1000 : 1000 + n]
    path = out / "general_prompts.jsonl"
    path.write_text("".join(json.dumps({"instruction": r["instruction"]}) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def talkative_model_dir(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> Path:
    """The tiny random model with its weight matrices drawn wider (std 0.3, not 0.02), so that its greedy
    answers vary with the context instead of repeating one newline token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0.0, 0.3)
    out = tmp_path_factory.mktemp("talkative")
    model.save_pretrained(str(out))
    tiny_tokenizer.save_pretrained(str(out))
    return out


class _CountGenerate:
    """Wraps GenerationMixin.generate to count the batches actually generated."""

    def __init__(self, monkeypatch) -> None:
        from transformers.generation.utils import GenerationMixin

        self.calls = 0
        original = GenerationMixin.generate

        def counted(model, *args, **kwargs):
            self.calls += 1
            return original(model, *args, **kwargs)

        monkeypatch.setattr(GenerationMixin, "generate", counted)


def test_self_replay_is_the_bases_own_greedy_answers_and_is_cached(
    talkative_model_dir, tiny_tokenizer, shared_data, tmp_path, monkeypatch
) -> None:
    from transformers import AutoModelForCausalLM

    from sftlab.data.mixing import self_replay_pool
    from sftlab.data.readers import read_prompts
    from sftlab.data.tokenize import encode_prompt

    prompts = _prompts_file(shared_data, tmp_path)
    cfg = TrainConfig(
        model_name_or_path=str(talkative_model_dir), train_file=["x"], max_length=96,
        replay={"source": "self", "prompts": str(prompts), "cache_dir": str(tmp_path / "cache"),
                "sampling": {"max_new_tokens": 12, "batch_size": 2}},
    )
    counter = _CountGenerate(monkeypatch)
    pool = self_replay_pool(cfg, tiny_tokenizer)
    assert counter.calls == 3  # 5 prompts in batches of 2

    # The replay examples are the prompts in the training format, then the base's own greedy answer,
    # generated here again one prompt at a time (no padding) with plain transformers.
    model = AutoModelForCausalLM.from_pretrained(str(talkative_model_dir)).eval()
    messages = read_prompts(prompts)
    assert len(pool) == len(messages)
    eos = tiny_tokenizer.eos_token_id
    for example, prompt in zip(pool.examples, messages):
        ids = encode_prompt(tiny_tokenizer, prompt)
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=12, pad_token_id=tiny_tokenizer.pad_token_id,
                             eos_token_id=eos)[0, len(ids):].tolist()
        answer = out[: out.index(eos)] if eos in out else out
        trained = [t for t in example.labels if t != IGNORE_INDEX]
        assert example.input_ids[: len(ids)] == ids  # the prompt, untrained
        assert all(label == IGNORE_INDEX for label in example.labels[: len(ids)])
        assert trained[-1] == eos  # the answer ends with EOS, as every SFT target does
        assert tiny_tokenizer.decode(trained[:-1]) == tiny_tokenizer.decode(answer, skip_special_tokens=True)
        assert example.is_replay
    answers = {tuple(t for t in e.labels if t != IGNORE_INDEX) for e in pool.examples}
    assert len(answers) == len(pool)  # five different answers: the comparison above is not trivially true
    calls = counter.calls

    # A second run reads every answer back from the cache: nothing is generated again.
    again = self_replay_pool(cfg, tiny_tokenizer)
    assert counter.calls == calls
    assert [e.input_ids for e in again.examples] == [e.input_ids for e in pool.examples]


def test_self_replay_pool_draws_whole_examples_to_the_share(tiny_tokenizer) -> None:
    from sftlab.data.mixing import SelfReplayPool
    from sftlab.data.tokenize import TokenizedExample

    examples = [TokenizedExample(list(range(n + 3)), [IGNORE_INDEX] * 3 + list(range(n))) for n in (4, 7, 10, 13)]
    pool = SelfReplayPool(examples)
    drawn = pool.sample(30, 64, random.Random(0))
    # 34 total trained tokens in the pool: 30 is met to within one example, with no example twice.
    total = sum(e.num_trained for e in drawn)
    assert abs(total - 30) <= max(e.num_trained for e in drawn) / 2
    assert len({id(e) for e in drawn}) == len(drawn) and all(e.is_replay for e in drawn)
    many = pool.sample(100, 64, random.Random(1))  # more than the pool holds: it cycles through again
    assert abs(sum(e.num_trained for e in many) - 100) <= 13 / 2


def test_self_replay_trains_end_to_end(talkative_model_dir, shared_data, tmp_path) -> None:
    from sftlab.recipes.train import run_train

    records = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())[:40]
    (tmp_path / "sft.json").write_text(json.dumps(records))
    prompts = _prompts_file(shared_data, tmp_path, n=12)
    run = tmp_path / "run"
    run_train(TrainConfig(
        model_name_or_path=str(talkative_model_dir), train_file=[str(tmp_path / "sft.json")], output_dir=str(run),
        max_length=96, max_steps=2, per_device_train_batch_size=4, save_strategy="no", logging_steps=1,
        replay={"source": "self", "prompts": str(prompts), "cache_dir": str(tmp_path / "cache"), "ratio": 0.2,
                "sampling": {"max_new_tokens": 24}},
        kl_to_base={"on": "replay"},
    ))
    stats = json.loads((run / "data" / "stats.json").read_text())["train_epochs"][0]
    assert stats["replay_examples"] > 0 and 0.1 < stats["replay_fraction"] < 0.3
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss/kl_to_base"] >= 0 for m in logs if "loss" in m)
