"""`sftlab data check` as a user meets it: rejected lines printed linter-style, output under runs/."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from sftlab.cli import main


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"instruction": "Name a colour.", "output": "Blue."}


def test_rejected_records_are_listed_as_a_linter_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = [{"instruction": 3, "output": "x"}, {"instruction": "a", "output": ""}, "not json"] * 3  # 9 bad lines
    _write(tmp_path / "02_wrong_type.jsonl", [GOOD, GOOD, GOOD, *bad])
    _write(tmp_path / "eval.jsonl", [GOOD, {"instruction": "q", "output": ["a list"]}])
    assert main(["data", "check", "02_wrong_type.jsonl", "--eval-file", "eval.jsonl"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]  # (the spinner leaves a blank)
    assert lines[:5] == [
        "02_wrong_type.jsonl:4: field 'instruction' must be a string, got int",
        "02_wrong_type.jsonl:5: field 'output' is empty or whitespace-only",
        "02_wrong_type.jsonl:6: not valid JSON: Expecting value (column 1)",
        "02_wrong_type.jsonl:7: field 'instruction' must be a string, got int",
        "02_wrong_type.jsonl:8: field 'output' is empty or whitespace-only",
    ]
    # Nine bad training lines and one bad eval line: five shown, the other five counted, both files named.
    out = Path("runs") / "data_check" / "02_wrong_type"
    assert lines[5] == (f"5 more rejected; every rejected record, with its raw text, is in "
                        f"{out / 'quarantine.jsonl'} and {out / 'eval_quarantine.jsonl'}")
    assert not any(line.startswith("02_wrong_type.jsonl:9") for line in lines)
    quarantined = [json.loads(x) for x in (tmp_path / out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantined] == list(range(4, 13))


def test_a_read_only_data_dir_is_left_as_it_was(tmp_path, monkeypatch):
    data = tmp_path / "mounted"
    data.mkdir()
    _write(data / "train.jsonl", [GOOD, {"instruction": 1, "output": "x"}])
    data.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)  # r-x: a mounted data set
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    try:
        assert main(["data", "check", str(data / "train.jsonl")]) == 0
        # (root may write into an r-x dir, so the check is also that nothing was written there)
        assert sorted(p.name for p in data.iterdir()) == ["train.jsonl"]
    finally:
        data.chmod(0o755)
    report = json.loads((work / "runs" / "data_check" / "train" / "report.json").read_text())
    assert report["rejected"] == 1 and report["quarantine"] == str(Path("runs/data_check/train/quarantine.jsonl"))
    # --out still decides, when given.
    assert main(["data", "check", str(data / "train.jsonl"), "--out", str(tmp_path / "mine")]) == 0
    assert (tmp_path / "mine" / "report.json").is_file()
