"""``sftlab models list``: the built-in real models, and whether each is installed and converted here."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from sftlab.models.builtin import BUILTINS, builtin_file, cached_conversion

# A pipe or a log file has no width of its own, and rich then assumes 80 columns and folds long cells. A
# script that greps a name needs it on one line, so off a terminal the table gets all the width it asks for.
UNBOUNDED_WIDTH = 10_000


def model_rows() -> list[dict[str, str | None]]:
    """One record per built-in model: name, kind, package, where it is installed and converted, or None."""
    rows: list[dict[str, str | None]] = []
    for name, model in BUILTINS.items():
        path = builtin_file(name)
        cached = cached_conversion(name) if model.kind == "causal-lm" and path is not None else None
        rows.append({
            "name": name, "kind": model.kind, "package": f"{model.package}=={model.version}",
            "installed": str(path) if path else None, "install_command": model.install_command,
            "converted": str(cached) if cached else None, "description": model.description})
    return rows


def _converted_cell(row: dict[str, str | None]) -> str:
    if row["kind"] != "causal-lm":
        return "not needed"
    if row["installed"] is None:
        return "-"
    return f"yes: {row['converted']}" if row["converted"] else "no (converted on first use, ~40 s)"


def print_models(console: Console | None = None, as_json: bool = False) -> None:
    """Print :func:`model_rows` as a table (names never folded) or, with ``as_json``, as a JSON list."""
    rows = model_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    console = console or Console()
    if not console.is_terminal:
        console = Console(width=UNBOUNDED_WIDTH, file=console.file)
    table = Table(title="built-in models (use the name wherever a model path is accepted)")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "installed", "converted", "what it is"):
        table.add_column(column, overflow="fold")
    for row in rows:
        installed = f"yes: {row['installed']}" if row["installed"] else f"no: {row['install_command']}"
        table.add_row(row["name"], row["kind"], installed, _converted_cell(row), row["description"])
    console.print(table)
