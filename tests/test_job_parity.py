"""The four edges (``dipc fit``, ``dipc batch``, ``restore_image``, the web page) build the same job from the same
inputs: the same problem, settings and network, and the same device, backend and precision once ``auto`` resolves
on the (faked) CPU. The page once fitted in eager fp32 where ``dipc fit`` took bf16."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAKE_CPU, save_png, smooth_image
from dip_compile import acceleration, api
from dip_compile.batch.jobs import BatchJob
from dip_compile.batch.jobs import fit_job as batch_fit_job
from dip_compile.cli import parse_fit_args
from dip_compile.fitjob import PROBLEM, FitJob, build_config, resolve_device

PRESET, ITERATIONS, SEED, CHANNELS, DEPTH = "kate", 6, 2, 8, 2  # kate: a preset --fast is measured on


class Built(Exception):
    """Raised by the stand-in for ``make_plan``: ``restore_image`` built its job (and fits nothing)."""

    def __init__(self, job: FitJob) -> None:
        self.job = job


def inputs(tmp_path: Path) -> tuple[Path, Path]:
    image = save_png(smooth_image(32, 32), tmp_path / "photo.png")
    hole = np.full((32, 32), 255, np.uint8)
    hole[10:20, 10:20] = 0
    Image.fromarray(hole).save(tmp_path / "mask.png")
    return image, tmp_path / "mask.png"


def jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> dict[str, FitJob]:
    from dip_compile.ui.session import Form, Workspace

    image, mask = inputs(tmp_path)
    settings = ["--preset", PRESET, "--iterations", str(ITERATIONS), "--seed", str(SEED)]
    settings += ["--channels", str(CHANNELS), "--depth", str(DEPTH)] + (["--fast"] if fast else [])
    cli = parse_fit_args(["inpaint", str(image), "--mask", str(mask), "-o", str(tmp_path / "cli.png"), *settings])
    row = BatchJob("photo", "inpaint", image, mask=mask)
    batch = batch_fit_job(row, settings, tmp_path / "batch")

    def built(job: FitJob, **_: object) -> None:
        raise Built(job)

    monkeypatch.setattr(api, "make_plan", built)
    with pytest.raises(Built) as caught:
        api.restore_image(
            image, "inpaint", mask=mask, preset=PRESET, fast=fast, iterations=ITERATIONS, seed=SEED,
            channels=CHANNELS, depth=DEPTH,
        )  # fmt: skip
    form = Form(
        task="inpaint", image=str(image), mask=str(mask), preset=PRESET, iterations=ITERATIONS, seed=SEED,
        channels=str(CHANNELS), depth=DEPTH, fast=fast,
    )  # fmt: skip
    page = Workspace(tmp_path / "session").job(form)
    return {"dipc fit": cli, "dipc batch": batch, "restore_image": caught.value.job, "page": page}


def what_it_fits(job: FitJob) -> dict[str, object]:
    """Everything that decides the fit: the problem's fields, the settings (with their defaults), the resolved
    configuration and the step's plan on this device."""
    config = build_config(job, 3)
    device = resolve_device(str(config.device))
    plan = acceleration.choose(config.replace(device=device), device, (32, 32))
    problem = {name: getattr(job, name) for name in FitJob.names(PROBLEM)}
    settings = {k: str(v) for k, v in job.settings.items()}
    return {**problem, "settings": settings, "config": config, "device": device, "plan": plan}


@pytest.mark.parametrize("fast", [False, True])
def test_every_edge_builds_the_same_job_from_the_same_inputs(tmp_path, monkeypatch, fast):
    built = {edge: what_it_fits(job) for edge, job in jobs(tmp_path, monkeypatch, fast).items()}
    reference = built.pop("dipc fit")
    for edge, fits in built.items():
        for key in reference:
            assert fits[key] == reference[key], (edge, key)
    plan = reference["plan"]
    assert isinstance(plan, acceleration.Plan)
    assert plan.precision == ("bf16" if FAKE_CPU.fast_bf16 else "fp32")  # auto, on the faked CPU
    assert reference["settings"]["device"] == "auto" and plan.fused_adam  # auto's choices, not eager fp32's


def test_the_pages_continue_resolves_as_dipc_fit_resume(tmp_path):
    """A resumed fit takes ``dipc fit --resume``'s defaults too (a checkpoint's explicit eager fp32 becomes auto)."""
    from dip_compile.ui.session import Workspace

    ws = Workspace(tmp_path / "session")
    ws.checkpoint.write_bytes(b"")  # only its existence is checked here
    page = ws.resumed_job(40)
    cli = parse_fit_args(["--resume", str(ws.checkpoint), "-o", str(ws.output), "--iterations", "40"])
    assert {k: str(v) for k, v in page.settings.items()} == {k: str(v) for k, v in cli.settings.items()}
    assert dataclasses.replace(page, settings={}).resume == cli.resume
