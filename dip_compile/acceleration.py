"""The compile and precision policy of the fitting step: which backend, which precision, and how to fall back.

A step does noise-perturbed forward, degradation, loss and backward; ``optimizer_step`` then applies Adam (the
fitter runs backtracking in between). Every step here has the call signature of ``fitting.EagerStep``.

Measured on the CI machine (2-core AMD EPYC, AVX2, no bf16 hardware): convolutions take most of an iteration,
bf16 autocast is emulated (bf16 matmuls run at ~1% of the fp32 rate), and the torch.compile'd step is slower
than eager after minutes of compilation. So ``auto`` picks bf16 only where the CPU has AVX512-BF16/AMX (bf16 or
fp16 on CUDA), compiles only on CUDA for long fits, and otherwise gains only the fused Adam step.

Reduced precision keeps the loss, the optimizer state, the EMA and PSNR in fp32 (autocast covers the network
only). A non-finite loss or gradient is caught on the device without a host sync: the fused Adam step is
skipped (the weights stay the last good ones) and the previous output is returned; at the next log point the
fitter sees the flag and continues in fp32 (``Fallback``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .config import Backend, ConfigError, FitConfig, Precision
from .problem import CenterCrop, Problem

BACKENDS: tuple[str, ...] = Backend.values()
PRECISIONS: tuple[str, ...] = Precision.values()
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Auto compiles only when the fit is long enough for compilation to pay back within 10% of its iterations.
# Measured with benchmarks/fit_speed.py on the CI CPU (paper denoising net, fp32): the inductor step ran at
# 0.54-0.60x the speed of eager at 256x256 (under load, 250-300 s to compile) and 0.67x at 512x512 (near idle,
# 63 s to compile): its backward of bilinear upsampling and reflection padding becomes atomic-add scatter
# kernels. So on a CPU the saving is taken as none and auto stays eager. CUDA figures are estimates (no GPU).
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
    return Capability("cuda", torch.cuda.get_device_name(index), fast_bf16=major >= 8, fast_fp16=major >= 7)


def capability(device: torch.device) -> Capability:
    if device.type == "cuda":
        return _cuda_capability(device.index if device.index is not None else torch.cuda.current_device())
    return Capability("cpu", torch.backends.cpu.get_cpu_capability(), fast_bf16=cpu_has_fast_bf16(), fast_fp16=False)


@dataclass(frozen=True)
class Plan:
    """The resolved way to run the step. ``reason`` says why auto chose it (shown by ``dipc fit``)."""

    backend: str = "eager"  # eager or inductor
    precision: str = "fp32"  # fp32, bf16 or fp16
    channels_last: bool = False  # the input (hence every activation) in NHWC; weights stay NCHW
    fused_adam: bool = False  # one fused Adam kernel instead of a Python loop over 112 parameters
    cuda_graphs: bool = False
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
    layout and optimizer choices that paid in measurements.
    """
    device = torch.device(device)
    cap = cap or capability(device)
    reasons: list[str] = []
    precision = str(config.precision)
    if precision == "auto":
        if cap.fast_bf16:
            precision = "bf16"
            reasons.append(f"bf16 ({cap.isa} has native bf16)")
        elif cap.device == "cuda" and cap.fast_fp16:
            precision = "fp16"
            reasons.append(f"fp16 with a grad scaler ({cap.isa} lacks fast bf16)")
        else:
            precision = "fp32"
            reasons.append(f"fp32 ({cap.isa} has no native bf16: autocast would be emulated and slower)")
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is for CUDA; on a CPU use bf16 (with AVX512-BF16/AMX) or fp32")
    backend = str(config.backend)
    if backend == "auto":
        backend = _auto_backend(config, cap, canvas, precision, reasons)
    auto = config.backend == "auto" or config.precision == "auto"
    cuda = device.type == "cuda"
    return Plan(
        backend=backend,
        precision=precision,
        channels_last=auto and (cuda or precision != "fp32"),
        # fused Adam: one kernel instead of a Python loop over 112 parameters (~85 ms -> ~3 ms per step on the
        # CI CPU); needed where the NaN guard skips a step on the device. Explicit eager fp32 stays the baseline.
        fused_adam=auto or precision != "fp32",
        cuda_graphs=cuda,
        reason="; ".join(reasons),
    )


def _auto_backend(
    config: FitConfig, cap: Capability, canvas: tuple[int, int], precision: str, reasons: list[str]
) -> str:
    pixels = canvas[0] * canvas[1]
    if cap.device == "cuda":
        # ~1 ms of kernel launches per eager step dominates small images; compiling pays after a few hundred steps
        if config.iterations >= 500:
            reasons.append(
                f"inductor ({config.iterations} iterations amortise ~{CUDA_COMPILE_SECONDS:.0f} s of compilation)"
            )
            return "inductor"
        reasons.append(f"eager ({config.iterations} iterations are too few to amortise compilation)")
        return "eager"
    # CPU: eager seconds per iteration scale with pixels and the square of the width (paper net: 128 channels,
    # ~1.8 s at 256x256 in fp32 on 2 AVX2 cores)
    eager_seconds = 1.8 * pixels / 256**2 * (max(config.net.channels_down) / 128) ** 2
    saving = CPU_COMPILE_SAVING * eager_seconds * 0.1 * config.iterations
    if saving > CPU_COMPILE_SECONDS:
        reasons.append(
            f"inductor (saves ~{saving:.0f} s in the first 10% of iterations, compiles in ~{CPU_COMPILE_SECONDS:.0f} s)"
        )
        return "inductor"
    why = (
        "torch.compile measured slower than eager on CPU"
        if CPU_COMPILE_SAVING <= 0
        else "too short to amortise compiling"
    )
    reasons.append(f"eager ({why})")
    return "eager"


# --- the step ---------------------------------------------------------------------------------------------


class LossModule(nn.Module):
    """net -> crop -> operator -> the problem's loss, with autocast over the network only (loss and output in fp32)."""

    def __init__(
        self,
        net: nn.Module,
        problem: Problem,
        crop: CenterCrop,
        precision: str,
        device_type: str,
        cache_autocast: bool = True,
    ) -> None:
        super().__init__()
        self.net, self.crop = net, crop
        self.operator: Callable[[torch.Tensor], torch.Tensor] = problem.operator
        self.fidelity = problem.fidelity
        self.observation: torch.Tensor
        self.register_buffer("observation", problem.observation, persistent=False)
        self.dtype = DTYPES[precision]
        self.device_type = device_type
        self.cache_autocast = cache_autocast

    def forward(self, net_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dtype is torch.float32:
            out = self.crop(self.net(net_input))
        else:
            with torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=self.cache_autocast):
                out = self.crop(self.net(net_input))
            out = out.float()
        return self.fidelity(self.operator(out), self.observation), out


class AcceleratedStep:
    """Runs a (possibly compiled) ``LossModule``; with reduced precision it also guards against NaN/inf."""

    def __init__(self, plan: Plan, net: nn.Module, problem: Problem, crop: CenterCrop, device: torch.device) -> None:
        self.plan = plan
        self.name = plan.backend
        self.device = device
        self.module = LossModule(net, problem, crop, plan.precision, device.type, cache_autocast=not plan.cuda_graphs)
        self.forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self._build()
        self.scaler = torch.amp.GradScaler(device.type) if plan.precision == "fp16" else None
        self.guarded = plan.precision != "fp32"
        self.nonfinite = torch.zeros((), device=device)  # counts guarded iterations since the last poll
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.found: torch.Tensor | None = None

    def _build(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        if self.plan.backend == "inductor":
            mode = "reduce-overhead" if self.plan.cuda_graphs else None
            return torch.compile(self.module, mode=mode, dynamic=False)
        return self.module

    def __call__(self, net_input: torch.Tensor, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        if self.plan.channels_last:
            net_input = net_input.contiguous(memory_format=torch.channels_last)
        loss, out = self.forward(net_input)
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        loss, out = loss.detach(), out.detach()
        if self.plan.cuda_graphs:  # compiled CUDA-graph outputs are overwritten by the next replay
            loss, out = loss.clone(), out.contiguous().clone()
        if self.guarded:
            loss, out = self._guard(loss, out, optimizer)
        return loss, out

    def _guard(
        self, loss: torch.Tensor, out: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flags a non-finite loss or gradient on the device; the fused Adam step then does nothing."""
        found = (~torch.isfinite(loss)).float()
        if self.scaler is None:  # fp16 gradients overflow routinely: the grad scaler deals with those
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones((), device=self.device))
            found = found.clamp(max=1.0)
            optimizer.found_inf = found  # type: ignore[attr-defined]  # read by fused Adam: skips the step on device
        self.found = found
        self.nonfinite += found
        bad = found.bool()
        if self.last is not None:
            loss, out = torch.where(bad, self.last[0], loss), torch.where(bad, self.last[1], out)
        else:  # nothing good yet: keep NaN out of the EMA and the stopping statistics
            loss, out = torch.where(bad, float("inf"), loss), torch.where(bad, 0.5, out)
        self.last = (loss, out)
        return loss, out

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)  # fused Adam takes the scale and inf flag on the device: no sync
            self.scaler.update()
        else:
            optimizer.step()
        if hasattr(optimizer, "found_inf"):
            del optimizer.found_inf

    def poll(self) -> int:
        """Non-finite iterations since the last poll (reads the device: call it where the host syncs anyway)."""
        if not self.guarded:
            return 0
        count = int(self.nonfinite.item())
        self.nonfinite.zero_()
        return count


class CudaGraphStep:
    """Eager steps on CUDA, replayed from one captured CUDA graph (forward, loss, backward).

    Safe with our BatchNorm: built with ``track_running_stats=False`` it mutates no buffers, so a replay
    is the same computation as an eager step. The gradients are the graph's static tensors: after capture
    nothing may set them to None (only this step zeroes gradients). The optimizer step runs outside the
    graph (fused, no sync), so backtracking can still act in between.
    """

    warmup = 3

    def __init__(self, inner: AcceleratedStep) -> None:
        self.inner = inner
        self.name = inner.name
        self.plan = inner.plan
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_input: torch.Tensor | None = None
        self.static: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, net_input: torch.Tensor, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        inner = self.inner
        if self.graph is None and self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream(inner.device)
            side.wait_stream(torch.cuda.current_stream(inner.device))
            with torch.cuda.stream(side):
                result = inner(net_input, optimizer)
            torch.cuda.current_stream(inner.device).wait_stream(side)
            return result
        if self.graph is None:
            self.static_input = net_input.clone()
            optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                loss, out = inner.forward(
                    self.static_input.contiguous(memory_format=torch.channels_last)
                    if inner.plan.channels_last
                    else self.static_input
                )
                (inner.scaler.scale(loss) if inner.scaler is not None else loss).backward()
            self.static = (loss.detach(), out.detach())
        assert self.static_input is not None and self.static is not None
        self.static_input.copy_(net_input)
        self.graph.replay()
        loss, out = self.static[0].clone(), self.static[1].clone()
        if inner.guarded:
            loss, out = inner._guard(loss, out, optimizer)
        return loss, out

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.inner.optimizer_step(optimizer)

    def poll(self) -> int:
        return self.inner.poll()


def build_step(plan: Plan, net: nn.Module, problem: Problem, crop: CenterCrop, device: torch.device):
    """The step object for a plan; the plain eager fp32 plan gets exactly the baseline ``EagerStep``."""
    from .fitting import EagerStep

    if plan.backend == "eager" and plan.precision == "fp32" and not plan.channels_last and not plan.cuda_graphs:
        return EagerStep(net, problem, crop)
    step = AcceleratedStep(plan, net, problem, crop, device)
    if plan.cuda_graphs and plan.backend != "inductor":  # inductor's reduce-overhead mode graphs by itself
        return CudaGraphStep(step)
    return step


@dataclass
class Fallback:
    """One NaN/inf event: the fit went on in fp32 from this iteration with the last good weights."""

    iteration: int
    nonfinite_steps: int
    from_plan: str
    to_plan: str


def fp32_plan(plan: Plan) -> Plan:
    return replace(plan, precision="fp32", reason=f"fallback to fp32 after non-finite values in {plan.precision}")
