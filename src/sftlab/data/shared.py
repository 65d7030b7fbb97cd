"""Where the shared public data sets live for sftlab's own tests, benchmarks and examples.

They are not shipped in the repository; a checkout expects them in ``../shared/data`` (one folder per data
set, each with a SOURCE.md giving source and license). A clone made elsewhere (``git clone repo /tmp/x``)
finds them beside the repository it was cloned from, and ``SFTLAB_SHARED_DATA`` overrides both.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sftlab.errors import UserError

ENV_VAR = "SFTLAB_SHARED_DATA"


def candidate_dirs(repo: Path) -> list[Path]:
    """Where to look, in order: ``$SFTLAB_SHARED_DATA``, ``repo/../shared/data``, and the same beside the
    local repository ``repo`` was cloned from (its ``origin`` remote, when that is a directory)."""
    candidates = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    candidates.append(repo.parent / "shared" / "data")
    try:
        origin = subprocess.run(["git", "-C", str(repo), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:  # no git on this machine
        origin = ""
    if origin and Path(origin).is_dir():
        candidates.append(Path(origin).resolve().parent / "shared" / "data")
    return candidates


def locate_shared_data(repo: Path) -> Path:
    """The first of :func:`candidate_dirs` that exists; a UserError naming every place tried otherwise."""
    candidates = candidate_dirs(repo)
    for path in candidates:
        if path.is_dir():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise UserError(f"shared data not found (tried {tried}); put it in ../shared/data beside the repository "
                    f"or set {ENV_VAR} to its folder")
