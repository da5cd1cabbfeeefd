"""``dipc fit`` is built from the config's field metadata: every flag it names is an option, in a --help panel, and a
value given to it reaches its field (parsed as ``dipc batch`` parses a job, then configured as a fit would be)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import pytest
import typer
from typer.testing import CliRunner

from dip_compile.cli import app, parse_fit_args
from dip_compile.config import PANELS, Choice, FitConfig, NetConfig, flagged
from dip_compile.fitjob import FitJob, NetShape, build_config, fingerprint

JOB_OPTIONS = {f.name for f in FitJob.options()} | {f.name for f in flagged(NetShape)}

FIT = typer.main.get_command(app).commands["fit"]  # type: ignore[attr-defined]
FIELDS = [(cls, f) for cls in (FitConfig, NetConfig) for f in flagged(cls)]

# The fields that apply only with a task or another option: (task, the options the flag needs, the value given ("" for a
# switch), the field's value)
IN_CONTEXT: dict[str, tuple[str, list[str], str, Any]] = {
    "factor": ("super-resolve", [], "2", 2),
    "kernel": ("deblur", [], "gaussian:1", "gaussian:1"),
    "peak": ("denoise", ["--loss", "poisson"], "100", 100.0),
    "keep_known": ("inpaint", [], "", True),
    "preset": ("denoise", [], "snail", "snail"),
    "tv_weight": ("denoise", [], "0.5", 0.5),  # (0 by default: half of it is the same)
    "coarse_share": ("denoise", [], "0.5", 0.5),  # (off by default: 0, which halves to itself)
}


def config_of(tmp_path: Path, task: str, *args: str) -> FitConfig:
    job = parse_fit_args([task, str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), *args])
    return build_config(job, 3)


def value_of(config: FitConfig, cls: type, name: str) -> Any:
    return getattr(config.net if cls is NetConfig else config, name)


def another(value: Any) -> tuple[str, Any]:
    """A command-line value other than ``value`` and what the field holds then: another member of a choice, a
    larger odd-preserving whole number, half a real number."""
    if isinstance(value, Choice):
        other = next(m for m in type(value) if m != value)
        return other.value, other
    if isinstance(value, int):
        return str(value + 2), value + 2
    if isinstance(value, float):
        return str(value / 2), value / 2
    if value == "auto":  # --device
        return "cpu", "cpu"
    raise AssertionError(f"no value to try for {value!r}: add the field to IN_CONTEXT")


def changed(f: dataclasses.Field[Any], cls: type, base: Any) -> tuple[list[str], Any]:
    """The options that give the field ``f`` a value other than ``base`` (the fit's without them), and that value;
    a per-level field holds the value at every level."""
    flag = f.metadata["flag"]
    if f.name in IN_CONTEXT:
        _, _, text, want = IN_CONTEXT[f.name]
        return ([flag, text] if text else [flag]), want
    if isinstance(base, bool):
        return ([flag] if not base else [f"--no-{flag.removeprefix('--')}"]), not base
    if isinstance(base, tuple):
        text, level = another(base[0])
        return [flag, text], (level,) * len(base) if cls is NetConfig and f.name.startswith("channels") else (level,)
    text, want = another(base)
    return [flag, text], want


def test_the_fields_with_a_flag_are_the_settings_of_dipc_fit() -> None:
    names = [f.name for _, f in FIELDS]
    assert len(names) == len(set(names)), "a setting's option is named after its field: names must not repeat"
    assert {"padding", "iterations", "reg_noise_std", "channels_skip", "input_kind"} <= set(names)
    assert not JOB_OPTIONS & set(names)


@pytest.mark.parametrize(("cls", "f"), FIELDS, ids=[f.metadata["flag"] for _, f in FIELDS])
def test_every_flag_in_the_metadata_is_a_fit_option_and_reaches_its_field(
    tmp_path: Path, cls: type, f: dataclasses.Field[Any]
) -> None:
    flag = f.metadata["flag"]
    options = {opt for p in FIT.params for opt in (*p.opts, *p.secondary_opts)}
    assert flag in options, f"{flag} is named in {cls.__name__}.{f.name}'s metadata but is not a dipc fit option"
    task, context, _, _ = IN_CONTEXT.get(f.name, ("denoise", [], "", None))
    base = value_of(config_of(tmp_path, task), cls, f.name)
    args, want = changed(f, cls, base)
    got = value_of(config_of(tmp_path, task, *context, *args), cls, f.name)
    assert got == want and got != base, f"{' '.join(args)} gave {cls.__name__}.{f.name} = {got!r}, not {want!r}"


def declared_options(*classes: type) -> dict[str, str]:
    """The fields of ``classes`` declared as options (or arguments), by name: their flag."""
    return {
        f.name: f.metadata["flag"]
        for cls in classes
        for f in dataclasses.fields(cls)
        if f.metadata.get("argument") or f.metadata.get("flag", "").startswith("--")
    }


def test_the_options_of_dipc_fit_are_the_declared_fields() -> None:
    """Every parameter of dipc fit is a declared field (of the job, its network, the settings) and every declared
    field is one, under its declared flag: a new option is its declaration."""
    declared = declared_options(FitJob, NetShape, FitConfig, NetConfig)
    params = {p.name: p for p in FIT.params if p.name != "help"}
    assert set(params) == set(declared)
    for name, param in params.items():
        if param.param_type_name == "option":
            assert declared[name] in (*param.opts, *param.secondary_opts), (name, param.opts)
    assert {"task", "image", "holes", "output", "quiet", "depth", "channels", "channels_skip", "tile"} <= set(params)


def test_the_options_of_dipc_export_are_the_fields_of_export_options() -> None:
    from dip_compile.export_options import ExportOptions

    export = typer.main.get_command(app).commands["export"]  # type: ignore[attr-defined]
    params = {p.name: p for p in export.params if p.name != "help"}
    assert set(params) == {"checkpoints", "output", *declared_options(ExportOptions)}
    for f in dataclasses.fields(ExportOptions):
        assert f.metadata["flag"] in params[f.name].opts and params[f.name].default == f.default, f.name


def test_a_switch_not_given_sets_nothing(tmp_path: Path) -> None:
    """--keep-known and --save-memory absent leave the preset's value: the job holds only the settings given."""
    job = parse_fit_args(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--lr", "0.02"])
    assert job.settings == {"lr": 0.02, "device": "auto", "backend": "auto", "precision": "auto"}
    assert job.net == NetShape()


def test_fit_help_groups_the_options_in_panels() -> None:
    titles = [p.capitalize() for p in PANELS]
    for param in FIT.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert getattr(param, "rich_help_panel", None) in titles, f"{param.opts} has no panel"
            assert "{" not in (param.help or ""), f"{param.opts}: a list left unfilled in its help"


def test_the_roles_of_the_job_fields_decide_what_resume_keeps_and_what_the_fingerprint_reads(tmp_path: Path) -> None:
    args = ["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--sigma", "25", "--quiet"]
    job = parse_fit_args([*args, "--report", str(tmp_path / "out.json")])
    resumed = job.resumed(tmp_path / "out.ckpt")
    assert (resumed.output, resumed.report, resumed.quiet) == (job.output, job.report, True)
    assert (resumed.task, resumed.image, resumed.sigma) == (None, None, None)
    assert fingerprint(dataclasses.replace(job, quiet=False, report=None)) == fingerprint(job)
    assert fingerprint(dataclasses.replace(job, sigma=15.0)) != fingerprint(job)


def test_an_option_added_since_leaves_the_fingerprints_of_jobs_without_it_as_they_were() -> None:
    """A batch rerun recognises the jobs it finished before --padding existed (the value kept by the release before it)."""
    job = parse_fit_args(["denoise", "/nonexistent/x.png", "-o", "/nonexistent/o.png", "--sigma", "25", "--depth", "3"])
    assert fingerprint(job) == "a360bb4f575dda78"
    assert fingerprint(dataclasses.replace(job, net=NetShape(**job.net.values(), padding="zeros"))) != fingerprint(job)


def test_the_lists_over_the_options_are_read_from_their_declarations() -> None:
    """restore_image's keywords and the options a batch job may not give are the declared fields: an option of the
    problem is a keyword of restore_image (holes=0.5 was a TypeError), a network option is its NetConfig field's
    name (no second naming: channels_skip, input_kind)."""
    from dip_compile import api
    from dip_compile.batch.jobs import BATCH_OWNED
    from dip_compile.job import OUTPUT_FIELDS, PROBLEM

    assert api.JOB_KEYWORDS == (set(FitJob.names(PROBLEM)) - {"task", "image"}) | {"checkpoint", "force"}
    assert {"holes", "box", "text", "mask", "sigma", "preset", "fast"} <= api.JOB_KEYWORDS
    assert api.NET_KEYWORDS == set(declared_options(NetShape, NetConfig))
    assert {"channels_skip", "input_kind"} <= api.NET_KEYWORDS and not {"skip_channels", "input"} & api.NET_KEYWORDS
    assert not api.SETTINGS & (api.JOB_KEYWORDS | api.NET_KEYWORDS)
    owned = {"checkpoint", "resume", "report", "compare", "snapshot_every", "timelapse", "dry_run"}
    assert set(BATCH_OWNED) == owned
    assert BATCH_OWNED["checkpoint"] == "--checkpoint (use --checkpoints)" and BATCH_OWNED["report"] == "--report"
    assert OUTPUT_FIELDS == ("output", "checkpoint", "report", "compare", "timelapse")  # the paths taken as text


def test_the_pages_fields_are_dipc_fit_options_with_their_defaults() -> None:
    from dip_compile.ui.session import Form

    defaults = {p.name: p.default for p in FIT.params}
    for f in dataclasses.fields(Form):
        if f.name not in ("task", "timelapse_every"):  # (the page's timelapse_every: 0 is none)
            assert f.name in defaults and f.default == defaults[f.name], f.name


def test_a_network_option_is_named_as_its_netconfig_field(tmp_path: Path) -> None:
    job = parse_fit_args(["denoise", "x.png", "-o", str(tmp_path / "o.png"), "--skip-channels", "0", "--depth", "3"])
    assert job.net == NetShape(depth=3, channels_skip="0") and job.net.channels_skip == "0"
    assert job.net.given() == ["--depth", "--skip-channels"] and job.net.input_kind is None
    assert build_config(job, 3).net.channels_skip == (0, 0, 0)
    with pytest.raises(TypeError, match="skip_channels"):
        NetShape(skip_channels=0)


def test_a_field_declared_with_option_is_an_option_of_its_command() -> None:
    """The machinery itself: a made-up declaration becomes a typer option with its flag, help, panel and default."""
    from dip_compile.cli.options import declared, signed
    from dip_compile.config import option

    @dataclasses.dataclass
    class Made:
        dither: float = option(0.5, flag="--dither", panel="outputs", help="a made-up option")
        loud: bool = option(False, flag="--loud", names=("--loud", "-L"), panel="outputs", help="a made-up switch")

    made = typer.Typer()
    seen: dict[str, Any] = {}

    @made.command()
    @signed(declared(Made))
    def command(**params: Any) -> None:
        seen.update(params)

    runner = CliRunner()
    shown = runner.invoke(made, ["--help"], env={"COLUMNS": "200"}).output
    assert "--dither" in shown and "a made-up option" in shown and "0.5" in shown and "-L" in shown
    assert runner.invoke(made, ["--dither", "0.25", "-L"]).exit_code == 0
    assert seen == {"dither": 0.25, "loud": True}
