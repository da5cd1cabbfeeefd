"""The CUDA paths, checked by value on a real device: CUDA graphs, reduced precision, checkpoints, the CLI, packing.

The device is ``DIPC_TEST_DEVICE`` when set, else ``cuda`` when a GPU is there; without either the module is skipped
(CI). ``DIPC_TEST_DEVICE=cpu pytest tests/test_cuda.py`` runs the device-independent tests on the CPU, to check the
tests themselves; the tests that only mean something on CUDA skip there. ``DIPC_TEST_NO_COMPILE=1`` skips the one
torch.compile test (the last one, 20-25 s of compiling on an H200).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator

import pytest
import torch
from typer.testing import CliRunner

from conftest import smooth_image, tiny_config
from dip_compile import acceleration, exporters
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.cli import app
from dip_compile.fitting import EagerStep, Fitter, StepRequest
from dip_compile.metrics import psnr
from dip_compile.packing import PackedStep, drive_packed, pack_key
from dip_compile.problem import add_noise, make_problem
from dip_compile.steps import AcceleratedStep, CudaGraphStep

DEVICE_NAME = os.environ.get("DIPC_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "")
pytestmark = pytest.mark.skipif(not DEVICE_NAME, reason="no CUDA GPU here and DIPC_TEST_DEVICE is not set")
DEVICE = torch.device(DEVICE_NAME or "cpu")
CUDA = DEVICE.type == "cuda"
cuda_only = pytest.mark.skipif(not CUDA, reason="only means something on a CUDA device")

TINY_CLI = ["--depth", "3", "--channels", "16", "--skip-channels", "4", "-q"]
TOL = 1e-4  # the export tests' exactness target (tests/test_exporters.py)


def make_fitter(device: torch.device | str = DEVICE, seed: int = 0, **changes) -> Fitter:
    """The denoise preset (EMA, backtracking) on the tiny net, a fixed count and a log (a host read) every iteration."""
    clean = smooth_image(32, 32, seed=seed)
    cfg = tiny_config("denoise", **{"stop": "fixed", "log_every": 1, "seed": seed, "device": str(device), **changes})
    return Fitter(cfg, make_problem(cfg, add_noise(clean, 25 / 255, seed=seed), reference=clean[None]), device=device)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float().cpu() - b.detach().float().cpu()).abs().max().item()


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@contextlib.contextmanager
def exact_cuda_math() -> Iterator[None]:
    """cuDNN with deterministic algorithms, no autotuning and no TF32 (restored afterwards): comparisons of two CUDA
    computations then see only the atomics of some backward kernels (bilinear upsampling, reflection padding)."""
    if not CUDA:
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved


@pytest.fixture
def exact_cuda():
    with exact_cuda_math():
        yield


def lockstep(subject: Fitter, reference: Fitter, iterations: int) -> dict[str, float]:
    """Runs ``iterations`` iterations of ``subject``'s fit (its step, backtracking, Adam, EMA); each step is also
    computed by ``reference``'s step on the same weights and perturbed input (``reference`` never steps). Returns the
    largest differences seen: the output, the loss (relative) and the gradient of all weights (relative norm).

    Step by step, because whole fits amplify rounding: Adam's first steps are about +-lr for any weight whose gradient
    is zero up to rounding, so two fits that differ only in rounding drift apart (tests/test_packing.py)."""
    worst = {"out": 0.0, "loss": 0.0, "grad": 0.0}
    for _ in range(iterations):
        session = subject.iteration_session()
        request = next(session)
        loss, out = request.alone()
        reference.net.load_state_dict(subject.net.state_dict())
        ref_loss, ref_out = reference.step(request.net_input.to(reference.device), reference.optimizer)
        grads, ref_grads = (
            torch.cat([p.grad.float().cpu().flatten() for p in f.net.parameters()]) for f in (subject, reference)
        )
        worst["out"] = max(worst["out"], max_diff(out, ref_out))
        worst["loss"] = max(worst["loss"], abs(loss.item() / ref_loss.item() - 1))
        worst["grad"] = max(worst["grad"], ((grads - ref_grads).norm() / ref_grads.norm()).item())
        with contextlib.suppress(StopIteration):
            session.send((loss, out))
    return worst


def test_eager_fp32_steps_on_the_device_equal_the_cpu_steps():
    # TF32 stays at the default (cuDNN convolutions round their inputs to 10 mantissa bits), hence the tolerances.
    # Measured on an H200: output 2e-4, loss 3e-5, gradient 5e-3.
    changes = dict(iterations=10, backend="eager", precision="fp32")
    dev, cpu = make_fitter(DEVICE, **changes), make_fitter("cpu", **changes)
    plan = dev.plan
    assert (plan.backend, plan.precision, plan.channels_last, plan.fused_adam) == ("eager", "fp32", False, False)
    assert plan.cuda_graphs == CUDA
    worst = lockstep(dev, cpu, 10)
    assert worst["loss"] <= 1e-3 and worst["out"] <= 5e-3 and worst["grad"] <= 5e-2, worst
    if CUDA:  # iterations 4-10 were replays of the captured graph
        assert isinstance(dev.step, CudaGraphStep) and dev.step.graph is not None


def test_a_whole_eager_fp32_fit_on_the_device_follows_the_same_fit_on_the_cpu(exact_cuda):
    # No input perturbation (the CPU and CUDA generators draw different streams from one seed) and no TF32: with
    # TF32 the outputs of the two fits differ by 0.02 after one iteration and 0.1-0.15 after two to ten (H200),
    # Adam turning TF32's rounding of near-zero gradients into +-lr steps; without it they stay within 5e-6.
    changes = dict(iterations=10, backend="eager", precision="fp32", reg_noise_std=0.0)
    cpu, dev = make_fitter("cpu", **changes), make_fitter(DEVICE, **changes)
    cpu_result, dev_result = cpu.run(), dev.run()
    assert dev_result.iterations == 10 and dev_result.fallbacks == [] and dev_result.backtracks == 0
    first_cpu, first_dev = cpu_result.history["loss"][0], dev_result.history["loss"][0]
    assert abs(first_dev - first_cpu) <= 1e-3 * first_cpu
    torch.testing.assert_close(
        torch.tensor(dev_result.history["loss"]), torch.tensor(cpu_result.history["loss"]), rtol=1e-3, atol=1e-6
    )
    assert max_diff(dev.output(), cpu.output()) <= 1e-3
    assert max_diff(dev_result.image, cpu_result.image) <= 1e-3  # the EMA the fit returns


@cuda_only
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_step_computes_the_eager_step_in_warm_up_capture_and_replays(precision, exact_cuda):
    graphed, eager = make_fitter(iterations=10, precision=precision), make_fitter(iterations=10, precision=precision)
    assert graphed.plan.cuda_graphs and isinstance(graphed.step, CudaGraphStep)
    eager.plan = dataclasses.replace(eager.plan, cuda_graphs=False)
    eager.step = eager.make_step()
    assert type(eager.step) is (EagerStep if precision == "fp32" else AcceleratedStep)
    worst = lockstep(graphed, eager, 10)  # 3 warm-up calls, the capture (and its first replay), then replays
    step = graphed.step
    assert step.calls == CudaGraphStep.warmup and step.graph is not None
    if precision == "fp32":
        assert worst["out"] <= 1e-5 and worst["loss"] <= 1e-5 and worst["grad"] <= 1e-4, worst
    else:  # bf16: the backward adds bf16 values with atomics, in an order that varies from call to call
        assert worst["out"] <= 1e-3 and worst["loss"] <= 1e-4 and worst["grad"] <= 5e-2, worst
    assert step.poll() == 0


@cuda_only
def test_auto_precision_on_cuda_picks_bf16_and_the_fit_improves():
    fitter = make_fitter(iterations=100, backend="eager", precision="auto", ema=None, log_every=10)
    major, _ = torch.cuda.get_device_capability(DEVICE)
    assert acceleration.capability(DEVICE).fast_bf16 == (major >= 8)
    plan = fitter.plan
    assert plan.precision == ("bf16" if major >= 8 else "fp16"), plan.describe()
    assert plan.channels_last and plan.fused_adam and plan.cuda_graphs
    assert fitter.optimizer.defaults.get("fused") is True
    result = fitter.run()
    assert result.fallbacks == [] and result.plan.startswith(f"eager {plan.precision}")
    assert isinstance(fitter.step, CudaGraphStep) and fitter.step.graph is not None
    psnrs = result.history["psnr_reference"]
    assert psnrs[-1] >= psnrs[0] + 3, psnrs
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))


@cuda_only
def test_fp16_with_the_grad_scaler_improves_the_fit_on_cuda():
    fitter = make_fitter(iterations=100, backend="eager", precision="fp16", ema=None, log_every=10)
    assert fitter.plan.precision == "fp16" and fitter.plan.fused_adam and fitter.plan.cuda_graphs
    result = fitter.run()
    assert isinstance(fitter.step, CudaGraphStep) and fitter.step.inner.scaler is not None
    assert fitter.step.graph is not None
    assert result.fallbacks == []
    psnrs = result.history["psnr_reference"]
    assert psnrs[-1] >= psnrs[0] + 3, psnrs
    assert all(torch.isfinite(p).all() for p in fitter.net.parameters())


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_non_finite_step_in_reduced_precision_keeps_the_last_good_weights_and_falls_back_to_fp32(precision):
    """The trick of tests/test_packing.py (a NaN perturbed input), not a patched forward: on CUDA the NaN enters at
    iteration 6, after the graph was captured (iteration 4), so the replayed graph and its guard meet it."""
    if precision == "fp16" and not CUDA:
        pytest.skip("fp16 with a grad scaler is for CUDA")
    fitter = make_fitter(iterations=12, precision=precision, log_every=4, backtrack_db=None)
    fitter.run(5)  # logs at 4; iteration 5 is the last good one
    if CUDA:
        assert fitter.step.graph is not None
    good = [p.detach().clone() for p in fitter.net.parameters()]
    original = fitter.perturbed_input
    fitter.perturbed_input = lambda: original() * float("nan")  # type: ignore[method-assign]
    fitter.iterate()  # iteration 6: NaN loss and gradients
    fitter.perturbed_input = original  # type: ignore[method-assign]
    assert all(torch.equal(p, g) for p, g in zip(fitter.net.parameters(), good, strict=True))
    assert fitter.plan.precision == precision  # noticed at the next log point, where the host reads the device
    result = fitter.run(12)
    assert fitter.plan.precision == "fp32"
    assert len(result.fallbacks) == 1, result.fallbacks
    event = result.fallbacks[0]
    assert (event["iteration"], event["nonfinite_steps"]) == (8, 1)
    assert event["from_plan"].startswith(f"eager {precision}") and event["to_plan"] == fitter.plan.describe()
    if CUDA:  # the fp32 step is a fresh graph, captured at iteration 12
        assert isinstance(fitter.step, CudaGraphStep) and fitter.step.graph is not None
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))
    assert all(torch.isfinite(p).all() for p in fitter.net.parameters())
    psnrs = dict(zip(result.history["iteration"], result.history["psnr_reference"], strict=True))
    assert psnrs[12] > psnrs[5], psnrs  # the fit goes on improving from the last good weights


@pytest.mark.parametrize(
    "fitted_on, resumed_on", [(DEVICE, "cpu"), ("cpu", DEVICE)], ids=["device-to-cpu", "cpu-to-device"]
)
def test_a_checkpoint_resumes_on_another_device(tmp_path, fitted_on, resumed_on):
    """--device may change on --resume. The denoise preset: EMA, backtracking and auto-stop statistics move too."""
    fitter = make_fitter(fitted_on, iterations=12, stop="auto", stop_window=3, stop_patience=100, log_every=4)
    fitter.run(8)
    path = save_checkpoint(fitter, tmp_path / "fit.ckpt")
    ckpt = load_checkpoint(path)
    assert ckpt.iteration == 8
    resumed = ckpt.fitter(resumed_on)
    assert resumed.device.type == torch.device(resumed_on).type and resumed.iteration == 8
    assert max_diff(resumed.output(), fitter.output()) <= 1e-2  # the same weights (TF32 on the device)
    assert max_diff(resumed.ema, fitter.ema) == 0.0
    result = resumed.run(12)
    assert result.iterations == 12 and resumed.iteration == 12 and result.stop_reason == "completed"
    assert result.history["iteration"] == [4, 8, 12]
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))
    assert torch.isfinite(result.image).all() and result.image.shape == (1, 3, 32, 32)


def test_a_device_fit_resumed_on_the_device_equals_an_uninterrupted_one(tmp_path, exact_cuda):
    """On the CPU bit for bit. On CUDA within 1e-5: the backward of bilinear upsampling and reflection padding adds
    with atomics, whose order varies from run to run even with deterministic cuDNN, and the resumed fit replays
    its own (newly captured) graph."""
    changes = dict(iterations=12, stop="auto", stop_window=3, stop_patience=100, log_every=2)
    straight = make_fitter(**changes)
    straight.run(12)
    first = make_fitter(**changes)
    first.run(7)
    save_checkpoint(first, tmp_path / "fit.ckpt")
    resumed = load_checkpoint(tmp_path / "fit.ckpt").fitter(DEVICE)
    assert resumed.device == first.device
    result = resumed.run(12)
    assert result.iterations == 12 and resumed.iteration == 12
    if CUDA:
        assert isinstance(resumed.step, CudaGraphStep) and resumed.step.graph is not None
    tolerance = 1e-5 if CUDA else 0.0
    assert max_diff(straight.output(), resumed.output()) <= tolerance
    assert max_diff(straight.ema, resumed.ema) <= tolerance
    assert straight.stopper is not None and resumed.stopper is not None
    assert straight.stopper.chosen_iteration() == resumed.stopper.chosen_iteration()
    straight_losses = dict(zip(straight.history["iteration"], straight.history["loss"], strict=True))
    resumed_losses = dict(zip(resumed.history["iteration"], resumed.history["loss"], strict=True))
    assert set(straight_losses) <= set(resumed_losses)
    for it, loss in straight_losses.items():
        assert abs(resumed_losses[it] - loss) <= tolerance * loss, it


def test_save_memory_gives_the_same_fit_as_the_default(exact_cuda):
    # 8 iterations: on CUDA past the graph capture (iteration 4), so the recomputation runs inside the graph
    changes = dict(iterations=8, backend="eager", precision="fp32")
    default, saving = make_fitter(**changes), make_fitter(**changes, save_memory=True)
    default_result, saving_result = default.run(), saving.run()
    assert saving_result.iterations == 8
    if CUDA:
        assert isinstance(saving.step, CudaGraphStep) and saving.step.graph is not None
        assert max_diff(saving.output(), default.output()) <= 1e-5
        assert max_diff(saving_result.image, default_result.image) <= 1e-5
    else:  # bit-identical is guaranteed on the CPU only
        assert torch.equal(saving.output(), default.output())
        assert torch.equal(saving_result.image, default_result.image)


def test_dipc_fit_on_the_device_exports_a_model_that_replays_its_image(tmp_path, image_png):
    out, ckpt, report = tmp_path / "out.png", tmp_path / "fit.ckpt", tmp_path / "r.json"
    fit_args = ["--sigma", "25", "-o", out, "--iterations", "30", "--stop", "fixed", *TINY_CLI]
    result = invoke(
        "fit", "denoise", image_png, *fit_args, "--checkpoint", ckpt, "--report", report, "--device", DEVICE_NAME
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(report.read_text())
    assert summary["iterations"] == 30 and summary["device"].startswith(DEVICE.type)
    assert summary["precision_fallbacks"] == []
    # the fit's image (its EMA, computed on the device), through the ONNX model, to the fit's own PNG
    model = tmp_path / "model.onnx"
    exported = invoke("export", ckpt, "-o", model, "--verify")
    assert exported.exit_code == 0, exported.output
    assert "(OK)" in exported.output, exported.output
    replayed = invoke("regenerate", model, "-o", tmp_path / "replayed.png", "--check", out)
    assert replayed.exit_code == 0, replayed.output
    assert "(OK)" in replayed.output, replayed.output
    # the network itself: the export of the fitted network equals that network run on the device (without TF32)
    raw = tmp_path / "output.onnx"
    assert invoke("export", ckpt, "-o", raw, "--image", "output").exit_code == 0
    on_device = load_checkpoint(ckpt).fitter(DEVICE)
    assert on_device.iteration == 30
    with exact_cuda_math():
        check = exporters.agreement(exporters.run_onnx(str(raw)), on_device.output())
    assert check["max_abs_diff"] <= TOL and check["nonfinite"] == 0, check


def pack_of_two(precision: str = "fp32", iterations: int = 12) -> list[Fitter]:
    """Two fits of one pack key: other images, seeds and learning rates (as tests/test_packing.py makes them)."""
    return [
        make_fitter(seed=0, iterations=iterations, precision=precision, log_every=4, ema=None),
        make_fitter(seed=1, iterations=iterations, precision=precision, log_every=4, ema=None, lr=0.02),
    ]


def test_a_packed_step_on_the_device_computes_each_fits_own_step(exact_cuda):
    alone, packed = pack_of_two(), pack_of_two()
    assert pack_key(packed[0]) == pack_key(packed[1])
    replies = PackedStep()([StepRequest(f, f.net_input) for f in packed])
    for a, p, (loss, out) in zip(alone, packed, replies, strict=True):
        own_loss, own_out = a.step(a.net_input, a.optimizer)
        assert out.device.type == DEVICE.type
        assert torch.allclose(loss, own_loss, rtol=1e-5) and max_diff(out, own_out) < 1e-5
        for pa, pp in zip(a.net.parameters(), p.net.parameters(), strict=True):
            assert torch.allclose(pp.grad, pa.grad, rtol=1e-3, atol=1e-6)
    assert max_diff(replies[0][1], replies[1][1]) > 1e-2  # the fits differ: packing kept them apart


def test_packed_bf16_fits_on_the_device_restore_as_well_as_alone():
    """bf16, what auto picks on a GPU (the fp32 step is checked exactly above). Not bit-identical over many steps
    (grouped convolutions round differently and Adam amplifies rounding, see tests/test_packing.py), and bf16 fits
    on CUDA differ from run to run (the backward adds bf16 values with atomics): packed and alone ended 0.1-1.05 dB
    apart on an H200, hence 2 dB; each packed fit restores its image (3 dB over the noisy input, ~5.5 measured)."""
    alone = [f.run() for f in pack_of_two("bf16", iterations=100)]
    packed = pack_of_two("bf16", iterations=100)
    results = drive_packed(iter(f.session() for f in packed), pack=2)
    assert sorted(r.iterations for r in results) == [100, 100]
    for f, a in zip(packed, alone, strict=True):
        assert f.fallbacks == []
        ref = f.problem.reference.cpu()
        image = f.image()[0].cpu()
        assert torch.isfinite(image).all()
        psnrs = f.history["psnr_reference"]
        assert psnrs[-1] > psnrs[0] + 2, psnrs
        assert psnr(image, ref) > psnr(f.problem.observation.cpu(), ref) + 3
        assert abs(psnr(image, ref) - psnr(a.image, ref)) < 2.0


# --- the one torch.compile test: last, 20-25 s on an H200 (DIPC_TEST_NO_COMPILE=1 skips it) --------------------
@cuda_only
@pytest.mark.skipif(bool(os.environ.get("DIPC_TEST_NO_COMPILE")), reason="DIPC_TEST_NO_COMPILE is set")
def test_zz_compiles_inductor_step_on_cuda_computes_the_eager_step(exact_cuda):
    compiled = make_fitter(iterations=20, backend="inductor", precision="fp32")
    eager = make_fitter(iterations=20, backend="eager", precision="fp32")
    assert compiled.plan.cuda_graphs and type(compiled.step) is AcceleratedStep  # reduce-overhead graphs by itself
    assert compiled.step.name == "inductor"
    eager.plan = dataclasses.replace(eager.plan, cuda_graphs=False)
    eager.step = eager.make_step()
    worst = lockstep(compiled, eager, 10)  # the first step compiles
    assert worst["out"] <= 1e-4 and worst["loss"] <= 1e-4 and worst["grad"] <= 1e-3, worst
    result = compiled.run(20)  # and the loop around it
    assert result.iterations == 20 and result.fallbacks == []
    psnrs = result.history["psnr_reference"]
    assert psnrs[-1] > psnrs[0], psnrs
