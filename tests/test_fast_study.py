"""benchmarks/fast_study.py: the candidates' options, which ones the installed CLI takes, the choice of the winner on
made numbers, and the whole study on a made-up paper folder of tiny images at 2 iterations (results, failed fits,
unavailable candidates, and a rerun that fits nothing again)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from benchmarks import fast_study as fs
from conftest import dipc, save_png, smooth_image


def test_candidate_options_are_dipc_fit_flags_and_the_cap_bounds_every_fit() -> None:
    half = fs.BY_NAME["w128-half"]
    assert fs.options_of(half, "table1") == ["--iterations", "3000"]  # half the kate preset's 6001
    assert fs.options_of(half, "table1", cap=20) == ["--iterations", "20"]
    assert fs.options_of(fs.BY_NAME["w32-c2f-50"], "sr", cap=50) == [
        "--channels", "32", "--coarse-share", "0.5", "--iterations", "50",
    ]  # fmt: skip
    assert fs.options_of(fs.BY_NAME["defaults"], "sr") == []
    problem = list(fs.TABLES["deblur"].problem)  # a table's own options come first (the fit degrades its image)
    assert fs.options_of(fs.BY_NAME["w64-half"], "deblur") == [*problem, "--channels", "64", "--iterations", "4000"]


def test_every_candidate_is_taken_by_the_cli_or_reported_unavailable_with_its_reason() -> None:
    for candidate in fs.CANDIDATES:  # (on one table each: parsing dipc fit's options takes a while)
        table = (candidate.tables or tuple(fs.TABLES))[-1]
        why = fs.unavailable(candidate, table)
        assert why is None or (why and "\n" not in why), (candidate.name, table, why)
    assert fs.unavailable(fs.BY_NAME["c2f-50"], "denoise") is None
    bogus = fs.Candidate("bogus", ("--no-such-option", "3"), "an option no dipc fit has")
    assert "--no-such-option" in (fs.unavailable(bogus, "sr") or "")


def fit(psnr: float, seconds: float, iterations: int = 100) -> dict:
    return {"status": "done", "psnr": psnr, "seconds": seconds, "iterations": iterations}


def test_fast_is_the_quickest_within_half_a_decibel_on_the_mean_and_the_worst_image() -> None:
    names = ["defaults", "slow-good", "fast-bad-worst", "fast-ok", "half-done", "gone"]
    rows = [
        {"fits": {"defaults": fit(30.0, 100), "slow-good": fit(30.05, 45), "fast-bad-worst": fit(30.0, 10),
                  "fast-ok": fit(29.9, 15), "half-done": fit(30.0, 5), "gone": {}}},
        {"fits": {"defaults": fit(28.0, 300), "slow-good": fit(28.0, 150), "fast-bad-worst": fit(27.4, 30),
                  "fast-ok": fit(27.7, 45), "half-done": {"status": "failed", "error": "too small"}, "gone": {}}},
    ]  # fmt: skip
    summary = fs.summarise(rows, names, {"gone": "no such option: --generator drp"})
    ok = summary["candidates"]["fast-ok"]
    assert ok["delta_db"] == pytest.approx(-0.2) and ok["worst_delta_db"] == pytest.approx(-0.3)
    assert ok["time_share"] == pytest.approx(60 / 400) and ok["iterations"] == 100
    # fast-bad-worst is quicker and only 0.3 dB worse on the mean, but 0.6 dB on one image
    assert summary["fast"] == "fast-ok" and summary["meets_target"]
    assert summary["default_worthy"] == ["slow-good"]  # within 0.1 dB at 0.49 of the time
    assert summary["candidates"]["half-done"]["status"] == "partial"
    assert summary["candidates"]["half-done"]["errors"] == ["too small"]
    assert summary["candidates"]["gone"] == {"status": "unavailable", "why": "no such option: --generator drp"}
    both = {"a": {"rows": rows, "default_worthy": ["slow-good", "x"]}, "b": {"rows": rows, "default_worthy": ["x"]}}
    assert fs.new_default(both) == ["x"]


def made_paper(root: Path) -> Path:
    """A paper/ folder of the study's first image per table, 64 px (the Table 1 image grayscale)."""
    clean = smooth_image(64, 64)
    cset9 = root / "paper" / "denoising" / "CSet9"
    cset9.mkdir(parents=True)
    save_png(clean, cset9 / "F16_GT.png")
    rng = np.random.default_rng(0)
    save_png((clean.numpy() + rng.normal(0, 0.1, clean.shape)).clip(0, 1), cset9 / "F16_noisy25.png")
    set5 = root / "paper" / "sr" / "Set5" / "x4"
    set5.mkdir(parents=True)
    save_png(smooth_image(64, 64, seed=1), set5 / "bird_GT.png")
    table1 = root / "paper" / "inpainting" / "table1"
    table1.mkdir(parents=True)
    gray = smooth_image(64, 64, channels=1, seed=2)
    mask = (rng.random((1, 64, 64)) > 0.5).astype(np.float32)
    save_png(gray, table1 / "Cameraman256_GT.png")
    save_png(mask, table1 / "Cameraman256_mask.png")
    save_png(gray.numpy() * mask, table1 / "Cameraman256_masked.png")
    return root


def test_each_table_takes_its_own_groups_images(tmp_path: Path) -> None:
    data = made_paper(tmp_path / "data")
    set14 = data / "paper" / "sr" / "Set14" / "x4"
    set14.mkdir(parents=True)
    for name in ("zebra", "face"):  # face is no study image
        save_png(smooth_image(64, 64, seed=3), set14 / f"{name}_GT.png")
    assert [c.name for c in fs.study_cases("sr", data)] == ["Set5-x4-bird"]
    assert [c.name for c in fs.study_cases("sr14", data)] == ["Set14-x4-zebra"]
    assert fs.default_iterations("sr14") == fs.default_iterations("sr") == 2000
    assert fs.BY_NAME["drp-250"].tables == fs.SR  # the shipped --fast is tried on both SR tables
    (deblur,) = fs.study_cases("deblur", data)  # no paper table deblurs: the fit blurs CSet9's ground truth itself
    assert (deblur.name, deblur.task, deblur.image, deblur.reference) == (
        "F16-deblur",
        "deblur",
        "F16_GT.png",
        "F16_GT.png",
    )
    assert "--from-reference" in fs.TABLES["deblur"].problem and fs.default_iterations("deblur") == 8000
    # deblurring's defaults stop on held-out pixels since 2026-12-07: a share of a fixed count is no candidate there
    assert fs.FIXED == ("sr", "sr14", "table1") and "deblur" not in fs.BY_NAME["w64-third"].tables


def in_process(manifest: Path, outdir: Path, args, deadline) -> int:
    """paper_tables.run_batch without a new Python process (each would import torch again)."""
    return dipc("batch", manifest, "-o", outdir, "--seed", "0", "--device", "cpu", "-q")[0]


def test_the_study_fits_scores_and_resumes_on_made_images(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fs, "run_batch", in_process)
    options_of = fs.options_of  # every fit on a tiny net (a candidate's own options come after, and win)
    tiny = ["--depth", "3", "--channels", "16", "--input-depth", "4"]
    monkeypatch.setattr(fs, "options_of", lambda c, t, cap=None: [*tiny, *options_of(c, t, cap)])
    made = [
        fs.Candidate("absent", ("--generator", "nope"), "a generator this dipc fit lacks"),
        fs.Candidate("deep-c2f", ("--depth", "5", "--coarse-share", "0.5"), "refused by the fit: 64 px is too small"),
    ]
    monkeypatch.setattr(fs, "BY_NAME", {**fs.BY_NAME, **{c.name: c for c in made}})
    data, out = made_paper(tmp_path / "data"), tmp_path / "results"
    argv = ["--scale", "crop", "--side", "64", "--cap", "2", "--data", str(data), "--out", str(out)]
    argv += ["--candidates", "c2f-50,absent,deep-c2f"]
    assert fs.main(argv) == 0
    root = out / "crop64-cap2"
    result = json.loads((root / "fast_study.json").read_text())
    assert set(result["tables"]) == {"denoise", "sr", "sr14", "table1", "deblur"}
    assert result["tables"]["sr14"]["rows"] == []  # the made data holds no Set14 image
    for table in (t for t in result["tables"].values() if t["rows"]):
        names = [r["name"] for r in table["rows"]]
        assert names in (["F16-s25"], ["Set5-x4-bird"], ["Cameraman256"], ["F16-deblur"])
        found = table["candidates"]
        assert found["defaults"]["images"] == 1 and found["c2f-50"]["status"] == "done"
        assert found["c2f-50"]["iterations"] == 2 and found["c2f-50"]["time_share"] > 0
        assert table["rows"][0]["fits"]["c2f-50"]["coarse"]["iterations"] == 1
        assert found["deep-c2f"]["images"] == 0 and "--coarse-share needs an image" in found["deep-c2f"]["errors"][0]
        assert found["absent"]["status"] == "unavailable" and "nope" in found["absent"]["why"]
    text = (root / "fast_study.md").read_text()
    assert "| c2f-50 | 1 |" in text and "| absent | unavailable:" in text and "| deep-c2f | 0 of 1:" in text
    fits = sorted((root / "batch").rglob("*.png"))
    stamps = [p.stat().st_mtime_ns for p in fits]
    assert len(fits) == 8 and fs.main(argv) == 0  # a rerun skips the finished fits
    assert [p.stat().st_mtime_ns for p in fits] == stamps

    monkeypatch.setattr(fs, "TIMING_ITERATIONS", 3)  # time the steps, fit nothing: the shares come from the timings
    assert fs.main([*argv, "--report", "--time-steps", "--time-repeats", "1"]) == 0
    timed = json.loads((root / "steps.json").read_text())
    assert set(timed["tables"]["sr"]) == {"defaults@64x64", "c2f-50@64x64"}  # deep-c2f's fit refused: not timed
    assert len(timed["runs"]) == 4 and "load_average" in timed["runs"][0]["before"]
    result = json.loads((root / "fast_study.json").read_text())
    sr = result["tables"]["sr"]
    fit_ = sr["rows"][0]["fits"]["c2f-50"]
    assert fit_["estimated_seconds"] == pytest.approx(2 * timed["tables"]["sr"]["c2f-50@64x64"] / 1000)
    assert sr["candidates"]["c2f-50"]["timed"] == "steps" and sr["candidates"]["defaults"]["timed"] == "steps"
    assert "iterations x ms/it timed alone" in (root / "fast_study.md").read_text()
    assert [p.stat().st_mtime_ns for p in fits] == stamps
    assert fs.main([*argv, "--report", "--tables", "sr"]) == 0  # one table's run keeps the others' results
    kept = json.loads((root / "fast_study.json").read_text())
    assert (
        set(kept["tables"]) == {"denoise", "sr", "sr14", "table1", "deblur"}
        and kept["tables"]["table1"] == result["tables"]["table1"]
    )
    assert "#### inpaint" in (root / "fast_study.md").read_text()


def test_timing_fits_keep_the_candidates_net_and_replace_its_stopping_rule() -> None:
    finish = fs.timing_options(fs.BY_NAME["w64-holdout-finish"], "sr")
    assert finish == ["--channels", "64", "--stop", "fixed", "--iterations", str(fs.TIMING_ITERATIONS)]
    half = fs.timing_options(fs.BY_NAME["w64-half"], "table1")
    assert half == ["--channels", "64", "--stop", "fixed", "--iterations", str(fs.TIMING_ITERATIONS)]
    assert fs.timing_options(fs.BY_NAME["c2f-50"], "denoise")[:2] == ["--coarse-share", "0.5"]


def test_step_timings_take_turns_and_keep_the_median_and_every_sample(tmp_path: Path, monkeypatch) -> None:
    calls: list[str] = []
    speeds = {"defaults": [30.0, 10.0, 20.0], "w64": [5.0, 9.0, 7.0]}

    def step_ms(args: list[str]) -> float:
        name = "w64" if "--channels" in args else "defaults"
        if "--coarse-share" in args:
            raise SystemExit("dipc: --coarse-share needs an image of 64 px or more")
        calls.append(name)
        return speeds[name][calls.count(name) - 1]

    monkeypatch.setattr(fs, "step_ms", step_ms)
    save_png(smooth_image(8, 16), tmp_path / "in.png")  # 8 high, 16 wide
    case = fs.Case("sr", "Set5 x4", "x", "super-resolve", "in.png", "in.png", "sr-x4", factor=4)
    chosen = [fs.BY_NAME[n] for n in ("defaults", "w64", "c2f-50")]
    medians, samples = fs.time_steps([case], tmp_path, chosen, "sr", repeats=3)
    assert calls == ["defaults", "w64"] * 3  # each round times every candidate once; the refused one only once
    assert medians == {"defaults@16x8": 20.0, "w64@16x8": 7.0}
    assert samples == {"defaults@16x8": speeds["defaults"], "w64@16x8": speeds["w64"]}


def test_estimated_seconds_are_iterations_times_the_timed_step_and_win_only_where_every_fit_has_them() -> None:
    rows = [
        {"size": "8x8", "fits": {"defaults": fit(30.0, 100, 1000), "narrow": fit(29.8, 90, 800)}},
        {"size": "16x8", "fits": {"defaults": fit(28.0, 300, 1000), "narrow": fit(27.9, 250, 1000)}},
    ]
    fs.estimate(rows, {"defaults@8x8": 10.0, "narrow@8x8": 2.0, "defaults@16x8": 20.0, "narrow@16x8": 4.0})
    assert rows[0]["fits"]["narrow"]["estimated_seconds"] == pytest.approx(1.6)
    summary = fs.summarise(rows, ["defaults", "narrow"], {})
    narrow = summary["candidates"]["narrow"]
    assert narrow["timed"] == "steps" and narrow["time_share"] == pytest.approx((1.6 + 4.0) / (10.0 + 20.0))
    del rows[1]["fits"]["narrow"]["estimated_seconds"]  # one image's step not timed: the fits' own seconds
    narrow = fs.summarise(rows, ["defaults", "narrow"], {})["candidates"]["narrow"]
    assert narrow["timed"] == "fits" and narrow["time_share"] == pytest.approx(340 / 400)


def test_reprice_gives_the_studys_iterations_another_machines_steps(tmp_path: Path) -> None:
    """The shares on another CPU: the committed fits' iterations times the steps timed there, summed over images as
    the study sums them; a candidate not timed at every size is left out, and --reprice writes shares.json beside
    the steps it read."""
    shipped = fs.SHIPPED["denoise"]  # (its row is marked shipped)
    rows = [
        {"size": "8x8", "fits": {"defaults": fit(30.0, 100, 1000), shipped: fit(29.8, 120, 800), "odd": fit(1, 5, 1)}},
        {
            "size": "16x8",
            "fits": {"defaults": fit(28.0, 300, 1000), shipped: fit(27.9, 330, 1000), "odd": fit(1, 5, 1)},
        },
    ]
    study = {
        "tables": {"denoise": {"task": "denoise", "rows": rows, **fs.summarise(rows, ["defaults", shipped, "odd"], {})}}
    }
    steps = {
        "tables": {
            "denoise": {
                "defaults@8x8": 10.0,
                f"{shipped}@8x8": 4.0,
                "defaults@16x8": 20.0,
                f"{shipped}@16x8": 8.0,
                "odd@8x8": 1,
            }
        },
        "runs": [{"before": {"cpu": "made CPU"}}],
    }
    priced = fs.reprice(study, steps)
    assert priced["machine"] == {"cpu": "made CPU"}
    chosen = priced["tables"]["denoise"]["candidates"][shipped]
    assert chosen["share"] == pytest.approx((800 * 4.0 + 1000 * 8.0) / (1000 * 10.0 + 1000 * 20.0))
    assert chosen["shipped"] and chosen["delta_db"] == pytest.approx(-0.15)
    assert set(priced["tables"]["denoise"]["candidates"]) == {shipped}  # odd: not timed at 16x8
    root = tmp_path / "out" / "crop256"
    root.mkdir(parents=True)
    (root / "fast_study.json").write_text(json.dumps(study))
    there = tmp_path / "there"
    there.mkdir()
    (there / "steps.json").write_text(json.dumps(steps))
    assert fs.main(["--out", str(tmp_path / "out"), "--reprice", str(there / "steps.json")]) == 0
    assert (
        json.loads((there / "shares.json").read_text())["tables"]["denoise"]["candidates"][shipped]["share"]
        == chosen["share"]
    )


def test_the_floor_is_the_first_iteration_within_half_a_decibel_of_the_defaults_image(tmp_path: Path) -> None:
    def report(final: float, raw: list[float], ema: list[float]) -> dict:
        history = {"iteration": [10, 20, 30, 40], "psnr_reference": raw, "psnr_reference_ema": ema}
        return {"final_psnr": final, "history": history}

    reports = {
        "im-defaults": report(30.0, [20.0, 29.0, 29.6, 30.0], [18.0, 25.0, 29.0, 30.0]),
        "im-narrow": report(29.8, [20.0, 27.0, 28.0, 29.0], [18.0, 24.0, 29.5, 29.8]),  # the EMA gets there first
        "im-drp": report(28.0, [20.0, 27.0, 28.0, 28.0], [None, None, None, None]),  # never within 0.5 dB
        "im-blind": {"final_psnr": 30.0, "history": {"iteration": [10, 20, 30, 40]}},  # no --reference: no curve
    }
    for name, r in reports.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    fits = {"defaults": fit(30.0, 0, 40), "narrow": fit(29.8, 0, 40), "drp": fit(28.0, 0, 40), "blind": fit(30, 0, 40)}
    rows = [{"name": "im", "size": "8x8", "fits": fits}]
    fs.estimate(rows, {"defaults@8x8": 10.0, "narrow@8x8": 4.0, "drp@8x8": 1.0, "blind@8x8": 1.0})
    fs.floors(rows, tmp_path)
    assert [fits[n].get("first_within") for n in ("defaults", "narrow", "drp")] == [30, 30, None]
    summary = fs.summarise(rows, ["defaults", "narrow", "drp", "blind"], {})["candidates"]
    assert summary["defaults"]["floor_share"] == pytest.approx(0.75)  # 30 of its 40 iterations
    assert summary["narrow"]["floor_share"] == pytest.approx(30 * 4 / (40 * 10))
    assert summary["drp"]["floor_share"] is None and summary["drp"]["never_within"] == 1
    assert fs.floor_text(summary["drp"]) == "never on 1 of 1" and fs.floor_text(summary["narrow"]) == "0.30"
    assert "first_within" not in fits["blind"] and fs.floor_text(summary["blind"]) == "-"  # no curve: no floor


def test_a_fixed_count_task_gets_the_shortest_count_from_which_every_image_stays_within(tmp_path: Path) -> None:
    def report(final: float, raw: list[float], ema: Optional[list] = None) -> dict:
        history = {"iteration": [10, 20, 30, 40], "psnr_reference": raw, "psnr_reference_ema": ema or [None] * 4}
        return {"final_psnr": final, "history": history}

    reports = {
        "a-defaults": report(30.0, [20.0, 29.0, 29.6, 30.0]),
        "a-narrow": report(29.8, [29.6, 28.0, 29.6, 29.8]),  # within at 10, out at 20, within from 30 on
        "b-defaults": report(31.0, [20.0, 29.0, 30.0, 31.0]),
        "b-narrow": report(30.7, [20.0, 30.6, 30.0, 29.0], [20.0, 29.0, 30.6, 30.7]),  # the EMA is what it returns
    }
    for name, r in reports.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    rows = [
        {"name": im, "size": "8x8", "fits": {"defaults": fit(final, 0, 40), "narrow": fit(final - 0.2, 0, 40)}}
        for im, final in (("a", 30.0), ("b", 31.0))
    ]
    fs.estimate(rows, {"defaults@8x8": 10.0, "narrow@8x8": 4.0})
    fs.floors(rows, tmp_path)
    assert [r["fits"]["narrow"]["within_from"] for r in rows] == [30, 30]
    assert [r["fits"]["narrow"]["first_within"] for r in rows] == [10, 20]  # the floor reads the output too
    fixed = fs.summarise(rows, ["defaults", "narrow"], {}, fixed=True)
    assert fixed["candidates"]["narrow"]["count_floor"] == 30
    assert fixed["candidates"]["narrow"]["count_share"] == pytest.approx(2 * 30 * 4 / (2 * 40 * 10))
    assert "count_floor" not in fs.summarise(rows, ["defaults", "narrow"], {})["candidates"]["narrow"]
    text = fs.markdown("table1", {**fixed, "rows": rows}, ["defaults", "narrow"])
    assert "narrow from 30 iterations (share 0.30)" in text


def test_shards_side_by_side_share_the_fits_and_either_scores_them(tmp_path: Path, monkeypatch) -> None:
    def sharded(manifest: Path, outdir: Path, args, deadline) -> int:
        return dipc("batch", manifest, "-o", outdir, "--seed", "0", "--device", "cpu", "-q", "--shard", args.shard)[0]

    monkeypatch.setattr(fs, "run_batch", sharded)
    options_of = fs.options_of
    tiny = ["--depth", "3", "--channels", "16", "--input-depth", "4"]
    monkeypatch.setattr(fs, "options_of", lambda c, t, cap=None: [*tiny, *options_of(c, t, cap)])
    data, out = made_paper(tmp_path / "data"), tmp_path / "results"
    argv = ["--scale", "crop", "--side", "64", "--cap", "2", "--data", str(data), "--out", str(out)]
    argv += ["--tables", "denoise", "--candidates", "w32"]
    batch = out / "crop64-cap2" / "batch" / "denoise"
    for bad in ("../1", "2/2", "0/2\x00"):  # refused before any manifest is named after it
        with pytest.raises(SystemExit) as refused:
            fs.main([*argv, "--shard", bad])
        assert refused.value.code == 2 and not (out / "crop64-cap2").exists()
    assert fs.main([*argv, "--shard", "1/2"]) == 0
    assert sorted(p.name for p in batch.glob("*.png")) == ["F16-s25-w32.png"]  # the second of the two fits
    assert (out / "crop64-cap2" / "inputs" / "denoise" / "manifest-1-of-2.jsonl").exists()
    assert fs.main([*argv, "--shard", "0/2"]) == 0
    result = json.loads((out / "crop64-cap2" / "fast_study.json").read_text())
    found = result["tables"]["denoise"]["candidates"]
    assert found["defaults"]["status"] == "done" and found["w32"]["status"] == "done"
    assert sorted(p.name for p in batch.glob("summary*.json")) == ["summary-0-of-2.json", "summary-1-of-2.json"]


def test_the_estimates_read_the_returned_images_psnr_where_the_report_records_it(tmp_path: Path) -> None:
    history = {"iteration": [10, 20, 30, 40], "psnr_reference": [20.0, 29.0, 28.0, 29.0], "psnr_reference_ema": []}
    old = {"final_psnr": 29.9, "history": history}
    new = {"final_psnr": 29.9, "history": {**history, "psnr_returned": [None, 29.6, None, 29.9]}}  # as fits write it
    assert fs.within_from(old, 30.0) is None  # the perturbed outputs are never within 0.5 dB from some count on
    assert fs.within_from(new, 30.0) == 20 and fs.first_within(new, 30.0) == 20  # the returned image is
    assert fs.returned_curve(new) == [None, 29.6, None, 29.9]
