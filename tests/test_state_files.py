"""Every file a later step reads is written atomically, and a missing or torn one is "unknown", never "unchanged".

One test per state file: a writer killed mid-write (a real SIGKILL for :func:`write_atomic` itself, a fault
injected at the write for the others), or a torn file left by an older version, then the rerun: it gives a
clear message or the same result.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import sftlab.io
from sftlab.config import TrainConfig, dump_config
from sftlab.errors import UserError
from sftlab.io import check_inside, remove_tree, write_atomic
from sftlab.recipes.train import RESUME_SAFE, finished_output, resolve_saved_config
from sftlab.train.resume import check_resume_config
from sftlab.train.run_dir import save_final


class Crash(BaseException):
    """What a kill looks like to the code that was writing: it stops, whatever it was doing."""


def _crash_at_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next write_atomic die after writing its bytes, before they are renamed into place."""

    def die(fd: int) -> None:
        raise Crash()

    monkeypatch.setattr(sftlab.io.os, "fsync", die)


WRITER = """
import sys
from sftlab.io import write_atomic
write_atomic(sys.argv[1], b"new " * (24 * 2**20))
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text('{"old": true}')
    env = {**os.environ, "PYTHONPATH": str(Path(sftlab.io.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env)
    try:
        deadline = time.time() + 60
        # Kill while the 96 MB are being written: the temporary file exists and is not complete yet.
        while not any(p.stat().st_size > 0 for p in tmp_path.glob(".state.json.*.tmp")):
            assert proc.poll() is None, "the writer finished before it could be killed"
            assert time.time() < deadline
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == '{"old": true}'  # never half of the new file
    write_atomic(target, '{"new": true}')  # the rerun replaces it; the killed writer's leftover is ignored
    assert json.loads(target.read_text()) == {"new": True}


def _run_dir(tmp_path: Path) -> tuple[Path, TrainConfig]:
    run = tmp_path / "run"
    cfg = TrainConfig(model_name_or_path="m", train_file="t.jsonl", output_dir=str(run))
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    (run / "summary.json").write_text("{}")
    dump_config(cfg, run / "config.yaml")
    return run, cfg


def test_config_yaml_crash_while_dumping_keeps_the_previous_config(tmp_path: Path, monkeypatch) -> None:
    run, cfg = _run_dir(tmp_path)
    before = (run / "config.yaml").read_text()
    _crash_at_fsync(monkeypatch)
    with pytest.raises(Crash):
        dump_config(cfg.model_copy(update={"learning_rate": 0.5}), run / "config.yaml")
    assert (run / "config.yaml").read_text() == before


@pytest.mark.parametrize("damage", ["torn", "missing", "not a mapping"])
def test_config_yaml_missing_or_torn_is_unknown_never_unchanged(tmp_path: Path, damage: str) -> None:
    run, cfg = _run_dir(tmp_path)
    current = cfg.model_dump(mode="json", by_alias=True)
    assert finished_output(cfg) == run / "model"  # whole: finished, and a resume would be allowed
    check_resume_config(run, current, "ckpt", RESUME_SAFE, resolve_saved_config)
    saved = run / "config.yaml"
    if damage == "torn":
        # Cut inside a quoted value (a prefix cut at a line end can still parse: then the keys it lost read
        # as changed or as their defaults, see docs/reliability.md).
        saved.write_text(saved.read_text()[: len(saved.read_text()) // 2] + '\noutput_dir: "/runs/sft')
    elif damage == "missing":
        saved.unlink()
    else:
        saved.write_text("just a string\n")
    assert finished_output(cfg) is None  # not taken for a finished run
    with pytest.raises(UserError, match="cannot tell whether they were trained under this config") as err:
        check_resume_config(run, current, "ckpt", RESUME_SAFE, resolve_saved_config)
    assert "resume: never" in str(err.value)


def test_a_torn_config_yaml_stops_sftlab_train_before_it_resumes(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    from sftlab.cli import main

    run = tmp_path / "run"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (run / "config.yaml").write_text("model_name_or_path: [")  # torn by a crash of an older version
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    argv = ["train", f"model_name_or_path={tiny_model_dir}", f"train_file={data}", f"output_dir={run}"]
    config = tmp_path / "train.yaml"
    config.write_text("max_steps: 2\n")
    assert main([argv[0], str(config), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is unreadable" in err and "resume: never" in err and "Traceback" not in err
    assert (run / "config.yaml").read_text() == "model_name_or_path: ["  # nothing overwritten before the check


class _FakeAccelerator:
    state = SimpleNamespace()

    def wait_for_everyone(self) -> None:
        pass


class _FakeTrainer:
    """What save_final asks of a Trainer: should_save, an accelerator, and save_model writing a model dir."""

    def __init__(self, weights: bytes) -> None:
        self.args = SimpleNamespace(should_save=True)
        self.accelerator = _FakeAccelerator()
        self.weights = weights

    def save_model(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(self.weights)
        (Path(path) / "config.json").write_text("{}")


def test_save_final_crash_between_renames_leaves_a_model(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "run" / "model"
    save_final(_FakeTrainer(b"old"), out)
    renames: list[tuple[str, str]] = []
    real_rename = os.rename

    def rename_then_die(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        if Path(src).name == ".model.partial":
            raise Crash()  # killed after the old model moved aside, before the new one moved in
        real_rename(src, dst)

    monkeypatch.setattr("sftlab.io.os.rename", rename_then_die)
    with pytest.raises(Crash):
        save_final(_FakeTrainer(b"new"), out)
    monkeypatch.undo()
    assert renames[0] == ("model", ".model.old")
    whole = [p for p in (out, out.parent / ".model.old") if (p / "model.safetensors").is_file()]
    assert [p.read_bytes() for p in (w / "model.safetensors" for w in whole)] == [b"old"]
    # The rerun's save puts things right: the new model in place, nothing left aside.
    save_final(_FakeTrainer(b"new"), out)
    assert (out / "model.safetensors").read_bytes() == b"new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model"]


def test_summary_json_is_written_atomically(tmp_path: Path, monkeypatch) -> None:
    from sftlab.recipes.train import write_summary

    trainer = SimpleNamespace(state=SimpleNamespace(log_history=[{"loss": 1.0}], global_step=3),
                              args=SimpleNamespace(bf16=False, fp16=False), weight_dither=None,
                              model=__import__("torch").nn.Linear(2, 2), regularizer_state_bytes=0)
    session = SimpleNamespace(trainer=trainer, cfg=SimpleNamespace(method="full"),
                              data=SimpleNamespace(records_per_file=None))
    path = tmp_path / "summary.json"
    path.write_text('{"global_step": 1}')
    _crash_at_fsync(monkeypatch)
    with pytest.raises(Crash):
        write_summary(path, session, 1.0)
    assert json.loads(path.read_text()) == {"global_step": 1}
    monkeypatch.undo()
    assert write_summary(path, session, 1.0)["global_step"] == json.loads(path.read_text())["global_step"] == 3


def test_audit_report_files_are_written_atomically(tmp_path: Path, monkeypatch) -> None:
    from sftlab.audit.report.json_report import write_json

    path = tmp_path / "report.json"
    write_json({"sections": {"a": 1}}, path)
    _crash_at_fsync(monkeypatch)
    with pytest.raises(Crash):
        write_json({"sections": {"a": 2}}, path)
    assert json.loads(path.read_text()) == {"sections": {"a": 1}}


def test_a_torn_report_json_is_a_clear_message_for_the_sweep_and_the_demo(tmp_path: Path) -> None:
    from sftlab.recipes.demo_real import side_by_side

    report = tmp_path / "sweep" / "runs" / "full" / "seed0" / "audit" / "report.json"
    report.parent.mkdir(parents=True)
    report.write_text('{"sections": {"scene_style": {"prom')  # an older version killed while writing it
    with pytest.raises(UserError, match=r"report\.json is unreadable .* Delete it"):
        side_by_side(tmp_path / "sweep", tmp_path / "out")


def test_a_torn_world_json_is_a_clear_message_or_a_fresh_world(tmp_path: Path, monkeypatch) -> None:
    from rich.console import Console

    from sftlab.recipes import demo
    from sftlab.audit.measures.world import world_section

    world = tmp_path / "world"
    world.mkdir()
    (world / "world.json").write_text('{"seed": 0, "siz')
    with pytest.raises(UserError, match="world's manifest .*world.json is unreadable"):
        world_section(world)
    made = []
    monkeypatch.setattr(demo, "generate_world", lambda root, seed, sizes: made.append(root))
    demo.ensure_world(world, 0, demo.WorldSizes(), Console(quiet=True))
    assert made == [world]  # the demo makes the world again rather than trusting half a manifest


def test_world_json_marks_a_whole_world_only(tmp_path: Path, monkeypatch) -> None:
    from sftlab.world.generator import WorldSizes, generate_world

    sizes = WorldSizes(corpus_docs=20, heldout_per_genre=2, known_people=10, new_people=4, sft_train=4, sft_eval=2)
    generate_world(tmp_path, seed=0, sizes=sizes)
    whole = json.loads((tmp_path / "world.json").read_text())
    _crash_at_fsync(monkeypatch)  # the world's files are rewritten for seed 1, then the manifest's write dies
    with pytest.raises(Crash):
        generate_world(tmp_path, seed=1, sizes=sizes)
    # Neither half a manifest nor the seed-0 one vouching for seed-1 files: no manifest, so no world.
    assert not (tmp_path / "world.json").exists() and not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    generate_world(tmp_path, seed=0, sizes=sizes)  # the rerun gives the same world as before
    assert json.loads((tmp_path / "world.json").read_text()) == whole


def test_sweep_row_and_settings_torn_rows_are_redone(tmp_path: Path) -> None:
    from sftlab.recipes.sweep import ROW_FILE, SETTINGS_FILE, finished_row, load_sweep, plan, resolve_base, run_settings

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base_model": "base", "out": str(tmp_path / "sweep"),
                                    "train": {"train_file": "t.jsonl"}, "strategies": [{"name": "full"}],
                                    "audit": {"prompts": "p.jsonl"}}))
    cfg, base = resolve_base(load_sweep(str(path)))
    spec = plan(cfg)[0]
    spec.run_dir.mkdir(parents=True)
    write_atomic(spec.run_dir / SETTINGS_FILE, run_settings(cfg, spec, base))
    (spec.run_dir / ROW_FILE).write_text('{"strategy": "fu')  # torn by an older version
    assert finished_row(cfg, spec, base) is None  # not finished: the run is done again (its training resumes)


def test_remove_tree_refuses_paths_outside_their_owner(tmp_path: Path) -> None:
    owner = tmp_path / "sweep" / "runs"
    (owner / "a").mkdir(parents=True)
    outside = tmp_path / "precious"
    outside.mkdir()
    for bad in (owner / "..", owner / ".." / "..", owner, outside, owner / "a" / ".." / ".." / "x"):
        with pytest.raises(UserError, match="not inside"):
            check_inside(bad, owner)
    (owner / "link").symlink_to(outside)
    remove_tree(owner / "link", owner)  # the link goes, not what it points at
    assert outside.is_dir() and not (owner / "link").exists()
    remove_tree(owner / "a", owner)
    assert not (owner / "a").exists()
    with pytest.raises(UserError, match="not inside"):
        remove_tree(outside, owner)
    assert outside.is_dir()
