"""The built-in probe suites: shipped files, how they combine with a user's files, and an audit that uses them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sftlab.audit import suites
from sftlab.audit.forgetting import read_multiple_choice
from sftlab.cli import main
from sftlab.config import AuditConfig, build_config
from sftlab.data.readers import read_prompts, read_texts
from sftlab.errors import UserError
from sftlab.recipes.audit_inputs import read_eval_set, read_inputs

REPO = Path(__file__).resolve().parent.parent


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def test_shipped_suites_are_readable_and_sourced() -> None:
    chat = suites.suite_dir("chat") / "chat.jsonl"
    assert len(read_prompts(chat)) == len(read_eval_set(str(chat))) >= 120
    assert len(read_multiple_choice(suites.suite_dir("knowledge") / "piqa.jsonl")) == 900
    assert len(read_texts(suites.suite_dir("text") / "wikitext2.txt")) == 240
    for name in ("chat", "knowledge", "text"):
        listed = (suites.suite_dir(name) / "SOURCE.md").read_text()
        for f in suites.suite_dir(name).iterdir():
            assert f.name == "SOURCE.md" or f"`{f.name}`" in listed, f"{name}/{f.name} is not in its SOURCE.md"
        assert "licen" in listed.lower()
    assert "audit/suites/*/*" in (REPO / "pyproject.toml").read_text()  # shipped as package data


def test_knowledge_suite_is_the_shared_piqa_dev_set(shared_data: Path) -> None:
    items = read_multiple_choice(suites.suite_dir("knowledge") / "piqa.jsonl")
    dev = [json.loads(line) for line in (shared_data / "piqa" / "dev.jsonl").read_text().splitlines()]
    assert [(i.question, i.choices, i.answer) for i in items] == [(r["goal"], [r["sol1"], r["sol2"]], r["label"])
                                                                   for r in dev]
    assert items[0].context == f"Question: {dev[0]['goal']}\nAnswer:"  # lm-eval-harness's PIQA context


def test_chat_suite_is_disjoint_from_what_the_demos_train_on(shared_data: Path) -> None:
    import sys

    sys.path.insert(0, str(REPO / "examples" / "real_data"))
    from prepare import split

    trained: set[str] = set()
    for path in (REPO / "src" / "sftlab" / "demo_data" / "real").glob("*.jsonl"):
        for row in map(json.loads, path.read_text().splitlines()):
            trained |= {_norm(row[k]) for k in ("instruction", "output", "prompt") if isinstance(row.get(k), str)}
    alpaca = json.loads((shared_data / "alpaca" / "alpaca_5000.json").read_text())
    train, _ = split([r for r in alpaca if r["output"].strip()], 0, 300, 0)  # every record the examples may train on
    trained |= {_norm(r["instruction"]) for r in train} | {_norm(r["output"]) for r in train}
    rows = [json.loads(line) for line in (suites.suite_dir("chat") / "chat.jsonl").read_text().splitlines()]
    texts = {_norm(m["content"]) for r in rows for m in r["messages"]}
    assert not texts & trained
    assert {r["source"] for r in rows} == {"alpaca", "self-instruct", "oasst"}


def test_unknown_suite_is_a_user_error_and_safety_turns_on_its_measure() -> None:
    with pytest.raises(UserError, match="unknown probe suite 'chta'; did you mean 'chat'"):
        suites.selected_suites(["chta"], False)
    assert [s.measure for s in suites.selected_suites(["chat", "safety"], False)] == [None, "safety"]
    assert "safety" not in suites.DEFAULT_SUITES  # minutes of greedy answers on a CPU: asked for by name


def test_unknown_suite_exits_2_with_the_closest_name(tmp_path: Path, tiny_model_dir: Path, capsys) -> None:
    code = main(["audit", "--base", str(tiny_model_dir), "--tuned", f"copy={tiny_model_dir}", "--suite", "chat,knowlege",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "did you mean 'knowledge'" in err and "Traceback" not in err


def _cfg(**data) -> AuditConfig:
    return build_config(AuditConfig, {"base": "b", "tuned": ["t"], **data})


def test_default_suites_run_when_no_file_is_given() -> None:
    inputs = read_inputs(_cfg(suite_items={"chat_prompts": 5, "knowledge_items": 7, "text_paragraphs": 3}))
    assert inputs.suites == ["chat", "knowledge", "text"]
    assert len(inputs.messages) == 5 and [it.messages for it in inputs.eval_items] == inputs.messages
    assert {k: len(v) for k, v in inputs.references.items()} == {"wikitext2": 3}
    assert {k: len(v) for k, v in inputs.benchmarks.items()} == {"piqa": 7}
    assert inputs.sources["prompts"].endswith("chat/chat.jsonl")


def test_files_alone_replace_the_default_suites_and_join_named_ones(tmp_path: Path) -> None:
    prompts, ref = tmp_path / "p.jsonl", tmp_path / "ref.txt"
    prompts.write_text('{"prompt": "Say hi."}\n{"prompt": "Count to three."}\n')
    ref.write_text("One paragraph of my own text.\n\nAnd a second one.\n")
    alone = read_inputs(_cfg(prompts=str(prompts), reference=[str(ref)]))
    assert alone.suites == [] and len(alone.messages) == 2 and not alone.eval_items and not alone.benchmarks
    assert list(alone.references) == ["ref"]
    joined = read_inputs(_cfg(prompts=str(prompts), reference=[str(ref)], suites="text,chat",
                              suite_items={"text_paragraphs": 4, "chat_prompts": 3}))
    assert joined.suites == ["text", "chat"]
    assert [m[-1].content for m in joined.messages] == ["Say hi.", "Count to three."]  # --prompts replaces chat's
    assert len(joined.eval_items) == 3  # the chat suite still gives its eval items
    assert {k: len(v) for k, v in joined.references.items()} == {"ref": 2, "wikitext2": 4}  # --reference adds


def test_suites_without_prompts_are_refused() -> None:
    with pytest.raises(UserError, match="samples answers to prompts"):
        read_inputs(_cfg(suites=["knowledge"]))


def test_audit_with_suites_names_them_in_the_report(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "out"
    code = main(["audit", "--base", str(tiny_model_dir), "--tuned", f"copy={tiny_model_dir}", "--out", str(out),
                 "suite_items.chat_prompts=3", "suite_items.knowledge_items=4", "suite_items.text_paragraphs=2",
                 "sampling.num_samples=2", "sampling.max_new_tokens=6", "bootstrap_samples=100",
                 "embedding_model=none"])
    assert code == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["meta"]["suites"] == ["chat", "knowledge", "text"]
    assert doc["meta"]["inputs"]["benchmark"][0].endswith("knowledge/piqa.jsonl")
    assert {"task", "forgetting"} <= set(doc["sections"])
    assert "suites: chat, knowledge, text" in (out / "report.md").read_text()
