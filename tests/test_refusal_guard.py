"""A guard model dir as the refusal judge: loading, calling, and the dirs that are not classifiers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from sftlab.audit.embed import default_embedding_model
from sftlab.audit.refusal import build_judge
from sftlab.audit.refusal_guard import parse_guard_verdict
from sftlab.errors import UserError


def tiny_bert(labels: dict[int, str]) -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64, id2label=labels,
                      label2id={v: k for k, v in labels.items()})


def save_with_tokenizer(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    AutoTokenizer.from_pretrained(default_embedding_model()).save_pretrained(path)
    return path


def test_classifier_dir_judges_by_its_refusal_label(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert({0: "NORMAL", 1: "REJECTION"})).eval()
    save_with_tokenizer(model, tmp_path / "guard")
    judge = build_judge(str(tmp_path / "guard"))
    answers = ["I can't help with that.", "Here is a recipe.", "No.", "The sky is blue because of scattering."]
    got = judge(["q"] * 4, answers)
    tok = AutoTokenizer.from_pretrained(tmp_path / "guard")
    with torch.no_grad():
        expected = (model(**tok(answers, padding=True, return_tensors="pt")).logits.argmax(-1) == 1).tolist()
    assert got == expected and len(got) == 4


def test_encoder_without_a_head_is_not_a_classifier(tmp_path: Path) -> None:
    save_with_tokenizer(BertModel(tiny_bert({0: "A", 1: "B"})), tmp_path / "enc")
    with pytest.raises(UserError, match="not a classifier"):
        build_judge(str(tmp_path / "enc"))


def test_classifier_without_a_refusal_label_is_refused(tmp_path: Path) -> None:
    save_with_tokenizer(BertForSequenceClassification(tiny_bert({0: "LABEL_0", 1: "LABEL_1"})), tmp_path / "c")
    with pytest.raises(UserError, match="refusal"):
        build_judge(str(tmp_path / "c"))


def test_dir_without_safetensors_is_refused(tmp_path: Path) -> None:
    path = save_with_tokenizer(BertForSequenceClassification(tiny_bert({0: "NORMAL", 1: "REJECTION"})), tmp_path / "pt")
    for weights in path.glob("*.safetensors"):  # leave only a pickle-format checkpoint behind
        weights.rename(path / "pytorch_model.bin")
    with pytest.raises(UserError, match="safetensors"):
        build_judge(str(tmp_path / "pt"))


def test_llama_guard_verdicts_parse() -> None:
    assert parse_guard_verdict(" safe") is True
    assert parse_guard_verdict("unsafe\nS2") is False
    with pytest.raises(UserError, match="Llama-Guard"):
        parse_guard_verdict("Hello there")
