"""SFTDataset: fixed length across epochs, stats that match the rows, and the Trainer calling set_epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftlab.config import TrainConfig
from sftlab.train.remedies.augment import AugmentSettings, EdaSettings
from sftlab.data.dataset import SFTDataset, build_eval_dataset, build_train_dataset, split_records
from sftlab.data.readers import read_records
from sftlab.models.tokens import IGNORE_INDEX


@pytest.fixture(scope="module")
def records(shared_data: Path):
    return read_records([shared_data / "alpaca" / "alpaca_5000.json"]).records[:120]


def check_stats(ds: SFTDataset) -> None:
    rows = list(ds)
    assert ds.stats.rows == len(rows)
    assert ds.stats.tokens == sum(len(r["input_ids"]) for r in rows)
    assert ds.stats.trained_tokens == sum(1 for r in rows for t in r["labels"] if t != IGNORE_INDEX)
    assert ds.stats.real_token_fraction == pytest.approx(ds.stats.tokens / (len(rows) * ds.max_length))
    assert all(len(r["input_ids"]) <= ds.max_length for r in rows)


@pytest.mark.parametrize("packing", [False, True])
def test_length_is_fixed_across_augmented_epochs(tiny_tokenizer, records, packing: bool) -> None:
    settings = AugmentSettings(eda=EdaSettings(p=0.3, n=1), template_variety=True)
    ds = SFTDataset(records, tiny_tokenizer, max_length=192, packing=packing, seed=1, augment=settings)
    n = len(ds)
    for epoch in range(4):
        ds.set_epoch(epoch)
        assert len(ds) == n
        check_stats(ds)
    if packing:
        assert ds.stats.real_token_fraction > 0.9


@pytest.mark.parametrize("packing", [False, True])
def test_short_and_long_epochs_are_fitted_without_loss(tiny_tokenizer, packing: bool) -> None:
    """Prompts right at max_length: augmentation decides whether an answer fits, so the number of
    documents changes from epoch to epoch. Rows are repeated/split or carried, never lost."""
    from sftlab.data.records import Origin, Record

    words = "the cat sat on a mat and looked at the sky for a while".split()
    records = [
        Record(
            "prompt_completion",
            Origin("t", i),
            prompt=" ".join(words[(i + k) % len(words)] for k in range(40)),
            completion=f"answer {i}",
            meta={},
        )
        for i in range(40)
    ]
    settings = AugmentSettings(eda=EdaSettings(p=0.2, n=1), template_variety=True)
    ds = SFTDataset(records, tiny_tokenizer, max_length=70, packing=packing, seed=0, augment=settings)
    n = len(ds)
    fitted = 0
    previous_carry: list[dict] = []
    for epoch in range(5):
        ds.set_epoch(epoch)
        s = ds.stats
        assert len(ds) == n
        check_stats(ds)
        assert s.carried_in == len(previous_carry)
        first = min(len(previous_carry), n)  # carried rows go first (any beyond the count are carried on)
        assert [r["input_ids"] for r in list(ds)[:first]] == [r["input_ids"] for r in previous_carry[:first]]
        previous_carry = ds._carry[epoch + 1]
        assert len(previous_carry) == s.carried_out
        fitted += s.carried_out + s.split_rows + s.repeated_rows
        if not packing:
            assert s.rows == s.examples + s.carried_in - s.carried_out + s.repeated_rows
    assert fitted > 0  # the fitting was exercised


def test_epochs_rebuild_identically(tiny_tokenizer, records) -> None:
    settings = AugmentSettings(eda=EdaSettings(p=0.3, n=1), template_variety=True)
    ds = SFTDataset(records, tiny_tokenizer, max_length=192, packing=True, seed=1, augment=settings)
    ds.set_epoch(2)
    epoch2 = [r["input_ids"] for r in ds]
    ds.set_epoch(0)
    ds.set_epoch(2)
    assert [r["input_ids"] for r in ds] == epoch2
    fresh = SFTDataset(records, tiny_tokenizer, max_length=192, packing=True, seed=1, augment=settings)
    fresh.set_epoch(2)  # a resumed run jumps straight to its epoch
    assert [r["input_ids"] for r in fresh] == epoch2


def test_packing_fills_rows(tiny_tokenizer, records) -> None:
    cfg = TrainConfig(model_name_or_path="x", train_file=["x"], max_length=1024, packing=True)
    packed = build_train_dataset(records, tiny_tokenizer, cfg)
    padded = build_train_dataset(records, tiny_tokenizer, cfg.model_copy(update={"packing": False}))
    check_stats(packed)
    assert packed.stats.tokens == padded.stats.tokens and packed.stats.trained_tokens == padded.stats.trained_tokens
    assert packed.stats.real_token_fraction > 0.95 > padded.stats.real_token_fraction
    assert all("position_ids" in r for r in packed) and not any("position_ids" in r for r in padded)


def test_split_and_eval_dataset(tiny_tokenizer, records) -> None:
    train, held = split_records(records, 0.1, seed=0)
    assert len(held) == 12 and len(train) == 108
    assert {id(r) for r in train}.isdisjoint(id(r) for r in held)
    assert split_records(records, 0.1, seed=0)[1] == held
    cfg = TrainConfig(model_name_or_path="x", train_file=["x"], max_length=256, augment={"eda": {"p": 0.5, "n": 3}})
    assert len(build_eval_dataset(held, tiny_tokenizer, cfg)) == 12  # no augmentation on eval


def test_trainer_calls_set_epoch(tiny_tokenizer, tiny_model_dir: Path, records, tmp_path: Path) -> None:
    """transformers 5.23's Trainer (single process) reaches dataset.set_epoch every epoch."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from sftlab.data.packing import SFTCollator

    calls: list[int] = []

    class Spy(SFTDataset):
        def set_epoch(self, epoch: int) -> None:
            calls.append(epoch)
            super().set_epoch(epoch)

    ds = Spy(records[:8], tiny_tokenizer, max_length=128, packing=True)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    Trainer(model=model, args=args, train_dataset=ds, data_collator=SFTCollator(tiny_tokenizer)).train()
    assert sorted(set(calls)) == [0, 1, 2]
    assert ds.epoch == 2


def test_accelerate_skips_dataset_set_epoch_with_several_processes() -> None:
    """Why the trainer needs its own set_epoch callback under DDP: with a sharded batch sampler,
    accelerate 1.15's DataLoaderShard.set_epoch reaches the sampler and not the dataset."""
    import torch
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    class Tiny(torch.utils.data.Dataset):
        def __init__(self) -> None:
            self.calls: list[int] = []

        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor([i])

        def set_epoch(self, epoch: int) -> None:
            self.calls.append(epoch)

    for processes, expected in ((1, [1]), (2, [])):
        data = Tiny()
        loader = prepare_data_loader(
            DataLoader(data, batch_size=2, shuffle=True),
            num_processes=processes,
            process_index=0,
            put_on_device=False,
            use_seedable_sampler=True,
        )
        loader.set_epoch(1)
        assert data.calls == expected
