"""``dipc presets``: the preset table."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import presets
from .errors import user_errors


@user_errors
def list_presets(
    as_json: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
) -> None:
    """List the presets: every experiment of the paper's notebooks, with its network and settings."""
    import json

    from rich.console import Console
    from rich.table import Table

    rows = presets.rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="dip-compile presets (dipc fit TASK IMAGE --preset NAME)")
    for column in rows[0]:
        table.add_column(
            column.replace("_", "-"), justify="right" if column in ("parameters", "iterations") else "left"
        )
    for row in rows:
        table.add_row(
            *(f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values())
        )
    Console(width=200).print(table)
