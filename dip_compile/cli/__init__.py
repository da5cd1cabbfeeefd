"""The ``dipc`` command line: one module per command, each parsing, validating and calling the library; the options
are read from the fields that hold their values (``options``). Errors are one line on stderr, exit 2."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import DipError
from . import batch, export, fit, presets, regenerate, ui
from .options import parse_fit_args as parse_fit_args  # (dipc fit's parser, for scripts: its home before cli/)
from .options import usage_exception

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deep Image Prior restoration: fit, export and regenerate.",
)


@app.callback()
def root() -> None:
    """Deep Image Prior restoration: fit an image, export the fitted network, regenerate its image anywhere."""


app.command()(fit.fit)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(batch.batch)
app.command("presets")(presets.list_presets)
app.command()(export.export)
app.command()(regenerate.regenerate)
app.command()(ui.ui)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: usage errors too become one line on stderr with exit code 2."""
    usage_problem = usage_exception()

    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args or ["--help"], prog_name="dipc", standalone_mode=False)
    except usage_problem as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"dipc: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except DipError as exc:
        print(f"dipc: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
