"""benchmarks/: every module imports as ``benchmarks.X`` (nothing runs, no ``sys.path`` edit), and the producers
that went stale against what they read run on made data (the presets table's deblur row, the stopping study's replay
of a schedule study)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import save_png, smooth_image
from dip_compile import presets
from dip_compile.restore import load_problem, make_plan

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")


def test_the_benchmarks_are_a_package_of_the_scripts_here():
    assert (BENCHMARKS / "__init__.py").is_file()
    assert {"quality", "cases", "stopping_study", "schedule_study", "presets_quality"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_imports_without_editing_sys_path(name: str):
    before = list(sys.path)
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__name__ == f"benchmarks.{name}"
    assert sys.path == before  # the script-mode shim stays out of the way of an import
    assert callable(getattr(module, "main", None)) or name == "cases"  # cases.py is the grid helpers only


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
    job it makes builds its problem (deblur's needs a kernel, which no preset gives)."""
    from benchmarks.presets_quality import SOURCES, prepare

    assert set(SOURCES) == set(presets.NAMES)
    data = _made_data(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    for name in presets.NAMES:
        job, side = prepare(data, out, name, 32)
        config, problem = load_problem(make_plan(job), [])
        assert config.preset == name and side >= 32
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


def test_tiling_seams_finds_the_blend_zones_and_the_square_where_four_tiles_meet():
    from benchmarks.tiling_seams import blend_zones, meeting_square

    zones = blend_zones((128, 128), 64, 16)  # starts 0, 32, 64: tiles overlap on rows and columns 32-63 and 64-95
    assert zones[:, 40].all() and zones[40, :].all() and not zones[10, 10] and not zones[10, 100]
    assert zones.sum() == 128 * 128 - 4 * 32 * 32  # all but the four corners' squares
    assert meeting_square((128, 128), 64, 16, 48) == (24, 24)  # centred on (48, 48), mid first overlap


def test_memory_estimate_fit_recovers_the_constants_of_made_rows():
    from benchmarks.memory_estimate import fit_constants

    mib = 2**20
    rows = [
        {"save_memory": save, "activation_bytes": a * mib, "state_bytes": 30 * mib, "image_bytes": i * mib}
        for save in (False, True)
        for a, i in ((400, 20), (1600, 80), (6400, 320))
    ]
    for r in rows:
        r["measured_bytes"] = (0.54 if r["save_memory"] else 1.09) * r["activation_bytes"] + 30 * mib
        r["measured_bytes"] += r["image_bytes"] + 240 * mib
    fitted = fit_constants(rows)
    assert fitted["keep_off"] == pytest.approx(1.09) and fitted["keep_on"] == pytest.approx(0.54)
    assert fitted["overhead_mib"] == pytest.approx(240)


def test_step_profile_sorts_a_steps_operators_into_its_parts(tmp_path: Path) -> None:
    from benchmarks import step_profile

    assert step_profile.category("aten::convolution_backward") == "conv backward"
    assert step_profile.category("aten::mkldnn_convolution") == "conv forward"
    assert step_profile.category("aten::native_batch_norm_backward") == "batchnorm"
    assert step_profile.category("aten::_fused_adam_") == "optimizer (Adam)"
    out = tmp_path / "profile.json"
    assert step_profile.main(["--size", "32", "--iterations", "1", "--warmup", "1", "--precision", "fp32",
                              "--out", str(out)]) == 0  # fmt: skip
    record = json.loads(out.read_text())
    assert record["by_category_ms"]["conv forward"] > 0 and record["gflop"] > 0
    assert record["peak_2048_gflops"] > 0 and record["share_of_peak_2048"] > 0
