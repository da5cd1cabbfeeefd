import pytest
import torch

from conftest import dipc, smooth_image, tiny_config
from dip_compile import acceleration
from dip_compile.acceleration import Capability, choose
from dip_compile.config import NetConfig
from dip_compile.fitting import EagerStep, Fitter
from dip_compile.problem import add_noise, make_problem
from dip_compile.steps import AcceleratedStep, LossModule

CLEAN = smooth_image(32, 32)
NOISY = add_noise(CLEAN, 25 / 255, seed=0)
# Small enough that compiling it takes seconds rather than minutes.
MINI_NET = NetConfig(input_depth=4, channels_down=(8, 8), channels_up=(8, 8), channels_skip=(2, 2))

AVX2 = Capability("cpu", "AVX2", fast_bf16=False, fast_fp16=False)
AVX512 = Capability("cpu", "AVX512", fast_bf16=False, fast_fp16=False, fast_channels_last=True)  # no bf16
AMX = Capability("cpu", "AVX512", fast_bf16=True, fast_fp16=False, fast_channels_last=True)
A100 = Capability("cuda", "NVIDIA A100", fast_bf16=True, fast_fp16=True)
T4 = Capability("cuda", "Tesla T4", fast_bf16=False, fast_fp16=True)


def fit(backend: str, precision: str, iterations: int, net: NetConfig | None = None, **changes) -> Fitter:
    cfg = tiny_config(
        "denoise", iterations=iterations, stop="fixed", backend=backend, precision=precision, log_every=1, **changes
    )
    if net is not None:
        cfg = cfg.replace(net=net)
    fitter = Fitter(cfg, make_problem(cfg, NOISY, reference=CLEAN[None]))
    fitter.run()
    return fitter


def test_auto_keeps_fp32_and_eager_on_a_cpu_without_bf16():
    plan = choose(tiny_config(backend="auto", precision="auto", iterations=3000), "cpu", (256, 256), AVX2)
    assert (plan.backend, plan.precision) == ("eager", "fp32")
    assert "no native bf16" in plan.reason and plan.fused_adam


def test_auto_picks_bf16_where_the_cpu_has_native_bf16():
    plan = choose(tiny_config(backend="auto", precision="auto"), "cpu", (256, 256), AMX)
    assert plan.precision == "bf16" and plan.channels_last


def test_auto_on_cuda_picks_bf16_or_fp16_and_compiles_only_long_fits():
    long_fit, short_fit = (
        tiny_config(backend="auto", precision="auto", iterations=3000),
        tiny_config(backend="auto", precision="auto", iterations=100),
    )
    assert choose(long_fit, "cuda", (256, 256), A100).backend == "inductor"
    assert choose(long_fit, "cuda", (256, 256), A100).precision == "bf16"
    assert choose(long_fit, "cuda", (256, 256), T4).precision == "fp16"
    assert choose(short_fit, "cuda", (256, 256), A100).backend == "eager"
    assert choose(short_fit, "cuda", (256, 256), A100).cuda_graphs


def test_only_auto_asks_the_device_what_it_can_do(monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(acceleration, "capability", lambda device: asked.append(str(device)) or AMX)
    explicit = [("eager", "fp32"), ("eager", "bf16"), ("inductor", "fp32")]
    plans = [choose(tiny_config(backend=b, precision=p), "cpu", (32, 32)) for b, p in explicit]
    assert [(p.backend, p.precision, p.channels_last) for p in plans] == [
        ("eager", "fp32", False),
        ("eager", "bf16", False),
        ("inductor", "fp32", False),
    ]
    # a fit whose backend and precision are both given runs the same on any CPU (and once in make test, not in
    # both passes); auto backend depends on the kind of device alone
    assert asked == []
    assert choose(tiny_config(backend="eager", precision="auto"), "cpu", (32, 32)).precision == "bf16"
    assert asked == ["cpu"]


@pytest.mark.parametrize(("cap", "layout"), [(AVX2, False), (AVX512, True), (AMX, True)])
def test_an_fp32_step_under_auto_takes_the_layout_the_cpu_runs_faster(cap, layout):
    """fp32 under auto (--paper-exact's fits: auto backend, fp32): channels-last where the CPU's fp32
    convolutions are faster in NHWC (AVX-512), NCHW on AVX2; explicit eager fp32 stays the NCHW baseline."""
    for backend, precision in (("auto", "fp32"), ("eager", "auto"), ("auto", "auto")):
        plan = choose(tiny_config(backend=backend, precision=precision), "cpu", (32, 32), cap)
        if plan.precision == "fp32":
            assert plan.channels_last is layout
            assert ("runs fp32 convolutions faster in NHWC" in plan.reason) is layout
        else:  # bf16 steps are channels-last on every CPU that runs them natively
            assert plan.channels_last
    assert not choose(tiny_config(backend="eager", precision="fp32"), "cpu", (32, 32), cap).channels_last


def test_a_channels_last_fp32_fit_follows_the_nchw_fit(monkeypatch):
    """The same arithmetic in another order: the first steps' losses agree to rounding, the later ones drift apart
    as any two orders of fp32 sums do through BatchNorm and Adam (0.4% at the tenth step), and the PSNR rises."""
    monkeypatch.setattr(acceleration, "capability", lambda device: AVX2)
    nchw = fit("auto", "fp32", 10)
    monkeypatch.setattr(acceleration, "capability", lambda device: AVX512)
    nhwc = fit("auto", "fp32", 10)
    assert not nchw.plan.channels_last and nhwc.plan.channels_last and nhwc.plan.precision == "fp32"
    assert isinstance(nhwc.step, AcceleratedStep)
    nhwc_loss, nchw_loss = torch.tensor(nhwc.history["loss"]), torch.tensor(nchw.history["loss"])
    torch.testing.assert_close(nhwc_loss[:2], nchw_loss[:2], rtol=1e-5, atol=0)
    torch.testing.assert_close(nhwc_loss, nchw_loss, rtol=1e-2, atol=0)
    psnrs = nhwc.history["psnr_reference"]
    assert psnrs[-1] > psnrs[0] + 2


def test_capability_check_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(acceleration, "cpu_flags", lambda: {"avx2", "fma"})
    assert not acceleration.cpu_has_fast_bf16()
    monkeypatch.setattr(acceleration, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16"})
    assert acceleration.cpu_has_fast_bf16()


def test_explicit_eager_fp32_is_the_unchanged_baseline_step():
    cfg = tiny_config(backend="eager", precision="fp32")
    fitter = Fitter(cfg, make_problem(cfg, NOISY))
    assert type(fitter.step) is EagerStep and not fitter.plan.fused_adam


def test_unknown_backend_or_fp16_on_cpu_is_refused():
    with pytest.raises(ValueError, match="--backend must be one of auto, eager, inductor, got 'jit'"):
        tiny_config(backend="jit")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        choose(tiny_config(precision="fp16", device="auto"), "cpu", (32, 32), AVX2)


def test_cli_rejects_unknown_backend_and_precision_in_one_line(tmp_path, image_png):
    for option, value, text in (
        ("--backend", "jit", "'jit' is not one of"),
        ("--precision", "fp8", "'fp8' is not one of"),
        ("--precision", "fp16", "fp16 is for CUDA"),
    ):
        tiny = ["--iterations", "1", "--depth", "2", "--channels", "4", "--device", "cpu"]
        code, stderr = dipc("fit", "denoise", image_png, "-o", tmp_path / "o.png", *tiny, option, value)
        assert code == 2
        assert text in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_auto_on_the_faked_cpu_picks_what_the_fake_says(fake_cpu_capability):
    plan = Fitter(tiny_config(backend="auto", precision="auto"), make_problem(tiny_config(), NOISY)).plan
    assert plan.precision == ("bf16" if fake_cpu_capability.fast_bf16 else "fp32")


def test_fused_adam_under_auto_follows_the_eager_loss_trajectory(monkeypatch):
    monkeypatch.setattr(acceleration, "capability", lambda device: AVX2)  # auto = fp32 + fused Adam
    eager, auto = fit("eager", "fp32", 8), fit("auto", "auto", 8)
    assert auto.plan.fused_adam
    torch.testing.assert_close(
        torch.tensor(auto.history["loss"]), torch.tensor(eager.history["loss"]), rtol=1e-4, atol=1e-6
    )


def test_inductor_step_follows_the_eager_loss_trajectory():
    # The one torch.compile test of the suite (compiling costs tens of seconds on 2 cores).
    eager, compiled = fit("eager", "fp32", 4, MINI_NET), fit("inductor", "fp32", 4, MINI_NET)
    assert compiled.step.name == "inductor"
    torch.testing.assert_close(
        torch.tensor(compiled.history["loss"]), torch.tensor(eager.history["loss"]), rtol=1e-3, atol=1e-6
    )


def test_bf16_step_keeps_fp32_output_and_improves_psnr():
    fitter = fit("eager", "bf16", 30, MINI_NET, ema=None)
    assert fitter.plan.precision == "bf16" and isinstance(fitter.step, AcceleratedStep)
    loss, out = fitter.step(fitter.perturbed_input(), fitter.optimizer)
    assert loss.dtype == out.dtype == torch.float32
    assert all(s.dtype == torch.float32 for state in fitter.optimizer.state.values() for s in state.values())
    psnrs = fitter.history["psnr_reference"]
    assert psnrs[-1] > psnrs[0] + 3


def test_nan_guard_keeps_the_last_good_weights_and_continues_in_fp32(monkeypatch):
    cfg = tiny_config(
        "denoise", iterations=12, stop="fixed", backend="eager", precision="bf16", log_every=4, backtrack_db=None
    ).replace(net=MINI_NET)
    fitter = Fitter(cfg, make_problem(cfg, NOISY, reference=CLEAN[None]))
    fitter.run(5)  # logs at 4; iteration 5 is the last good one
    good = [p.detach().clone() for p in fitter.net.parameters()]
    forward = LossModule.forward
    monkeypatch.setattr(LossModule, "forward", lambda self, x: tuple(t * float("nan") for t in forward(self, x)))
    fitter.iterate()  # iteration 6: NaN loss and gradients
    monkeypatch.setattr(LossModule, "forward", forward)
    assert all(torch.equal(p, g) for p, g in zip(fitter.net.parameters(), good, strict=True))
    assert fitter.plan.precision == "bf16"  # noticed at the next log point, where the host reads the device
    result = fitter.run(12)
    assert fitter.plan.precision == "fp32" and isinstance(fitter.step, EagerStep)
    assert result.fallbacks == [
        {
            "iteration": 8,
            "nonfinite_steps": 1,
            "from_plan": "eager bf16 (fused Adam)",
            "to_plan": fitter.plan.describe(),
        }
    ]
    assert all(torch.isfinite(torch.tensor(result.history["loss"])))
    assert all(torch.isfinite(p).all() for p in fitter.net.parameters())
    psnrs = dict(zip(result.history["iteration"], result.history["psnr_reference"], strict=True))
    assert psnrs[12] > psnrs[5]  # the fit goes on improving from the last good weights
