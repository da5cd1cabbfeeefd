"""``dipc fit`` through typer's test runner: happy paths, resume, Ctrl-C, and every bad input (one line, exit 2)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import save_png
from dip_compile import restore
from dip_compile.cli import app
from dip_compile.imageio import load_image

TINY = ["--depth", "3", "--channels", "16", "--skip-channels", "4", "-q"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_fit_denoise_writes_image_report_checkpoint_and_comparison(tmp_path, image_png):
    out = tmp_path / "out.png"
    result = invoke("fit", "denoise", image_png, "--sigma", "25", "-o", out, "--iterations", "30", "--stop", "fixed",
                    "--report", tmp_path / "r.json", "--checkpoint", tmp_path / "c.ckpt",
                    "--compare", tmp_path / "cmp.png", *TINY)
    assert result.exit_code == 0, result.stderr
    assert load_image(out).shape == (3, 32, 32)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["iterations"] == 30 and report["task"] == "denoise" and report["seed"] == 0
    assert len(report["history"]["psnr_reference"]) == 3 and report["input_psnr"] < 25
    assert report["versions"]["torch"] and report["iterations_per_second"] > 0
    assert Image.open(tmp_path / "cmp.png").size == (32 * 3 + 8, 32)
    assert (tmp_path / "c.ckpt").stat().st_size > 0


def test_fit_inpaint_with_a_mask_file_and_a_made_mask(tmp_path, image_png):
    mask = np.full((32, 32), 255, np.uint8)
    mask[8:20, 8:20] = 0
    Image.fromarray(mask).save(tmp_path / "mask.png")
    for extra in (["--mask", tmp_path / "mask.png"], ["--holes", "0.3"]):
        out = tmp_path / f"out-{extra[0][2:]}.png"
        result = invoke("fit", "inpaint", image_png, *extra, "-o", out, "--iterations", "5", *TINY)
        assert result.exit_code == 0, result.stderr
        assert load_image(out).shape == (3, 32, 32)


def test_fit_super_resolve_from_reference_outputs_the_high_resolution_size(tmp_path, image_png):
    out = tmp_path / "sr.png"
    result = invoke("fit", "super-resolve", image_png, "--factor", "2", "--from-reference", "-o", out,
                    "--iterations", "3", "--report", tmp_path / "r.json", *TINY)
    assert result.exit_code == 0, result.stderr
    assert load_image(out).shape == (3, 32, 32)
    assert "final_psnr" in json.loads((tmp_path / "r.json").read_text())


def test_resume_continues_to_the_new_total_and_matches_a_straight_run(tmp_path, image_png):
    common = ["--sigma", "25", "--stop", "fixed", *TINY]
    invoke("fit", "denoise", image_png, "-o", tmp_path / "straight.png", "--iterations", "8", *common)
    invoke("fit", "denoise", image_png, "-o", tmp_path / "half.png", "--iterations", "4",
           "--checkpoint", tmp_path / "half.ckpt", *common)
    result = invoke("fit", "--resume", tmp_path / "half.ckpt", "-o", tmp_path / "resumed.png", "--iterations", "8",
                    "-q")
    assert result.exit_code == 0, result.stderr
    assert torch.equal(load_image(tmp_path / "resumed.png"), load_image(tmp_path / "straight.png"))


def test_ctrl_c_saves_a_resumable_checkpoint_and_the_current_image(tmp_path, image_png, monkeypatch):
    original = restore.Fitter.iterate

    def iterate_then_interrupt(self):
        out = original(self)
        if self.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(restore.Fitter, "iterate", iterate_then_interrupt)
    out = tmp_path / "out.png"
    result = invoke("fit", "denoise", image_png, "-o", out, "--iterations", "100", *TINY)
    assert result.exit_code == 130
    assert out.exists() and (tmp_path / "out.ckpt").exists()
    monkeypatch.setattr(restore.Fitter, "iterate", original)
    resumed = invoke("fit", "--resume", tmp_path / "out.ckpt", "-o", out, "--iterations", "4", "--force", "-q")
    assert resumed.exit_code == 0, resumed.stderr


def bad_input_cases(tmp: Path, image: Path):
    (tmp / "notimage.png").write_text("hello")
    small_mask = save_png(np.ones((16, 16), np.float32), tmp / "small_mask.png")
    empty_mask = save_png(np.zeros((32, 32), np.float32), tmp / "empty_mask.png")
    (tmp / "existing.png").write_bytes(b"keep me")
    (tmp / "broken.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    torch.save({"format": "something-else"}, tmp / "other.ckpt")
    torch.save({"format": "dip-compile-checkpoint", "version": 99}, tmp / "future.ckpt")
    out = tmp / "o.png"
    return {
        "missing image": (["fit", "denoise", tmp / "nope.png", "-o", out], "not found"),
        "unreadable image": (["fit", "denoise", tmp / "notimage.png", "-o", out], "not a readable image"),
        "mask of the wrong size": (["fit", "inpaint", image, "--mask", small_mask, "-o", out], "16x16"),
        "empty mask": (["fit", "inpaint", image, "--mask", empty_mask, "-o", out], "no pixel"),
        "no mask": (["fit", "inpaint", image, "-o", out], "exactly one of --mask"),
        "mask on denoise": (["fit", "denoise", image, "--mask", small_mask, "-o", out], "only apply to inpaint"),
        "wrong factor": (["fit", "super-resolve", image, "--factor", "3", "-o", out], "2, 4 or 8"),
        "zero iterations": (["fit", "denoise", image, "--iterations", "0", "-o", out], "iterations must be positive"),
        "negative lr": (["fit", "denoise", image, "--lr", "-1", "-o", out], "learning rate must be positive"),
        "bad sigma": (["fit", "denoise", image, "--sigma", "-5", "-o", out], "--sigma"),
        "bad hole fraction": (["fit", "inpaint", image, "--holes", "1.5", "-o", out], "hole fraction"),
        "existing output": (["fit", "denoise", image, "-o", tmp / "existing.png"], "--force"),
        "missing output folder": (["fit", "denoise", image, "-o", tmp / "no" / "o.png"], "does not exist"),
        "corrupted checkpoint": (["fit", "--resume", tmp / "broken.ckpt", "-o", out], "not a readable"),
        "not a checkpoint": (["fit", "--resume", tmp / "other.ckpt", "-o", out], "not a dip-compile checkpoint"),
        "future checkpoint": (["fit", "--resume", tmp / "future.ckpt", "-o", out], "version 99"),
        "missing checkpoint": (["fit", "--resume", tmp / "gone.ckpt", "-o", out], "not found"),
        "no output": (["fit", "denoise", image], "--output"),
        "keep-known on denoise": (["fit", "denoise", image, "--keep-known", "-o", out], "only applies to inpaint"),
        "bad depth": (["fit", "denoise", image, "--depth", "0", "-o", out], "--depth"),
    }


def test_every_bad_input_is_one_line_on_stderr_with_exit_code_2(tmp_path, image_png):
    for name, (args, expected) in bad_input_cases(tmp_path, image_png).items():
        result = invoke(*args)
        assert result.exit_code == 2, (name, result.stderr, result.exception)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dipc: error:"), (name, result.stderr)
        assert expected in lines[0], (name, lines[0])
        assert not (tmp_path / "o.png").exists(), name
    assert (tmp_path / "existing.png").read_bytes() == b"keep me"


def test_unwritable_output_folder_is_reported_before_fitting(tmp_path, image_png, monkeypatch):
    # tests run as root, who may write anywhere: make the permission check see a read-only folder
    import dip_compile.imageio as imageio

    monkeypatch.setattr(imageio, "writable", lambda folder: False)
    result = invoke("fit", "denoise", image_png, "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and "not writable" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_console_script_turns_usage_errors_into_one_line(tmp_path, image_png):
    cmd = [sys.executable, "-c", "from dip_compile.cli import main; main()", "fit", "denoise", str(image_png),
           "-o", str(tmp_path / "o.png"), "--iterations", "lots"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--iterations" in done.stderr and "Traceback" not in done.stderr
