"""The options of the commands, read from the declarations of the values they set (``config.option`` on the fields
of ``FitJob``, ``NetShape``, ``FitConfig``, ``NetConfig`` and ``ExportOptions``), and ``parse_fit_args``, which
turns ``dipc fit`` flags into the job (``dipc batch`` parses its jobs with it). No torch here: ``dipc --help`` and
the batch's reading of a manifest stay cheap."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import kernels, presets
from .. import noise as noise_models
from ..config import PANELS, FitConfig, NetConfig
from ..errors import DipError
from ..job import FitJob, NetShape, from_options

RESUMABLE = "may change on --resume"
HELP_LISTS = {  # the lists help texts name
    "kernels": kernels.SPECS,
    "noise": noise_models.SPECS,
    "presets": ", ".join(presets.NAMES),
    "fast_presets": ", ".join(p.name for p in presets.PRESETS if p.fast),
}


def parsed_type(hint: Any) -> Any:
    """What an option of a field with this type parses: the value type of an optional field, and text for a per-level
    tuple (one value, or comma-separated values, one per level)."""
    if typing.get_origin(hint) is tuple:
        return str
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def declared(cls: type, *, presets_default: bool = False) -> list[inspect.Parameter]:
    """The options (and arguments) of a class's declared fields, each named after its field, as typer reads them
    from a signature. ``presets_default``: the fields are settings, so an option not given is None (the preset's
    value; a command-line default in the field's metadata is shown by --help and applied by ``fit_job``, so that
    --resume tells it from a value given); otherwise an option's default is its field's.
    A switch that is off by default is a flag (--keep-known), one that is on by default, or that a preset or
    --paper-exact may turn on (``negatable``), can be turned off (--no-1x1-up, --no-align-corners)."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        flag = meta.get("flag", "")
        if not (meta.get("argument") or flag.startswith("--")):
            continue
        kind = meta["kind"] or parsed_type(hints[f.name])
        text = meta["help"].format(**HELP_LISTS) + (f"; {RESUMABLE}" if meta["resume"] else "")
        if meta["argument"]:
            info = typer.Argument(help=text, show_default=False)
            params.append(_parameter(f.name, Optional[kind], None, info))
            continue
        own = None if f.default is dataclasses.MISSING else f.default
        default, decls = (None if presets_default else own), meta["names"]
        if kind is bool and (f.default or meta.get("negatable")):
            kind, decls, default = Optional[bool], (f"{flag}/--no-{flag.removeprefix('--')}",), None
        elif kind is bool:
            default = False
        if default is None:
            kind = Optional[kind]
        panel = meta["panel"].capitalize() or None
        extra: dict[str, Any] = {"metavar": meta["metavar"]} if meta["metavar"] else {}
        if not meta["show_default"]:
            extra["show_default"] = False
        elif meta["cli_default"] is not None:  # applied by fit_job, so that --resume can tell it from a given value
            kept = "" if meta.get("machine") else "; a resumed fit keeps the saved one"
            text += f" (default: {meta['cli_default']}{kept})"
            extra["show_default"] = False
        info = typer.Option(*decls, help=text, rich_help_panel=panel, **extra)
        params.append(_parameter(f.name, kind, default, info))
    return params


def _parameter(name: str, kind: Any, default: Any, info: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def fit_parameters() -> list[inspect.Parameter]:
    """Every parameter of ``dipc fit``: the arguments, then the options panel by panel (in --help's order)."""

    def rank(param: inspect.Parameter) -> int:
        panel = typing.get_args(param.annotation)[1].rich_help_panel
        return -1 if panel is None else [p.capitalize() for p in PANELS].index(panel)

    job = [*declared(FitJob), *declared(NetShape)]
    settings = [*declared(FitConfig, presets_default=True), *declared(NetConfig, presets_default=True)]
    return sorted([*job, *settings], key=rank)


def signed(params: list[inspect.Parameter]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Gives a command that takes ``**params`` the signature typer builds its options from."""

    def sign(command: Callable[..., Any]) -> Callable[..., Any]:
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return command

    return sign


def fit_job(params: dict[str, Any]) -> FitJob:
    """The ``FitJob`` of ``dipc fit``'s parsed options, by parameter name, with the command line's defaults."""
    from ..fitjob import with_command_line_defaults  # (torch: not at the top, --help stays fast)

    if params["output"] is None and not params["dry_run"]:
        raise DipError("missing -o/--output: where to write the restored image")
    return with_command_line_defaults(from_options({**params, "output": params["output"] or Path("dry-run.png")}))


@functools.cache
def fit_command() -> Any:
    """``dipc fit``'s options as a click command, built once: typer builds each option's value converter on its
    first use, so a manifest's rows share them instead of building them again per row."""
    parser = typer.Typer()

    @parser.command()
    @signed(fit_parameters())
    def fit(**params: Any) -> None:
        """Parses only (the command that runs is ``cli.fit``)."""

    return typer.main.get_command(parser)


def parse_fit_args(args: list[str]) -> FitJob:
    """``dipc fit ARGS`` parsed into its ``FitJob`` without running it (``dipc batch`` and manifests use it,
    so a job's options are exactly ``dipc fit``'s). Bad options raise ``DipError``."""
    try:
        ctx = fit_command().make_context("dipc fit", list(args))
    except usage_exception() as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise DipError(" ".join(message.split())) from None
    return fit_job(ctx.params)


def usage_exception() -> type[Exception]:
    """The exception typer raises for usage errors: its own where it vendors click, click's otherwise."""
    try:
        from typer import TyperException

        return TyperException
    except ImportError:
        from click import ClickException

        return ClickException
