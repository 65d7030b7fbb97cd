"""The bad-input corpus (tests/bad_inputs/cases.txt): every malformed config, command line and model dir gets
its documented exit code and a message that names the fix, never a traceback.

Each case runs in this process through ``sftlab.cli.main(argv)`` (a subprocess per case would cost an
interpreter start each); the model dirs are tiny ones made here, and no case trains or samples.
"""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sftlab.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"


@dataclass(frozen=True)
class Case:
    """One line of cases.txt."""

    id: str
    argv: str
    needs: list[str]
    exit: int
    words: list[str]


def read_cases(path: Path = CORPUS / "cases.txt") -> list[Case]:
    """The manifest's cases, in file order; a malformed line fails loudly with its line number."""
    cases = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(" | ")]
        assert len(fields) == 5, f"cases.txt:{line_no}: expected 5 fields separated by ' | ', got {len(fields)}"
        case_id, argv, needs, code, words = fields
        cases.append(Case(case_id, argv, [] if needs == "-" else needs.split(","), int(code),
                          [w.strip() for w in words.split(";") if w.strip()]))
    return cases


def _adapter(path: Path, weights: str, **config: object) -> None:
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    # Placeholder bytes: every case must stop before the weights are read.
    (path / weights).write_bytes(b"never read")


def _pickled_model(path: Path, tiny: Path) -> None:
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tiny / name).is_file():
            shutil.copy(tiny / name, path / name)
    (path / "pytorch_model.bin").write_bytes(b"never unpickled")


def _torn_resume_run(path: Path, tiny: Path) -> None:
    (path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (path / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (path / "config.yaml").write_text("model_name_or_path: [")  # cut short by a crash


def _pickled_checkpoint(path: Path, tiny: Path) -> None:
    path.mkdir()
    (path / "trainer_state.json").write_text("{}")
    (path / "pytorch_model.bin").write_bytes(b"never unpickled")


def _stale_sweep_run(path: Path, tiny: Path) -> None:
    run = path / "runs" / "full" / "seed0"
    run.mkdir(parents=True)
    (run / "settings.sha").write_text("0123456789abcdef")  # made under other settings


BUILDERS: dict[str, Callable[[Path, Path], None]] = {
    "empty_dir": lambda p, tiny: p.mkdir(),
    "nonempty_dir": lambda p, tiny: (p.mkdir(), (p / "keep.txt").write_text("mine")),
    "not_a_model": lambda p, tiny: (p.mkdir(), (p / "config.json").write_text("{torn")),
    "pickled_model": _pickled_model,
    "lora_adapter": lambda p, tiny: _adapter(p, "adapter_model.safetensors", base_model_name_or_path=str(tiny)),
    "pickled_adapter": lambda p, tiny: _adapter(p, "adapter_model.bin", base_model_name_or_path=str(tiny)),
    "prompt_adapter": lambda p, tiny: _adapter(p, "adapter_model.safetensors", peft_type="PROMPT_TUNING",
                                               base_model_name_or_path=str(tiny)),
    "adapter_no_base": lambda p, tiny: _adapter(p, "adapter_model.safetensors"),
    "adapter_missing_base": lambda p, tiny: _adapter(p, "adapter_model.safetensors",
                                                     base_model_name_or_path=str(p.parent / "gone_base")),
    "adapter_torn_config": lambda p, tiny: (p.mkdir(), (p / "adapter_config.json").write_text('{"peft_type": "LO')),
    "torn_resume_run": _torn_resume_run,
    "pickled_checkpoint": _pickled_checkpoint,
    "stale_sweep_run": _stale_sweep_run,
}

CASES = read_cases()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer GPT-2 with a 300-token tokenizer trained on a few lines: made in a second, and no case
    gets far enough to use its weights."""
    from conftest import make_tiny_model_dir

    from sftlab.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(["Say hi. hi. Say bye. bye. Tell me a story."] * 20, vocab_size=300)
    return make_tiny_model_dir(tmp_path_factory.mktemp("corpus_model"), tokenizer, n_layer=1, n_embd=16, n_head=2)


def test_the_corpus_is_big_and_covers_every_command() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
    commands = {shlex.split(c.argv)[0] for c in CASES} | {" ".join(shlex.split(c.argv)[:2]) for c in CASES}
    assert {"train", "audit", "sweep", "demo", "data distill", "interpolate", "merge"} <= commands
    for case in CASES:
        for need in case.needs:
            assert need.removeprefix("@") in BUILDERS if need.startswith("@") else (CORPUS / "files" / need).is_file(), \
                f"{case.id}: unknown need {need}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fill = {"{d}": str(tmp_path), "{tiny}": str(tiny_model_dir)}
    for need in case.needs:
        if need.startswith("@"):
            BUILDERS[need[1:]](tmp_path / need[1:], tiny_model_dir)
            continue
        text = (CORPUS / "files" / need).read_bytes()
        for key, value in fill.items():
            text = text.replace(key.encode(), value.encode())
        (tmp_path / need).write_bytes(text)
    argv = shlex.split(case.argv)
    argv = [_fill(a, fill) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    out = capsys.readouterr()
    message = out.err + out.out
    assert "Traceback" not in message
    assert code == case.exit, f"{case.id}: exit {code}, expected {case.exit}; said:\n{message}"
    missing = [w for w in (_fill(w, fill) for w in case.words) if w not in message]
    assert not missing, f"{case.id}: the message lacks {missing}; said:\n{message}"


def _fill(text: str, fill: dict[str, str]) -> str:
    for key, value in fill.items():
        text = text.replace(key, value)
    return text
