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
) -> list[str]:
    """Top-level keys whose value differs between a run dir's saved ``config.yaml`` and ``current``.

    ``normalize`` resolves the saved config as the current version would (keys added since it was
    written take their defaults), so a run dir from before a new config key is not taken for another run.
    """
    import yaml

    if not saved_yaml.is_file():
        return []
    saved = yaml.safe_load(saved_yaml.read_text()) or {}
    if normalize is not None:
        saved = normalize(saved)
    keys = (set(saved) | set(current)) - ignore
    return sorted(k for k in keys if saved.get(k) != current.get(k))


def check_resume_config(
    run_dir: Path,
    current: dict[str, Any],
    checkpoint: str,
    ignore: set[str],
    normalize: ConfigNormalizer | None = None,
) -> None:
    """Refuse to resume ``checkpoint`` under a config that changes what the run trains."""
    changed = config_changes(run_dir / "config.yaml", current, ignore, normalize)
    if changed:
        raise UserError(
            f"{run_dir} holds checkpoints of a run with a different config (changed: {', '.join(changed)}), "
            f"so resuming from {checkpoint} would mix two runs. Use a new output_dir, set resume: never to "
            "start over in this one, or restore the old values."
        )
