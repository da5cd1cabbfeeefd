"""``--fast``: the task's preset made cheaper as its ``tasks.Fast`` record says (chosen by benchmarks/fast_study.py),
and then a fit like any other: it auto-stops where its task does, exports, regenerates, resumes, and refuses in one
line where the study has no setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks import fast_study
from conftest import dipc, save_png, smooth_image
from dip_compile import presets
from dip_compile.checkpoint import load_checkpoint
from dip_compile.cli import parse_fit_args
from dip_compile.config import Generator
from dip_compile.drp import PROJECTORS, projected
from dip_compile.fitjob import build_config, fingerprint
from dip_compile.problem import add_noise
from dip_compile.restore import validate_job
from dip_compile.tasks import TASKS, Fast, TaskError

FAST_TASKS = [name for name, spec in TASKS.items() if spec.fast is not None]


def test_the_study_covers_denoising_super_resolution_and_inpainting() -> None:
    assert {"denoise", "super-resolve", "inpaint"} <= set(FAST_TASKS)
    # every --fast is a candidate of the study, on a table of its task (a task may be studied before it ships one)
    assert set(fast_study.SHIPPED) == set(FAST_TASKS) <= {fast_study.TASK_OF[t] for t in fast_study.TABLES}


@pytest.mark.parametrize("name", FAST_TASKS)
def test_fast_is_the_preset_with_the_records_width_and_share_of_iterations(name: str) -> None:
    record = TASKS[name].fast
    assert record is not None
    base, fast = presets.preset(name), presets.preset(name, fast=True)
    assert fast.fast and not base.fast
    if record.generator:  # the task's DRP settings, for the record's share of the preset's count
        assert fast == projected(base).replace(iterations=max(1, round(base.iterations * record.iterations)), fast=True)
        return
    assert fast.net.channels_down == tuple(max(1, round(c * record.width)) for c in base.net.channels_down)
    assert fast.net.channels_up == tuple(max(1, round(c * record.width)) for c in base.net.channels_up)
    assert fast.net.channels_skip == base.net.channels_skip
    assert fast.iterations == max(1, round(base.iterations * record.iterations))
    # nothing else moves: auto-stop, EMA, backtracking, the learning rate are the preset's
    assert fast.replace(net=base.net, iterations=base.iterations, fast=False) == base


@pytest.mark.parametrize("task", sorted(fast_study.SHIPPED))
def test_fast_is_exactly_the_candidate_the_study_chose(task: str, tmp_path: Path) -> None:
    """The study fitted the candidate's options; --fast must build the very same fit."""
    table = next(t for t, name in fast_study.TASK_OF.items() if name == task)
    candidate = fast_study.BY_NAME[fast_study.SHIPPED[task]]
    args = [task, str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png")]
    chosen = build_config(parse_fit_args(args + fast_study.options_of(candidate, table)), 3)
    problem = list(fast_study.TABLES[table].problem)  # the observation's own options (deblur: the blur, the noise)
    fast = build_config(parse_fit_args([*args, *problem, "--fast"]), 3)
    assert fast.fast and fast.replace(fast=False) == chosen


def test_options_given_with_fast_override_it() -> None:
    job = parse_fit_args(["denoise", "/x/in.png", "-o", "/x/o.png", "--fast", "--channels", "32", "--iterations", "7"])
    config = build_config(job, 3)
    assert config.fast and config.net.channels_down == (32,) * 5 and config.iterations == 7


def test_fast_enters_a_batch_jobs_fingerprint_only_when_given() -> None:
    args = ["denoise", "/nonexistent/x.png", "-o", "/nonexistent/o.png", "--sigma", "25", "--depth", "3"]
    assert fingerprint(parse_fit_args(args)) == "a360bb4f575dda78"  # as before --fast existed
    assert fingerprint(parse_fit_args([*args, "--fast"])) != fingerprint(parse_fit_args(args))


def test_a_fast_record_takes_shares_and_the_preset_s_generator_or_drp() -> None:
    with pytest.raises(TaskError, match="shares in"):
        Fast(width=2.0)
    with pytest.raises(TaskError, match="iterations up to 2.0"):
        Fast(0.5, 2.5)
    assert Fast(0.5, 5 / 3).iterations > 1  # a higher cap where auto-stop runs (denoising's --fast)
    with pytest.raises(TaskError, match="not 'hourglass2'"):
        Fast(generator="hourglass2")
    with pytest.raises(TaskError, match="its width stays 1"):
        Fast(0.5, 0.2, generator="drp")


@pytest.mark.parametrize("task", ["denoise", "super-resolve", "inpaint"])
def test_a_drp_record_makes_fast_the_tasks_projector_for_a_share_of_the_presets_count(task: str, monkeypatch) -> None:
    monkeypatch.setitem(TASKS, task, dataclasses.replace(TASKS[task], fast=Fast(1.0, 0.125, "drp")))
    base, fast = presets.preset(task), presets.preset(task, fast=True)
    assert fast.net.generator == Generator.drp and fast.fast
    assert fast.iterations == round(base.iterations * 0.125) and fast.lr == PROJECTORS[task].lr
    args = [task, "/x/in.png", "-o", "/x/o.png", "--fast", "--iterations", "9"]
    config = build_config(parse_fit_args(args), 3)
    assert config.net == fast.net and config.iterations == 9  # given options win
    assert build_config(parse_fit_args([*args, "--generator", "drp"]), 3) == config  # --generator drp agrees with it
    code, err = dipc("fit", *args, "--paper-exact")
    assert code == 2 and "--fast on" in err and "give one of them" in err and len(err.strip().splitlines()) == 1, err


def test_a_task_the_study_did_not_cover_refuses_fast_in_one_line(tmp_path: Path) -> None:
    uncovered = [name for name, spec in TASKS.items() if spec.fast is None]
    if not uncovered:
        pytest.skip("every task has a --fast setting")
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    task = TASKS[uncovered[0]]
    inputs = (["--flash", image] if task.needs("guide") else []) + (
        ["--kernel", "gaussian:1"] if task.needs("kernel") else []
    )
    code, err = dipc("fit", task.name, image, *inputs, "-o", tmp_path / "o.png", "--fast")
    assert code == 2 and "--fast has no setting for" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.png").exists()


MEASURED = {presets.default_name(task) for task in fast_study.SHIPPED}  # the study fits each task's defaults


def test_fast_applies_to_the_presets_the_study_measured_and_to_no_other() -> None:
    assert MEASURED == {"f16", "kate", "sr-x4", "deblur"}
    assert {p.name for p in presets.PRESETS if p.fast} == MEASURED
    assert all(TASKS[str(p.task)].fast is not None for p in presets.PRESETS if p.fast)


UNMEASURED = [
    *(["--preset", p.name] for p in presets.PRESETS if p.name not in MEASURED),
    ["--factor", "2"],  # sr-x4's network at x2: the study fitted x4 only
    ["--factor", "8"],  # the x8 default, sr-x8
]


@pytest.mark.parametrize("options", UNMEASURED, ids=" ".join)
def test_fast_on_a_preset_or_factor_no_measurement_backs_is_refused_in_one_line(
    options: list[str], tmp_path: Path
) -> None:
    name = options[1] if options[0] == "--preset" else "sr-x8" if options[1] == "8" else "sr-x4"
    chosen = presets.BY_NAME[name]
    task = chosen.task
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    inputs = {"inpaint": ["--box", "0.2"], "flash-no-flash": ["--flash", image], "deblur": ["--kernel", "gaussian:1"]}
    args = [str(task), image, "-o", tmp_path / "o.png", *inputs.get(str(task), []), *options, "--iterations", "1", "-q"]
    validate_job(parse_fit_args([str(a) for a in args]))  # without --fast the same fit is fine
    code, err = dipc("fit", *args, "--fast")
    expected = f"--fast has no setting for preset {name}" + (f" at x{options[1]}" if name == "sr-x4" else "")
    assert code == 2 and expected in err and "measured only on f16, kate, sr-x4 at x4 and deblur" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o.png").exists()


@pytest.fixture(scope="module")
def fast_fit(tmp_path_factory) -> Path:
    """A short --fast denoising fit (the real --fast network) with its checkpoint and report."""
    tmp = tmp_path_factory.mktemp("fast")
    clean = smooth_image(32, 32)
    save_png(clean, tmp / "clean.png")
    save_png(add_noise(clean, 0.1, seed=0), tmp / "noisy.png")
    code, err = dipc(
        "fit", "denoise", tmp / "noisy.png", "--reference", tmp / "clean.png", "-o", tmp / "out.png", "--fast",
        "--iterations", "4", "--log-every", "1", "--precision", "fp32", "--checkpoint", tmp / "fit.ckpt",
        "--report", tmp / "out.json", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    return tmp


def test_a_fast_fit_records_itself_and_its_narrower_network(fast_fit: Path) -> None:
    ckpt = load_checkpoint(fast_fit / "fit.ckpt")
    expected = presets.preset("denoise", fast=True).net
    assert ckpt.config.fast and ckpt.config.net.channels_down == expected.channels_down
    report = json.loads((fast_fit / "out.json").read_text())
    assert report["config"]["fast"] is True


def test_a_fast_fit_exports_and_regenerates_its_image(fast_fit: Path, tmp_path: Path) -> None:
    code, err = dipc("export", fast_fit / "fit.ckpt", "-o", tmp_path / "fit.onnx")
    assert code == 0, err
    code, err = dipc("regenerate", tmp_path / "fit.onnx", "-o", tmp_path / "again.png", "--check", fast_fit / "out.png")
    assert code == 0, err


def test_a_fast_fit_resumes_on_its_own_network_and_refuses_fast_again(fast_fit: Path, tmp_path: Path) -> None:
    code, err = dipc("fit", "--resume", fast_fit / "fit.ckpt", "-o", tmp_path / "more.png", "--iterations", "6",
                     "--precision", "fp32", "--checkpoint", tmp_path / "more.ckpt", "--quiet")  # fmt: skip
    assert code == 0, err
    more, saved = load_checkpoint(tmp_path / "more.ckpt"), load_checkpoint(fast_fit / "fit.ckpt")
    assert more.iteration == 6 and more.config.fast and more.config.net == saved.config.net
    assert {k: v.shape for k, v in more.state["net"].items()} == {k: v.shape for k, v in saved.state["net"].items()}
    code, err = dipc("fit", "--resume", fast_fit / "fit.ckpt", "-o", tmp_path / "again.png", "--fast")
    assert code == 2 and "drop --fast" in err, err


def test_a_fast_x4_super_resolution_is_a_drp_fit_that_exports_and_regenerates(tmp_path: Path) -> None:
    """The shipped record for x4 super-resolution names DRP: the fit, its checkpoint, the ONNX model and the replay."""
    assert TASKS["super-resolve"].fast == Fast(1.0, 0.125, "drp")
    save_png(smooth_image(8, 8), tmp_path / "small.png")
    code, err = dipc(
        "fit", "super-resolve", tmp_path / "small.png", "--factor", "4", "-o", tmp_path / "big.png", "--fast",
        "--iterations", "3", "--precision", "fp32", "--checkpoint", tmp_path / "fit.ckpt", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    config = load_checkpoint(tmp_path / "fit.ckpt").config
    assert config.fast and config.net.generator == Generator.drp and config.net.channels_down == (128,)
    code, err = dipc("export", tmp_path / "fit.ckpt", "-o", tmp_path / "fit.onnx")
    assert code == 0, err
    code, err = dipc("regenerate", tmp_path / "fit.onnx", "-o", tmp_path / "again.png", "--check", tmp_path / "big.png")
    assert code == 0, err


def test_the_python_api_takes_fast(fast_fit: Path, tmp_path: Path) -> None:
    from dip_compile.api import restore_image

    restore_image(fast_fit / "noisy.png", "denoise", fast=True, iterations=2, precision="fp32",
                  checkpoint=tmp_path / "api.ckpt")  # fmt: skip
    config = load_checkpoint(tmp_path / "api.ckpt").config
    assert config.fast and config.net == presets.preset("denoise", fast=True).net


def test_fast_changes_nothing_but_what_its_record_names() -> None:
    drp_sets = {"lr", "tv_weight", "loss", "reg_noise_std", "ema"}  # what drp.projected sets besides the network
    for name in FAST_TASKS:
        record = TASKS[name].fast
        assert record is not None
        for field in dataclasses.fields(presets.preset(name)):
            if field.name not in {"net", "iterations", "fast"} | (drp_sets if record.generator else set()):
                assert getattr(presets.preset(name, fast=True), field.name) == getattr(presets.preset(name), field.name)


def test_the_web_pages_fast_box_makes_a_fast_job_and_shows_its_iterations(tmp_path: Path) -> None:
    from dip_compile.config import FitConfig, command_line_defaults
    from dip_compile.ui.session import Form, Workspace, preset_iterations

    job = Workspace(tmp_path / "ws").job(Form(task="denoise", image=str(tmp_path / "in.png"), fast=True))
    fast = presets.preset("denoise", fast=True).replace(**command_line_defaults(FitConfig))  # (dipc fit's auto)
    assert job.fast and build_config(job, 3) == fast
    for name in FAST_TASKS:
        assert preset_iterations(None, name, True) == presets.preset(name, fast=True).iterations
