"""Packing: best-fit decreasing, and packed rows give each document exactly its unpacked loss."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sftlab.data.packing import SFTCollator, best_fit_decreasing, pack_examples, real_token_fraction
from sftlab.data.records import Origin
from sftlab.data.tokenize import TokenizedExample, encode_records
from sftlab.models.tokens import IGNORE_INDEX


def test_best_fit_decreasing_hand_case() -> None:
    # Longest first: 7, 6, 5, 4, 3, 3, 2 into capacity 10. 7 opens A (3 free), 6 opens B (4), 5 opens
    # C (5); 4 fills B exactly; 3 fills A exactly; 3 goes to C (2 left); 2 fills C.
    lengths = [3, 7, 2, 5, 4, 6, 3]
    bins = best_fit_decreasing(lengths, 10)
    assert [[lengths[i] for i in b] for b in bins] == [[7, 3], [6, 4], [5, 3, 2]]
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    with pytest.raises(ValueError, match="exceeds"):
        best_fit_decreasing([11], 10)


def test_best_fit_decreasing_random_properties() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 128) for _ in range(500)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    lower_bound = -(-sum(lengths) // 128)
    assert len(bins) <= 11 / 9 * lower_bound + 1  # Johnson's bound, with OPT >= the volume bound


def example(ids: list[int], labels: list[int] | None = None, replay: bool = False) -> TokenizedExample:
    return TokenizedExample(ids, labels or [IGNORE_INDEX, *ids[1:]], origin=Origin("t", None), is_replay=replay)


def test_rows_and_collator_layout() -> None:
    rows = pack_examples([example([5, 6, 7]), example([8, 9], replay=True), example([10, 11, 12, 13])], 6)
    assert [r.doc_lengths for r in rows] == [[4, 2], [3]]
    assert rows[0].position_ids == [0, 1, 2, 3, 0, 1] and rows[0].replay_mask == [0, 0, 0, 0, 1, 1]
    features = [
        {"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids, "replay_mask": r.replay_mask}
        for r in rows
    ]
    batch = SFTCollator(0, return_replay_mask=True)(features)
    assert set(batch) == {"input_ids", "labels", "position_ids", "replay_mask"}  # no attention mask
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 0, 1, 2]  # the pad tail is a document of its own
    assert batch["labels"][1].tolist() == [-100, 6, 7, -100, -100, -100]
    assert batch["input_ids"][1].tolist() == [5, 6, 7, 0, 0, 0]
    plain = SFTCollator(0, pad_to_multiple_of=4)(
        [{"input_ids": [1, 2], "labels": [-100, 2]}, {"input_ids": [3], "labels": [-100]}]
    )
    assert plain["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert "replay_mask" not in plain
    assert real_token_fraction([len(r) for r in rows], 6) == pytest.approx(9 / 12)


def document_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of one document."""
    return F.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("model_fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_packed_loss_equals_unpacked(
    request: pytest.FixtureRequest, model_fixture: str, tiny_tokenizer, shared_data: Path
) -> None:
    """Each document's loss inside packed rows equals its loss alone (1e-5): no cross-document attention.

    With use_cache=True transformers skips the packed-sequence detection, and the same check fails:
    that control proves the test can tell the difference.
    """
    from transformers import AutoModelForCausalLM

    from sftlab.data.readers import read_records

    model = AutoModelForCausalLM.from_pretrained(str(request.getfixturevalue(model_fixture))).eval()
    records = read_records([shared_data / "alpaca" / "alpaca_5000.json"]).records[:12]
    docs, _ = encode_records(records, tiny_tokenizer, max_length=96, completion_only_loss=False)
    rows = pack_examples(docs, 250)
    assert any(len(r.doc_lengths) > 1 for r in rows)
    features = [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
    batch = SFTCollator(tiny_tokenizer)(features)

    with torch.no_grad():
        alone = {}
        for doc in docs:
            logits = model(input_ids=torch.tensor([doc.input_ids])).logits[0]
            alone[tuple(doc.input_ids)] = document_losses(logits, torch.tensor(doc.labels)) / doc.num_trained

        def packed_losses(use_cache: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=use_cache).logits
            out = []
            for i, row in enumerate(rows):
                start = 0
                for n in row.doc_lengths:
                    ids = tuple(row.input_ids[start : start + n])
                    loss = document_losses(logits[i, start : start + n], batch["labels"][i, start : start + n])
                    out.append((alone[ids], loss / sum(1 for t in row.labels[start : start + n] if t != IGNORE_INDEX)))
                    start += n
            return out

        pairs = packed_losses(use_cache=False)
        assert len(pairs) == len(docs)
        assert max(abs(a - b).item() for a, b in pairs) < 1e-5
        leaky = packed_losses(use_cache=True)
        assert max(abs(a - b).item() for a, b in leaky) > 1e-3


def test_overflow_split_keeps_every_trained_token_in_packed_rows(tiny_tokenizer, shared_data) -> None:
    from sftlab.config import TrainConfig
    from sftlab.data.dataset import build_train_dataset
    from sftlab.data.readers import read_records

    records = read_records([shared_data / "alpaca" / "alpaca_5000.json"]).records[:60]
    cfg = {"model_name_or_path": "unused", "train_file": ["unused"], "max_length": 256, "packing": True}
    cut = build_train_dataset(records, tiny_tokenizer, TrainConfig(**cfg)).stats
    kept = build_train_dataset(records, tiny_tokenizer, TrainConfig(**cfg, overflow="split")).stats
    whole, _ = encode_records(records, tiny_tokenizer, max_length=100_000)
    assert cut.truncated > 0 and kept.truncated == 0 and kept.split == cut.truncated
    # Split: the rows train exactly the tokens an unlimited max_length would; truncation trains fewer.
    assert kept.trained_tokens == sum(e.num_trained for e in whole) > cut.trained_tokens
