"""``dipc fit`` through typer's test runner: happy paths, resume, Ctrl-C, and every bad input (one line, exit 2)."""

import dataclasses
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from conftest import dipc, save_png
from dip_compile import acceleration, preflight, restore, stopping
from dip_compile.cli import app
from dip_compile.imageio import load_image

TINY = ["--depth", "3", "--channels", "16", "--skip-channels", "4", "-q"]
TINY_FIT = ["--iterations", "5", "--depth", "2", "--channels", "8", "--skip-channels", "4", "-q"]
EAGER = ["--backend", "eager"]  # (no compiling: a quick fit)


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_fit_denoise_writes_image_report_checkpoint_and_comparison(tmp_path, image_png):
    out = tmp_path / "out.png"
    result = invoke(
        "fit",
        "denoise",
        image_png,
        "--sigma",
        "25",
        "-o",
        out,
        "--iterations",
        "30",
        "--stop",
        "fixed",
        "--report",
        tmp_path / "r.json",
        "--checkpoint",
        tmp_path / "c.ckpt",
        "--compare",
        tmp_path / "cmp.png",
        *TINY,
    )
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
    result = invoke(
        "fit",
        "super-resolve",
        image_png,
        "--factor",
        "2",
        "--from-reference",
        "-o",
        out,
        "--iterations",
        "3",
        "--report",
        tmp_path / "r.json",
        *TINY,
    )
    assert result.exit_code == 0, result.stderr
    assert load_image(out).shape == (3, 32, 32)
    assert "final_psnr" in json.loads((tmp_path / "r.json").read_text())


def test_resume_continues_to_the_new_total_and_matches_a_straight_run(tmp_path, image_png):
    common = ["--sigma", "25", "--stop", "fixed", *TINY]
    invoke("fit", "denoise", image_png, "-o", tmp_path / "straight.png", "--iterations", "8", *common)
    invoke(
        "fit",
        "denoise",
        image_png,
        "-o",
        tmp_path / "half.png",
        "--iterations",
        "4",
        "--checkpoint",
        tmp_path / "half.ckpt",
        *common,
    )
    result = invoke(
        "fit", "--resume", tmp_path / "half.ckpt", "-o", tmp_path / "resumed.png", "--iterations", "8", "-q"
    )
    assert result.exit_code == 0, result.stderr
    assert torch.equal(load_image(tmp_path / "resumed.png"), load_image(tmp_path / "straight.png"))


def test_a_resume_without_precision_keeps_the_saved_fp32_on_a_bf16_cpu(tmp_path, image_png, monkeypatch):
    """On a CPU where `auto` is bf16, a fit saved in fp32 and resumed without --precision stays fp32: the resumed image
    is the straight fp32 run's (it used to switch to bf16 and differ by up to 2/255)."""
    amx = acceleration.Capability("cpu", "a faked AMX CPU", fast_bf16=True, fast_fp16=False, fast_channels_last=True)
    monkeypatch.setattr(acceleration, "capability", lambda device: amx)
    common = ["--sigma", "25", "--stop", "fixed", "--precision", "fp32", *TINY]
    invoke("fit", "denoise", image_png, "-o", tmp_path / "straight.png", "--iterations", "6", *common)
    invoke("fit", "denoise", image_png, "-o", tmp_path / "half.png", "--iterations", "3",
           "--checkpoint", tmp_path / "half.ckpt", *common)  # fmt: skip
    report = tmp_path / "resumed.json"
    result = invoke("fit", "--resume", tmp_path / "half.ckpt", "-o", tmp_path / "resumed.png", "--iterations", "6",
                    "--report", report, "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert json.loads(report.read_text())["precision"] == "fp32"
    assert torch.equal(load_image(tmp_path / "resumed.png"), load_image(tmp_path / "straight.png"))


def test_ctrl_c_saves_a_resumable_checkpoint_and_the_current_image(tmp_path, image_png, monkeypatch):
    original = restore.Fitter.perturbed_input

    def interrupt_after_two(self):  # the input of the third iteration: Ctrl-C arrives after the second
        if self.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", interrupt_after_two)
    out = tmp_path / "out.png"
    result = invoke("fit", "denoise", image_png, "-o", out, "--iterations", "100", *TINY)
    assert result.exit_code == 130
    assert out.exists() and (tmp_path / "out.ckpt").exists()
    monkeypatch.setattr(restore.Fitter, "perturbed_input", original)
    resumed = invoke("fit", "--resume", tmp_path / "out.ckpt", "-o", out, "--iterations", "4", "--force", "-q")
    assert resumed.exit_code == 0, resumed.stderr


def bad_input_cases(tmp: Path, image: Path):
    (tmp / "notimage.png").write_text("hello")
    small_mask = save_png(np.ones((16, 16), np.float32), tmp / "small_mask.png")
    empty_mask = save_png(np.zeros((32, 32), np.float32), tmp / "empty_mask.png")
    (tmp / "existing.png").write_bytes(b"keep me")
    (tmp / "broken.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    (tmp / "short.ckpt").write_bytes(b"junk")  # torch's legacy reader runs out of bytes (struct.error)
    torch.save({"format": "something-else"}, tmp / "other.ckpt")
    torch.save({"format": "dip-compile-checkpoint", "version": 99}, tmp / "future.ckpt")
    with open(tmp / "pickle.ckpt", "wb") as f:
        pickle.dump({"format": "dip-compile-checkpoint"}, f)
    os.mkfifo(tmp / "fifo.png")
    (tmp / "bomb.png").write_bytes(png_header(100_000, 100_000))
    Image.fromarray(np.full((8, 8), 70000, np.int32), mode="I").save(tmp / "int32.tif")
    out = tmp / "o.png"
    return {
        "missing image": (["fit", "denoise", tmp / "nope.png", "-o", out], "not found"),
        "unreadable image": (["fit", "denoise", tmp / "notimage.png", "-o", out], "not a readable image"),
        "mask of the wrong size": (["fit", "inpaint", image, "--mask", small_mask, "-o", out], "16x16"),
        "empty mask": (["fit", "inpaint", image, "--mask", empty_mask, "-o", out], "no pixel"),
        "no mask": (["fit", "inpaint", image, "-o", out], "exactly one of --mask"),
        "mask on denoise": (["fit", "denoise", image, "--mask", small_mask, "-o", out], "only apply to inpaint"),
        "wrong factor": (["fit", "super-resolve", image, "--factor", "3", "-o", out], "2, 4 or 8"),
        "zero iterations": (["fit", "denoise", image, "--iterations", "0", "-o", out], "--iterations must be a whole"),
        "negative lr": (["fit", "denoise", image, "--lr", "-1", "-o", out], "--lr must be a finite number"),
        "infinite lr": (["fit", "denoise", image, "--lr", "inf", "-o", out], "--lr must be a finite number"),
        "nan reg-noise": (["fit", "denoise", image, "--reg-noise", "nan", "-o", out], "--reg-noise must be a finite"),
        "inf reg-noise": (["fit", "denoise", image, "--reg-noise", "inf", "-o", out], "--reg-noise must be a finite"),
        "nan sigma": (["fit", "denoise", image, "--sigma", "nan", "-o", out], "--sigma"),
        "nan holes": (["fit", "inpaint", image, "--holes", "nan", "-o", out], "--holes"),
        "bad sigma": (["fit", "denoise", image, "--sigma", "-5", "-o", out], "--sigma"),
        "bad hole fraction": (["fit", "inpaint", image, "--holes", "1.5", "-o", out], "--holes"),
        "-o is --checkpoint": (["fit", "denoise", image, "-o", out, "--checkpoint", out], "share the path"),
        "-o is --report": (["fit", "denoise", image, "-o", out, "--report", out], "share the path"),
        "-o is --compare": (["fit", "denoise", image, "-o", out, "--compare", out], "share the path"),
        "raw pickle checkpoint": (["fit", "--resume", tmp / "pickle.ckpt", "-o", out], "not a readable"),
        "image is a fifo": (["fit", "denoise", tmp / "fifo.png", "-o", out], "not a regular file"),
        "decompression bomb": (["fit", "denoise", tmp / "bomb.png", "-o", out], "too large"),
        "32-bit integer image": (["fit", "denoise", tmp / "int32.tif", "-o", out], "32-bit"),
        "existing output": (["fit", "denoise", image, "-o", tmp / "existing.png"], "--force"),
        "missing output folder": (["fit", "denoise", image, "-o", tmp / "no" / "o.png"], "does not exist"),
        "corrupted checkpoint": (["fit", "--resume", tmp / "broken.ckpt", "-o", out], "not a readable"),
        "four-byte checkpoint": (["fit", "--resume", tmp / "short.ckpt", "-o", out], "not a readable"),
        "not a checkpoint": (["fit", "--resume", tmp / "other.ckpt", "-o", out], "not a dip-compile checkpoint"),
        "future checkpoint": (["fit", "--resume", tmp / "future.ckpt", "-o", out], "version 99"),
        "missing checkpoint": (["fit", "--resume", tmp / "gone.ckpt", "-o", out], "not found"),
        "no output": (["fit", "denoise", image], "--output"),
        "keep-known on denoise": (["fit", "denoise", image, "--keep-known", "-o", out], "only applies to inpaint"),
        "output in a folder nobody can write": (["fit", "denoise", image, "-o", "/proc/o.png"], "not writable"),
        "bad depth": (["fit", "denoise", image, "--depth", "0", "-o", out], "--depth"),
    }


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and holds no pixels (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


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
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode == os.W_OK else real(path, mode))
    result = invoke("fit", "denoise", image_png, "-o", tmp_path / "o.png")
    assert result.exit_code == 2 and "not writable" in result.stderr
    assert not (tmp_path / "o.png").exists()


def test_console_script_turns_usage_errors_into_one_line(tmp_path, image_png):
    cmd = [
        sys.executable,
        "-c",
        "from dip_compile.cli import main; main()",
        "fit",
        "denoise",
        str(image_png),
        "-o",
        str(tmp_path / "o.png"),
        "--iterations",
        "lots",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--iterations" in done.stderr and "Traceback" not in done.stderr


def test_small_and_odd_sizes_are_fitted_on_a_larger_canvas_and_keep_their_size(tmp_path):
    # 8x8: the default network's 5 levels need a 32x32 canvas (at 8 channels: the preset's width is not the point)
    for width, height, extra in ((8, 8, ["--channels", "8"]), (100, 20, TINY), (5, 3, TINY)):
        image = save_png(
            np.random.default_rng(0).random((3, height, width)).astype(np.float32), tmp_path / f"{width}x{height}.png"
        )
        out = tmp_path / f"out-{width}x{height}.png"
        result = invoke("fit", "denoise", image, "-o", out, "--iterations", "2", "--stop", "fixed", "-q", *extra)
        assert result.exit_code == 0, result.stderr
        assert Image.open(out).size == (width, height)


def test_an_image_too_large_for_memory_is_refused_before_any_work(tmp_path, monkeypatch):
    image = save_png(np.zeros((3, 100_000, 1), np.float32), tmp_path / "line.png")
    monkeypatch.setattr(preflight, "available_bytes", lambda device: (2**30, "memory"))  # any machine's
    # 16 channels: counting the network's activations in bf16 (the bf16 pass) takes a minute at full width on AVX2
    result = invoke("fit", "denoise", image, "-o", tmp_path / "o.png", "--iterations", "1", "--channels", "16")
    assert result.exit_code == 2 and "GiB" in result.stderr and "smaller network" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_refuses_options_that_would_change_the_saved_fit(tmp_path, image_png):
    ckpt = tmp_path / "a.ckpt"
    first = invoke(
        "fit",
        "denoise",
        image_png,
        "-o",
        tmp_path / "a.png",
        "--iterations",
        "2",
        "--checkpoint",
        ckpt,
        "--stop",
        "fixed",
        *TINY,
    )
    assert first.exit_code == 0, first.stderr
    refused = {
        "--mask": (["--mask", image_png], "drop --mask"),
        "--sigma": (["--sigma", "25"], "drop --sigma"),
        "--reference": (["--reference", image_png], "drop --reference"),
        "--depth": (["--depth", "2"], "drop --depth"),
        "--channels": (["--channels", "8"], "drop --channels"),
        "--upsample": (["--upsample", "nearest"], "drop --upsample"),
        "--structure": (["--structure", "seed"], "drop --structure"),
        "--downsample": (["--downsample", "avg"], "drop --downsample"),
        "--input": (["--input", "meshgrid"], "drop --input"),
        "--preset": (["--preset", "snail"], "drop --preset"),
        "--paper-exact": (["--paper-exact"], "drop --paper-exact"),
        "--flash": (["--flash", image_png], "drop --flash"),
        "--backtrack": (["--backtrack", "3"], "--backtrack cannot change"),
        "--seed": (["--seed", "3"], "--seed cannot change when resuming"),
        "--stop": (["--stop", "auto"], "--stop cannot change"),
        "--factor": (["--factor", "4"], "--factor"),
        "--stop-window": (["--stop-window", "7"], "--stop-window cannot change"),
    }
    for name, (extra, text) in refused.items():
        result = invoke("fit", "--resume", ckpt, "-o", tmp_path / "b.png", "--iterations", "4", "-q", *extra)
        assert result.exit_code == 2, (name, result.stderr)
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1, (name, result.stderr)
    # what may change mid-fit is applied, and the report says so
    result = invoke(
        "fit",
        "--resume",
        ckpt,
        "-o",
        tmp_path / "b.png",
        "--iterations",
        "4",
        "--lr",
        "0.002",
        "--reg-noise",
        "0",
        "--report",
        tmp_path / "r.json",
        "-q",
    )
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "r.json").read_text())["config"]
    assert config["lr"] == 0.002 and config["reg_noise_std"] == 0 and config["iterations"] == 4


def test_resume_applies_the_new_learning_rate_to_the_optimizer(tmp_path, image_png):
    from dip_compile.checkpoint import load_checkpoint

    ckpt = tmp_path / "a.ckpt"
    invoke("fit", "denoise", image_png, "-o", tmp_path / "a.png", "--iterations", "2", "--checkpoint", ckpt, *TINY)
    loaded = load_checkpoint(ckpt)
    fitter = loaded.fitter("cpu", loaded.config.replace(lr=0.123))
    assert {g["lr"] for g in fitter.optimizer.param_groups} == {0.123}


def test_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path, image_png):
    result = invoke(
        "fit",
        "denoise",
        image_png,
        "--sigma",
        "25",
        "-o",
        tmp_path / "o.png",
        "--iterations",
        "20",
        "--stop",
        "fixed",
        "--status-every",
        "0.000001",
        *TINY[:-1],
    )
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("denoise ")]
    assert [line.split()[1] for line in lines] == ["10/20", "20/20"]
    assert "loss" in lines[0] and "PSNR" in lines[0] and "it/s" in lines[0] and "ETA" in lines[0]
    assert "at most" not in lines[0]  # a fixed count: the ETA is the fit's


def test_a_stopping_rules_eta_is_a_bound() -> None:
    """With a stopping rule the count is a cap, so the time left to it is the most the fit can take (the web page
    shows this line too: a held-out denoising fit's ETA was read as its length)."""
    from dip_compile.fitting import LogRecord
    from dip_compile.progress import status_line

    record = LogRecord(100, 3100, 1e-3, 20.0, None, None, 10.0)
    assert status_line("denoise", record, ema=True).endswith("10.00 it/s ETA 0:05:00")
    capped = dataclasses.replace(record, capped=True)
    assert status_line("denoise", capped, ema=True).endswith("10.00 it/s ETA at most 0:05:00")


def test_double_ctrl_c_still_saves_the_checkpoint(tmp_path, image_png, monkeypatch):
    original = restore.Fitter.perturbed_input

    def interrupt_twice_after_two(self):
        if self.iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", interrupt_twice_after_two)
    result = invoke("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "100", *TINY)
    assert result.exit_code == 130
    assert (tmp_path / "out.ckpt").exists() and "still stopping and saving" in result.stderr


def test_an_output_created_meanwhile_by_another_run_is_not_replaced(tmp_path, image_png, monkeypatch):
    out = tmp_path / "out.png"
    original = restore.Fitter.session

    def run_while_another_process_writes_out(self, *args, **kwargs):
        out.write_bytes(b"the other run's image")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(restore.Fitter, "session", run_while_another_process_writes_out)
    result = invoke("fit", "denoise", image_png, "-o", out, "--iterations", "2", *TINY)
    assert result.exit_code == 2 and "created by another process" in result.stderr
    assert out.read_bytes() == b"the other run's image"
    assert load_image(tmp_path / "out.1.png").shape == (3, 32, 32)


def test_report_is_strict_json_even_with_non_finite_values(tmp_path):
    from dip_compile.report import save_report

    save_report({"loss": float("inf"), "history": {"loss": [float("nan"), 1.0]}}, tmp_path / "r.json")

    def refuse(name: str) -> None:
        raise ValueError(name)

    data = json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse)
    assert data == {"loss": None, "history": {"loss": [None, 1.0]}}


def test_a_checkpoint_with_tensors_of_the_wrong_shape_is_refused_in_one_line(tmp_path, image_png):
    ckpt = tmp_path / "a.ckpt"
    invoke("fit", "denoise", image_png, "-o", tmp_path / "a.png", "--iterations", "2", "--checkpoint", ckpt, *TINY)
    payload = torch.load(ckpt, weights_only=True)
    for name, damage in (
        ("weight", lambda p: p["state"]["net"].__setitem__("head.0.weight", torch.zeros(3, 5, 1, 1))),
        ("observation", lambda p: p["problem"].__setitem__("observation", torch.zeros(1, 3, 8, 8))),
    ):
        broken = torch.load(ckpt, weights_only=True)
        damage(broken)
        torch.save(broken, tmp_path / f"{name}.ckpt")
        result = invoke("fit", "--resume", tmp_path / f"{name}.ckpt", "-o", tmp_path / "b.png", "--iterations", "4")
        assert result.exit_code == 2 and "damaged" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        exported = invoke("export", tmp_path / f"{name}.ckpt", "-o", tmp_path / f"{name}.onnx")
        assert exported.exit_code == 2 and "damaged" in exported.stderr, exported.stderr
    assert payload["state"]["iteration"] == 2


def test_a_third_ctrl_c_quits_at_once_in_one_line(tmp_path, image_png, monkeypatch):
    original = restore.Fitter.perturbed_input

    def interrupt_three_times_after_two(self):
        if self.iteration == 2:
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(restore.Fitter, "perturbed_input", interrupt_three_times_after_two)
    code, stderr = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "100", *TINY)
    assert code == 130 and stderr.strip().splitlines()[-1] == "dipc: interrupted; nothing more was saved"
    assert not (tmp_path / "out.png").exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_checkpoint_holding_nan_or_inf_is_refused_as_damaged_in_one_line(tmp_path, image_png):
    ckpt = tmp_path / "a.ckpt"
    auto_stop = ["--stop", "auto", "--stop-window", "2", "--sigma", "25"]  # so it keeps an EMA and a best image
    made = invoke(
        "fit",
        "denoise",
        image_png,
        "-o",
        tmp_path / "a.png",
        "--iterations",
        "6",
        *auto_stop,
        "--checkpoint",
        ckpt,
        *TINY,
    )
    assert made.exit_code == 0, made.stderr
    state = restore.load_checkpoint(ckpt).state  # the genuine file loads (its best variance may be +inf)
    assert state["ema"] is not None and state["stopper"]["best_image"] is not None

    def poison(t: torch.Tensor, value: float = float("nan")) -> None:
        t[(0,) * t.dim()] = value  # in place whatever the layout (a bf16 fit keeps channels-last images)

    damages = {
        "weight": lambda p: poison(p["state"]["net"]["head.0.weight"]),
        "Adam state": lambda p: poison(next(iter(p["state"]["optimizer"]["state"].values()))["exp_avg"]),
        "observation": lambda p: poison(p["problem"]["observation"], float("inf")),
        "network input": lambda p: poison(p["state"]["net_input"], float("-inf")),
        "EMA image": lambda p: poison(p["state"]["ema"]),
        "auto-stop best_image": lambda p: poison(p["state"]["stopper"]["best_image"]),
        "reference": lambda p: poison(p["problem"]["reference"]),
    }
    for name, damage in damages.items():
        broken = torch.load(ckpt, weights_only=True)
        damage(broken)
        path = tmp_path / f"{name}.ckpt"
        torch.save(broken, path)
        code, err = dipc("fit", "--resume", path, "-o", tmp_path / "b.png", "--iterations", "8", "-q")
        assert code == 2 and err.count("\n") == 1, (name, err)
        assert "damaged dip-compile checkpoint" in err and name in err and "NaN or infinite" in err, (name, err)
        assert not (tmp_path / "b.png").exists()
    code, err = dipc("export", tmp_path / "weight.ckpt", "-o", tmp_path / "w.onnx")
    assert code == 2 and "damaged dip-compile checkpoint" in err and not (tmp_path / "w.onnx").exists()


def test_a_held_out_fit_ended_by_its_count_says_more_iterations_may_restore_more(tmp_path, image_png):
    """The count, not the rule, ended it (CSet9's textured images at full size do at 3000): the summary says so."""
    hint = "the held-out error was still falling at the last iteration: more iterations may restore more"
    for stop, said in (("holdout", True), ("fixed", False), ("auto", False)):
        made = invoke("fit", "denoise", image_png, "-o", tmp_path / f"{stop}.png", "--iterations", "4", "--sigma",
                      "25", "--stop", stop, *TINY)  # fmt: skip
        assert made.exit_code == 0 and "4 iterations (completed)" in made.stderr, made.stderr
        assert (hint in made.stderr) is said, (stop, made.stderr)
    assert not stopping.still_improving("auto-stop", {"rule": "holdout"})  # the rule ended it: nothing to add


def test_a_checkpoint_with_damaged_held_out_pixels_is_refused_in_one_line(tmp_path, image_png):
    ckpt = tmp_path / "a.ckpt"
    made = invoke("fit", "denoise", image_png, "-o", tmp_path / "a.png", "--iterations", "4", "--sigma", "25",
                  "--stop", "holdout", "--checkpoint", ckpt, *TINY)  # fmt: skip
    assert made.exit_code == 0, made.stderr
    for name, damage in {"held-out pixels": float("nan"), "held-out error": float("inf")}.items():
        broken = torch.load(ckpt, weights_only=True)
        broken["state"]["stopper"]["held" if name == "held-out pixels" else "error"].fill_(damage)
        torch.save(broken, tmp_path / "b.ckpt")
        code, err = dipc("fit", "--resume", tmp_path / "b.ckpt", "-o", tmp_path / "b.png", "--iterations", "8", "-q")
        assert code == 2 and err.count("\n") == 1 and name in err and "NaN or infinite" in err, (name, err)
    broken = torch.load(ckpt, weights_only=True)
    broken["state"]["stopper"]["held"] = torch.zeros(1, 1, 3, 3)
    torch.save(broken, tmp_path / "c.ckpt")
    code, err = dipc("fit", "--resume", tmp_path / "c.ckpt", "-o", tmp_path / "c.png", "--iterations", "8", "-q")
    assert code == 2 and err.count("\n") == 1 and "the held-out pixels has shape (1, 1, 3, 3)" in err, err


LONG_NAME = "x" * 300 + ".png"  # more than any file system's 255 bytes


def test_an_output_spelled_as_a_folder_or_with_a_name_too_long_is_one_line_before_any_work(tmp_path, image_png):
    (tmp_path / "existing").mkdir()
    cases = {
        "-o newdir/": (["-o", f"{tmp_path}/newdir/"], "ends with a path separator"),
        "--report newdir/": (["--report", f"{tmp_path}/newdir/"], "ends with a path separator"),
        "--checkpoint newdir/": (["--checkpoint", f"{tmp_path}/newdir/"], "ends with a path separator"),
        "--compare newdir/": (["--compare", f"{tmp_path}/newdir/"], "ends with a path separator"),
        "-o an existing folder": (["-o", tmp_path / "existing"], "is a folder"),
        "--report an existing folder": (["--report", tmp_path / "existing"], "is a folder"),
        "-o name too long": (["-o", tmp_path / LONG_NAME], "is too long: 304 bytes, at most"),
        "--checkpoint name too long": (["--checkpoint", tmp_path / LONG_NAME], "is too long: 304 bytes"),
        "--compare name too long": (["--compare", tmp_path / LONG_NAME], "is too long: 304 bytes"),
    }
    for name, (extra, needle) in cases.items():
        out = ["-o", tmp_path / "o.png"] if extra[0] != "-o" else []
        code, err = dipc("fit", "denoise", image_png, *out, *extra, "--iterations", "1", *TINY)
        assert code == 2 and err.count("\n") == 1 and err.startswith("dipc: error:"), (name, err)
        assert needle in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "image.png"]
    assert list((tmp_path / "existing").iterdir()) == []


def test_a_file_name_too_long_for_the_file_system_is_one_line_where_it_is_written(tmp_path):
    from dip_compile.errors import DipError
    from dip_compile.imageio import atomic_write

    try:
        atomic_write(tmp_path / ("x" * 250), lambda tmp: tmp.write_bytes(b"data"))  # its temp name is too long
    except DipError as exc:
        assert "its name is too long for this file system" in str(exc)
    else:
        raise AssertionError("a name the file system cannot take was written")
    assert list(tmp_path.iterdir()) == []


def test_resume_writes_back_to_its_own_checkpoint_but_any_other_existing_one_needs_force(tmp_path, image_png):
    from dip_compile.checkpoint import load_checkpoint

    ckpt, other = tmp_path / "a.ckpt", tmp_path / "other.ckpt"
    first = invoke(
        "fit", "denoise", image_png, "-o", tmp_path / "a.png", "--iterations", "2", "--checkpoint", ckpt, *TINY
    )
    assert first.exit_code == 0, first.stderr
    other.write_bytes(b"keep me")
    # the resumed file itself: the expected continuation, no --force
    code, err = dipc("fit", "--resume", ckpt, "-o", tmp_path / "b.png", "--iterations", "3", "--checkpoint", ckpt, "-q")
    assert code == 0, err
    assert load_checkpoint(ckpt).iteration == 3
    # any other existing checkpoint: refused without --force, untouched, replaced with it
    code, err = dipc(
        "fit", "--resume", ckpt, "-o", tmp_path / "c.png", "--iterations", "4", "--checkpoint", other, "-q"
    )
    assert code == 2 and err.count("\n") == 1 and f"output {other} exists; pass --force" in err, err
    assert other.read_bytes() == b"keep me" and not (tmp_path / "c.png").exists()
    code, err = dipc(
        "fit", "--resume", ckpt, "-o", tmp_path / "c.png", "--iterations", "4", "--checkpoint", other, "--force", "-q"
    )
    assert code == 0, err
    assert load_checkpoint(other).iteration == 4 and load_checkpoint(ckpt).iteration == 3
    # and the rule is the one --help and docs/fit.md state
    fit_command = typer.main.get_command(app).commands["fit"]  # type: ignore[attr-defined]
    help_text = next(p.help for p in fit_command.params if p.name == "checkpoint")
    assert "an existing file needs --force, except the --resume file itself" in help_text
    page = " ".join((Path(__file__).resolve().parents[1] / "docs" / "fit.md").read_text().split())
    assert "`--checkpoint` may name the file being resumed: the fit continues it and writes it back without" in page


def test_an_image_smaller_than_the_ssim_window_has_no_ssim_and_no_traceback(tmp_path):
    rng = np.random.default_rng(0)
    one = save_png(rng.random((3, 1, 1)).astype(np.float32), tmp_path / "one.png")
    eight = save_png(rng.random((3, 8, 8)).astype(np.float32), tmp_path / "eight.png")
    for task, image, extra in (("inpaint", one, ["--text"]), ("denoise", eight, ["--sigma", "25"])):
        report = tmp_path / f"{task}.json"
        code, err = dipc("fit", task, image, *extra, "-o", tmp_path / f"{task}.png", "--report", report, *TINY_FIT)
        assert code == 0 and "Traceback" not in err, err
        scores = json.loads(report.read_text())
        assert scores["final_ssim"] is None and isinstance(scores["final_psnr"], float)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_a_reference_in_the_other_mode_is_read_as_the_image_is_and_the_report_says_so(tmp_path):
    from conftest import smooth_image
    from dip_compile.checkpoint import load_checkpoint
    from dip_compile.imageio import to_grayscale
    from dip_compile.metrics import psnr

    gray = smooth_image(32, 32, channels=1)
    colour = smooth_image(32, 32, seed=1)
    save_png(gray.expand(3, -1, -1), tmp_path / "scan.png")  # a gray photo scanned and saved as RGB
    save_png(gray, tmp_path / "original.png")  # its gray original
    save_png(colour, tmp_path / "colour.png")
    save_png(to_grayscale(colour), tmp_path / "gray.png")
    cases = [
        ("scan.png", "original.png", "the reference is grayscale and IMAGE in colour: the reference compared as RGB"),
        ("gray.png", "colour.png", "the reference is in colour and IMAGE grayscale: the reference compared as gray"),
    ]
    for image, reference, note in cases:
        out, report, ckpt = tmp_path / f"out-{image}", tmp_path / f"{image}.json", tmp_path / f"{image}.ckpt"
        args = ["--reference", tmp_path / reference, "--report", report, "--checkpoint", ckpt, *TINY_FIT[:-1], *EAGER]
        code, stderr = dipc("fit", "denoise", tmp_path / image, "-o", out, *args)
        assert code == 0 and f"note: {note}" in stderr, stderr
        data = json.loads(report.read_text())
        assert len(data["notes"]) == 1 and data["notes"][0].startswith(note)
        assert load_checkpoint(ckpt).problem.notes == tuple(data["notes"])  # a resumed fit's report keeps it
        restored, ref = load_image(out), load_image(tmp_path / reference)
        expected = ref.expand(3, -1, -1) if ref.shape[0] == 1 else to_grayscale(ref)
        assert restored.shape == expected.shape
        assert (
            abs(data["final_psnr"] - psnr(restored, expected).item()) < 0.1
        )  # (the report scores the unrounded image)
    save_png(smooth_image(16, 16, channels=1), tmp_path / "small.png")  # what cannot be compared is still refused
    code, stderr = dipc(
        "fit",
        "denoise",
        tmp_path / "scan.png",
        "-o",
        tmp_path / "x.png",
        "--reference",
        tmp_path / "small.png",
        *TINY_FIT,
    )
    assert code == 2 and "reference is 16x16 with 3 channel(s); expected 32x32 with 3" in stderr, stderr
