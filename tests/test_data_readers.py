"""Readers: every supported format, and malformed data of many kinds, each with its message and count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sftlab.data.readers import MAX_RECORD_CHARS, read_prompts, read_records, read_texts
from sftlab.errors import UserError

ALPACA = {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


# --------------------------------------------------------------------------------------------------
# Formats


def test_each_format_is_detected_and_parsed(tmp_path: Path) -> None:
    files = {
        "text.jsonl": jsonl({"text": "Once upon a time."}),
        "pc.jsonl": jsonl({"prompt": "Say hi", "completion": "hi"}),
        "alpaca.jsonl": jsonl(ALPACA, {"instruction": "Name a colour.", "output": "Red"}),
        "msgs.jsonl": jsonl(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            }
        ),
        "sharegpt.jsonl": jsonl({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}),
        "selfinst.jsonl": jsonl(
            {"instruction": "Double it.", "instances": [{"input": "2", "output": "4"}, {"input": "5", "output": "10"}]}
        ),
    }
    result = read_records([write(tmp_path / name, text) for name, text in files.items()])
    assert not result.rejected
    by_format = {r.format: r for r in result.records}
    assert result.by_format == {
        "text": 1,
        "prompt_completion": 1,
        "alpaca": 2,
        "messages": 1,
        "sharegpt": 1,
        "self_instruct": 2,
    }
    assert by_format["text"].text == "Once upon a time."
    alpaca = [r for r in result.records if r.format == "alpaca"]
    assert alpaca[0].prompt == "Add the numbers.\n\n2, 3" and alpaca[0].completion == "5"
    assert alpaca[0].meta == {"instruction": "Add the numbers.", "input": "2, 3"}
    assert alpaca[1].prompt == "Name a colour."  # no input: the instruction alone
    assert [(m.role, m.content) for m in by_format["sharegpt"].messages] == [("user", "Hi"), ("assistant", "Yo")]
    assert [m.role for m in by_format["messages"].messages] == ["system", "user", "assistant"]
    assert [r.origin.item for r in result.records if r.format == "self_instruct"] == [1, 2]
    assert by_format["prompt_completion"].as_messages()[1].content == "hi"


def test_json_array_object_and_line_numbers(tmp_path: Path) -> None:
    array = write(
        tmp_path / "a.json",
        "[\n  " + ",\n  ".join(json.dumps({**ALPACA, "output": str(i)}) for i in range(3)) + "\n]\n",
    )
    keyed = write(tmp_path / "k.json", json.dumps({"x": ALPACA, "y": {**ALPACA, "output": "6"}}, indent=2))
    wrapped = write(tmp_path / "w.json", json.dumps({"data": [ALPACA, ALPACA]}))
    single = write(tmp_path / "s.json", json.dumps(ALPACA))
    result = read_records([array, keyed, wrapped, single])
    assert not result.rejected
    lines = [(Path(r.origin.file).name, r.origin.line, r.origin.item) for r in result.records]
    assert lines[:3] == [("a.json", 2, 1), ("a.json", 3, 2), ("a.json", 4, 3)]
    assert [r.completion for r in result.records[3:5]] == ["5", "6"]
    assert [r.origin.line for r in result.records[3:5]] == [2, 7]
    assert [r.origin.item for r in result.records[5:7]] == [1, 2]
    assert len(result.records) == 8


def test_json_layout_follows_the_content(tmp_path: Path) -> None:
    lines_named_json = write(tmp_path / "lines.json", jsonl(ALPACA, ALPACA))
    array_named_jsonl = write(tmp_path / "array.jsonl", json.dumps([ALPACA, ALPACA], indent=1))
    result = read_records([lines_named_json, array_named_jsonl])
    assert not result.rejected and len(result.records) == 4
    assert [r.origin.line for r in result.records[:2]] == [1, 2]


def test_csv_parquet_txt_and_datasets_dir(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    csv_file = write(tmp_path / "d.csv", 'instruction,input,output\nAdd.,"1,2",3\n"Multi\nline",,ok\n')
    pq.write_table(pa.Table.from_pylist([ALPACA, {**ALPACA, "output": "five"}]), tmp_path / "d.parquet")
    txt = write(tmp_path / "d.txt", "First doc\nstill first.\n\n\nSecond doc.\n")
    lines_txt = write(tmp_path / "l.txt", "one\ntwo\nthree\n")
    Dataset.from_list(
        [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    ).save_to_disk(str(tmp_path / "ds"))
    result = read_records([csv_file, tmp_path / "d.parquet", txt, lines_txt, tmp_path / "ds"])
    assert not result.rejected
    recs = result.records
    assert recs[0].prompt == "Add.\n\n1,2" and recs[0].origin.line == 2
    assert recs[1].prompt == "Multi\nline" and recs[1].origin.line == 3
    assert [r.completion for r in recs[2:4]] == ["5", "five"] and recs[3].origin.line == 2  # parquet rows
    assert [(r.text, r.origin.line) for r in recs[4:6]] == [("First doc\nstill first.", 1), ("Second doc.", 5)]
    assert [r.text for r in recs[6:9]] == ["one", "two", "three"]  # no blank line: one document per line
    assert recs[9].format == "messages" and recs[9].origin.line == 1


def test_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    bom_jsonl = write(tmp_path / "b.jsonl", b"\xef\xbb\xbf" + jsonl(ALPACA).encode())
    bom_csv = write(tmp_path / "b.csv", b"\xef\xbb\xbfinstruction,output\r\nAdd.,3\r\n")
    crlf = write(tmp_path / "c.jsonl", jsonl(ALPACA, ALPACA).replace("\n", "\r\n").encode())
    crlf_txt = write(tmp_path / "c.txt", b"one doc\r\n\r\ntwo doc\r\n")
    result = read_records([bom_jsonl, bom_csv, crlf, crlf_txt])
    assert not result.rejected
    assert len(result.records) == 6
    assert result.records[1].prompt == "Add." and result.records[1].completion == "3"
    assert [r.text for r in result.records[4:]] == ["one doc", "two doc"]
    assert all("\r" not in (r.prompt or r.text or "") + (r.completion or "") for r in result.records)


# --------------------------------------------------------------------------------------------------
# Malformed data: (file name, content, expected code, expected field, a phrase of the message)

BAD_RECORDS = [
    ("empty.jsonl", b"", "empty file", None, "empty"),
    ("blank.jsonl", b"\n  \n\t\n", "empty file", None, "empty"),
    ("empty_array.json", b"[]", "empty file", None, "no records"),
    ("utf16.jsonl", "\ufeff" + jsonl(ALPACA), "not UTF-8", None, "UTF-16"),
    ("broken.jsonl", b'{"instruction": "a", "output": \n', "broken JSON", None, "not valid JSON"),
    ("notobj.jsonl", b"42\n", "not an object", None, "got int"),
    (
        "wrongtype.jsonl",
        jsonl({"instruction": "Add.", "output": 5}),
        "wrong type",
        "output",
        "must be a string, got int",
    ),
    ("missing.jsonl", jsonl({"instruction": "Add."}), "missing field", "output", "no 'output'"),
    ("null.jsonl", jsonl({"instruction": "Add.", "output": None}), "missing field", "output", "is null"),
    (
        "emptyresp.jsonl",
        jsonl({"instruction": "Add.", "output": " \n\t"}),
        "empty response",
        "output",
        "whitespace-only",
    ),
    ("emptyprompt.jsonl", jsonl({"prompt": "", "completion": "x"}), "empty prompt", "prompt", "empty"),
    ("emptytext.jsonl", jsonl({"text": "   "}), "empty text", "text", "empty"),
    (
        "role.jsonl",
        jsonl({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]}),
        "unknown role",
        "messages[1].role",
        "'robot'",
    ),
    (
        "noassist.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            }
        ),
        "no final assistant turn",
        "messages[2].role",
        "ends with a user turn",
    ),
    (
        "order.jsonl",
        jsonl(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        ),
        "bad turn order",
        "messages[1].role",
        "two user turns in a row",
    ),
    ("emptyconv.jsonl", jsonl({"messages": []}), "empty conversation", "messages", "no turns"),
    ("msgtype.jsonl", jsonl({"messages": "hello"}), "wrong type", "messages", "array of turns"),
    ("unknown.jsonl", jsonl({"question": "q", "answer": "a"}), "unrecognised format", None, "'question'"),
    (
        "surrogate.jsonl",
        b'{"instruction": "bad \\ud800 escape", "output": "x"}\n',
        "not UTF-8",
        "instruction",
        "U+D800",
    ),
    ("csvrow.csv", b"instruction,output\nAdd.,3,extra\n", "bad csv row", None, "3 fields but the header has 2"),
    ("csvjson.csv", b'messages\n"[{""role"": ""user"""\n', "broken JSON", "messages", "JSON array"),
]


@pytest.mark.parametrize(("name", "content", "code", "field", "phrase"), BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_malformed_record_is_quarantined_with_reason(
    tmp_path: Path, name: str, content: str | bytes, code: str, field: str | None, phrase: str
) -> None:
    path = tmp_path / name
    if name == "utf16.jsonl":
        path.write_bytes(str(content).encode("utf-16"))
    else:
        write(path, content)
    quarantine = tmp_path / "q.jsonl"
    result = read_records([path], quarantine=quarantine)
    assert result.records == []
    assert result.counts == {code: 1}
    (rej,) = result.rejected
    assert rej.code == code and rej.field == field and phrase in rej.reason
    assert rej.origin.file == str(path)
    (line,) = [json.loads(line) for line in quarantine.read_text(encoding="utf-8").splitlines()]
    assert line["file"] == str(path) and line["field"] == field and line["code"] == code and phrase in line["reason"]
    assert set(line) == {"file", "line", "item", "field", "reason", "code", "raw"}
    # strict mode stops at the same record with file, line and field in the message
    with pytest.raises(UserError) as info:
        read_records([path], strict=True)
    assert str(path) in str(info.value) and phrase in str(info.value)
    if field:
        assert repr(field) in str(info.value)


def test_bad_lines_do_not_spoil_good_ones(tmp_path: Path) -> None:
    """Non-UTF-8 bytes, broken JSON and a huge line each reject only their own line, with its number."""
    huge = json.dumps({"instruction": "x" * (MAX_RECORD_CHARS + 1), "output": "y"})
    content = (
        jsonl(ALPACA).encode()
        + b'{"instruction": "caf\xe9", "output": "ok"}\n'
        + b'{"instruction": "half"\n'
        + huge.encode()
        + b"\n"
        + jsonl(ALPACA).encode()
    )
    path = write(tmp_path / "mixed.jsonl", content)
    quarantine = tmp_path / "q.jsonl"
    result = read_records([path], quarantine=quarantine)
    assert [r.origin.line for r in result.records] == [1, 5]
    assert result.counts == {"not UTF-8": 1, "broken JSON": 1, "record too long": 1}
    by_line = {r.origin.line: r for r in result.rejected}
    assert "byte 0xe9" in by_line[2].reason
    assert "limit" in by_line[4].reason
    lines = quarantine.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert "\\xe9" in json.loads(lines[0])["raw"]  # undecodable byte shown escaped; the file stays UTF-8
    assert len(json.loads(lines[2])["raw"]) < 11_000  # huge raw text is cut


def test_broken_json_array_keeps_records_before_the_break(tmp_path: Path) -> None:
    path = write(tmp_path / "a.json", "[\n" + json.dumps(ALPACA) + ",\n" + json.dumps(ALPACA) + ",\n{oops}\n]")
    result = read_records([path])
    assert len(result.records) == 2
    (rej,) = result.rejected
    assert rej.code == "broken JSON" and rej.origin.line == 4 and "rest of the file was not read" in rej.reason


def test_mixed_formats_in_one_file(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", jsonl(ALPACA, {"text": "plain"}, ALPACA))
    result = read_records([path])
    assert [r.format for r in result.records] == ["alpaca", "alpaca"]
    (rej,) = result.rejected
    assert rej.code == "mixed formats" and rej.origin.line == 2 and "most records in m.jsonl are alpaca" in rej.reason


def test_path_problems_are_user_errors(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    with pytest.raises(UserError, match="data file not found"):
        read_records([tmp_path / "nope.jsonl"])
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(UserError, match="not a dataset saved with datasets' save_to_disk"):
        read_records([tmp_path / "plain_dir"])
    with pytest.raises(UserError, match="unsupported file type '.xml'"):
        read_records([write(tmp_path / "d.xml", "<a/>")])
    DatasetDict({"train": Dataset.from_list([{"text": "a"}])}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(UserError, match="splits train"):
        read_records([tmp_path / "dd"])


def test_strict_mode_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", jsonl(ALPACA, ALPACA, {"instruction": "a", "output": 3}))
    with pytest.raises(UserError) as info:
        read_records([path], strict=True)
    assert f"{path}:3" in str(info.value) and "'output'" in str(info.value)


# --------------------------------------------------------------------------------------------------
# OpenAssistant trees


def node(role: str, text: str, *replies: dict, **extra: object) -> dict:
    return {"role": role, "text": text, "replies": list(replies), **extra}


def test_oasst_tree_flattening_rule(tmp_path: Path) -> None:
    tree = {
        "prompt": node(
            "prompter",
            "Q",
            node("assistant", "A1", node("prompter", "Q2 unanswered")),
            node("assistant", "A2", node("prompter", "Q3", node("assistant", "A3"))),
            node("assistant", "A4 deleted", deleted=True),
            node("assistant", "   "),
        )
    }
    result = read_records([write(tmp_path / "t.jsonl", jsonl(tree))])
    convs = [[m.content for m in r.messages] for r in result.records]
    assert convs == [["Q", "A1"], ["Q", "A2", "Q3", "A3"]]
    assert [r.origin.item for r in result.records] == [1, 2]
    assert result.counts == {"deleted message": 1, "empty response": 1}
    assert {r.field for r in result.rejected} == {"prompt.replies[2]", "prompt.replies[3].text"}


def test_oasst_shared_file_covers_every_assistant_message(shared_data: Path) -> None:
    """Checked independently of the flattening code: every (non-deleted) assistant message of every
    tree is trained in some conversation, each conversation is a real root-to-node path, and none is a
    prefix of another."""
    path = shared_data / "oasst" / "en_100_tree.jsonl"
    trees = [json.loads(line) for line in path.read_text().splitlines()]
    result = read_records([path])
    assert not result.rejected and result.by_format == {"oasst": len(result.records)}

    def assistant_texts(n: dict) -> set[str]:
        own = {n["text"]} if n["role"] == "assistant" else set()
        return own.union(*(assistant_texts(c) for c in n["replies"]))

    def is_path(n: dict, texts: list[str]) -> bool:
        return n["text"] == texts[0] and (len(texts) == 1 or any(is_path(c, texts[1:]) for c in n["replies"]))

    for line, tree in enumerate(trees, start=1):
        convs = [[m.content for m in r.messages] for r in result.records if r.origin.line == line]
        assert convs, f"tree on line {line} gave no conversation"
        trained = {text for conv in convs for text in conv[1::2]}
        assert trained == assistant_texts(tree["prompt"])
        assert all(is_path(tree["prompt"], conv) for conv in convs)
        assert not any(a != b and b[: len(a)] == a for a in convs for b in convs)
    assert all(r.messages[-1].role == "assistant" for r in result.records)


# --------------------------------------------------------------------------------------------------
# Prompts and corpora


def test_read_prompts_forms(tmp_path: Path, shared_data: Path) -> None:
    path = write(
        tmp_path / "p.jsonl",
        jsonl(
            "plain string",
            {"prompt": "p"},
            {"instruction": "Add.", "input": "1, 2"},
            {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "reference"}]},
        ),
    )
    prompts = read_prompts(path)
    assert [[(m.role, m.content) for m in p] for p in prompts] == [
        [("user", "plain string")],
        [("user", "p")],
        [("user", "Add.\n\n1, 2")],
        [("user", "u")],
    ]
    lottery = read_prompts(shared_data / "oasst" / "prompt_lottery_en_250_text.jsonl")
    assert len(lottery) == len((shared_data / "oasst" / "prompt_lottery_en_250_text.jsonl").read_text().split("\n")) - 1
    user_oriented = shared_data / "self_instruct" / "user_oriented_instructions.jsonl"
    n_instances = sum(len(json.loads(line)["instances"]) for line in user_oriented.read_text().splitlines())
    assert len(read_prompts(user_oriented)) == n_instances
    with pytest.raises(UserError, match=r"b\.jsonl:1"):
        read_prompts(write(tmp_path / "b.jsonl", jsonl({"messages": [{"role": "assistant", "content": "x"}]})))


def test_read_texts(tmp_path: Path, shared_data: Path) -> None:
    docs = read_texts(shared_data / "wikitext-2" / "valid.txt")
    raw = (shared_data / "wikitext-2" / "valid.txt").read_text()
    assert len(docs) == len([b for b in raw.replace(" \n", "\n").split("\n\n") if b.strip()])
    assert read_texts(write(tmp_path / "t.jsonl", jsonl({"text": "a"}, {"text": "b"}))) == ["a", "b"]
    with pytest.raises(UserError, match="needs `text` records"):
        read_texts(write(tmp_path / "x.jsonl", jsonl(ALPACA)))
