"""Teacher forcing: the head runs on the continuation positions only, and row slicing changes no figure."""

from __future__ import annotations

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model

from sftlab.audit.forecast import token_kl
from sftlab.audit.shift import position_scores
from sftlab.audit.teacher_forcing import (
    continuation_logits,
    continuation_logprobs,
    in_row_slices,
    right_pad,
)
from sftlab.models.load import load_model

SLICE_ROWS = 64  # rows a slice takes in the slicing test, whose vocabulary is 300 tokens
CONTEXTS = [[5, 9, 11], [7], [3, 4, 5, 6, 8, 10, 12]]
CONTINUATIONS = [[20, 21], [30, 31, 32, 33], [40]]


def full_forward_rows(model, pad_id: int, virtual: int = 0) -> torch.Tensor:
    """The reference: the whole batch's logits, indexed by hand at the positions before each continuation token."""
    ids, mask = right_pad([c + a for c, a in zip(CONTEXTS, CONTINUATIONS)], pad_id, torch.device("cpu"))
    logits = model(input_ids=ids, attention_mask=mask).logits
    # (row, position): context 0 has 3 tokens, so its continuation tokens are predicted at positions 2 and 3.
    at = [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (1, 3), (2, 6)]
    return torch.stack([logits[r, virtual + p] for r, p in at])


@torch.no_grad()
def test_the_head_sees_only_the_continuation_positions_and_gives_the_full_forwards_logits(tiny_llama_dir) -> None:
    model = load_model(str(tiny_llama_dir)).eval()
    seen: list[tuple[int, ...]] = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    try:
        got = continuation_logits(model, CONTEXTS, CONTINUATIONS, pad_id=0)
    finally:
        handle.remove()
    # 7 continuation tokens in all, against 3 x 11 = 33 positions in the padded batch.
    assert seen == [(1, 7, model.config.hidden_size)]
    torch.testing.assert_close(got, full_forward_rows(model, pad_id=0), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_model_whose_forward_never_calls_its_head_module_gets_the_same_rows(tiny_llama_dir, monkeypatch) -> None:
    model = load_model(str(tiny_llama_dir)).eval()
    reference = full_forward_rows(model, pad_id=0)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: None)
    torch.testing.assert_close(continuation_logits(model, CONTEXTS, CONTINUATIONS, pad_id=0), reference,
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_prompt_tuning_virtual_tokens_are_skipped_from_the_left(tiny_llama_dir) -> None:
    model = get_peft_model(load_model(str(tiny_llama_dir)),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)).eval()
    torch.testing.assert_close(continuation_logits(model, CONTEXTS, CONTINUATIONS, pad_id=0),
                               full_forward_rows(model, pad_id=0, virtual=3), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_continuation_logprobs_are_the_log_softmax_at_each_chosen_token(tiny_llama_dir) -> None:
    model = load_model(str(tiny_llama_dir)).eval()
    reference = torch.log_softmax(full_forward_rows(model, pad_id=0), dim=-1)
    targets = torch.tensor([t for a in CONTINUATIONS for t in a])
    expected = torch.split(reference.gather(-1, targets[:, None]).squeeze(-1), [2, 4, 1])
    for got, want in zip(continuation_logprobs(model, CONTEXTS, CONTINUATIONS, pad_id=0), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [0, 1, SLICE_ROWS, 2 * SLICE_ROWS + 13])
def test_in_row_slices_gives_the_one_call_result(rows: int, monkeypatch) -> None:
    from sftlab.models import tokens as token_constants

    monkeypatch.setattr(token_constants, "SLICE_ELEMENTS", SLICE_ROWS * 300)
    assert token_constants.rows_per_slice(300) == SLICE_ROWS
    gen = torch.Generator().manual_seed(rows)
    tuned, base = torch.randn(rows, 300, generator=gen) * 4, torch.randn(rows, 300, generator=gen) * 4
    tokens = torch.randint(0, 300, (rows,), generator=gen)
    whole, sliced = position_scores(tuned, base, tokens), in_row_slices(position_scores, tuned, base, tokens)
    assert whole.keys() == sliced.keys()
    for key in whole:
        torch.testing.assert_close(sliced[key], whole[key], rtol=1e-6, atol=0)
    for got, want in zip(in_row_slices(token_kl, base, tuned), token_kl(base, tuned), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
