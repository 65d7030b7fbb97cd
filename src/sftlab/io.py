"""Files that a later step reads: written whole or not at all, and deleted only where sftlab owns them.

A file written in place and cut short by a kill (or a full disk) is a torn file that a resume, a sweep or a
report then trusts. :func:`write_atomic` writes a temporary file beside the target, flushes it to disk and
renames it over the target, so a reader sees the old file or the new one, never half of one; :func:`replace_dir`
does the same for a directory built beside its target. :func:`remove_tree` refuses to delete a directory that does not lie under the directory it belongs to, so a
path built from a user's string (a strategy name, an ``out`` dir) cannot make sftlab delete something else.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sftlab.errors import UserError


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` through a fsynced temporary file and ``os.replace``.

    The temporary file lives in the same directory, so the rename never crosses a filesystem. A kill at any
    point leaves the previous file (or none), plus at worst a hidden ``.NAME.*.tmp`` leftover that no reader opens.
    """
    target = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; a state file should be as readable as any other file the user writes.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


@functools.cache
def _umask() -> int:
    """The process's umask (read once: reading it means setting it, which is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, payload: Any, **dumps_kwargs: Any) -> Path:
    """:func:`write_atomic` of ``json.dumps(payload, **dumps_kwargs)``."""
    return write_atomic(path, json.dumps(payload, **dumps_kwargs))


def fsync_tree(path: str | Path) -> None:
    """Flush every file under ``path`` to disk, so that a rename never publishes data still in the page cache."""
    for file in Path(path).rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def read_json_state(path: str | Path, what: str) -> Any:
    """Read a JSON state file that sftlab wrote, or raise a UserError saying it is missing or unreadable."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {p}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{what} {p} is unreadable ({exc}); it was probably cut short by a crash. "
                        "Delete it (or its directory) and rerun to make it again") from None


def staging_dir(target: str | Path) -> Path:
    """Where a directory meant for ``target`` is built before :func:`replace_dir` moves it in: a hidden
    sibling, emptied of anything a killed build left there."""
    target = Path(target)
    staged = target.parent / f".{target.name}.partial"
    remove_tree(staged, target.parent, ignore_errors=True)
    return staged


def replace_dir(staged: str | Path, target: str | Path) -> Path:
    """Move the finished directory ``staged`` to ``target``, replacing what is there, so that a crash at any
    point leaves a whole directory: the old one is renamed aside (``.<name>.old``) before the new one moves
    in, and deleted only after. A crash between the two renames leaves the old one aside, which the next
    call puts back before it starts (the caller then rebuilds ``staged``)."""
    staged, target = Path(staged), Path(target)
    owner = target.parent
    old = owner / f".{target.name}.old"
    restore_aside(target)
    remove_tree(old, owner, ignore_errors=True)
    fsync_tree(staged)
    if target.exists():
        os.rename(target, old)
    os.rename(staged, target)
    fsync_dir(owner)
    remove_tree(old, owner)
    return target


def restore_aside(target: str | Path) -> None:
    """Put back the old ``target`` that a :func:`replace_dir` killed between its two renames left aside."""
    target = Path(target)
    old = target.parent / f".{target.name}.old"
    if old.is_dir() and not target.exists():
        os.rename(old, target)


def check_inside(path: str | Path, owner: str | Path) -> Path:
    """``path`` resolved, after checking that it lies strictly under ``owner``; a UserError otherwise."""
    # The last component is not followed: a symlink inside ``owner`` is judged by where it lies, not where it points.
    absolute = Path(os.path.abspath(path))
    resolved, root = absolute.parent.resolve() / absolute.name, Path(owner).resolve()
    if resolved == root or root not in resolved.parents:
        raise UserError(f"refusing to touch {path}: it is not inside {owner}, the directory sftlab owns here")
    return resolved


def remove_tree(path: str | Path, owner: str | Path, *, missing_ok: bool = True, ignore_errors: bool = False) -> None:
    """``shutil.rmtree(path)``, after :func:`check_inside` proves it lies under ``owner`` (a path outside it is
    a UserError, whatever ``ignore_errors`` says: that flag only covers failures of the deletion itself)."""
    target = Path(path)
    if missing_ok and not target.exists() and not target.is_symlink():
        return
    check_inside(target, owner)
    if target.is_symlink():
        target.unlink()  # a link is removed, never the tree it points at
        return
    shutil.rmtree(target, ignore_errors=ignore_errors)
