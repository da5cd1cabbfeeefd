"""``dipc fit --tile SIZE --overlap PX``: the grid, the blending window, tiled fits, Ctrl-C and rerun, bad input."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import dipc, save_png, smooth_image
from dip_compile import restore
from dip_compile.imageio import load_image
from dip_compile.tiling import Box, blend, grid, ramp, window

NET = ["--depth", "3", "--channels", "8", "--input-depth", "8", "--precision", "fp32", "--backend", "eager"]
FIT = [*NET, "--stop", "fixed", "-q"]


@pytest.fixture
def image64(tmp_path: Path) -> Path:
    return save_png(smooth_image(64, 64), tmp_path / "image.png")


def spans(boxes: list[Box], vertical: bool) -> list[tuple[int, int]]:
    return sorted({(b.top, b.height) if vertical else (b.left, b.width) for b in boxes})


@pytest.mark.parametrize("factor", [1, 2, 4])
@pytest.mark.parametrize("height,width", [(8, 8), (32, 32), (33, 100), (64, 200), (120, 57), (256, 256)])
def test_the_grid_covers_the_image_with_the_overlap_and_aligns_to_the_edges(height, width, factor):
    tile, overlap = 32, 8
    size = (height * factor, width * factor) if factor > 1 else (height, width)
    boxes = grid(size, tile, overlap, factor)
    covered = torch.zeros(size, dtype=torch.int32)
    for b in boxes:
        assert b.top >= 0 and b.left >= 0 and b.top + b.height <= size[0] and b.left + b.width <= size[1]
        assert (b.height, b.width) == (min(tile, size[0]), min(tile, size[1]))
        assert all(v % factor == 0 for v in (b.top, b.left, b.height, b.width))
        covered[b.top : b.top + b.height, b.left : b.left + b.width] += 1
    assert bool((covered > 0).all())
    for axis, length in ((True, size[0]), (False, size[1])):
        runs = spans(boxes, axis)
        assert runs[0][0] == 0 and runs[-1][0] + runs[-1][1] == length  # first at 0, last at the edge
        for (a, n), (b, _) in zip(runs, runs[1:], strict=False):
            assert a + n - b >= overlap  # neighbours share at least the overlap
    assert len(boxes) == len(spans(boxes, True)) * len(spans(boxes, False))


def test_the_window_is_positive_one_inside_and_blending_equal_tiles_gives_the_image_back():
    size, overlap = (70, 100), 8
    boxes = grid(size, 32, overlap)
    total = torch.zeros(size, dtype=torch.float64)
    for b in boxes:
        w = window(b, size, overlap)
        assert w.shape == (b.height, b.width) and bool((w > 0).all()) and bool((w <= 1).all())
        assert w[overlap:-overlap, overlap:-overlap].eq(1).all()
        total[b.top : b.top + b.height, b.left : b.left + b.width] += w
    assert bool((total > 0).all())
    corner = window(boxes[0], size, overlap)  # the image's top-left corner: weight 1 on the image border
    assert corner[0, 0] == 1 and corner[0, -1] < 0.05 and corner[-1, 0] < 0.05
    up, down = ramp(24, overlap, True, False)[:overlap], ramp(24, overlap, False, True)[-overlap:]
    assert torch.allclose(up + down, torch.ones(overlap, dtype=torch.float64))  # a cross-fade where they meet
    image = torch.rand(1, 3, *size)
    assert torch.equal(blend([(b, b.crop(image)) for b in boxes], size, overlap), image)


def test_a_tiled_denoise_beats_the_noisy_input_and_reports_every_tile(tmp_path, image64):
    out, report = tmp_path / "out.png", tmp_path / "r.json"
    code, stderr = dipc(
        "fit", "denoise", image64, "--sigma", "50", "-o", out, "--tile", "40", "--overlap", "8",
        "--iterations", "150", "--lr", "0.02", "--report", report, "--compare", tmp_path / "cmp.png", *FIT,
    )  # fmt: skip
    assert code == 0, stderr
    assert load_image(out).shape == (3, 64, 64)
    assert not (tmp_path / "out.png.tiles").exists()
    r = json.loads(report.read_text())
    assert (r["tiles"], r["tile_size"], r["overlap"], r["grid"]) == (4, 40, 8, {"rows": 2, "columns": 2})
    assert r["iterations"] == 600 and [t["iterations"] for t in r["per_tile"]] == [150] * 4
    assert [t["box"] for t in r["per_tile"]][-1] == {"top": 24, "left": 24, "height": 40, "width": 40}
    assert all(t["psnr"] > t["input_psnr"] for t in r["per_tile"])
    assert r["final_psnr"] > r["input_psnr"] + 2.0, (r["final_psnr"], r["input_psnr"])
    assert load_image(tmp_path / "cmp.png").shape == (3, 64, 64 * 3 + 8)


def test_a_tiled_super_resolve_outputs_factor_times_the_input(tmp_path):
    small = save_png(smooth_image(32, 40), tmp_path / "small.png")
    out, report = tmp_path / "big.png", tmp_path / "r.json"
    code, stderr = dipc(
        "fit", "super-resolve", small, "--factor", "2", "-o", out, "--tile", "48", "--overlap", "8",
        "--iterations", "10", "--report", report, *FIT,
    )  # fmt: skip
    assert code == 0, stderr
    assert load_image(out).shape == (3, 64, 80)
    r = json.loads(report.read_text())
    assert r["tiles"] == 4 and all(t["box"]["height"] == 48 and t["box"]["left"] % 2 == 0 for t in r["per_tile"])


def test_batch_passes_tile_through(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    save_png(smooth_image(64, 64), folder / "a.png")
    out = tmp_path / "out"
    code, stderr = dipc(
        "batch", folder, "-o", out, "--task", "denoise", "--sigma", "25", "--tile", "40", "--overlap", "8",
        "--iterations", "10", *FIT,
    )  # fmt: skip
    assert code == 0, stderr
    assert load_image(out / "a.png").shape == (3, 64, 64)
    assert json.loads((out / "a.json").read_text())["tiles"] == 4
    assert not (out / "a.png.tiles").exists() and not (out / ".partial").exists()


def bad_cases(tmp: Path, image: Path) -> list[tuple[list[object], str]]:
    fit = ["fit", "denoise", image, "-o", tmp / "out.png"]
    return [
        ([*fit, "--tile", "8"], "--tile 8 is smaller than the smallest canvas of this 3-level network (16 px"),
        ([*fit, "--tile", "32", "--overlap", "16"], "--tile (32) must be larger than twice --overlap (16)"),
        ([*fit, "--tile", "32", "--overlap", "-1"], "--overlap must be a whole number of pixels >= 0, got -1"),
        ([*fit, "--overlap", "8"], "--overlap only applies with --tile SIZE"),
        (
            ["fit", "inpaint", image, "--holes", "0.3", "-o", tmp / "out.png", "--tile", "32"],
            "--tile does not support inpaint: the mask's holes cross tile borders",
        ),
        (
            ["fit", "deblur", image, "--kernel", "gaussian:1", "-o", tmp / "out.png", "--tile", "32"],
            "--tile supports denoise and super-resolve, not deblur",
        ),
        (
            ["fit", "super-resolve", image, "--factor", "4", "-o", tmp / "out.png", "--tile", "34", "--overlap", "8"],
            "--tile is in output pixels and must be a multiple of --factor 4 for super-resolve, got 34",
        ),
        (
            ["fit", "--resume", tmp / "fit.ckpt", "-o", tmp / "out.png", "--tile", "32"],
            "--resume does not apply with --tile: a tiled run keeps its finished tiles",
        ),
        ([*fit, "--tile", "32", "--checkpoint", tmp / "c.ckpt"], "resumes when the same command is run again"),
        ([*fit, "--tile", "32", "--snapshot-every", "5"], "--snapshot-every does not apply with --tile"),
    ]


def test_bad_tile_options_are_one_line_and_exit_2(tmp_path, image64):
    for args, message in bad_cases(tmp_path, image64):
        code, stderr = dipc(*args, *NET)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("dipc: error: "), (args, stderr)
        assert message in lines[0], (message, lines[0])
        assert not (tmp_path / "out.png").exists() and not (tmp_path / "out.png.tiles").exists()


def interrupt_in_the_second_tile(monkeypatch, at: int = 5) -> None:
    """Ctrl-C arrives while the second tile runs its iteration ``at`` + 1: the fit stops after that iteration."""
    original, fitters = restore.Fitter.perturbed_input, []

    def interrupting(self):
        if self not in fitters:
            fitters.append(self)
        if len(fitters) == 2 and self.iteration == at:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", interrupting)


def test_ctrl_c_keeps_finished_tiles_and_a_rerun_continues_to_the_same_image(tmp_path, image64, monkeypatch):
    args = ["fit", "denoise", image64, "--sigma", "25", "--tile", "40", "--overlap", "8", "--iterations", "20", *FIT]
    out, work = tmp_path / "out.png", tmp_path / "out.png.tiles"
    with monkeypatch.context() as patch:
        interrupt_in_the_second_tile(patch)
        code, stderr = dipc(*args, "-o", out)
    assert code == 130, stderr
    assert f"interrupted in tile 2/4 at iteration 6: 1 finished tile(s) and this tile's checkpoint kept in {work}" in (
        stderr
    )
    assert "rerun the same command to continue" in stderr and not out.exists()
    assert len(list(work.glob("tile-000.*.pt"))) == 1 and len(list(work.glob("tile-001.*.ckpt"))) == 1
    code, stderr = dipc(*args, "-o", out)
    assert code == 0, stderr
    assert "tile 1/4 (40x40 at y=0,x=0): fitted before, reused" in stderr
    assert "tile 2/4 (40x40 at y=0,x=24, resumed at iteration 6)" in stderr
    assert not work.exists()
    code, stderr = dipc(*args, "-o", tmp_path / "straight.png")
    assert code == 0, stderr
    assert torch.equal(load_image(out), load_image(tmp_path / "straight.png"))


def test_a_rerun_with_other_options_fits_every_tile_again(tmp_path, image64, monkeypatch):
    args = ["fit", "denoise", image64, "--sigma", "25", "--tile", "40", "--overlap", "8", "--iterations", "10", *FIT]
    out = tmp_path / "out.png"
    with monkeypatch.context() as patch:
        interrupt_in_the_second_tile(patch, at=2)
        assert dipc(*args, "-o", out)[0] == 130
    code, stderr = dipc(*args, "-o", out, "--seed", "1")
    assert code == 0, stderr
    assert "holds tiles of a run with other options or input: they are not reused" in stderr
    assert "reused\n" not in stderr.replace("not reused", "") and "resumed" not in stderr
    assert not (tmp_path / "out.png.tiles").exists()
