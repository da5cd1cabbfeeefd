"""One job, one plan: a job's preset, configuration and device are resolved once (``plan.make_plan``), whether it
is fitted whole, tile by tile or as a row of a batch; whole and tiled runs follow one pipeline and write the files
of one list (``fitjob.OUTPUTS``)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from conftest import ONCE, dipc, save_png, smooth_image
from dip_compile import fitjob, presets
from dip_compile.batch.jobs import BATCH_OWNED
from dip_compile.cli import parse_fit_args
from dip_compile.fitjob import KEPT, OUTPUT_FIELDS, OUTPUTS, FitJob, Outputs
from dip_compile.plan import make_plan
from dip_compile.restore import run_job

TINY = ["--iterations", "2", "--depth", "2", "--channels", "8", "--skip-channels", "4", "-q"]
EXACT = ["--precision", "fp32", "--backend", "eager"]
TILE = ["--tile", "16", "--overlap", "4"]


def count_presets(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the tasks whose preset is resolved (``presets.preset``: where every configuration starts)."""
    calls: list[str] = []
    resolve = presets.preset

    def counted(task: str, **kwargs: typing.Any) -> typing.Any:
        calls.append(task)
        return resolve(task, **kwargs)

    monkeypatch.setattr(presets, "preset", counted)
    return calls


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files a run writes, in order."""
    written: list[str] = []
    write = Outputs.write

    def counted(self: Outputs, path: Path, how: typing.Any) -> None:
        written.append(path.name)
        write(self, path, how)

    monkeypatch.setattr(Outputs, "write", counted)
    return written


@ONCE
@pytest.mark.parametrize("tiled", [False, True], ids=["whole", "tiled"])
def test_a_fit_resolves_its_job_once_and_writes_the_same_files_whole_or_tiled(tmp_path, monkeypatch, tiled):
    image = save_png(smooth_image(32, 32), tmp_path / "noisy.png")
    outputs = ["-o", tmp_path / "out.png", "--report", tmp_path / "out.json", "--compare", tmp_path / "cmp.png"]
    tile = TILE if tiled else ["--stop", "fixed"]  # (a stopping rule keeps its chosen image on disk as it goes)
    job = parse_fit_args([str(a) for a in ["denoise", image, *outputs, *TINY, *EXACT, *tile]])
    resolved, written = count_presets(monkeypatch), count_writes(monkeypatch)
    assert run_job(job) == 0
    assert resolved == ["denoise"]  # (validated, then loaded: resolved twice before the plan)
    assert written == ["out.png", "cmp.png", "out.json"]  # the image and comparison before the report
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["tiles"] == 9 if tiled else "tiles" not in report
    assert not (tmp_path / "out.png.tiles").exists()  # the tiled run's work folder, removed once all is written


@ONCE
def test_a_batch_resolves_rows_that_differ_in_their_files_once(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        save_png(smooth_image(32, 32, seed=i), folder / f"im{i}.png")
    resolved = count_presets(monkeypatch)
    code, err = dipc("batch", folder, "--task", "denoise", "-o", tmp_path / "out", *TINY, *EXACT)
    assert code == 0, err
    assert resolved == ["denoise"]  # (each row was validated, then validated and loaded again as it ran: 7 before)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["im0.png", "im1.png", "im2.png"]


def test_a_plan_holds_what_the_job_resolves_to(tmp_path):
    job = parse_fit_args(["inpaint", str(tmp_path / "x.png"), "-o", str(tmp_path / "o.png"), "--preset", "barbara"])
    plan = make_plan(job)
    assert plan.preset is not None and plan.preset.name == "barbara" and plan.holes == 0.5  # the preset's mask
    assert plan.config is not None and plan.config.device == plan.device in ("cpu", "cuda")  # resolved here
    assert make_plan(job, device=False).device is None  # left to where it runs (a Ray worker)
    rerouted = plan.rerouted(dataclasses.replace(job, report=tmp_path / "r.json", quiet=True))
    assert rerouted.config is plan.config and rerouted.job.report == tmp_path / "r.json"
    with pytest.raises(ValueError, match="holes"):  # another fit is another plan
        plan.rerouted(dataclasses.replace(job, holes=0.3))


def test_outputs_are_the_fit_jobs_file_fields_and_the_batch_refuses_each():
    hints = typing.get_type_hints(FitJob)
    files = [name for name in FitJob.names(KEPT) if hints[name] in (Path, typing.Optional[Path])]
    assert list(OUTPUT_FIELDS) == files  # every file a job names is declared in OUTPUTS, once
    assert {o.field for o in OUTPUTS} - {"output"} <= set(BATCH_OWNED)  # the batch names them itself
    assert [o.field for o in OUTPUTS if o.api] == ["checkpoint"]  # what restore_image writes
    assert all(o.write is not None or o.stage == fitjob.Stage.fitting for o in OUTPUTS)
