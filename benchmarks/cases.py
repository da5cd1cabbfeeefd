"""The loop the case benchmarks share: every (image, spec) pair, a table row as each finishes, JSON kept current;
and their common command line (data, output folder, images, size, iterations, threads, --table)."""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
Row = dict[str, Any]


def grid_parser(doc: str, out: str, size: int, iterations: int) -> argparse.ArgumentParser:
    """The options every case benchmark takes; each adds its own specs (kernels, noises) and settings."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / out)
    parser.add_argument("--images", nargs="+", default=["F16_GT.png", "kate.png"])
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="print the table of saved runs and exit")
    return parser


def grid_main(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    specs: str,
    run_one: Callable[[argparse.Namespace, str, str], Row],
    table: Callable[[list[Row]], str],
    json_name: str,
) -> int:
    """Parses, then prints the table of saved runs (``--table``) or runs every image with every spec of the
    option ``specs``."""
    args = parser.parse_args(argv)
    if args.table:
        print(table([r for path in args.table for r in json.loads(path.read_text())["cases"]]))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    run_grid(
        args.images, getattr(args, specs), lambda image, spec: run_one(args, image, spec), table, args.out, json_name
    )
    return 0


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
