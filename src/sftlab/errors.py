"""Errors that are the user's to fix.

The CLI turns a :class:`UserError` into a one-paragraph message and exit code 2, with no traceback
(``--debug`` shows it). Anything else that escapes is a bug in sftlab.
"""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input: a config, a path, a data file or a model dir that the user can fix."""


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise a UserError that says what was expected there."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} is a directory, expected a file: {p}")
    return p
