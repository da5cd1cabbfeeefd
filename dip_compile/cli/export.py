"""``dipc export``: fitted networks to ONNX, pt2 or TorchScript; its choices are ``ExportOptions``' fields."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from ..export_options import ExportOptions, Weights
from .errors import user_errors
from .options import declared, signed

FILES = [
    inspect.Parameter(
        "checkpoints",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[list[Path], typer.Argument(help="checkpoint(s) written by dipc fit --checkpoint")],
    ),
    inspect.Parameter(
        "output",
        inspect.Parameter.KEYWORD_ONLY,
        annotation=Annotated[
            str,
            typer.Option("-o", "--output", metavar="<path>", help="output file (a folder for several checkpoints)"),
        ],
    ),
]


@user_errors
@signed([*FILES, *declared(ExportOptions)])
def export(**params: Any) -> None:
    """Export a fitted network with its fixed noise: ONNX (runs with an empty feed), pt2 and/or TorchScript."""
    from .. import exporters

    options = ExportOptions(**{f.name: params[f.name] for f in dataclasses.fields(ExportOptions)})
    written = exporters.export_checkpoints(params["checkpoints"], params["output"], options)
    failed, noted = False, set()
    for w in written:
        mib = 1024 * 1024
        typer.echo(
            f"{w.checkpoint} -> {w.path} ({w.format}, {w.bytes / mib:.2f} MiB: weights "
            f"{w.weight_bytes / mib:.2f} MiB fp32 + noise {w.noise_bytes / mib:.2f} MiB"
            + (f" + {w.metadata['image']} correction {w.correction_bytes / mib:.2f} MiB" if w.correction_bytes else "")
            + ")"
        )
        note = exporters.fit_image_note(w.metadata)
        if note and w.checkpoint not in noted:
            noted.add(w.checkpoint)
            typer.echo(f"  {note}")
        if w.check is not None:
            ok = exporters.passes(w.check)
            exact = options.weights == Weights.fp32
            failed |= exact and not ok
            verdict = ("OK" if ok else "MISMATCH") if exact else "fp16 weights: not held to the exactness target"
            typer.echo(f"  verify: {exporters.replay.check_line(w.check, verdict)}")
    if failed:
        raise typer.Exit(1)
