"""``sftlab models list``: the built-in real models, and whether each is installed and converted here."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from sftlab.models.builtin import BUILTINS, builtin_file, cached_conversion


def print_models(console: Console | None = None) -> None:
    """One row per built-in model: kind, package, installed path (or the install command), cached dir."""
    console = console or Console()
    table = Table(title="built-in models (use the name wherever a model path is accepted)")
    for column in ("name", "kind", "installed", "converted", "what it is"):
        table.add_column(column, overflow="fold")
    for name, model in BUILTINS.items():
        path = builtin_file(name)
        installed = f"yes: {path}" if path else f"no: {model.install_command}"
        if model.kind != "causal-lm":
            converted = "not needed"
        elif path is None:
            converted = "-"
        else:
            cached = cached_conversion(name)
            converted = f"yes: {cached}" if cached else "no (converted on first use, ~40 s)"
        table.add_row(name, model.kind, installed, converted, model.description)
    console.print(table)
