"""Tokenization: prompt masking checked by hand, for the built-in formats and for a Jinja chat template."""

from __future__ import annotations

import copy

import pytest

from sftlab.data.records import Message, Origin, Record
from sftlab.data.tokenize import (
    IGNORE_INDEX,
    Encoder,
    encode_prompt,
    encode_record,
    encode_records,
    render_prompt,
)
from sftlab.errors import UserError

CHAT = [
    Message("system", "Be brief."),
    Message("user", "Hi there"),
    Message("assistant", "Hello!"),
    Message("user", "Bye"),
    Message("assistant", "Ciao, see you."),
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def conversation(messages: list[Message]) -> Record:
    return Record("conversation", Origin("hand", 1), messages=messages)


def pieces(tokenizer, *parts: str | None) -> tuple[list[int], list[bool]]:
    """Expected ids from hand-written text pieces; a piece starting with '+' is trained, None is EOS."""
    ids: list[int] = []
    trained: list[bool] = []
    for part in parts:
        if part is None:
            piece, train = [tokenizer.eos_token_id], True
        else:
            train = part.startswith("+")
            piece = tokenizer(part.removeprefix("+"), add_special_tokens=False)["input_ids"]
        ids += piece
        trained += [train] * len(piece)
    return ids, trained


def expected_labels(ids: list[int], trained: list[bool]) -> list[int]:
    labels = [t if flag else IGNORE_INDEX for t, flag in zip(ids, trained)]
    labels[0] = IGNORE_INDEX
    return labels


def with_template(tokenizer, template: str):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def test_builtin_chat_masks_every_assistant_turn(tiny_tokenizer) -> None:
    ids, trained = pieces(
        tiny_tokenizer,
        "<|system|>\nBe brief.\n<|user|>\nHi there\n<|assistant|>\n",
        "+Hello!",
        None,
        "\n<|user|>\nBye\n<|assistant|>\n",
        "+Ciao, see you.",
        None,
    )
    example = encode_record(conversation(CHAT), tiny_tokenizer, max_length=512)
    assert example.input_ids == ids
    assert example.labels == expected_labels(ids, trained)
    kept = [t for t in example.labels if t != IGNORE_INDEX]
    assert tiny_tokenizer.decode(kept) == "Hello!<|endoftext|>Ciao, see you.<|endoftext|>"
    assert not example.truncated


def test_builtin_single_turn_is_alpaca_style(tiny_tokenizer) -> None:
    record = Record("prompt_completion", Origin("hand", 1), prompt="Add 2 and 3.", completion="5")
    prompt = (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:\n"
    )
    ids, trained = pieces(tiny_tokenizer, prompt, "+5", None)
    example = encode_record(record, tiny_tokenizer, max_length=512)
    assert (example.input_ids, example.labels) == (ids, expected_labels(ids, trained))
    assert render_prompt(tiny_tokenizer, record.as_messages()[:1]) == prompt
    # completion_only_loss=False trains the prompt too (all but the unpredictable first token)
    full = encode_record(record, tiny_tokenizer, max_length=512, completion_only_loss=False)
    assert full.labels == [IGNORE_INDEX, *ids[1:]]


def test_chat_template_masks_every_assistant_turn(tiny_tokenizer) -> None:
    tok = with_template(tiny_tokenizer, CHATML)
    ids, trained = pieces(
        tok,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "+Hello!<|im_end|>\n",
        None,  # the template's own end of turn is trained, then EOS (absent from it)
        "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
        "+Ciao, see you.<|im_end|>\n",
        None,
    )
    example = encode_record(conversation(CHAT), tok, max_length=512)
    assert example.input_ids == ids
    assert example.labels == expected_labels(ids, trained)
    # One turn: exactly the template's generation prompt. With history: the training text, in which
    # each earlier answer ends with the EOS that training appended.
    first = CHAT[:2]
    assert render_prompt(tok, first) == tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in first], tokenize=False, add_generation_prompt=True
    )
    assert render_prompt(tok, CHAT[:4]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        "Hello!<|im_end|>\n<|endoftext|><|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_template_that_writes_eos_gets_no_second_one(tiny_tokenizer) -> None:
    tok = with_template(
        tiny_tokenizer,
        CHATML.replace(
            "<|im_end|>\n{% endfor %}",
            "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}<|im_end|>\n{% endfor %}",
        ),
    )
    example = encode_record(conversation(CHAT[1:3]), tok, max_length=512)
    kept = tok.decode([t for t in example.labels if t != IGNORE_INDEX])
    # Trained through the EOS; what the template writes after it is never generated, so it is masked.
    assert kept == "Hello!<|endoftext|>"
    assert tok.decode(example.input_ids).endswith("Hello!<|endoftext|><|im_end|>\n")


def test_template_that_is_not_a_growing_prefix_is_refused(tiny_tokenizer) -> None:
    # Renders the last message differently from earlier ones: turn prompts are not prefixes of the chat.
    tok = with_template(
        tiny_tokenizer, "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(UserError, match="growing prefix"):
        encode_record(conversation(CHAT[1:3]), tok, max_length=512)


def test_encode_prompt_is_the_training_prefix(tiny_tokenizer) -> None:
    for tok in (tiny_tokenizer, with_template(tiny_tokenizer, CHATML)):
        example = encode_record(conversation(CHAT), tok, max_length=512)
        prefix = encode_prompt(tok, CHAT[:4])
        assert example.input_ids[: len(prefix)] == prefix
        first_trained = next(i for i, t in enumerate(example.labels[len(prefix) - 1 :]) if t != IGNORE_INDEX)
        assert first_trained == 1  # the answer starts right after the prompt


def test_text_records_train_every_token_and_truncation_is_counted(tiny_tokenizer) -> None:
    text = Record("text", Origin("t", 1), text="To be, or not to be, that is the question.")
    long_prompt = Record("prompt_completion", Origin("t", 2), prompt="word " * 300, completion="answer")
    short = Record("prompt_completion", Origin("t", 3), prompt="Say a word.", completion="word " * 100)
    examples, stats = encode_records([text, long_prompt, short], tiny_tokenizer, max_length=64)
    ids = tiny_tokenizer(text.text, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert examples[0].input_ids == ids and examples[0].labels == [IGNORE_INDEX, *ids[1:]]
    # the long prompt leaves nothing to train within 64 tokens: dropped and counted; the long answer is cut
    assert [e.origin.line for e in examples] == [1, 3]
    assert stats.truncated == 2 and stats.no_target == 1 and stats.no_target_origins == [Origin("t", 2)]
    assert len(examples[1].input_ids) == 64 and examples[1].truncated
    assert stats.trained_tokens == sum(e.num_trained for e in examples)
    assert stats.tokens == sum(len(e.input_ids) for e in examples)


def test_overflow_split_trains_every_token_exactly_once(tiny_tokenizer) -> None:
    record = Record("prompt_completion", Origin("t", 3), prompt="Say a word.", completion="word " * 100)
    encoder = Encoder(tiny_tokenizer)
    ids, trained = encoder.ids([encoder.segments(record, None)], [encoder.lead(record)])[0]
    whole = encoder.example(record, ids, trained, len(ids), True)
    pieces = encoder.pieces(record, ids, trained, 16, True)
    assert len(ids) > 16 * 3 and all(len(p.input_ids) <= 16 for p in pieces)
    # Pieces overlap by one token: dropping each later piece's first token rebuilds the sequence, and its
    # labels, exactly; that first token is context only (it was trained as the previous piece's last).
    assert pieces[0].input_ids + [t for p in pieces[1:] for t in p.input_ids[1:]] == ids
    assert pieces[0].labels + [t for p in pieces[1:] for t in p.labels[1:]] == whole.labels
    assert all(p.labels[0] == IGNORE_INDEX for p in pieces)
    assert sum(p.num_trained for p in pieces) == whole.num_trained
    # Through encode: pieces that hold only prompt are dropped, nothing is truncated, the split is counted.
    kept, stats = encode_records([record], tiny_tokenizer, max_length=16, overflow="split")
    assert stats.split == 1 and stats.truncated == 0 and stats.no_target == 0
    assert kept == [p for p in pieces if p.num_trained] and stats.examples == len(kept)
    assert stats.trained_tokens == whole.num_trained


def test_batched_ids_equal_the_tokenizer_call(tiny_tokenizer, shared_data) -> None:
    """The fast path (Rust tokenizer, batched) gives the ids tokenizer() gives, segment by segment."""
    from sftlab.data.readers import read_records
    from sftlab.data.tokenize import Encoder

    records = read_records([shared_data / "oasst" / "en_100_tree.jsonl"]).records[:20]
    encoder = Encoder(tiny_tokenizer)
    for record, (ids, _) in zip(records, encoder.ids([encoder.segments(r) for r in records])):
        slow: list[int] = []
        for text, _ in encoder.segments(record):
            slow += (
                [tiny_tokenizer.eos_token_id]
                if text is None
                else tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
            )
        assert ids == slow


def test_bos_adding_tokenizer_gets_one_bos(tiny_tokenizer) -> None:
    """A tokenizer that adds BOS (Llama-style) starts every built-in sequence with exactly one BOS."""
    from tokenizers import processors

    tok = copy.deepcopy(tiny_tokenizer)
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tok.bos_token} $A", special_tokens=[(tok.bos_token, bos)]
    )
    record = Record("prompt_completion", Origin("t", 1), prompt="Hi", completion="Yo")
    example = encode_record(record, tok, max_length=512)
    assert example.input_ids[0] == bos and example.input_ids[1] != bos
    prefix = encode_prompt(tok, record.as_messages()[:1])
    assert prefix[0] == bos and example.input_ids[: len(prefix)] == prefix
    text = encode_record(Record("text", Origin("t", 2), text="Plain text."), tok, max_length=512)
    assert text.input_ids[0] == bos and text.labels[0] == IGNORE_INDEX
    # a chat template writes its own BOS (here: none), so none is added in front of it
    templated = with_template(tok, CHATML)
    assert encode_record(record, templated, max_length=512).input_ids[0] != bos
    assert encode_record(Record("text", Origin("t", 2), text="Plain text."), templated, 512).input_ids[0] == bos
