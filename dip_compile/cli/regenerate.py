"""``dipc regenerate``: the restored image from an exported ONNX model (the torch-free replay)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import DipError
from ..export_options import Provider
from .errors import fail, user_errors


@user_errors
def regenerate(
    model: Annotated[Path, typer.Argument(help="an ONNX file written by dipc export")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", metavar="<path>", help="PNG to write")] = None,
    provider: Annotated[Provider, typer.Option(help="onnxruntime provider; CUDA falls back to CPU")] = Provider.auto,
    check: Annotated[
        Optional[Path], typer.Option(help="compare with this PNG: max abs diff, identical 8-bit pixels")
    ] = None,
    noise: Annotated[
        Optional[Path], typer.Option(help="a .npy of other noise to feed instead of the shipped one")
    ] = None,
    info: Annotated[bool, typer.Option("--info", help="print the model's metadata as JSON")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
    allow_unsealed: Annotated[
        bool,
        typer.Option(
            "--allow-unsealed",
            help="run a model that has no integrity seal (older export, or edited and stripped of it): its weights "
            "may have been changed undetectably",
        ),
    ] = False,
) -> None:
    """Regenerate the restored image from an exported ONNX model (the same code as export/regenerate.py)."""

    from ..replay import regenerate as replay

    try:
        if info:
            text, code = replay.info(model)
            typer.echo(text)
            if code:
                raise typer.Exit(code)
            return
        if output is None and check is None:
            fail("nothing to do: give -o OUT.png and/or --check PNG")
        result = replay.regenerate(
            model,
            output,
            provider=provider.value,
            check=check,
            noise=noise,
            force=force,
            allow_unsealed=allow_unsealed,
        )
    except replay.ReplayError as exc:
        raise DipError(str(exc)) from None
    code = replay.report(result)
    if code:
        raise typer.Exit(code)
