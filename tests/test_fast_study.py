"""benchmarks/fast_study.py: the candidates' options and the choice of the winner, on made numbers."""

import pytest

from benchmarks import fast_study as fs


def test_candidate_options_are_dipc_fit_flags_and_the_cap_bounds_every_fit():
    half = fs.BY_NAME["w128-half"]
    assert fs.options_of(half, "denoise") == ["--iterations", "1500"]  # half the f16 preset's 3000
    assert fs.options_of(half, "table1", cap=20) == ["--iterations", "20"]
    assert fs.options_of(fs.BY_NAME["w64-d4"], "sr", cap=50) == [
        "--channels",
        "64",
        "--depth",
        "4",
        "--iterations",
        "50",
    ]
    assert fs.options_of(fs.BY_NAME["defaults"], "sr") == []


def test_every_candidate_parses_as_dipc_fit_options():
    from dip_compile.cli import parse_fit_args

    for candidate in fs.CANDIDATES:
        for table in fs.GROUPS:
            task = fs.TASK_OF[table]
            extra = ["--factor", "4"] if task == "super-resolve" else ["--holes", "0.5"] if task == "inpaint" else []
            parse_fit_args([task, "in.png", "-o", "out.png", *extra, *fs.options_of(candidate, table)])


def row(psnrs: dict[str, float], iterations: dict[str, int]) -> dict:
    return {"fits": {n: {"psnr": p, "iterations": iterations[n]} for n, p in psnrs.items()}}


def test_the_winner_is_the_quickest_within_half_a_decibel_on_the_mean():
    names = ["defaults", "slow-good", "fast-bad", "fast-ok"]
    its = {"defaults": 1000, "slow-good": 1000, "fast-bad": 300, "fast-ok": 500}
    rows = [
        row({"defaults": 30.0, "slow-good": 30.1, "fast-bad": 29.0, "fast-ok": 29.9}, its),
        row({"defaults": 28.0, "slow-good": 28.0, "fast-bad": 27.8, "fast-ok": 27.3}, its),
    ]
    steps = {"defaults": 100.0, "slow-good": 90.0, "fast-bad": 50.0, "fast-ok": 50.0}
    summary = fs.summarise("denoise", rows, steps, names)
    ok = summary["candidates"]["fast-ok"]
    assert ok["delta_db"] == pytest.approx(-0.4) and ok["worst_delta_db"] == pytest.approx(-0.7)
    assert ok["time_share"] == pytest.approx(0.25)  # 500 x 50 ms against 1000 x 100 ms
    assert summary["winner"] == "fast-ok" and summary["meets_target"]  # fast-bad gives up 0.6 dB on the mean
    assert fs.summarise("denoise", rows, {}, names)["winner"] is None  # no step timing: no verdict
