import dataclasses
import json
import re
from pathlib import Path

import pytest

from conftest import dipc, save_png, smooth_image, tiny_config
from dip_compile import estimate, preflight
from dip_compile.presets import preset

MEASURED = Path(__file__).parents[1] / "benchmarks/results/speed/memory-estimate-amd-epyc-avx512bf16/rows.json"
CASE = ("net", "size", "precision", "save_memory")


def test_activation_bytes_grow_with_the_area_as_counted_at_that_size():
    config = tiny_config()
    counted = estimate.kept_bytes(config.net, (64, 96), "fp32")
    assert estimate.activation_bytes(config.net, (64, 96), "fp32") == pytest.approx(counted, rel=0.02)


def test_bf16_and_save_memory_lower_the_estimate_and_a_stopping_window_raises_it():
    config = preset("denoise").replace(stop="fixed")
    base = estimate.estimate(config, (512, 512), 3, "cpu", precision="fp32").base_bytes
    assert estimate.estimate(config.replace(save_memory=True), (512, 512), 3, "cpu", precision="fp32").base_bytes < (
        0.65 * base
    )
    # bf16 at 32 channels (0.65 of fp32; 0.53 at full width): counting runs the network in bf16, which takes a minute
    # at full width where bf16 is emulated (AVX2)
    narrow = config.replace(net=dataclasses.replace(config.net, channels_down=(32,) * 5, channels_up=(32,) * 5))
    narrow_fp32 = estimate.estimate(narrow, (512, 512), 3, "cpu", precision="fp32").base_bytes
    assert estimate.estimate(narrow, (512, 512), 3, "cpu", precision="bf16").base_bytes < 0.8 * narrow_fp32
    window = config.replace(stop="auto", stop_window=100)  # 100 images of 3 MiB
    grown = estimate.estimate(window, (512, 512), 3, "cpu", precision="fp32").base_bytes - base
    assert 100 * 3 * 2**20 <= grown < 110 * 3 * 2**20
    # the held-out rule keeps no window: its kept image and the EMA's double-precision statistics' worth
    held = estimate.estimate(config.replace(stop="holdout"), (512, 512), 3, "cpu", precision="fp32").base_bytes
    assert held - base == 4 * 3 * 2**20


def test_the_largest_side_is_the_largest_that_fits_the_budget():
    config = preset("denoise").replace(stop="fixed", precision="fp32")
    budget = 2 * 2**30
    side = estimate.largest_side(config, (256, 256), 3, "cpu", budget)
    assert side % 32 == 0
    assert estimate.estimate(config, (side, side), 3, "cpu").base_bytes <= budget
    assert estimate.estimate(config, (side + 32, side + 32), 3, "cpu").base_bytes > budget


def test_a_fit_too_large_for_memory_names_the_largest_size_and_the_options_that_fit(tmp_path, monkeypatch):
    image = save_png(smooth_image(256, 256), tmp_path / "big.png")
    # the default network at 16 channels: the bf16 pass also counts it in bf16 (--precision bf16 may fit), and a bf16
    # forward of the full-width network takes a minute where bf16 is emulated (AVX2)
    narrow = dataclasses.replace(preset("denoise").net, channels_down=(16,) * 5, channels_up=(16,) * 5)
    saving = preset("denoise").replace(net=narrow, stop="fixed", save_memory=True)
    fits = estimate.estimate(saving, (256, 256), 3, "cpu", precision="fp32").base_bytes  # only --save-memory fits
    monkeypatch.setattr(preflight, "available_bytes", lambda device: (fits / preflight.MEMORY_SHARE * 1.02, "memory"))
    code, stderr = dipc("fit", "denoise", image, "-o", tmp_path / "o.png", "--precision", "fp32", "--stop", "fixed",
                        "--channels", "16")  # fmt: skip
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    largest = re.search(r"at most about (\d+)x(\d+)", stderr)
    assert "fitting at 256x256 needs about" in stderr and largest, stderr
    assert 128 <= int(largest[1]) == int(largest[2]) < 256
    assert "--save-memory (about" in stderr and f"--tile {int(largest[1]) // 32 * 32}" in stderr, stderr
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("machine", "device", "libc", "grows"),
    [(64 * 2**30, "cpu", True, True), (2**29, "cpu", True, False), (64 * 2**30, "cuda", True, False),
     (64 * 2**30, "cpu", False, False), (None, "cpu", True, False)],
)  # fmt: skip
def test_the_peak_grows_where_a_cpu_fit_will_keep_its_freed_memory(monkeypatch, machine, device, libc, grows):
    """A CPU fit keeps its freed memory after its first step where the grown peak fits (allocator.room_to_keep):
    the estimate says that peak, and refuses only on the first step's (``base_bytes``), which must fit."""
    monkeypatch.setattr(estimate.allocator, "machine_bytes", lambda: machine)
    monkeypatch.setattr(estimate.allocator, "available", lambda: libc)
    assert estimate.keeps(2**29, device) is grows


def test_the_peak_with_freed_memory_kept_has_its_own_factors(monkeypatch):
    monkeypatch.setattr(estimate.allocator, "machine_bytes", lambda: 64 * 2**30)
    monkeypatch.setattr(estimate.allocator, "available", lambda: True)
    config = tiny_config().replace(stop="fixed")
    guess = estimate.estimate(config, (64, 64), 3, "cpu", precision="fp32")
    parts = guess.state_bytes + guess.image_bytes
    assert guess.base_bytes == int(estimate.KEEP[False, False, False] * guess.activation_bytes + parts
                                   + estimate.OVERHEAD_BYTES[False])  # fmt: skip
    assert guess.peak_bytes == int(estimate.KEEP[False, False, True] * guess.activation_bytes + parts
                                   + estimate.OVERHEAD_BYTES[True])  # fmt: skip
    monkeypatch.setattr(estimate.allocator, "machine_bytes", lambda: 2**20)  # no room to keep: the first step's peak
    small = estimate.estimate(config, (64, 64), 3, "cpu", precision="fp32")
    assert small.peak_bytes == small.base_bytes == guess.base_bytes


def test_dry_run_prints_memory_and_time_and_writes_nothing(tmp_path, image_png):
    out = tmp_path / "o.png"
    code, stderr = dipc("fit", "denoise", image_png, "-o", out, "--depth", "3", "--channels", "8", "--dry-run")
    assert code == 0, stderr
    assert "dry run: memory: about" in stderr and "s per iteration" in stderr and "nothing was fitted" in stderr
    assert list(tmp_path.iterdir()) == [image_png]


def test_dry_run_needs_no_output_path(image_png):
    code, stderr = dipc("fit", "denoise", image_png, "--depth", "3", "--channels", "8", "--dry-run")
    assert code == 0 and "dry run" in stderr, stderr


def test_the_constants_fit_the_committed_peak_measurements():
    """The factors and overheads against the measured peaks they were fitted to (their parts as recorded): a change
    of the constants without new measurements fails here."""
    rows = json.loads(MEASURED.read_text())
    assert len(rows) == 32 and {r["kept_memory"] for r in rows} == {False, True}
    for r in rows:
        key = (r["precision"] != "fp32", r["save_memory"], r["kept_memory"])
        parts = r["state_bytes"] + r["image_bytes"] + estimate.OVERHEAD_BYTES[r["kept_memory"]]
        ratio = (estimate.KEEP[key] * r["activation_bytes"] + parts) / r["measured_bytes"]
        assert 0.85 <= ratio <= 1.2, (r["net"], r["size"], key, ratio)
        if r["kept_memory"]:  # and the allocator's bound on the growth holds on every case
            glibc = next(g for g in rows if not g["kept_memory"] and all(g[k] == r[k] for k in CASE))
            assert r["measured_bytes"] <= estimate.allocator.GROWTH * glibc["measured_bytes"]
