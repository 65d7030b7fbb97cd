"""Resuming a run: which checkpoint to resume from, and refusing one whose config trained something else."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sftlab.errors import UserError
from sftlab.train.run_dir import last_complete_checkpoint


def resolve_resume(resume: str, checkpoints_dir: Path) -> str | None:
    """``auto``: the last complete checkpoint, if any; ``never``: none; otherwise a checkpoint dir path."""
    if resume == "auto":
        return last_complete_checkpoint(checkpoints_dir)
    if resume == "never":
        return None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError(
            f"resume: {resume} is not a checkpoint dir (no trainer_state.json inside); "
            "use auto, never, or a checkpoints/checkpoint-N dir"
        )
    return str(path)


ConfigNormalizer = Callable[[dict[str, Any]], dict[str, Any]]


def config_changes(
    saved_yaml: Path, current: dict[str, Any], ignore: set[str], normalize: ConfigNormalizer | None = None
) -> list[str] | None:
    """Top-level keys whose value differs between a run dir's saved ``config.yaml`` and ``current``; None when
    the saved config is missing or unreadable, which means "unknown", never "unchanged".

    ``normalize`` resolves the saved config as the current version would (keys added since it was
    written take their defaults), so a run dir from before a new config key is not taken for another run.
    """
    saved = read_saved_config(saved_yaml)
    if saved is None:
        return None
    if normalize is not None:
        saved = normalize(saved)
    keys = (set(saved) | set(current)) - ignore
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def read_saved_config(path: Path) -> dict[str, Any] | None:
    """A run dir's saved config as a mapping, or None when it is missing, torn or not a mapping."""
    import yaml

    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return saved if isinstance(saved, dict) else None


def check_resume_config(
    run_dir: Path,
    current: dict[str, Any],
    checkpoint: str,
    ignore: set[str],
    normalize: ConfigNormalizer | None = None,
) -> None:
    """Refuse to resume ``checkpoint`` under a config that changes what the run trains, or under a config
    that cannot be compared because the run's ``config.yaml`` is missing or unreadable."""
    saved = run_dir / "config.yaml"
    changed = config_changes(saved, current, ignore, normalize)
    if changed is None:
        state = "is missing" if not saved.exists() else "is unreadable (cut short by a crash, or edited)"
        raise UserError(
            f"{run_dir} holds checkpoints ({checkpoint}) but its {saved.name} {state}, so sftlab cannot tell "
            "whether they were trained under this config. Set resume: never to start over in this dir, use a new "
            "output_dir, or put back the config.yaml the run was started with."
        )
    if changed:
        raise UserError(
            f"{run_dir} holds checkpoints of a run with a different config (changed: {', '.join(changed)}), "
            f"so resuming from {checkpoint} would mix two runs. Use a new output_dir, set resume: never to "
            "start over in this one, or restore the old values."
        )
