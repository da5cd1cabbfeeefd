"""benchmarks/: one runner (``python -m benchmarks NAME``) over the study modules, each importable as
``benchmarks.X`` (nothing runs, no ``sys.path`` edit) and sharing ``benchmarks.common``; and the producers that went
stale against what they read run on made data (the presets table's deblur row, the stopping study's replay of a
schedule study)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import __main__ as runner
from benchmarks import common
from conftest import save_png, smooth_image
from dip_compile import presets
from dip_compile.restore import load_problem, make_plan

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")
STUDIES = sorted(runner.studies())


def test_every_module_but_the_scaffolding_is_a_study_of_the_runner() -> None:
    assert (BENCHMARKS / "__init__.py").is_file()
    assert set(MODULES) - set(STUDIES) == {"__main__", "common"}
    assert {"quality", "stopping_study", "schedule_study", "presets_quality", "paper_tables", "fast_study"} <= set(
        STUDIES
    )
    assert all(runner.studies().values())  # each says what it measures


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_imports_without_editing_sys_path(name: str):
    before = list(sys.path)
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__name__ == f"benchmarks.{name}"
    assert sys.path == before  # the script-mode line stays out of the way of an import
    assert callable(getattr(module, "main", None)) or name == "common"


@pytest.mark.parametrize("name", STUDIES)
def test_the_runner_runs_every_study_by_name(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        runner.main([name, "--help"])  # parsed by the study's own parser, which runs nothing for --help
    assert exit.value.code == 0
    assert f"usage: python -m benchmarks {name}" in capsys.readouterr().out


def test_the_runner_lists_the_studies_and_refuses_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main([]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in STUDIES)
    assert "Tiles against the whole image" in listed  # tiling_seams' docstring, read without importing it
    assert runner.main(["nonesuch"]) == 2
    assert "no study 'nonesuch'" in capsys.readouterr().err


def test_a_study_runs_as_a_script_as_a_module_and_through_the_runner() -> None:
    """``python benchmarks/X.py`` (the docs' form) finds benchmarks.common without PYTHONPATH; so do the ``-m`` forms.
    (memory_estimate imports no torch before it runs: three quick interpreters.)"""
    launches = (
        ["benchmarks/memory_estimate.py"],
        ["-m", "benchmarks.memory_estimate"],
        ["-m", "benchmarks", "memory_estimate"],
    )
    for launch in launches:
        done = subprocess.run([sys.executable, *launch, "--help"], cwd=BENCHMARKS.parent, env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "--save-memory {off,on,both}" in done.stdout


def test_a_saved_run_prints_as_a_markdown_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import batch_throughput

    row = {"size": 8, "mode": "pack2", "flags": "--pack 2", "jobs": 2, "seconds": 1.0, "images_per_hour": 7200.0,
           "ratio": 1.5, "mean_psnr": 30.0}  # fmt: skip
    saved = [tmp_path / "a.json", tmp_path / "b.json"]
    common.write_json(saved[0], {"rows": [row]})
    common.write_json(saved[1], {"rows": [row | {"mode": "sequential", "flags": ""}]})
    assert batch_throughput.main(["--table", *map(str, saved)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| size | mode | flags |") and lines[1] == "|" + " --- |" * 8
    assert lines[2:] == ["| 8 | pack2 | `--pack 2` | 2 | 1.0 | 7200 | 1.50x | 30.00 |",
                         "| 8 | sequential | `(none)` | 2 | 1.0 | 7200 | 1.50x | 30.00 |"]  # fmt: skip


def _made_data(root: Path) -> Path:
    """Every file presets_quality.SOURCES reads, as small made images under the names it expects."""
    from benchmarks.presets_quality import SOURCES

    for image, extra, _ in SOURCES.values():
        for i, name in enumerate([image] + ([extra] if extra else [])):
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if "mask" in name:
                mask = np.ones((40, 40), np.float32)
                mask[12:24, 10:30] = 0.0
                save_png(mask[None], path)
            else:
                save_png(smooth_image(40, 40, seed=i), path)
    return root


def test_presets_quality_prepares_a_job_for_every_preset(tmp_path: Path):
    """The table's rows are the registry's presets: a preset added there (deblur was) has a source here, and every
    job it makes (``dipc fit``'s own, from its command line) builds its problem (deblur's needs a kernel, which no
    preset gives)."""
    from benchmarks.presets_quality import SOURCES, prepare

    assert set(SOURCES) == set(presets.NAMES)
    data = _made_data(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    for name in presets.NAMES:
        args, side = prepare(data, out, name, 32, 2)
        job = common.fit_job(args)
        config, problem = load_problem(make_plan(job), [])
        assert config.preset == name and side >= 32 and config.iterations == 2
        assert (job.checkpoint, job.report) == (out / f"{name}.ckpt", out / f"{name}.json")
        if name == "deblur":
            assert config.kernel == "gaussian:2" and problem.kernel is not None and problem.reference is not None


def _curves(best_at: int, last: int = 2000) -> dict[str, list[float] | list[int]]:
    """A recording as stopping_study.curves makes it: the variance bottoms out at ``best_at``, the EMA PSNR peaks
    there."""
    its = list(range(5, last + 1, 5))
    return {
        "iteration": its,
        "variance": [1.0 + abs(it - best_at) / 1000 for it in its],
        "psnr_ema": [30.0 - abs(it - best_at) / 500 for it in its],
    }


def test_stopping_study_replays_a_schedule_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """schedule_study.py writes ``runs`` (a case per image, noise and schedule); the replay reads them as cases."""
    from benchmarks import stopping_study as ss

    run = {"image": "a.png", "noise": "gaussian:25", "size": 32, "schedule": "constant:0.01", "seconds": 1.0}
    saved = {"schedules": ["constant:0.01"], "runs": [run | _curves(800), run | _curves(1200)]}
    path = tmp_path / "schedule_study_32.json"
    path.write_text(json.dumps(saved))

    cases = ss.load_cases(path)
    assert len(cases) == 2
    rows = {(r["rule"], r["value"], r["burn_in"]): r for r in ss.summarise(cases)}
    patience = rows[("patience", 100, ss.BURN_IN)]
    # stops 100 past the minimum and keeps the EMA LAG (99) past it: the record at +95, 95 / 500 = 0.19 dB below
    assert ss.LAG == 99
    assert patience["stops"] == ["900 (0.19)", "1300 (0.19)"]
    assert patience["mean_gap_db"] == pytest.approx(0.19)
    assert patience["mean_run_share"] == pytest.approx((900 + 1300) / 2 / 2000)
    assert ss.main(["--replay", str(path)]) == 0
    assert "patience 100" in capsys.readouterr().out

    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="no 'cases'"):
        ss.load_cases(tmp_path / "other.json")


def test_stopping_study_replays_the_held_out_rule_on_held_out_curves():
    from benchmarks import stopping_study as ss

    case = _curves(800) | {"psnr_output": [0.0] * 400}
    case["held_error"] = [0.01 + abs(it - 600) / 1e5 for it in case["iteration"]]  # its minimum 200 before the best
    assert ss.replay_holdout(case, 300, 0.0) == (900, 600)
    assert ss.replay_holdout(case, 300, 0.5) == (305, 305)  # no minimum 50% below the first record (5)
    rows = {r["value"]: r for r in ss.summarise([case]) if r["rule"] == "holdout"}
    # the EMA LAG (99) after the minimum, the record at 695: 105 before the best PSNR, 105 / 500 = 0.21 dB below
    assert rows["300/0.003"]["stops"] == ["900 (0.21)"] and rows["300/0.003 lag 0"]["stops"] == ["900 (0.40)"]
    assert not [r for r in ss.summarise([_curves(800)]) if r["rule"] == "holdout"]  # no held-out curve: no rows


def test_stopping_study_replays_the_held_out_rule_on_fit_reports_where_the_fit_stopped(tmp_path: Path) -> None:
    """A held-out fit's report carries the curve its stopper read: replayed with the fit's own patience and
    tolerance, the rule stops where the fit stopped; reports of other rules are skipped."""
    from benchmarks import stopping_study as ss
    from conftest import dipc

    clean = smooth_image(32, 32)
    save_png(clean, tmp_path / "clean.png")
    noisy = (clean.numpy() + np.random.default_rng(0).normal(0, 0.2, clean.shape)).clip(0, 1)
    save_png(noisy, tmp_path / "noisy.png")
    reports = tmp_path / "reports"
    reports.mkdir()
    tiny = ["--depth", "3", "--channels", "8", "--skip-channels", "2", "--input-depth", "4", "--device", "cpu", "-q"]
    for name, stop in (("held", ["--stop", "holdout", "--stop-patience", "40"]), ("fixed", ["--stop", "fixed"])):
        code, err = dipc(
            "fit", "denoise", tmp_path / "noisy.png", "--reference", tmp_path / "clean.png", "-o", tmp_path / f"{name}.png",
            "--iterations", "400", "--log-every", "5", "--report", reports / f"{name}.json", *stop, *tiny,
        )  # fmt: skip
        assert code == 0, err
    report = json.loads((reports / "held.json").read_text())
    (case,) = ss.load_cases(reports)
    assert case["image"] == "held" and case["iteration"][-1] == report["iterations"]
    stop, chosen = ss.replay_holdout(case, 40, report["stop"]["tolerance"])
    assert stop == report["iterations"]  # the marks are read on the recorded curve: the same stop
    # the fit takes its minimum every iteration, the replay per record: within a record's spacing, either side
    assert abs(report["stop"]["minimum_iteration"] - chosen) < report["stop"]["error_every"]
    assert [r for r in ss.summarise([case]) if r["rule"] == "holdout"]
    assert report["stop_reason"] == "auto-stop" and report["iterations"] < 400  # (the rule did stop the fit)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no report of a --stop holdout fit"):
        ss.load_cases(tmp_path / "empty")


def test_tiling_seams_finds_the_blend_zones_and_the_square_where_four_tiles_meet():
    from benchmarks.tiling_seams import blend_zones, meeting_square

    zones = blend_zones((128, 128), 64, 16)  # starts 0, 32, 64: tiles overlap on rows and columns 32-63 and 64-95
    assert zones[:, 40].all() and zones[40, :].all() and not zones[10, 10] and not zones[10, 100]
    assert zones.sum() == 128 * 128 - 4 * 32 * 32  # all but the four corners' squares
    assert meeting_square((128, 128), 64, 16, 48) == (24, 24)  # centred on (48, 48), mid first overlap


def test_memory_estimate_fit_recovers_the_constants_of_made_rows():
    from benchmarks.memory_estimate import fit_constants

    mib = 2**20
    keep = {
        (False, False, False): 1.09,
        (False, True, False): 0.54,
        (True, False, False): 1.2,
        (True, True, False): 0.8,
    }
    keep |= {(r, s, True): 1.5 * k for (r, s, _), k in list(keep.items())}
    overhead = {False: 240, True: 60}
    rows = [
        {"net": "n", "size": a, "precision": "bf16" if reduced else "fp32", "save_memory": save, "kept_memory": kept,
         "activation_bytes": a * mib, "state_bytes": 30 * mib, "image_bytes": i * mib}
        for reduced in (False, True) for save in (False, True) for kept in (False, True)
        for a, i in ((400, 20), (1600, 80), (6400, 320))
    ]  # fmt: skip
    for r in rows:
        key = (r["precision"] == "bf16", r["save_memory"], r["kept_memory"])
        r["measured_bytes"] = keep[key] * r["activation_bytes"] + 30 * mib + r["image_bytes"]
        r["measured_bytes"] += overhead[r["kept_memory"]] * mib
    fitted = fit_constants(rows)
    assert fitted["keep"] == pytest.approx(keep) and fitted["overhead_mib"] == pytest.approx(overhead)
    glibc = {(r["size"], r["precision"], r["save_memory"]): r["measured_bytes"] for r in rows if not r["kept_memory"]}
    ratios = [
        r["measured_bytes"] / glibc[r["size"], r["precision"], r["save_memory"]] for r in rows if r["kept_memory"]
    ]
    assert fitted["growth"] == pytest.approx(max(ratios)) and max(ratios) > 1.3  # kept peak over glibc's, same case


def test_step_profile_sorts_a_steps_operators_into_its_parts(tmp_path: Path) -> None:
    from benchmarks import step_profile

    assert step_profile.category("aten::convolution_backward") == "conv backward"
    assert step_profile.category("aten::mkldnn_convolution") == "conv forward"
    assert step_profile.category("aten::native_batch_norm_backward") == "batchnorm"
    assert step_profile.category("aten::_fused_adam_") == "optimizer (Adam)"
    assert step_profile.category("aten::normal_") == "input noise"  # not "loss and statistics" (its "norm")
    out = tmp_path / "profile.json"
    assert step_profile.main(["--size", "32", "--iterations", "1", "--warmup", "1", "--precision", "fp32",
                              "--out", str(out)]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    assert record["by_category_ms"]["conv forward"] > 0 and record["gflop"] > 0
    assert record["peak_2048_gflops"] > 0 and record["share_of_peak_2048"] > 0


SMALL = "--precision fp32 --channels 8 --depth 2"  # a small net in fp32 in both passes: the studies' fits in seconds


def _one_image(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_png(smooth_image(40, 40), folder / "a.png")
    return folder


def test_the_deblur_study_fits_through_dipc_fit_and_tunes_its_baselines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import deblur_quality as dq

    out = tmp_path / "out"
    argv = ["--data", str(_one_image(tmp_path / "data")), "--out", str(out), "--images", "a.png", "--size", "32"]
    assert dq.main([*argv, "--iterations", "2", "--kernels", "gaussian:1", "--fit-args", SMALL]) == 0
    (row,) = json.loads((out / "deblur_quality.json").read_text())["cases"]
    assert (row["case"], row["size"], row["iterations"]) == ("a-gaussian1", 32, 2)
    assert row["wiener_nsr"] in dq.NSR and row["rl_iterations"] in dq.RL_ITERATIONS
    assert 0 < row["blurred_psnr"] < 60 and 0 < row["dip_psnr"] < 60 and (out / "a-gaussian1-compare.png").is_file()
    capsys.readouterr()
    assert dq.main(["--table", str(out / "deblur_quality.json")]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1].startswith(f"| a.png 32 px, gaussian:1 | {row['blurred_psnr']:.2f} |")
    )
    # --resume keeps that row and fits only the case it lacks
    fitted: list[str] = []
    monkeypatch.setattr(dq, "fit", lambda args, log: fitted.append(args[args.index("--kernel") + 1]) or 1.0)
    with pytest.raises(FileNotFoundError):  # (the stand-in wrote no report for box:3)
        dq.main([*argv, "--iterations", "2", "--kernels", "gaussian:1", "box:3", "--resume"])
    assert fitted == ["box:3"]
    assert json.loads((out / "deblur_quality.json").read_text())["cases"] == [row]


def test_the_noise_study_fits_the_matching_loss_and_mse(tmp_path: Path) -> None:
    from benchmarks import noise_quality as nq

    out = tmp_path / "out"
    argv = ["--data", str(_one_image(tmp_path / "data")), "--out", str(out), "--images", "a.png", "--size", "32"]
    assert nq.main([*argv, "--iterations", "2", "--noises", "poisson:30", "--fit-args", SMALL]) == 0
    (row,) = json.loads((out / "noise_quality.json").read_text())["cases"]
    assert [f["loss"] for f in row["fits"]] == ["poisson", "mse"] and all(f["iterations"] == 2 for f in row["fits"])
    assert row["baseline"].startswith("Anscombe + Gaussian") and row["baseline_psnr"] > 0


def test_the_tiling_study_fits_whole_and_tiled_and_pictures_where_tiles_meet(tmp_path: Path) -> None:
    from benchmarks import tiling_seams

    out, picture = tmp_path / "out", tmp_path / "seam.png"
    argv = ["--data", str(_one_image(tmp_path / "data")), "--image", "a.png", "--out", str(out), "--size", "48"]
    argv += ["--tile", "32", "--overlap", "8", "--iterations", "2", "--channels", "8", "--precision", "fp32"]
    assert tiling_seams.main([*argv, "--crop", "16", "--picture", str(picture), "--fit-args", "--depth 2"]) == 0
    result = json.loads((out / "tiling_seams.json").read_text())
    assert result["tiles"] == 4 and set(result["seconds"]) == {"whole", "tiled"}
    assert 0 < result["tiled_psnr_in_blend_zones"] < 60 and 0 < result["whole_psnr"] < 60
    reports = [json.loads((out / f"{n}.json").read_text()) for n in ("whole", "tiled")]
    assert [r["iterations"] for r in reports] == [2, 2 * 4]  # the tiled report counts every tile's
    assert picture.is_file()


def test_schedule_study_tables_saved_runs_against_the_first_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import schedule_study

    schedules = ["constant:0.01", "constant:0.02"]
    runs = [
        {"image": "a.png", "noise": "gaussian:25", "schedule": s, "seconds": 1.0} | _curves(best_at)
        for s, best_at in zip(schedules, (1000, 600), strict=True)
    ]
    common.write_json(tmp_path / "study.json", {"schedules": schedules, "runs": runs})
    assert schedule_study.main(["--table", str(tmp_path / "study.json")]) == 0
    _, summary = schedule_study.analyse(runs, schedules)
    # both peak at 30 dB; within 0.5 dB of it (|it - best| <= 250) from 750 for the baseline, from 350 for lr 0.02
    faster = summary[1]
    assert faster["worst_best_change_db"] == 0 and faster["mean_ratio_to_0.5"] == pytest.approx(350 / 750)
    assert "| constant:0.02 | 1 | +0.00 / +0.00 | 0.47 / " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("module", "argv", "says"),
    [
        ("stopping_study", ["--iterations", "50"], "needs a full window first"),
        ("schedule_study", ["--iterations", "50"], "needs a full window first"),
        ("time_to_quality", ["--iterations", "8"], "records its PSNR every 10"),
    ],
)
def test_studies_refuse_runs_too_short_to_record_a_curve_in_one_line(
    module: str, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Fewer iterations than a study's first recorded point used to end in a traceback after the fits had run."""
    import importlib

    study = importlib.import_module(f"benchmarks.{module}")
    with pytest.raises(SystemExit) as exc:
        study.main(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_study_pools_workers_end_with_their_parent(tmp_path: Path) -> None:
    """schedule_study's pool: a parent killed mid-fit (here it exits at once, as kill -9 ends it) leaves no worker
    asleep forever; each watches its parent and ends within a second or so."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from benchmarks.common import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    context = multiprocessing.get_context('spawn')\n"
        "    pool = ProcessPoolExecutor(1, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(0.5)\n"
        "    os._exit(0)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)})  # fmt: skip
    worker = int(done.stdout.split()[0])
    status = Path(f"/proc/{worker}/status")
    deadline = time.monotonic() + 20
    while status.exists() and "zombie" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = status.exists() and "zombie" not in status.read_text()
    if alive:
        os.kill(worker, signal.SIGKILL)  # (not left behind by a failing test either)
    assert not alive, f"worker {worker} outlived its parent"
