"""The compile and precision policy of the fitting step: which backend, which precision, and how to fall back.

The steps themselves (noise-perturbed forward, degradation, loss and backward; then Adam) live in ``steps``; this
module decides which one a fit gets. The CPU model varies between machines: on an AVX2-only CPU bf16 autocast is
emulated (bf16 matmuls at ~1% of the fp32 rate), while AVX512-BF16 and AMX CPUs run it natively (2.2-2.9x per
iteration, README "Fitting speed"); on CPUs the torch.compile'd step measured slower than eager after minutes of
compilation. So ``auto`` picks bf16 only where the CPU has AVX512-BF16/AMX (bf16 or fp16 on CUDA), compiles only
on CUDA for long fits, and otherwise gains only the fused Adam step.

Reduced precision keeps the loss, the optimizer state, the EMA and PSNR in fp32 (autocast covers the network
only). A non-finite loss or gradient is caught on the device without a host sync: the fused Adam step is
skipped (the weights stay the last good ones) and the previous output is returned; at the next log point the
fitter sees the flag and continues in fp32 (``Fallback``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import allocator
from .config import Backend, ConfigError, FitConfig, Precision

BACKENDS: tuple[str, ...] = Backend.values()
PRECISIONS: tuple[str, ...] = Precision.values()
# The torch dtype of each precision but auto (which choose resolves), in the style of network.GENERATORS
DTYPES: dict[str, torch.dtype] = {
    Precision.fp32: torch.float32,
    Precision.bf16: torch.bfloat16,
    Precision.fp16: torch.float16,
}

# Auto compiles only when the fit is long enough for compilation to pay back within 10% of its iterations.
# On CPUs (benchmarks/fit_speed.py, README "Fitting speed") the inductor step ran slower than eager, since its
# backward of bilinear upsampling and reflection padding becomes atomic-add scatter kernels: the saving is taken as
# none and auto stays eager. The CUDA compile time is an estimate, not yet measured on a GPU.
CPU_COMPILE_SAVING = 0.0  # fraction of eager time that compiling saves per iteration on a CPU
CPU_COMPILE_SECONDS = 280.0
CUDA_COMPILE_SECONDS = 60.0


@dataclass(frozen=True)
class Capability:
    """What the fitting device can do fast; ``choose`` reads only this, so tests can fake any machine."""

    device: str  # "cpu" or "cuda"
    isa: str  # torch's CPU capability ("AVX2", "AVX512", ...) or the GPU's name
    fast_bf16: bool
    fast_fp16: bool
    # fp32 convolutions run faster on channels-last (NHWC) activations: oneDNN's AVX-512 kernels do, its AVX2 ones run
    # NCHW faster (docs/speed-and-memory.md, "Layout"). GPUs (and every bf16 step) run channels-last anyway
    fast_channels_last: bool = False


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_fast_bf16() -> bool:
    """bf16 pays on a CPU only with native bf16 dot products (AVX512-BF16 or AMX); elsewhere it is emulated."""
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    return torch.backends.cpu.get_cpu_capability() == "AVX512_BF16" or "AMX" in torch.backends.cpu.get_cpu_capability()


@functools.cache
def _cuda_capability(index: int) -> Capability:
    major, _ = torch.cuda.get_device_capability(index)
    name = torch.cuda.get_device_name(index)
    return Capability("cuda", name, fast_bf16=major >= 8, fast_fp16=major >= 7, fast_channels_last=True)


def capability(device: torch.device) -> Capability:
    if device.type == "cuda":
        return _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())
    isa = torch.backends.cpu.get_cpu_capability()  # (ATEN_CPU_CAPABILITY=avx2 gives "AVX2" on an AVX-512 CPU)
    return Capability(
        "cpu", isa, fast_bf16=cpu_has_fast_bf16(), fast_fp16=False, fast_channels_last=isa.startswith("AVX512")
    )


@dataclass(frozen=True)
class Plan:
    """The resolved way to run the step. ``reason`` says why auto chose it (shown by ``dipc fit``)."""

    backend: Backend = Backend.eager  # never auto: choose resolves it
    precision: Precision = Precision.fp32  # never auto
    channels_last: bool = False  # the input (hence every activation) in NHWC; weights stay NCHW
    fused_adam: bool = False  # one fused Adam kernel instead of a Python loop over 112 parameters
    cuda_graphs: bool = False
    kept_memory: bool = False  # glibc keeps freed blocks for the next step where memory allows (allocator.py)
    reason: str = ""

    def describe(self) -> str:
        extras = [
            name
            for name, on in (
                ("channels-last", self.channels_last),
                ("fused Adam", self.fused_adam),
                ("CUDA graphs", self.cuda_graphs),
            )
            if on
        ]
        text = f"{self.backend} {self.precision}" + (f" ({', '.join(extras)})" if extras else "")
        return text + (f": {self.reason}" if self.reason else "")

    def optimizer_options(self) -> dict:
        return {"fused": True} if self.fused_adam else {}


def choose(
    config: FitConfig, device: torch.device | str, canvas: tuple[int, int], cap: Capability | None = None
) -> Plan:
    """Resolves ``auto`` backend and precision for this device, image size and iteration count.

    Explicit choices are kept as given (``eager fp32`` is the unmodified baseline); only ``auto`` adds the
    layout and optimizer choices that paid in measurements, and only ``auto`` reads the device's capability: for
    the precision, and for the layout of an fp32 step on a CPU (channels-last with AVX-512, NCHW with AVX2; the
    same arithmetic in another order). A fit whose backend and precision are both explicit runs the same whatever
    the CPU can do.
    """
    device = torch.device(device)
    reasons: list[str] = []
    precision = config.precision
    if precision.is_auto:
        cap = cap or capability(device)
        if cap.fast_bf16:
            precision = Precision.bf16
            reasons.append(f"bf16 ({cap.isa} has native bf16)")
        elif cap.device == "cuda" and cap.fast_fp16:
            precision = Precision.fp16
            reasons.append(f"fp16 with a grad scaler ({cap.isa} lacks fast bf16)")
        else:
            precision = Precision.fp32
            reasons.append(f"fp32 ({cap.isa} has no native bf16: autocast would be emulated and slower)")
    if precision.scaled and device.type == "cpu":
        raise ConfigError("--precision fp16 is for CUDA; on a CPU use bf16 (with AVX512-BF16/AMX) or fp32")
    backend = config.backend
    if backend.is_auto:
        backend = _auto_backend(config, device, canvas, reasons)
    auto = config.backend.is_auto or config.precision.is_auto
    cuda = device.type == "cuda"
    channels_last = auto and (cuda or precision.reduced)
    if auto and not channels_last:  # an fp32 step on a CPU
        cap = cap or capability(device)
        channels_last = cap.fast_channels_last
        if channels_last:
            reasons.append(f"channels-last ({cap.isa} runs fp32 convolutions faster in NHWC)")
    if cuda and config.net.trains_input:  # a graph replays on a static copy of the input, which gets no gradient
        reasons.append("no CUDA graphs (the input is fitted)")
    return Plan(
        backend=backend,
        precision=precision,
        channels_last=channels_last,
        # fused Adam: one kernel instead of a Python loop over 112 parameters (~85 ms -> ~3 ms per step on the
        # CI CPU); needed where the NaN guard skips a step on the device. Explicit eager fp32 stays the baseline.
        fused_adam=auto or precision.reduced,
        cuda_graphs=cuda and not config.net.trains_input,
        kept_memory=not cuda and allocator.available(),
        reason="; ".join(reasons),
    )


def _auto_backend(config: FitConfig, device: torch.device, canvas: tuple[int, int], reasons: list[str]) -> Backend:
    pixels = canvas[0] * canvas[1]
    if device.type == "cuda":
        # ~1 ms of kernel launches per eager step dominates small images; compiling pays after a few hundred steps
        if config.iterations >= 500:
            reasons.append(
                f"inductor ({config.iterations} iterations amortise ~{CUDA_COMPILE_SECONDS:.0f} s of compilation)"
            )
            return Backend.inductor
        reasons.append(f"eager ({config.iterations} iterations are too few to amortise compilation)")
        return Backend.eager
    # CPU: eager seconds per iteration scale with pixels and the square of the width (paper net: 128 channels,
    # ~1.8 s at 256x256 in fp32 on 2 AVX2 cores)
    eager_seconds = 1.8 * pixels / 256**2 * (max(config.net.channels_down) / 128) ** 2
    saving = CPU_COMPILE_SAVING * eager_seconds * 0.1 * config.iterations
    if saving > CPU_COMPILE_SECONDS:
        reasons.append(
            f"inductor (saves ~{saving:.0f} s in the first 10% of iterations, compiles in ~{CPU_COMPILE_SECONDS:.0f} s)"
        )
        return Backend.inductor
    why = (
        "torch.compile measured slower than eager on CPU"
        if CPU_COMPILE_SAVING <= 0
        else "too short to amortise compiling"
    )
    reasons.append(f"eager ({why})")
    return Backend.eager


@dataclass
class Fallback:
    """One NaN/inf event: the fit went on in fp32 from this iteration with the last good weights."""

    iteration: int
    nonfinite_steps: int
    from_plan: str
    to_plan: str


def fp32_plan(plan: Plan) -> Plan:
    return replace(
        plan, precision=Precision.fp32, reason=f"fallback to fp32 after non-finite values in {plan.precision}"
    )
