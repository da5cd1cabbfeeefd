import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ONCE, dipc, save_png, smooth_image
from dip_compile import fitjob, presets, restore
from dip_compile.batch import BatchJob, load_jobs, shard
from dip_compile.batch.jobs import ManifestError
from dip_compile.errors import DipError
from dip_compile.imageio import load_image
from dip_compile.metrics import psnr
from dip_compile.problem import add_noise

FIT = ["--depth", "3", "--channels", "16", "--skip-channels", "4", "--input-depth", "8", "--iterations", "30"]
EXACT = ["--precision", "fp32", "--backend", "eager"]  # results that do not depend on the CPU (Ray workers too)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        save_png(smooth_image(32, 32, seed=i), images / f"img{i}.png")
    return images


def test_a_folder_batch_writes_each_image_report_and_the_summaries(tmp_path, folder):
    out = tmp_path / "out"
    # --paper-exact returns the network's output: at 30 iterations the preset's EMA (0.99) is still mostly the
    # first, flat outputs and scores like a flat gray image
    args = ("--task", "denoise", "--sigma", "25", *FIT, "--stop", "fixed", "--paper-exact")
    code, stderr = dipc("batch", folder, "-o", out, *args)
    assert code == 0, stderr
    for i in range(3):
        assert load_image(out / f"img{i}.png").shape == (3, 32, 32)
        report = json.loads((out / f"img{i}.json").read_text())
        assert report["iterations"] == 30 and report["batch"]["job"] == f"img{i}"
    summary = json.loads((out / "summary.json").read_text())
    psnrs = [job["psnr"] for job in summary["jobs"]]
    assert [job["status"] for job in summary["jobs"]] == ["done"] * 3
    for i, p in enumerate(psnrs):  # each fit beats the flat image of its noisy input's mean (about 11 dB) by 5 dB
        clean = load_image(folder / f"img{i}.png")
        flat = add_noise(clean, 25 / 255, seed=0).mean(dim=(-2, -1), keepdim=True).expand_as(clean)
        assert p > psnr(flat, clean).item() + 5, (i, p)
    assert summary["per_task"]["denoise"]["mean_psnr"] == pytest.approx(sum(psnrs) / 3)
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert csv_rows[0].startswith("job,task,status,iterations,seconds,psnr,ssim") and len(csv_rows) == 4
    assert "| denoise | 3 | 0 |" in (out / "summary.md").read_text()
    assert not (out / ".partial").exists()


def test_the_default_batch_returns_the_presets_image_and_it_beats_the_noisy_input(tmp_path):
    """No --paper-exact, no --stop: the denoising preset's stopping rule and the image it returns (not the raw
    output), as a user's batch gets them."""
    images = tmp_path / "images"
    images.mkdir()
    clean = smooth_image(32, 32, seed=1)
    save_png(clean, images / "a.png")
    longer = [*FIT[:-1], "200", *EXACT]  # the EMA (0.99) forgets the first, flat outputs; fp32: one pass of make test
    code, stderr = dipc("batch", images, "-o", tmp_path / "out", "--task", "denoise", "--sigma", "25", *longer, "-q")
    assert code == 0, stderr
    [job] = json.loads((tmp_path / "out" / "summary.json").read_text())["jobs"]
    report = json.loads((tmp_path / "out" / "a.json").read_text())
    assert report["config"]["stop"] == presets.preset("denoise").stop and report["image_source"] != "output"
    written, truth = load_image(tmp_path / "out" / "a.png"), load_image(images / "a.png")
    assert job["psnr"] == pytest.approx(psnr(written, truth).item(), abs=0.1)
    noisy = add_noise(truth, 25 / 255, seed=0)  # the input the batch made (seed 0)
    assert job["psnr"] > psnr(noisy, truth).item() + 2, job  # about 24 against 20.5


def test_a_rerun_skips_finished_jobs_and_redoes_nothing(tmp_path, folder):
    out = tmp_path / "out"
    args = ["batch", folder, "-o", out, "--task", "denoise", "--sigma", "25", *FIT, "-q"]
    assert dipc(*args)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("img*")}
    code, stderr = dipc(*args)
    assert code == 0, stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("img*")} == before
    statuses = [job["status"] for job in json.loads((out / "summary.json").read_text())["jobs"]]
    assert statuses == ["skipped"] * 3
    # other settings: not silently replaced, and --force redoes them
    code, _ = dipc(*args[:-1], "--lr", "0.02", "-q")
    rows = json.loads((out / "summary.json").read_text())["jobs"]
    assert code == 1 and "exists from other settings: pass --force" in rows[0]["error"]
    assert dipc(*args, "--lr", "0.02", "--force")[0] == 0


def test_a_manifest_runs_mixed_tasks_with_per_job_options_and_records_bad_inputs(tmp_path):
    clean = smooth_image(32, 32)
    save_png(clean, tmp_path / "clean.png")
    save_png(add_noise(clean, 0.1, seed=0), tmp_path / "noisy.png")
    mask = torch.ones(32, 32)
    mask[8:16, 8:16] = 0
    save_png(mask[None], tmp_path / "mask.png")
    save_png(torch.ones(1, 16, 16), tmp_path / "small_mask.png")
    (tmp_path / "jobs.csv").write_text(
        "image,task,mask,reference,output,options\n"
        "noisy.png,denoise,,clean.png,den,--iterations 20\n"
        "clean.png,inpaint,mask.png,clean.png,inp,--lr 0.02\n"
        "clean.png,inpaint,small_mask.png,,bad,\n"
    )
    out = tmp_path / "out"
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", out, *FIT)
    assert code == 1, stderr
    rows = {r["job"]: r for r in json.loads((out / "summary.json").read_text())["jobs"]}
    assert rows["den"]["status"] == "done" and rows["den"]["iterations"] == 20  # the row's option wins
    assert rows["inp"]["status"] == "done"
    written, truth, hole = load_image(out / "inp.png"), load_image(tmp_path / "clean.png"), mask == 0
    assert rows["inp"]["psnr"] == pytest.approx(psnr(written, truth).item(), abs=0.1)  # the whole image's
    fill = truth.clone()
    fill[:, hole] = truth[:, ~hole].mean(dim=1, keepdim=True)  # the hole in the known pixels' mean colour
    assert psnr(written[:, hole], truth[:, hole]).item() > psnr(fill[:, hole], truth[:, hole]).item() + 5  # 18, 10.6
    assert json.loads((out / "inp.json").read_text())["config"]["lr"] == 0.02
    assert rows["bad"]["status"] == "failed" and "mask" in rows["bad"]["error"] and "\n" not in rows["bad"]["error"]
    assert not (out / "bad.png").exists()


def test_a_jsonl_manifest_and_a_task_for_every_row(tmp_path):
    save_png(smooth_image(32, 32), tmp_path / "a.png")
    (tmp_path / "jobs.jsonl").write_text(
        json.dumps({"image": "a.png", "output": "first.png"})
        + "\n\n"
        + json.dumps({"image": "a.png", "output": "second", "options": ["--seed", "3"]})
        + "\n"
        + json.dumps({"image": "a.png", "output": "third-w64-0.75"})  # a dot that is not an image suffix stays
        + "\n"
    )
    jobs = load_jobs(tmp_path / "jobs.jsonl", task="denoise")
    assert [(j.name, j.task, j.options) for j in jobs] == [
        ("first", "denoise", ()),
        ("second", "denoise", ("--seed", "3")),
        ("third-w64-0.75", "denoise", ()),
    ]


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("image,colour\na.png,red\n", "unknown column(s) colour; columns are image, task"),
        ("image,task\nmissing.png,denoise\n", "image missing.png: no such file"),
        ("image,task\na.png,sharpen\n", "unknown task 'sharpen'"),
        ("image,task,output\na.png,denoise,x.png\na.png,denoise,x.jpg\n", "two jobs write x.png"),
        ("image,task,options\na.png,denoise,--iterations lots\n", "job a: Invalid value for '--iterations'"),
        ("image,task,options\na.png,denoise,--report r.json\n", "job a: dipc batch writes OUTDIR/NAME.png"),
        ("task\ndenoise\n", "the column image is missing"),
    ],
)
def test_a_bad_manifest_stops_the_batch_in_one_line(tmp_path, manifest, message):
    save_png(smooth_image(32, 32), tmp_path / "a.png")
    (tmp_path / "jobs.csv").write_text(manifest)
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *FIT)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_batch_options_and_outdir_are_one_line(tmp_path, folder):
    (tmp_path / "file").write_text("x")
    cases = [
        (["--task", "denoise", "-o", tmp_path / "file"], "is a file: OUTDIR must be a folder"),
        (["-o", tmp_path / "o"], "a folder of images needs --task"),
        (["--task", "denoise", "-o", tmp_path / "o", "--pack", "0"], "--pack must be a whole number >= 1"),
        (["--task", "denoise", "-o", tmp_path / "o", "--shard", "2/2"], "--shard I/N needs 0 <= I < N"),
        (["--task", "inpaint", "-o", tmp_path / "o", "--mask-dir", tmp_path], "no mask for img0.png"),
    ]
    for args, message in cases:
        code, stderr = dipc("batch", folder, *args, *FIT)
        assert code == 2 and message in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1


def test_shards_split_the_jobs_disjointly_and_cover_them(tmp_path, folder):
    jobs = [BatchJob(f"j{i}", "denoise", Path(f"{i}.png")) for i in range(7)]
    parts = [shard(jobs, f"{i}/3") for i in range(3)]
    assert sorted(j.name for part in parts for j in part) == sorted(j.name for j in jobs)
    assert [len(p) for p in parts] == [3, 2, 2]
    with pytest.raises(ManifestError, match="--shard takes I/N"):
        shard(jobs, "1-3")
    out = tmp_path / "out"
    assert dipc("batch", folder, "-o", out, "--task", "denoise", "--shard", "1/2", *FIT, "-q")[0] == 0
    assert sorted(p.name for p in out.glob("img*.png")) == ["img1.png"]
    assert (out / "summary-1-of-2.csv").exists() and not (out / "summary.csv").exists()


def test_ctrl_c_stops_the_batch_and_a_rerun_resumes_to_the_same_images(tmp_path, folder, monkeypatch):
    args = [folder, "--task", "denoise", "--sigma", "25", *FIT, *EXACT, "--stop", "fixed", "-q"]
    assert dipc("batch", "-o", tmp_path / "straight", *args)[0] == 0
    original = restore.Fitter.perturbed_input
    seen: list[int] = []

    def ctrl_c_in_the_second_job(self):
        if self.iteration == 0:
            seen.append(id(self))
        if len(seen) == 2 and self.iteration == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", ctrl_c_in_the_second_job)
    out = tmp_path / "out"
    code, stderr = dipc("batch", "-o", out, *args)
    assert code == 130, stderr
    rows = {r["job"]: r["status"] for r in json.loads((out / "summary.json").read_text())["jobs"]}
    assert rows == {"img0": "done", "img1": "interrupted"}  # img2 never started
    assert len(list((out / ".partial").glob("img1.*.ckpt"))) == 1
    monkeypatch.setattr(restore.Fitter, "perturbed_input", original)
    code, stderr = dipc("batch", "-o", out, *args)
    assert code == 0, stderr
    for i in range(3):
        assert torch.equal(load_image(out / f"img{i}.png"), load_image(tmp_path / "straight" / f"img{i}.png"))
    assert json.loads((out / "img1.json").read_text())["iterations"] == 30
    assert json.loads((out / "img1.json").read_text())["resumed_from_iteration"] == 13  # the iteration under way ends


def test_packed_jobs_write_every_output_and_restore_as_well(tmp_path, folder):
    args = [folder, "--task", "denoise", "--sigma", "25", *FIT, "--iterations", "60", "--stop", "fixed", "-q"]
    assert dipc("batch", "-o", tmp_path / "alone", *args)[0] == 0
    code, stderr = dipc("batch", "-o", tmp_path / "packed", "--pack", "2", "--checkpoints", *args)
    assert code == 0, stderr
    alone = json.loads((tmp_path / "alone" / "summary.json").read_text())["jobs"]
    packed = json.loads((tmp_path / "packed" / "summary.json").read_text())["jobs"]
    for a, p in zip(alone, packed, strict=True):
        assert p["status"] == "done" and p["iterations"] == 60
        assert abs(a["psnr"] - p["psnr"]) < 1.0
        assert (tmp_path / "packed" / "checkpoints" / f"{p['job']}.ckpt").exists()


def test_ray_without_ray_installed_says_how_to_install_it(tmp_path, folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    code, stderr = dipc("batch", folder, "-o", tmp_path / "out", "--task", "denoise", "--ray", *FIT)
    assert code == 2 and "pip install 'dip-compile[ray]'" in stderr, stderr


def test_an_unreachable_ray_address_is_one_line(tmp_path, folder, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    started = time.monotonic()
    code, stderr = dipc("batch", folder, "-o", tmp_path / "out", "--task", "denoise", "--ray", *FIT)
    assert code == 2 and "cannot reach the Ray cluster at 127.0.0.1:9" in stderr, stderr
    assert time.monotonic() - started < 30


def _ray_workers() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::run_task"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@ONCE
def test_ray_batch_survives_a_killed_worker_with_identical_outputs(tmp_path, folder):
    pytest.importorskip("ray")
    args = [folder, "--task", "denoise", "--sigma", "25", *FIT, *EXACT, "--stop", "fixed", "--iterations", "300"]
    args += ["--checkpoint-every", "0.5", "-q"]
    assert dipc("batch", "-o", tmp_path / "straight", *args)[0] == 0
    out = tmp_path / "ray"
    env = {**os.environ, "RAY_ADDRESS": ""}
    run = subprocess.Popen(
        [sys.executable, "-m", "dip_compile.cli", "batch", "-o", str(out), "--ray", *map(str, args)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and run.poll() is None:
        workers = _ray_workers()
        partial = list((out / ".partial").glob("*.ckpt")) if (out / ".partial").exists() else []
        if workers and len(partial) >= len(workers):  # every running job has checkpointed: kill them all
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed = workers
        time.sleep(0.2)
    _, stderr = run.communicate(timeout=300)
    assert killed is not None, "no Ray worker was caught mid-job"
    assert run.returncode == 0, stderr
    for i in range(3):
        assert torch.equal(load_image(out / f"img{i}.png"), load_image(tmp_path / "straight" / f"img{i}.png"))
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert [r["status"] for r in json.loads((out / "summary.json").read_text())["jobs"]] == ["done"] * 3
    resumed = [json.loads((out / f"img{i}.json").read_text()).get("resumed_from_iteration") for i in range(3)]
    assert any(it is not None and 0 < it < 300 for it in resumed), resumed  # the killed job went on from its checkpoint


def test_an_unexpected_error_in_one_job_is_a_row_and_the_others_go_on(tmp_path, folder, monkeypatch):
    original = restore.Fitter.perturbed_input
    second = load_image(folder / "img1.png")  # without noise options the observation is the image itself

    def broken_for_the_second_image(self):
        if torch.equal(self.problem.observation.cpu()[0], second):
            raise RuntimeError("simulated bug")
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", broken_for_the_second_image)
    code, stderr = dipc("batch", folder, "-o", tmp_path / "out", "--task", "denoise", *FIT, "-q")
    rows = {r["job"]: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())["jobs"]}
    assert code == 1
    assert rows["img1"]["error"] == "unexpected error (please report it): RuntimeError: simulated bug"
    assert rows["img0"]["status"] == rows["img2"]["status"] == "done"


TINY = ["--iterations", "5", "--depth", "2", "--channels", "8", "--skip-channels", "4", "-q"]


@pytest.fixture
def one_image(tmp_path: Path) -> Path:
    return save_png(smooth_image(32, 32), tmp_path / "a.png")


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.png,denoise,,--output {escape}", "drop -o/--output"),
        ("a.png,denoise,,-o {escape}", "drop -o/--output"),
        ("a.png,denoise,,--output ../escape.png", "drop -o/--output"),
        ("a.png,denoise,../escape,", "output must be a file name in OUTDIR"),
        ("a.png,denoise,{escape},", "output must be a file name in OUTDIR"),
        ("a.png,denoise,sub/x.png,", "output must be a file name in OUTDIR"),
        ("a.png,denoise,..,", "output must be a file name in OUTDIR"),
    ],
)
def test_a_row_cannot_write_outside_outdir(tmp_path, one_image, row, message):
    escape = tmp_path / "escape.png"
    (tmp_path / "jobs.csv").write_text("image,task,output,options\n" + row.format(escape=escape) + "\n")
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not escape.exists() and not (tmp_path / "out").exists()


def test_common_flags_cannot_redirect_a_jobs_output(tmp_path, one_image):
    from dip_compile.batch.jobs import fit_job

    job = BatchJob("a", "denoise", one_image)
    with pytest.raises(ManifestError, match="job a: dipc batch writes OUTDIR/NAME.png itself: drop -o/--output"):
        fit_job(job, ["--output", str(tmp_path / "elsewhere.png")], tmp_path / "out")


@pytest.mark.parametrize("name", ["summary", "Summary.png", "SUMMARY-0-of-2", "checkpoints", ".partial", ".dipc-batch"])
def test_a_job_cannot_take_a_name_the_batch_writes_itself(tmp_path, one_image, name):
    (tmp_path / "jobs.csv").write_text(f"image,task,output\na.png,denoise,{name}\n")
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY)
    stem = Path(name).stem
    assert code == 2 and f"job {stem} (" in stderr and "a name dipc batch uses itself" in stderr, stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_image_named_like_the_summary_is_refused_and_names_differing_in_case_collide(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    save_png(smooth_image(32, 32), images / "summary.png")
    code, stderr = dipc("batch", images, "-o", tmp_path / "out", "--task", "denoise", *TINY)
    assert code == 2 and "job summary (" in stderr, stderr
    save_png(smooth_image(32, 32), tmp_path / "a.png")
    (tmp_path / "jobs.csv").write_text("image,task,output\na.png,denoise,Kate\na.png,denoise,kate\n")
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY)
    assert code == 2 and "two jobs write kate.png" in stderr, stderr


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("image,task\na.png,denoise,--lr 0.5\n", "jobs.csv:2: 1 more field(s) than the header's 2 columns"),
        ("image,task\na.png,denoise\na.png,denoise,x,y\n", "jobs.csv:3: 2 more field(s)"),
        ("image,task,task\na.png,denoise,denoise\n", "jobs.csv:1: column(s) task given twice"),
    ],
)
def test_csv_rows_that_do_not_match_the_header_are_refused(tmp_path, one_image, manifest, message):
    (tmp_path / "jobs.csv").write_text(manifest)
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY)
    assert code == 2 and message in stderr, stderr


def test_a_csv_row_with_fewer_fields_leaves_the_rest_empty(tmp_path, one_image):
    (tmp_path / "jobs.csv").write_text("image,task,output,options\na.png,denoise\n")
    assert [(j.name, j.task, j.options) for j in load_jobs(tmp_path / "jobs.csv")] == [("a", "denoise", ())]


@pytest.mark.parametrize("value", [2.7, 2.0, True, "2.7", "two", [4]])
def test_factor_must_be_a_whole_number_in_jsonl_and_csv_alike(tmp_path, one_image, value):
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"image": "a.png", "task": "super-resolve", "factor": value}))
    code, stderr = dipc("batch", tmp_path / "jobs.jsonl", "-o", tmp_path / "out", *TINY)
    assert code == 2 and f"jobs.jsonl:1: factor must be a whole number, got {value!r}" in stderr, stderr
    if not isinstance(value, list):
        text = json.dumps(value) if not isinstance(value, str) else value
        (tmp_path / "jobs.csv").write_text(f"image,task,factor\na.png,super-resolve,{text}\n")
        code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY)
        assert code == 2 and "jobs.csv:2: factor must be a whole number" in stderr, stderr
    (tmp_path / "ok.jsonl").write_text(json.dumps({"image": "a.png", "task": "super-resolve", "factor": "8"}))
    assert load_jobs(tmp_path / "ok.jsonl")[0].factor == 8


def test_jsonl_options_of_another_type_are_one_line(tmp_path, one_image):
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"image": "a.png", "task": "denoise", "options": 5}))
    code, stderr = dipc("batch", tmp_path / "jobs.jsonl", "-o", tmp_path / "out", *TINY)
    assert code == 2 and "options must be a string of dipc fit flags or a list of them, got 5" in stderr, stderr


def test_a_missing_reference_fails_that_job_and_the_others_run(tmp_path):
    images, references = tmp_path / "images", tmp_path / "references"
    images.mkdir()
    references.mkdir()
    for name, seed in (("good", 0), ("broken", 1)):
        save_png(smooth_image(32, 32, seed=seed), images / f"{name}.png")
    save_png(smooth_image(32, 32, seed=0), references / "good.png")
    out = tmp_path / "out"
    code, stderr = dipc("batch", images, "-o", out, "--task", "denoise", "--reference-dir", references, *TINY)
    assert code == 1, stderr
    rows = {r["job"]: r for r in json.loads((out / "summary.json").read_text())["jobs"]}
    assert rows["good"]["status"] == "done" and math.isfinite(rows["good"]["psnr"])  # its reference was found
    assert rows["broken"]["status"] == "failed"
    assert (
        rows["broken"]["error"] == f"no reference for broken.png in {references} (looked for broken.png and the like)"
    )
    assert not (out / "broken.png").exists() and (out / "good.png").exists()


@pytest.mark.parametrize(
    "row, message",
    [
        ("a.png,super-resolve,1,,", "job bad: --factor must be 2, 4 or 8, got 1"),
        ("a.png,denoise,4,,", "job bad: --factor only applies to super-resolve"),
        ("a.png,denoise,,a.png,", "job bad: --mask/--holes/--box/--text only apply to inpaint, not denoise"),
        ("a.png,denoise,,,--device cuda", "job bad: --device cuda asked for, but no CUDA GPU is available"),
        ("a.png,deblur,,,", "job bad: deblur needs --kernel"),
        ("a.png,inpaint,,,--holes 1.5", "job bad: --holes is the fraction of pixels to drop"),
        ("a.png,denoise,,,--tile 16", "job bad: --tile (16) must be larger than twice --overlap (32)"),
    ],
)
def test_every_row_is_checked_as_dipc_fit_would_before_the_first_fit(tmp_path, one_image, monkeypatch, row, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "jobs.csv").write_text(
        "image,task,factor,mask,options,output\na.png,denoise,,,,first\n" + row + ",bad\n"
    )
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # the good first row did not run either


def test_a_second_batch_into_a_busy_outdir_is_refused_naming_the_holder(tmp_path, one_image):
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "jobs.csv").write_text("image,task\na.png,denoise\n")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from dip_compile.batch.lock import hold_outdir\n"
            "with hold_outdir(Path(sys.argv[1]), sys.argv[2] or None):\n"
            "    print('held', flush=True); sys.stdin.read()",
            str(out),
            "0/2",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", out, "--shard", "0/2", *TINY)
        assert code == 2 and f"{out} is in use by another dipc batch shard 0/2 (pid {holder.pid} on " in stderr, stderr
        code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY)
        assert code == 2 and "in use by another dipc batch (a run of its shards, --shard)" in stderr, stderr
        assert not (out / "a.png").exists() and not (out / "summary.csv").exists()
        code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", out, "--shard", "1/2", *TINY)
        assert code == 0, stderr  # another shard runs beside it (shard 1 of 2 has no job here)
    finally:
        holder.kill()  # a killed holder's lock goes with it
        holder.wait()
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY)
    assert code == 0 and (out / "a.png").exists(), stderr


def test_a_whole_batch_run_holds_outdir_against_any_other_run(tmp_path, one_image):
    import fcntl

    from dip_compile.batch.lock import hold_outdir

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "jobs.csv").write_text("image,task\na.png,denoise\n")
    with hold_outdir(out):
        # another process's view: flock locks belong to the open file, so a second open of it is another holder
        with open(out / ".dipc-batch.lock") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)
            assert other.read() == f"pid {os.getpid()} on {os.uname().nodename}\n"
    assert (out / ".dipc-batch.lock").read_text() == ""  # released, and no stale pid left
    assert dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY)[0] == 0


def test_the_summary_table_is_whole_in_a_narrow_terminal_and_in_a_log(tmp_path, monkeypatch):
    save_png(smooth_image(32, 32), tmp_path / "a.png")
    save_png(torch.ones(1, 16, 16), tmp_path / "small_mask.png")
    (tmp_path / "jobs.csv").write_text(
        "image,task,mask,output\n"
        "a.png,denoise,,a_rather_long_job_name_for_the_first_image\n"
        "a.png,inpaint,small_mask.png,another_long_name_whose_mask_is_too_small\n"
    )
    args = ["batch", tmp_path / "jobs.csv", "-o", tmp_path / "out", *TINY[:-1], "--force"]
    for terminal in ("", "1"):  # a log, then a terminal (rich reads FORCE_COLOR) 60 columns wide
        monkeypatch.setenv("COLUMNS", "60")
        monkeypatch.setenv("FORCE_COLOR", terminal)
        code, stderr = dipc(*args)
        assert code == 1
        table = stderr[stderr.index("dipc batch: 2 of 2 jobs") :].splitlines()
        assert table[1].split() == ["job", "task", "status", "iterations", "seconds", "stop_reason", "error"]
        assert table[2].split()[:3] == ["a_rather_long_job_name_for_the_first_image", "denoise", "done"]
        assert table[3].split()[:3] == ["another_long_name_whose_mask_is_too_small", "inpaint", "failed"]


def test_mean_ssim_leaves_out_jobs_whose_image_is_too_small_for_ssim():
    from dip_compile.batch.runner import Outcome
    from dip_compile.batch.summary import means

    rows = [
        Outcome("a", "denoise", "done", psnr=30.0, ssim=0.8),
        Outcome("tiny", "denoise", "done", psnr=20.0, ssim=None),  # an 8x8 image: SSIM not defined
    ]
    m = means(rows)["denoise"]
    assert m["mean_psnr"] == 25.0 and m["mean_ssim"] == 0.8
    assert means(rows[1:])["denoise"]["mean_ssim"] is None


@pytest.mark.parametrize("shard_spec", [None, "0/2"])
@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_lock_file_that_leads_to_another_file_is_refused_and_the_file_kept(tmp_path, one_image, shard_spec, link):
    out = tmp_path / "out"
    out.mkdir()
    victim = save_png(smooth_image(8, 8), tmp_path / "precious.png")
    content = victim.read_bytes()
    lock = out / (".dipc-batch.lock" if shard_spec is None else ".dipc-batch-0-of-2.lock")
    os.symlink(victim, lock) if link == "symbolic" else os.link(victim, lock)
    (tmp_path / "jobs.csv").write_text("image,task\na.png,denoise\n")
    shard_args = [] if shard_spec is None else ["--shard", shard_spec]
    code, stderr = dipc("batch", tmp_path / "jobs.csv", "-o", out, *shard_args, *TINY)
    what = "is a symbolic link" if link == "symbolic" else "is another name of a file (a hard link)"
    assert code == 2 and f"{lock} {what}: dipc batch locks OUTDIR there" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert victim.read_bytes() == content and not (out / "a.png").exists()


def test_two_shards_into_one_outdir_leave_each_other_their_partial_folder(tmp_path, folder, monkeypatch):
    out = tmp_path / "out"
    args = ["batch", folder, "-o", out, "--task", "denoise", *TINY]
    original = restore.Fitter.perturbed_input
    other: list[tuple[int, str]] = []

    def the_other_shard_runs_start_to_end_meanwhile(self):
        if self.iteration == 2 and not other:  # shard 1/2's img1 has begun: .partial is there, still empty
            other.append((-1, "running"))  # (its own fits pass here too)
            other[0] = dipc(*args, "--shard", "0/2")
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", the_other_shard_runs_start_to_end_meanwhile)
    code, stderr = dipc(*args, "--shard", "1/2")
    assert other and other[0][0] == 0, other
    assert code == 0, stderr
    for summary, jobs in (("summary-0-of-2.json", ["img0", "img2"]), ("summary-1-of-2.json", ["img1"])):
        rows = json.loads((out / summary).read_text())["jobs"]
        assert [(r["job"], r["status"]) for r in rows] == [(job, "done") for job in jobs], rows
    monkeypatch.setattr(restore.Fitter, "perturbed_input", original)
    code, stderr = dipc(*args)  # the whole batch once every shard is done: skips all, and tidies up
    assert code == 0 and not (out / ".partial").exists(), stderr


def test_a_plain_rerun_redoes_a_job_that_failed_after_writing_its_image(tmp_path, one_image, monkeypatch):
    (tmp_path / "jobs.csv").write_text("image,task\na.png,denoise\n")
    out = tmp_path / "out"

    def disk_full(*args, **kwargs):
        raise DipError(f"cannot write {out / 'a.json'}: No space left on device")

    monkeypatch.setattr(fitjob, "save_report", disk_full)  # (the report's writer, fitjob.OUTPUTS)
    code, _ = dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY)
    row = json.loads((out / "summary.json").read_text())["jobs"][0]
    assert code == 1 and row["status"] == "failed" and "No space left" in row["error"], row
    assert (out / "a.png").exists() and not (out / "a.json").exists()  # the image came before the report
    monkeypatch.undo()
    code, _ = dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY)
    row = json.loads((out / "summary.json").read_text())["jobs"][0]
    assert code == 0 and row["status"] == "done", row["error"]
    assert json.loads((out / "a.json").read_text())["batch"]["job"] == "a" and not (out / ".partial").exists()
    # an image that no run of this job wrote is still not replaced without --force
    (out / "c.png").write_bytes(b"someone else's")
    (tmp_path / "jobs.csv").write_text("image,task,output\na.png,denoise,c\n")
    assert dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY)[0] == 1
    row = json.loads((out / "summary.json").read_text())["jobs"][0]
    assert row["error"] == f"{out / 'c.png'} exists from another run: pass --force to redo it"
    assert (out / "c.png").read_bytes() == b"someone else's"


@pytest.mark.parametrize(
    "manifest, row, message",
    [
        ("jobs.csv", "image,task,output\na.png,denoise,x\0y\n", "jobs.csv:2: output holds a NUL character: 'x\\x00y'"),
        ("jobs.jsonl", {"image": "a.png", "output": "x\0y"}, "jobs.jsonl:1: output holds a NUL character"),
        ("jobs.csv", "image,task\na.png\0,denoise\n", "jobs.csv:2: image holds a NUL character: 'a.png\\x00'"),
        ("jobs.jsonl", {"image": "a.png", "options": ["--kernel", "gauss\0"]}, "jobs.jsonl:1: options holds a NUL"),
        ("jobs.csv", "image,task,options\na.png,denoise,--seed 1\0\n", "jobs.csv:2: options holds a NUL character"),
        ("jobs.jsonl", {"image": "a.png", "output": "x\ny"}, "output must be a file name without control characters"),
        ("jobs.jsonl", {"image": "a.png", "output": "x\ty"}, "output must be a file name without control characters"),
    ],
    ids=["csv-output", "jsonl-output", "csv-image", "jsonl-options", "csv-options", "newline", "tab"],
)
def test_a_nul_or_control_character_in_a_manifest_is_one_line(tmp_path, one_image, manifest, row, message):
    text = row if isinstance(row, str) else json.dumps({"task": "denoise", **row}) + "\n"
    (tmp_path / manifest).write_text(text)
    code, stderr = dipc("batch", tmp_path / manifest, "-o", tmp_path / "out", *TINY)
    assert code == 2 and message in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_long_manifest_is_parsed_and_checked_once_per_kind_of_row(tmp_path, one_image, monkeypatch):
    import typer

    from dip_compile.batch import jobs as batch_jobs
    from dip_compile.batch import runner
    from dip_compile.batch.jobs import fit_job

    save_png(smooth_image(32, 32, seed=1), tmp_path / "b.png")
    rows = [f"{'ab'[i % 2]}.png,denoise,,j{i}" for i in range(2000)]
    rows[7] = "a.png,denoise,--reference b.png,own-reference"  # options naming a file: parsed alone
    rows[8] = "b.png,denoise,--reference a.png,own-reference-2"
    (tmp_path / "jobs.csv").write_text("image,task,options,output\n" + "\n".join(rows) + "\n")
    jobs = load_jobs(tmp_path / "jobs.csv")
    calls = {"parse": 0, "validate": 0, "get_command": 0, "read_bytes": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(batch_jobs, "parse_fit_args", counted("parse", batch_jobs.parse_fit_args))
    monkeypatch.setattr(runner, "make_plan", counted("validate", runner.make_plan))
    monkeypatch.setattr(typer.main, "get_command", counted("get_command", typer.main.get_command))
    monkeypatch.setattr(Path, "read_bytes", counted("read_bytes", Path.read_bytes))
    options = runner.BatchOptions(tmp_path / "out")
    prepared = runner.prepare(jobs, options)
    assert (calls["parse"], calls["validate"]) == (3, 3)
    assert calls["get_command"] <= 1  # typer builds dipc's commands once per process, not once per row
    assert calls["read_bytes"] <= 4  # each input file is hashed once for the fingerprints (a.png, b.png)
    assert len(prepared) == 2000 and len({p.paths["image"] for p in prepared}) == 2000
    for i in (0, 1, 7, 8, 1999):  # each as its own dipc fit command would make it
        assert prepared[i].fit == fit_job(jobs[i], (), options.outdir.absolute()), i
    assert prepared[0].fingerprint == prepared[2].fingerprint != prepared[1].fingerprint
    assert (prepared[7].fit.reference, prepared[8].fit.reference) == (Path("b.png"), Path("a.png"))


def test_a_reference_in_the_other_mode_is_converted_and_the_job_scored(tmp_path):
    from dip_compile.imageio import to_grayscale

    gray, colour = smooth_image(32, 32, channels=1), smooth_image(32, 32, seed=1)
    save_png(gray.expand(3, -1, -1), tmp_path / "scan.png")  # a gray photo saved as RGB, with its gray original
    save_png(gray, tmp_path / "original.png")
    save_png(colour, tmp_path / "colour.png")
    save_png(to_grayscale(colour), tmp_path / "gray.png")
    save_png(smooth_image(16, 16), tmp_path / "small.png")
    (tmp_path / "jobs.csv").write_text(
        "image,task,reference,output\n"
        "scan.png,denoise,original.png,scan\ngray.png,denoise,colour.png,gray\nscan.png,denoise,small.png,small\n"
    )
    out = tmp_path / "out"
    code, _ = dipc("batch", tmp_path / "jobs.csv", "-o", out, *TINY, *EXACT)
    rows = {r["job"]: r for r in json.loads((out / "summary.json").read_text())["jobs"]}
    assert code == 1 and rows["scan"]["status"] == rows["gray"]["status"] == "done", rows
    assert math.isfinite(rows["scan"]["psnr"]) and math.isfinite(rows["gray"]["psnr"])
    assert json.loads((out / "scan.json").read_text())["notes"] == [
        "the reference is grayscale and IMAGE in colour: the reference compared as RGB (gray in R, G, B)"
    ]
    assert json.loads((out / "gray.json").read_text())["notes"] == [
        "the reference is in colour and IMAGE grayscale: the reference compared as grayscale (ITU-R 601 luma)"
    ]
    assert rows["small"]["status"] == "failed"  # another size cannot be compared
    assert rows["small"]["error"] == "reference is 16x16 with 3 channel(s); expected 32x32 with 3"


def test_a_ray_task_reserves_the_estimated_peak_memory_of_its_fits(tmp_path, folder, monkeypatch):
    """Ray starts on a node only the fits whose estimates its memory holds: each CPU task asks for its fits'
    estimated peaks (capped at the largest node's memory, else it would never start); a GPU task asks for none."""
    from dip_compile.batch import cluster, runner
    from dip_compile.estimate import estimate
    from dip_compile.plan import load_problem

    save_png(smooth_image(64, 32, seed=5), folder / "wide.png")
    jobs = load_jobs(folder, "denoise")
    options = runner.BatchOptions(tmp_path / "out", common=tuple(FIT), ray=True)
    prepared = runner.prepare(jobs, options)
    each = []
    for p in prepared:
        config, problem = load_problem(p.plan)
        each.append(estimate(config, problem.canvas, problem.channels, "cpu").peak_bytes)
    assert each[-1] > each[0] > 0  # (wide.png is last: the folder's sorted order) and larger
    assert cluster.reserved_bytes(prepared[:2]) == each[0] + each[1]  # a pack's fits run together
    (folder / "img0.png").write_bytes(b"not a png")  # unreadable now: its worker will say so; it reserves nothing
    assert cluster.reserved_bytes(prepared[:2]) == each[1]

    class FakeRay:
        """Records what each task asked for; runs nothing."""

        def __init__(self, node_bytes: int) -> None:
            self.node_bytes, self.asked = node_bytes, []

        def is_initialized(self) -> bool:
            return True

        def nodes(self) -> list:
            return [{"Alive": True, "Resources": {"memory": self.node_bytes}}, {"Alive": False, "Resources": {}}]

        def remote(self, function):
            fake = self

            class Remote:
                def __init__(self, memory: int = 0) -> None:
                    self.memory = memory

                def options(self, **kw):
                    return Remote(kw.get("memory", self.memory))

                def remote(self, task, *args):
                    fake.asked.append((len(task), self.memory))
                    return object()

            return Remote()

        def wait(self, refs, num_returns):
            return refs[:num_returns], refs[num_returns:]

        def get(self, ref):
            return []

    big, small = 10 * 2**30, each[-1] - 1  # a node that holds every fit; one that holds all but wide.png's
    for node_bytes, gpus, expected in ((big, 0.0, each[1:]), (small, 0.0, [*each[1:3], small]), (big, 1.0, [0] * 3)):
        fake = FakeRay(node_bytes)
        monkeypatch.setattr(cluster, "import_ray", lambda fake=fake: fake)
        ray_options = runner.BatchOptions(tmp_path / "out", common=tuple(FIT), ray=True, gpus_per_fit=gpus)
        _, interrupted = cluster.run_on_ray(prepared[1:], ray_options, lambda outcome: None)
        assert not interrupted and fake.asked == [(1, m) for m in expected], (node_bytes, gpus, fake.asked)


def test_ray_memory_sizes_only_the_local_ray_dipc_batch_starts(tmp_path, folder, monkeypatch):
    """--ray-memory: the memory a local Ray lets the fits reserve (Ray's own default is about 70% of the free
    memory); a cluster or a Ray already running has its own, so it is refused there in one line, as nonsense is."""
    from dip_compile.allocator import machine_bytes
    from dip_compile.batch import cluster
    from dip_compile.errors import DipError

    class LocalRay:
        def __init__(self) -> None:
            self.started: dict = {}

        def is_initialized(self) -> bool:
            return bool(self.started)

        def init(self, **kw) -> None:
            self.started = kw

        def cluster_resources(self) -> dict:
            return {"CPU": 2}

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    fake = LocalRay()
    assert cluster.connect(fake, 1.5) == "local Ray (2 CPUs)" and fake.started["_memory"] == int(1.5 * 2**30)
    fake = LocalRay()
    cluster.connect(fake)
    assert "_memory" not in fake.started  # Ray's own share
    with pytest.raises(DipError, match="not the Ray this process already runs"):
        cluster.connect(fake, 1.0)
    total = machine_bytes()
    if total is not None:
        with pytest.raises(DipError, match="is more than this machine's"):
            cluster.connect(LocalRay(), 2 * total / 2**30)
    monkeypatch.setenv("RAY_ADDRESS", "ray://10.0.0.1:10001")
    with pytest.raises(DipError, match=r"not the cluster at ray://10.0.0.1:10001 \(RAY_ADDRESS\).*ray start --memory"):
        cluster.connect(LocalRay(), 1.0)
    monkeypatch.delenv("RAY_ADDRESS")
    for bad, why in (("0", "must be a positive number of GiB"), ("nan", "must be a positive number of GiB")):
        code, stderr = dipc("batch", folder, "-o", tmp_path / "out", "--task", "denoise", "--ray", "--ray-memory", bad)
        assert code == 2 and why in stderr and len(stderr.strip().splitlines()) == 1, stderr
    code, stderr = dipc("batch", folder, "-o", tmp_path / "out", "--task", "denoise", "--ray-memory", "4")
    assert code == 2 and "give --ray too" in stderr, stderr
    assert not (tmp_path / "out").exists()
