"""The loop the case benchmarks share: every (image, spec) pair, a table row as each finishes, JSON kept current."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Row = dict[str, Any]


def run_grid(
    images: list[str],
    specs: list[str],
    run_one: Callable[[str, str], Row],
    table: Callable[[list[Row]], str],
    out: Path,
    json_name: str,
) -> list[Row]:
    """Runs ``run_one(image, spec)`` for each pair, printing its row and rewriting ``out/json_name`` after each, so
    an interrupted run keeps what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for image in images:
        for spec in specs:
            print(f"{image} {spec} ...", flush=True)
            rows.append(run_one(image, spec))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            result = {"machine": platform.platform(), "torch": torch.__version__, "cases": rows}
            (out / json_name).write_text(json.dumps(result, indent=2))
    print(table(rows))
    return rows
