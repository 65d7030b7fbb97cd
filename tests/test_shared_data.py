"""Finding the shared data sets from a checkout, from a clone made elsewhere, or through the env var."""

from __future__ import annotations

import subprocess

import pytest

from sftlab.data.shared import ENV_VAR, locate_shared_data
from sftlab.errors import UserError


def test_env_var_then_beside_the_repo_then_beside_the_clone_source(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    source = tmp_path / "work" / "repo"
    source.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "commit", "-q", "--allow-empty", "-m", "x"], check=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"})
    clone = tmp_path / "elsewhere" / "clone"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    with pytest.raises(UserError, match=f"shared data not found.*set {ENV_VAR}"):
        locate_shared_data(clone)
    beside_source = tmp_path / "work" / "shared" / "data"
    beside_source.mkdir(parents=True)
    assert locate_shared_data(clone) == beside_source
    beside_clone = tmp_path / "elsewhere" / "shared" / "data"
    beside_clone.mkdir(parents=True)
    assert locate_shared_data(clone) == beside_clone
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert locate_shared_data(clone) == tmp_path
