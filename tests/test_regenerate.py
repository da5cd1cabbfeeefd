"""The torch-free regeneration (export/regenerate.py = dip_compile.replay.regenerate) and ``dipc regenerate``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from typer.testing import CliRunner

from conftest import smooth_image, tiny_config
from dip_compile import exporters
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.cli import app
from dip_compile.fitting import Fitter
from dip_compile.imageio import save_image
from dip_compile.problem import add_noise, make_problem
from dip_compile.replay import regenerate as replay

PROGRAM = Path(__file__).resolve().parents[1] / "export" / "regenerate.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """A tiny fit's ONNX export and the PNG of the fit's own output (what regeneration must reproduce)."""
    tmp = tmp_path_factory.mktemp("replay")
    config = tiny_config("denoise", iterations=3, log_every=1, stop="fixed")
    fitter = Fitter(config, make_problem(config, add_noise(smooth_image(30, 45), 0.1)))
    fitter.run(3)
    save_checkpoint(fitter, tmp / "fit.ckpt")
    save_image(fitter.output(), tmp / "fit.png")
    exporters.write_onnx(exporters.plan_export(load_checkpoint(tmp / "fit.ckpt")), tmp / "model.onnx")
    return {"model": tmp / "model.onnx", "fit": tmp / "fit.png", "dir": tmp}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_program_regenerates_the_fit_png_with_torch_unimportable(exported, tmp_path):
    blocked = tmp_path / "blocked"
    (blocked / "torch").mkdir(parents=True)
    (blocked / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    (blocked / "dip_compile").mkdir()
    (blocked / "dip_compile" / "__init__.py").write_text("raise ImportError('dip_compile is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, str(PROGRAM), str(exported["model"]), "-o", str(out),
                          "--check", str(exported["fit"]), "--provider", "cpu"],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "identical 8-bit pixels 100.000%" in run.stdout and "(OK)" in run.stdout
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(exported["fit"])))


def test_dipc_regenerate_runs_the_same_code_and_writes_the_same_png(exported, tmp_path):
    result = invoke("regenerate", exported["model"], "-o", tmp_path / "a.png", "--check", exported["fit"])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output and "100.000%" in result.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(exported["fit"])))
    assert sys.modules["dip_compile.replay.regenerate"].__file__ == str(PROGRAM)


def test_check_against_a_different_png_reports_mismatch_with_exit_1(exported, tmp_path):
    other = np.asarray(Image.open(exported["fit"])).copy()
    other[:10] = 255 - other[:10]
    Image.fromarray(other).save(tmp_path / "other.png")
    result = invoke("regenerate", exported["model"], "--check", tmp_path / "other.png")
    assert result.exit_code == 1 and "MISMATCH" in result.output
    share = float(result.output.split("identical 8-bit pixels ")[1].split("%")[0])
    assert share < 70


def test_other_noise_from_npy_changes_the_image(exported, tmp_path):
    noise = np.random.default_rng(1).random((1, 8, 32, 48), dtype=np.float32) * 0.1
    np.save(tmp_path / "n.npy", noise)
    assert replay.main([str(exported["model"]), "-o", str(tmp_path / "n.png"), "--noise", str(tmp_path / "n.npy")]) == 0
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in (tmp_path / "n.png", exported["fit"]))
    assert np.abs(a - b).max() > 2
    np.save(tmp_path / "bad.npy", noise[:, :4])
    result = invoke("regenerate", exported["model"], "-o", tmp_path / "x.png", "--noise", tmp_path / "bad.npy")
    assert result.exit_code == 2 and "noise has shape 1x4x32x48" in result.stderr


def test_info_prints_the_metadata_as_json(exported, capsys):
    assert replay.main([str(exported["model"]), "--info"]) == 0
    out = capsys.readouterr().out
    assert '"task": "denoise"' in out and '"noise_sha256": "sha256:' in out and '"iterations": "3"' in out


def test_cuda_request_falls_back_to_cpu_with_one_note_line(exported, tmp_path):
    run = subprocess.run([sys.executable, str(PROGRAM), str(exported["model"]), "-o", str(tmp_path / "c.png"),
                          "--provider", "cuda"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    if "on cpu" in run.stdout:  # no usable GPU here: one clean note, none of onnxruntime's own error logging
        assert run.stderr.strip().splitlines() == ["note: the CUDA provider is not usable here; running on the CPU"]
    assert (tmp_path / "c.png").is_file()


# --- bad input: one line, exit code 2, nothing written -------------------------------------------------------

def not_a_dip_export(path: Path) -> Path:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bad_inputs(exported: dict[str, Path], tmp: Path) -> dict[str, tuple[Path, str]]:
    data = exported["model"].read_bytes()
    (tmp / "cut.onnx").write_bytes(data[: len(data) // 3])
    (tmp / "junk.onnx").write_bytes(b"this is not an onnx file at all")
    return {"missing": (tmp / "nope.onnx", "not found"),
            "truncated": (tmp / "cut.onnx", "not a readable ONNX model (corrupted, truncated"),
            "junk": (tmp / "junk.onnx", "not a readable ONNX model (corrupted, truncated"),
            "foreign": (not_a_dip_export(tmp / "foreign.onnx"), "not a dip-compile export")}


@pytest.mark.parametrize("case", ["missing", "truncated", "junk", "foreign"])
def test_bad_model_is_one_line_exit_2_with_nothing_written(exported, tmp_path, case, capsys):
    model, needle = bad_inputs(exported, tmp_path)[case]
    out = tmp_path / "out.png"
    result = invoke("regenerate", model, "-o", out)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr, result.stderr
    assert replay.main([str(model), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("regenerate: error:") and needle in err[0]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png" or p.name.startswith(".out")) == []


def test_existing_output_without_force_is_one_line_exit_2_and_untouched(exported, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    result = invoke("regenerate", exported["model"], "-o", out)
    assert result.exit_code == 2 and "exists" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    assert invoke("regenerate", exported["model"], "-o", out, "--force").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(exported["fit"])))


def test_seed_noise_rebuilds_torch_rand_bit_for_bit_without_torch():
    for seed in (0, 7, 2**32 + 5):
        expected = torch.rand(1, 4, 16, 24, generator=torch.Generator().manual_seed(seed)) * 0.1
        assert np.array_equal(replay.seed_noise(seed, (1, 4, 16, 24), 0.1), expected.numpy())


def test_seed_mode_export_drops_the_noise_from_the_file_and_still_regenerates_exactly(exported, tmp_path):
    ckpt = exported["dir"] / "fit.ckpt"
    result = invoke("export", ckpt, "-o", tmp_path / "s.onnx", "--noise", "seed", "--verify")
    assert result.exit_code == 0, result.output
    noise_bytes = 8 * 32 * 48 * 4
    assert exported["model"].stat().st_size - (tmp_path / "s.onnx").stat().st_size > noise_bytes - 1000  # longer note
    assert replay.main([str(tmp_path / "s.onnx"), "-o", str(tmp_path / "s.png"), "--check", str(exported["fit"])]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), np.asarray(Image.open(exported["fit"])))
    tampered = onnx.load(tmp_path / "s.onnx")
    next(p for p in tampered.metadata_props if p.key == "noise_seed").value = "1"
    onnx.save(tampered, tmp_path / "t.onnx")
    result = invoke("regenerate", tmp_path / "t.onnx", "-o", tmp_path / "t.png")
    assert result.exit_code == 2 and "does not match the model's noise checksum" in result.stderr
    assert not (tmp_path / "t.png").exists()
