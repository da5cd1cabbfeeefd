"""The torch-free regeneration (export/regenerate.py = dip_compile.replay.regenerate) and ``dipc regenerate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
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
    """A tiny fit's ONNX export and the PNG of the image the fit returned (what regeneration must reproduce)."""
    tmp = tmp_path_factory.mktemp("replay")
    config = tiny_config("denoise", iterations=3, log_every=1, stop="fixed")
    fitter = Fitter(config, make_problem(config, add_noise(smooth_image(30, 45), 0.1)))
    fitter.run(3)
    save_checkpoint(fitter, tmp / "fit.ckpt")
    save_image(fitter.image()[0], tmp / "fit.png")
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
    run = subprocess.run(
        [
            sys.executable,
            str(PROGRAM),
            str(exported["model"]),
            "-o",
            str(out),
            "--check",
            str(exported["fit"]),
            "--provider",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
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
    run = subprocess.run(
        [sys.executable, str(PROGRAM), str(exported["model"]), "-o", str(tmp_path / "c.png"), "--provider", "cuda"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    if "on cpu" in run.stdout:  # no usable GPU here: one clean note, none of onnxruntime's own error logging
        assert run.stderr.strip().splitlines() == ["note: the CUDA provider is not usable here; running on the CPU"]
    assert (tmp_path / "c.png").is_file()


# --- bad input: one line, exit code 2, nothing written -------------------------------------------------------


def not_a_dip_export(path: Path) -> Path:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def bad_inputs(exported: dict[str, Path], tmp: Path) -> dict[str, tuple[Path, str]]:
    data = exported["model"].read_bytes()
    (tmp / "cut.onnx").write_bytes(data[: len(data) // 3])
    (tmp / "junk.onnx").write_bytes(b"this is not an onnx file at all")
    return {
        "missing": (tmp / "nope.onnx", "not found"),
        "truncated": (tmp / "cut.onnx", "not a readable ONNX model (corrupted, truncated"),
        "junk": (tmp / "junk.onnx", "not a readable ONNX model (corrupted, truncated"),
        "foreign": (not_a_dip_export(tmp / "foreign.onnx"), "not a dip-compile export"),
    }


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
    # --image ema: the image this denoising fit returned (fit.png)
    result = invoke("export", ckpt, "-o", tmp_path / "s.onnx", "--noise", "seed", "--image", "ema", "--verify")
    assert result.exit_code == 0, result.output
    noise_bytes = 8 * 32 * 48 * 4
    assert exported["model"].stat().st_size - (tmp_path / "s.onnx").stat().st_size > noise_bytes - 1000  # longer note
    assert replay.main([str(tmp_path / "s.onnx"), "-o", str(tmp_path / "s.png"), "--check", str(exported["fit"])]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), np.asarray(Image.open(exported["fit"])))
    edited(tmp_path / "s.onnx", tmp_path / "t.onnx", lambda m: set_meta(m, noise_seed="1"))  # resealed
    result = invoke("regenerate", tmp_path / "t.onnx", "-o", tmp_path / "t.png")
    assert result.exit_code == 2 and "does not match the model's noise checksum" in result.stderr
    assert not (tmp_path / "t.png").exists()


# --- what the model needs, what its metadata records: checked before (or right after) it runs -------------------


def one_line_exit_2(model: Path, needle: str, *extra) -> None:
    """The program and ``dipc regenerate`` both fail with one line naming ``needle``, exit 2, nothing written.
    The program runs first, in a subprocess with a timeout: an input that hangs or exhausts memory fails the test."""
    out = model.parent / "never.png"
    run = subprocess.run(
        [sys.executable, str(PROGRAM), str(model), "-o", str(out), *map(str, extra)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and needle in lines[0], run.stderr
    result = invoke("regenerate", model, "-o", out, *extra)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()


def edited(model: Path, path: Path, edit, *, resealed: bool = True) -> Path:
    """The model with ``edit`` applied. ``resealed``: with a matching integrity seal, as a careless tool (or an older,
    unsealed export) would leave it, so the defences behind the seal are tested too."""
    proto = onnx.load(model)
    edit(proto)
    if resealed:
        meta = {p.key: p.value for p in proto.metadata_props}
        seal = replay.integrity(proto.graph.SerializeToString(deterministic=True), meta)
        set_meta(proto, integrity_sha256=seal)
    onnx.save(proto, path)
    return path


def widen_a_conv_weight(proto: onnx.ModelProto) -> None:
    """A conv weight with one input channel more than its input has: the model loads, and fails while running."""
    weight = next(t for t in proto.graph.initializer if len(t.dims) == 4 and t.name != "noise")
    array = numpy_helper.to_array(weight)
    wider = np.zeros((array.shape[0], array.shape[1] + 1, *array.shape[2:]), array.dtype)
    weight.CopyFrom(numpy_helper.from_array(wider, weight.name))


def test_a_model_that_fails_while_running_is_one_line_without_onnxruntimes_own_log(exported, tmp_path):
    """onnxruntime's session logger printed its error line (and the CLI a traceback) before any message of ours."""
    model = edited(exported["model"], tmp_path / "m.onnx", widen_a_conv_weight)
    one_line_exit_2(model, "the model failed to run: not a model dip-compile wrote, or an altered one (Input channels")


@pytest.mark.parametrize("what", ["weights", "metadata", "noise"])
def test_a_model_edited_after_export_is_reported_by_check_and_info(exported, tmp_path, what, capsys):
    edit = {"weights": nan_bias, "metadata": lambda m: set_meta(m, iterations="9999"), "noise": alter_noise}[what]
    model = edited(exported["model"], tmp_path / "m.onnx", edit, resealed=False)
    assert replay.main([str(model), "--check", str(exported["fit"])]) == 2
    assert "the model was altered after export" in capsys.readouterr().err
    assert replay.main([str(model), "--info"]) == 1
    assert json.loads(capsys.readouterr().out)["integrity"].startswith("ALTERED: the model was altered")
    assert replay.main([str(exported["model"]), "--info"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == "ok"


def set_meta(proto: onnx.ModelProto, **values: str | None) -> None:
    for key, value in values.items():
        props = [p for p in proto.metadata_props if p.key == key]
        for prop in props:
            proto.metadata_props.remove(prop)
        if value is not None:
            proto.metadata_props.add(key=key, value=value)


def add_second_input(proto: onnx.ModelProto) -> None:
    proto.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    last = proto.graph.node[-1]  # Identity(...) -> image
    proto.graph.node.remove(last)
    proto.graph.node.append(helper.make_node("Add", [last.input[0], "extra"], ["image"]))


def drop_noise_initializer(proto: onnx.ModelProto) -> None:
    proto.graph.initializer.remove(next(t for t in proto.graph.initializer if t.name == "noise"))


@pytest.mark.parametrize(
    "case, needle", [("second input", "needs input extra"), ("noise without initializer", "stores no noise")]
)
def test_model_needing_an_input_it_was_not_given_is_one_line_exit_2(exported, tmp_path, case, needle):
    edit = add_second_input if case == "second input" else drop_noise_initializer
    model = edited(exported["model"], tmp_path / "m.onnx", edit)
    one_line_exit_2(model, needle)
    with pytest.raises(replay.ReplayError, match=needle):
        replay.regenerate(model, None, check=exported["fit"])
    with pytest.raises(replay.ReplayError, match=needle):
        replay.run(replay.open_session(model)[0])


@pytest.mark.parametrize("what", ["model", "noise", "check"])
def test_a_fifo_for_any_input_is_refused_in_one_line_without_hanging(exported, tmp_path, what):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    model = fifo if what == "model" else exported["model"]
    extra = {"model": [], "noise": ["--noise", fifo], "check": ["--check", fifo]}[what]
    one_line_exit_2(model, "not a regular file", *extra)


def test_seed_model_asking_for_huge_noise_is_refused_before_allocating_it(exported, tmp_path):
    seeded = tmp_path / "s.onnx"
    exporters.export_checkpoints([exported["dir"] / "fit.ckpt"], seeded, noise="seed")
    huge = edited(seeded, tmp_path / "huge.onnx", lambda m: set_meta(m, noise_shape="1x32x1048576x1048576"))
    one_line_exit_2(huge, "the noise its metadata records has shape 1x32x1048576x1048576; the model takes (N)x8x32x48")
    wide = edited(seeded, tmp_path / "wide.onnx", lambda m: set_meta(m, noise_shape="100000000x8x32x48"))
    one_line_exit_2(wide, "more than the 268435456 this program accepts")


def test_noise_shapes_are_checked_against_the_models_static_dims_and_a_size_cap(exported):
    arg = replay.noise_input(replay.open_session(exported["model"])[0])
    assert list(arg.shape[1:]) == [8, 32, 48] and not isinstance(arg.shape[0], int)
    assert replay.check_noise_shape((2, 8, 32, 48), arg) == (2, 8, 32, 48)
    for shape, needle in [
        ((1, 8, 32), "the model takes (N)x8x32x48"),
        ((1, 8, 32, 0), "takes"),
        ((1, 4, 32, 48), "noise has shape 1x4x32x48"),
        ((10**6, 8, 32, 48), "more than the"),
    ]:
        with pytest.raises(replay.ReplayError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            replay.check_noise_shape(shape, arg)


def npy_header_only(path: Path, shape: tuple[int, ...]) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return path


def test_noise_npy_is_memory_mapped_never_unpickled_and_huge_ones_refused_cheaply(exported, tmp_path):
    lying = npy_header_only(tmp_path / "lying.npy", (1, 8, 1048576, 1048576))  # header only: 32 TiB claimed
    one_line_exit_2(exported["model"], "cannot read noise", "--noise", lying)
    big = npy_header_only(tmp_path / "big.npy", (30000, 8, 32, 48))  # 1.5 GB, sparse: nothing is read
    with open(big, "r+b") as f:
        f.truncate(f.seek(0, 2) + 30000 * 8 * 32 * 48 * 4)
    one_line_exit_2(exported["model"], "noise has shape 30000x8x32x48: 368640000 values, more than", "--noise", big)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_exit_2(exported["model"], "cannot read noise", "--noise", tmp_path / "obj.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 8, 32, 48), np.float32))
    one_line_exit_2(exported["model"], "is an .npz archive; give one array as .npy", "--noise", tmp_path / "two.npz")
    (tmp_path / "empty.npy").write_bytes(b"")
    one_line_exit_2(exported["model"], "cannot read noise", "--noise", tmp_path / "empty.npy")


def alter_noise(proto: onnx.ModelProto) -> None:
    tensor = next(t for t in proto.graph.initializer if t.name == "noise")
    noise = numpy_helper.to_array(tensor).copy()
    noise.flat[0] += 0.01
    tensor.CopyFrom(numpy_helper.from_array(noise, "noise"))


def test_embedded_noise_altered_after_export_is_refused_and_the_check_needs_onnx_only(exported, tmp_path):
    altered = edited(exported["model"], tmp_path / "a.onnx", alter_noise)
    one_line_exit_2(altered, "the model's noise does not match its recorded checksum: the file was altered")
    with pytest.raises(replay.ReplayError, match="recorded checksum"):
        replay.regenerate(altered, None, check=exported["fit"])
    # where onnx is not installed, the check is skipped silently and the altered noise is used
    blocked = tmp_path / "blocked"
    (blocked / "onnx").mkdir(parents=True)
    (blocked / "onnx" / "__init__.py").write_text("raise ImportError('onnx is blocked in this test')\n")
    run = subprocess.run(
        [sys.executable, str(PROGRAM), str(altered), "-o", str(tmp_path / "x.png")],
        env={**os.environ, "PYTHONPATH": str(blocked)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    # fed noise replaces the embedded one: nothing to check
    np.save(tmp_path / "n.npy", np.zeros((1, 8, 32, 48), np.float32))
    assert replay.main([str(altered), "-o", str(tmp_path / "n.png"), "--noise", str(tmp_path / "n.npy")]) == 0


@pytest.mark.parametrize(
    "meta, recorded",
    [({"image_width": "46"}, "46x30"), ({"image_width": None, "image_height": None, "image_size": "45x31"}, "45x31")],
)
def test_image_size_that_disagrees_with_the_recorded_one_is_refused(exported, tmp_path, meta, recorded):
    model = edited(exported["model"], tmp_path / "m.onnx", lambda m: set_meta(m, **meta))
    one_line_exit_2(model, f"the model returned a 45x30 image but records {recorded}: the file was altered")


def nan_bias(proto: onnx.ModelProto) -> None:
    tensor = next(t for t in proto.graph.initializer if t.name.endswith(".bias"))
    tensor.CopyFrom(
        numpy_helper.from_array(np.full(numpy_helper.to_array(tensor).shape, np.nan, np.float32), tensor.name)
    )


def test_nan_image_is_reported_as_non_finite_and_never_passes_a_check(exported, tmp_path):
    model = edited(exported["model"], tmp_path / "nan.onnx", nan_bias)
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((30, 45, 3), np.uint8)).save(black)
    run = subprocess.run(
        [sys.executable, str(PROGRAM), str(model), "--check", str(black)], capture_output=True, text=True
    )
    assert run.returncode == 1 and run.stderr == "", run.stderr
    assert run.stdout.splitlines()[-1] == ("check: 4050 non-finite values (NaN/inf) in the regenerated image: MISMATCH")
    check = replay.compare(np.full((1, 3, 4, 4), np.nan, np.float32), np.zeros((4, 4, 3), np.uint8))
    assert check["nonfinite"] == 48 and check["identical_8bit"] == 1.0 and not replay.passes(check)
    finite = replay.compare(np.zeros((1, 3, 4, 4), np.float32), np.zeros((4, 4, 3), np.uint8))
    assert finite["nonfinite"] == 0 and replay.passes(finite)


def unsealed(model: Path, path: Path, edit=None) -> Path:
    """The model with ``edit`` applied and its seal deleted, as someone hiding an edit would leave it."""

    def strip(proto: onnx.ModelProto) -> None:
        if edit is not None:
            edit(proto)
        set_meta(proto, integrity_sha256=None)

    return edited(model, path, strip, resealed=False)


@pytest.mark.parametrize("edit", [None, nan_bias], ids=["seal deleted", "weight edited, seal deleted"])
def test_an_unsealed_model_is_refused_unless_allowed_by_name(exported, tmp_path, edit, capsys):
    model = unsealed(exported["model"], tmp_path / "u.onnx", edit)
    one_line_exit_2(model, "no integrity seal (integrity_sha256)")
    with pytest.raises(replay.ReplayError, match="--allow-unsealed"):
        replay.regenerate(model, None, check=exported["fit"])
    # --info still describes it
    assert replay.main([str(model), "--info"]) == 0
    assert json.loads(capsys.readouterr().out)["integrity"] == "unsealed"
    # asked for by name, it runs, in the program and in dipc regenerate alike
    out = tmp_path / "u.png"
    assert replay.main([str(model), "-o", str(out), "--allow-unsealed"]) == 0
    again = invoke("regenerate", model, "-o", tmp_path / "v.png", "--allow-unsealed")
    assert again.exit_code == 0, again.output
    same = np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(exported["fit"])))
    assert same == (edit is None)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "v.png")))


@pytest.mark.parametrize("what", ["folder that does not exist", "name too long"])
def test_export_and_regenerate_refuse_an_output_spelled_as_a_folder_or_too_long(exported, tmp_path, what, capsys):
    name = "newdir/" if what == "folder that does not exist" else "x" * 300 + ".onnx"
    needle = "ends with a path separator" if name.endswith("/") else "is too long"
    result = invoke("export", exported["dir"] / "fit.ckpt", "-o", f"{tmp_path}/{name}")
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1
    one_line_exit_2(exported["model"], needle, "-o", f"{tmp_path}/{name}")
    assert replay.main([str(exported["model"]), "-o", f"{tmp_path}/{name}"]) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
