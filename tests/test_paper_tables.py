"""benchmarks/paper_tables.py: the paper's scoring protocols by value, and one table end to end on made data."""

import json
import math
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from benchmarks import paper_tables as pt
from benchmarks.common import ROOT


def test_y_channel_is_bt601_on_the_16_235_scale():
    assert pt.y_channel(np.zeros((2, 2, 3)))[0, 0] == 16.0
    assert math.isclose(pt.y_channel(np.full((2, 2, 3), 255.0))[0, 0], 235.0)
    gray = np.full((3, 3), 100.0)  # a grayscale image scores as the RGB image with three equal channels
    assert np.allclose(pt.y_channel(gray), pt.y_channel(np.repeat(gray[..., None], 3, axis=2)))


def test_sr_score_leaves_out_the_border_and_matches_a_known_value():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 40, 3)).astype(np.float64)
    edited = a.copy()
    edited[:4] = 0  # only the 4 px border changes: the score does not see it
    edited[:, -4:] = 255
    assert pt.sr_psnr(a, edited) == float("inf")
    flat, brighter = np.full((40, 40, 3), 100.0), np.full((40, 40, 3), 110.0)
    assert math.isclose(pt.sr_psnr(flat, brighter), 20 * math.log10(255 / (10 * 219 / 255)), rel_tol=1e-9)
    assert math.isclose(pt.psnr(flat, brighter), 20 * math.log10(255 / 10), rel_tol=1e-9)


def test_protocol_crop_is_the_notebooks_centre_crop():
    image = np.arange(280 * 300, dtype=np.float64).reshape(280, 300)
    cropped = pt.protocol_crop(image, 32, None)  # 280 -> 256 at offset 12, 300 -> 288 at 6
    assert cropped.shape == (256, 288) and cropped[0, 0] == image[12, 6]
    quick = pt.protocol_crop(image, 32, 70)  # the quick scale's centre square, a multiple of 32 too
    assert quick.shape == (64, 64) and quick[0, 0] == image[12 + 96, 6 + 112]


def test_sr_inputs_follow_the_protocol(tmp_path):
    data = tmp_path / "data"
    folder = data / "paper" / "sr" / "Set5" / "x4"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(folder / "bird_GT.png")
    (case,) = [c for c in pt.cases_of("sr", data) if c.factor == 4]
    assert (case.group, case.name, case.paper_preset) == ("Set5 x4", "Set5-x4-bird", "sr-x4")
    pt.write_inputs(case, data, tmp_path, None)
    assert Image.open(tmp_path / case.reference).size == (96, 64)
    assert Image.open(tmp_path / case.image).size == (24, 16)


def made_cset9(tmp_path, seed: int, tiles: int):
    """A data folder whose CSet9 holds one image of ``tiles`` x ``tiles`` flat 8 px tiles and its noisy copy."""
    data = tmp_path / "data"
    folder = data / "paper" / "denoising" / "CSet9"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    clean = np.kron(rng.integers(40, 200, (tiles, tiles, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(clean).save(folder / "tiles_GT.png")
    Image.fromarray(noisy).save(folder / "tiles_noisy25.png")
    return data


def test_denoise_table_runs_through_dipc_batch_and_a_rerun_fits_nothing(tmp_path):
    data = made_cset9(tmp_path, seed=2, tiles=6)
    out = tmp_path / "out"
    argv = ["--table", "denoise", "--data", str(data), "--out", str(out), "--only", "s25", "--crop", "32"]
    argv += ["--iterations", "3", "--settings", "paper", "defaults", "--no-peers", "-q"]
    assert pt.main(argv) == 0
    result = json.loads((out / "quick" / "denoise.json").read_text())
    (row,) = result["rows"]
    assert row["name"] == "tiles-s25" and row["size"] == "32x32"
    assert 15 < row["input_psnr"] < 25
    for setting in ("paper", "defaults"):
        fit = row["fits"][setting]
        assert fit["status"] == "done" and fit["iterations"] == 3 and math.isfinite(fit["psnr"])
    assert row["fits"]["paper"]["preset"] == "f16"
    assert "mean CSet9 sigma 25" in (out / "quick" / "denoise.md").read_text()
    assert pt.main(argv) == 0  # finished jobs are skipped: the reports are the same files
    again = json.loads((out / "quick" / "denoise.json").read_text())
    assert again["rows"][0]["fits"] == row["fits"]


def test_named_columns_and_seeds_are_separate_fits_with_their_own_options():
    case = pt.Case("sr", "Set5 x4", "Set5-x4-bird", "super-resolve", "b_LR.png", "b_HR.png", "sr-x4", factor=4)
    runs = pt.runs_of(["paper-fp32", "paper-2017", "defaults"], [0, 2], default_seed=0)
    assert [r.label for r in runs] == [
        "paper-fp32", "paper-fp32-s2", "paper-2017", "paper-2017-s2", "defaults", "defaults-s2"
    ]  # fmt: skip
    rows = {r["output"]: r["options"] for r in pt.manifest_rows([case], runs, None, 0)}
    paper = ["--preset", "sr-x4", "--paper-exact"]
    assert rows["Set5-x4-bird-paper-fp32"] == [*paper, "--precision", "fp32", "--bn-init", "ones", "--no-align-corners"]
    assert rows["Set5-x4-bird-paper-2017-s2"] == [
        *paper, "--precision", "fp32", "--bn-init", "uniform", "--align-corners", "--seed", "2"
    ]  # fmt: skip
    assert rows["Set5-x4-bird-defaults"] == []
    (fast,) = pt.manifest_rows([case], pt.runs_of(["fast"], [0], 0), None, 0)
    assert fast["options"] == ["--fast"]  # the defaults with --fast: no preset, no --paper-exact
    # the column fitted before columns had names keeps its options, so a rerun recognises its finished fits
    (old,) = pt.manifest_rows([case], pt.runs_of(["paper"], [0], 0), 400, 0)
    assert (old["output"], old["options"]) == ("Set5-x4-bird-paper", [*paper, "--iterations", "400"])


def test_sr_columns_with_two_seeds_are_scored_apart_with_ssim_and_their_spread(tmp_path):
    data = tmp_path / "data"
    folder = data / "paper" / "sr" / "Set5" / "x4"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    gt = np.kron(rng.integers(30, 220, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    Image.fromarray(gt).save(folder / "tiles_GT.png")
    out = tmp_path / "out"
    argv = ["--table", "sr", "--data", str(data), "--out", str(out), "--only", "x4", "--crop", "64"]
    argv += ["--iterations", "2", "--settings", "paper-2017", "--seeds", "0", "1", "--no-peers", "-q"]
    assert pt.main(argv) == 0
    result = json.loads((out / "quick" / "sr.json").read_text())
    (row,) = result["rows"]
    assert set(row["fits"]) == {"paper-2017", "paper-2017-s1"}
    for label, fit in row["fits"].items():
        assert fit["status"] == "done" and fit["precision"] == "fp32" and fit["iterations"] == 2
        assert fit["seed"] == (1 if label.endswith("-s1") else 0) and 0 < fit["ssim"] < 1
        assert fit["framework"] == {"bn_init": "uniform", "align_corners": True}
    spread = result["seed_spread"]["paper-2017"]["Set5-x4-tiles"]
    psnrs = [row["fits"]["paper-2017"]["psnr"], row["fits"]["paper-2017-s1"]["psnr"]]
    assert spread["psnr"] == psnrs and math.isclose(spread["range"], abs(psnrs[0] - psnrs[1]))
    assert "Seed spread" in (out / "quick" / "sr.md").read_text()


def test_the_device_script_fits_prepared_inputs_without_the_data_and_its_rows_merge_into_the_table(tmp_path):
    """benchmarks/paper_tables_device.sh on the CPU at 2 iterations: the inputs made by --prepare (the device has no
    ../shared), one small file per stage directly under $OUT, merged here into the committed table's store."""
    data = tmp_path / "data"
    folder = data / "paper" / "sr" / "Set5" / "x4"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)
    Image.fromarray(np.kron(rng.integers(30, 220, (8, 8, 3)), np.ones((8, 8, 1))).astype(np.uint8)).save(
        folder / "tiles_GT.png"
    )
    inputs, out, scores = tmp_path / "inputs", tmp_path / "out", tmp_path / "scores"
    argv = ["--table", "sr", "--scale", "paper", "--data", str(data), "--inputs", str(inputs), "--prepare"]
    assert pt.main(argv) == 0
    assert [c["name"] for c in json.loads((inputs / "sr" / "cases.json").read_text())] == ["Set5-x4-tiles"]
    env = dict(os.environ, OUT=str(out), STAGE="x4", DEVICE="cpu", ITERATIONS="2", PACK="1", INPUTS=str(inputs))
    env.update(WORK=str(tmp_path / "work"), PYTHON=sys.executable)
    script = ROOT / "benchmarks" / "paper_tables_device.sh"
    run = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["x4.jsonl", "x4.log"]  # files directly under $OUT
    (line,) = pt.read_row_file(out / "x4.jsonl")
    row = line["row"]
    assert (line["table"], line["crop"], line["iteration_cap"]) == ("sr", None, 2)
    assert row["name"] == "Set5-x4-tiles" and row["size"] == "64x64"
    fit = row["fits"]["paper-2017"]
    assert fit["status"] == "done" and fit["iterations"] == 2 and fit["precision"] == "fp32"
    assert not (tmp_path / "work" / "no-data").exists()  # nothing read from a data folder
    # a capped run is not the paper's protocol: the merge leaves it out; the same row at the full count goes in
    assert pt.main(["--merge", str(out), "--scores", str(scores)]) == 0 and not (scores / "sr.json").exists()
    pt.write_row_file(tmp_path / "full.jsonl", "sr", [row], None, None)
    assert pt.main(["--merge", str(tmp_path / "full.jsonl"), "--scores", str(scores)]) == 0
    stored = json.loads((scores / "sr.json").read_text())["rows"]["Set5-x4-tiles"]
    assert stored["fits"]["paper-2017"]["psnr"] == fit["psnr"]
    assert "DIP paper-2017" in (scores / "sr.md").read_text()


def test_a_wrong_stage_or_missing_inputs_stop_the_device_script_in_one_line(tmp_path):
    script = ROOT / "benchmarks" / "paper_tables_device.sh"
    for stage, message in (("x16", "STAGE must be x4, x8 or denoise25"), ("x4", "run the --prepare command here")):
        env = dict(os.environ, OUT=str(tmp_path / "out"), STAGE=stage, INPUTS=str(tmp_path / "none"))
        run = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
        assert run.returncode == 2 and message in run.stderr


def test_published_outputs_are_cropped_and_scored_with_the_protocol(tmp_path):
    """--authors: the site's outputs (full ground-truth size) cropped as the inputs were and scored like our fits;
    x8 takes the reg-noise 0.05 output, a missing file is said, not dropped."""
    gt = np.kron(np.random.default_rng(5).integers(30, 220, (9, 10, 3)), np.ones((8, 8, 1)))  # 72x80
    case = pt.Case("sr", "Set5 x8", "Set5-x8-tiles", "super-resolve", "t_LR.png", "t_HR.png", "sr-x8", factor=8)
    pt.write(pt.protocol_crop(gt, 32, None), tmp_path / "t_HR.png")
    site = tmp_path / "site" / "SR" / "Set5" / "x8"
    site.mkdir(parents=True)
    pt.write(gt, site / "tiles_deep_prior_005.png")
    pt.write(gt + 10, site / "tiles_deep_prior.png")
    scored = pt.score_published(case, tmp_path / "site", tmp_path, None)
    assert scored["DIP"]["file"] == "tiles_deep_prior_005.png" and scored["DIP"]["psnr"] == float("inf")
    assert "no tiles_bicubic.png" in scored["bicubic"]["missing"]


def test_a_resumed_fits_seconds_are_summed_over_its_sessions(tmp_path):
    """A report's wall_seconds are its last session's; the table's seconds are the history's cumulative ones."""
    image = np.random.default_rng(1).integers(0, 255, (16, 16, 3))
    case = pt.Case("denoise", "CSet9 sigma 25", "t-s25", "denoise", "t_noisy.png", "t_GT.png", "f16", sigma=25)
    pt.write(image, tmp_path / "t_GT.png")
    pt.write(image, tmp_path / "t-s25-fast.png")
    report = {"iterations": 30, "wall_seconds": 5.0, "resumed_from_iteration": 20,
              "history": {"iteration": [10, 20, 30], "seconds": [4.0, 8.0, 13.0]}}  # fmt: skip
    (tmp_path / "t-s25-fast.json").write_text(json.dumps(report))
    row = pt.fit_entry(case, tmp_path, tmp_path, "fast")
    assert row["seconds"] == 13.0 and row["resumed_from"] == 20 and row["psnr"] == float("inf")
    del report["history"], report["resumed_from_iteration"]  # an older report: its own wall seconds
    (tmp_path / "t-s25-fast.json").write_text(json.dumps(report))
    assert pt.fit_entry(case, tmp_path, tmp_path, "fast")["seconds"] == 5.0


def test_the_papers_bicubic_column_downsamples_the_whole_ground_truth():
    full = np.kron(np.random.default_rng(6).integers(0, 256, (4, 5, 3)), np.ones((4, 4, 1)))
    up = pt.paper_bicubic(full, 4)
    assert up.shape == full.shape and np.array_equal(
        pt.paper_bicubic(np.full((8, 12, 3), 77.0), 4), np.full((8, 12, 3), 77.0)
    )


def test_the_committed_store_keeps_finished_fits_when_a_later_run_has_not_finished_them(tmp_path):
    meta = {"name": "Set5-x4-bird", "group": "Set5 x4", "size": "288x288", "input_psnr": None, "paper_psnr": None}
    done = {"status": "done", "psnr": 31.5, "ssim": 0.9, "best_psnr_seen": 30.0, "iterations": 2000, "seconds": 60.0}
    first = {**meta, "peers": {"bicubic": {"psnr": 30.56, "ssim": 0.88}}, "authors": {}, "fits": {"paper-2017": done}}
    later = {**meta, "peers": {}, "authors": {"DIP": {"psnr": 31.78, "ssim": 0.9}}}
    later["fits"] = {"paper-2017": {"status": "not run yet"}, "paper-fp32": {**done, "psnr": 31.2}}
    pt.update_store(tmp_path, "sr", [first])
    pt.update_store(tmp_path, "sr", [later])
    stored = json.loads((tmp_path / "sr.json").read_text())["rows"]["Set5-x4-bird"]
    assert stored["fits"]["paper-2017"]["psnr"] == 31.5 and stored["fits"]["paper-fp32"]["psnr"] == 31.2
    assert stored["peers"]["bicubic"]["psnr"] == 30.56 and stored["authors"]["DIP"]["psnr"] == 31.78
    header = (tmp_path / "sr.md").read_text().splitlines()[0]
    assert header.index("published DIP") < header.index("DIP paper-fp32") < header.index("DIP paper-2017")


def test_table1_black_pixels_read_as_missing_are_known_with_the_masks_odds() -> None:
    case = pt.Case(
        "table1", "Table 1", "peppers256", "inpaint", "p_masked.png", "p_GT.png", "barbara", mask="p_mask.png"
    )
    rng = np.random.default_rng(0)
    reference = rng.uniform(1, 255, (64, 64))
    reference[0, :] = 0  # a black first row: 0 in the masked input whether known or not
    mask = np.where(rng.random((64, 64)) < 0.5, 255.0, 0.0)
    mask[0, :] = 0  # so the mask read from the masked input calls it all missing
    out = pt.resolve_black(case, mask, reference)
    assert np.array_equal(out[1:], mask[1:])  # only the ambiguous pixels change
    assert 16 <= int((out[0] == 255).sum()) <= 48  # about half of the 64 become known
    assert np.array_equal(out, pt.resolve_black(case, mask, reference))  # the same draw every time
    unchanged = pt.resolve_black(case, np.full((8, 8), 255.0), np.zeros((8, 8)))
    assert (unchanged == 255).all()  # black but known: nothing to resolve


def test_peers_are_computed_again_when_the_inputs_change(tmp_path, monkeypatch) -> None:
    case = pt.Case("table1", "Table 1", "im", "inpaint", "im_masked.png", "im_GT.png", "barbara", mask="im_mask.png")
    calls = []

    def peer(c, inputs):
        calls.append(c.name)
        return pt.read(inputs / c.image)

    monkeypatch.setattr(pt, "peer_functions", lambda table: {"copy": peer})
    rng = np.random.default_rng(0)
    for name in ("im_masked.png", "im_GT.png", "im_mask.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / name)
    cache = tmp_path / "peers.json"
    first = pt.run_peers([case], tmp_path, cache)
    assert pt.run_peers([case], tmp_path, cache) == first and calls == ["im"]  # cached
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "im_mask.png")  # another mask
    assert pt.run_peers([case], tmp_path, cache)["im"]["inputs"] != first["im"]["inputs"] and calls == ["im", "im"]


def test_shards_side_by_side_split_the_fits_and_either_scores_both(tmp_path):
    data = made_cset9(tmp_path, seed=3, tiles=4)
    out = tmp_path / "out"
    argv = ["--table", "denoise", "--data", str(data), "--out", str(out), "--only", "s25", "--crop", "32"]
    argv += ["--iterations", "2", "--settings", "paper", "defaults", "--no-peers", "-q"]
    for bad in ("2/2", "../1", "1/0"):
        try:
            pt.main([*argv, "--shard", bad])
        except SystemExit as exc:
            assert exc.code == 2
        else:
            raise AssertionError(f"--shard {bad} was taken")
    inputs = out / "quick" / "inputs" / "denoise"
    assert pt.main([*argv, "--shard", "1/2"]) == 0
    fits = json.loads((out / "quick" / "denoise.json").read_text())["rows"][0]["fits"]
    assert sorted(f["status"] for f in fits.values()) == ["done", "not run yet"]  # one of the two
    assert pt.main([*argv, "--shard", "0/2"]) == 0
    fits = json.loads((out / "quick" / "denoise.json").read_text())["rows"][0]["fits"]
    assert all(f["status"] == "done" and f["iterations"] == 2 for f in fits.values())
    assert {p.name for p in inputs.glob("manifest*.jsonl")} == {"manifest-0-of-2.jsonl", "manifest-1-of-2.jsonl"}


def test_runs_merging_into_the_committed_store_at_once_keep_each_others_rows(tmp_path):
    import threading

    def merge(first: int) -> None:
        for i in range(first, first + 20):
            row = {"name": f"img{i}", "group": "Set5 x4", "size": "8x8", "input_psnr": None, "paper_psnr": None}
            fit = {
                "status": "done",
                "psnr": float(i),
                "ssim": 0.9,
                "best_psnr_seen": 30.0,
                "iterations": 9,
                "seconds": 1.0,
            }
            row |= {"peers": {}, "authors": {}, "fits": {"paper": fit}}
            pt.update_store(tmp_path, "sr", [row])

    threads = [threading.Thread(target=merge, args=(first,)) for first in (0, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(json.loads((tmp_path / "sr.json").read_text())["rows"]) == 40
