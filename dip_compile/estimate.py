"""What a fit will cost before it starts: peak memory (always) and seconds per iteration (``dipc fit --dry-run``).

Memory: the activations autograd keeps for the backward pass grow with the pixel count, and they are counted,
not guessed: one forward pass of this very network at this precision at two small canvases, with a saved-tensors
hook adding up the storages it keeps, gives bytes = a + b * area exactly for a conv net. At the real canvas the
peak is ``KEEP[reduced precision, save_memory, kept]`` times that (the backward pass holds gradients beside them;
``--save-memory`` keeps less; the factors come from measured peaks: ``benchmarks/memory_estimate.py``), plus the
weights with their gradients and Adam moments, plus the images the fit keeps (the stopping window, the EMA, the
input noise). With glibc's own allocator (``kept`` False: the first step's peak) that is what must fit; a CPU fit
that has room then keeps its freed memory (allocator.py), which raises its peak (``kept`` True): the peak it will
reach.

Time: a few steps of the same fit at a small canvas, scaled by the pixel count (``probe_seconds``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass

import torch

from . import allocator
from .acceleration import choose
from .allocator import machine_bytes
from .config import FitConfig, NetConfig, Precision
from .network import build_network, count_parameters, make_input, set_save_memory
from .problem import Problem, make_problem
from .tasks import spec

GIB = 2**30
# time per iteration against the pixel count: t ~ area ** TIME_EXPONENT. It was 1.05 (page faults grew the large
# steps) until a fit kept its freed memory (allocator.py); the step profiles of docs/fast.md "Per iteration" then give
# 0.91 (bf16 on AMX, 128 -> 512 px) and 0.99 (fp32 with AVX2 kernels, 256 -> 512 px): between them
TIME_EXPONENT = 0.95
# peak = KEEP[reduced precision, save_memory, freed memory kept] * the activations a default fit keeps + weights and
# images + OVERHEAD_BYTES[kept], fitted by `python benchmarks/memory_estimate.py --fit` to the measured peak RSS of
# benchmarks/results/speed/memory-estimate-amd-epyc-avx512bf16/rows.json (docs/speed-and-memory.md). With --save-memory
# the peak is the kept unit inputs plus the recomputed unit's tensors and gradients: both scale with what the default
# keeps, hence one factor of it. In bf16 the counted activations are bf16 while the backward's gradients and the
# kernels' scratch are not all, hence larger factors
KEEP = {
    (False, False, False): 1.07, (False, True, False): 0.58, (True, False, False): 1.13, (True, True, False): 0.85,
    (False, False, True): 1.60, (False, True, True): 1.20, (True, False, True): 1.85, (True, True, True): 1.50,
}  # fmt: skip
OVERHEAD_BYTES = {False: 216 * 2**20, True: 42 * 2**20}  # the kernels' scratch, the libraries' buffers


@dataclass(frozen=True)
class Estimate:
    canvas: tuple[int, int]
    precision: str
    activation_bytes: int  # kept for the backward pass
    state_bytes: int  # weights, gradients, Adam moments (and the backtracking copy)
    image_bytes: int  # the images the fit holds: input noise, stopping window, EMA, observation
    base_bytes: int  # the peak with glibc's own allocator: what must fit (the first step's)
    peak_bytes: int  # the peak the fit will reach: grown where it will keep its freed memory

    def describe(self) -> str:
        return f"memory: about {size_text(self.peak_bytes)} at {self.canvas[1]}x{self.canvas[0]} ({self.precision})"


def size_text(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


def kept_bytes(
    net_config: NetConfig, canvas: tuple[int, int], precision: str, *, save_memory: bool = False, device: str = "cpu"
) -> int:
    """The bytes of the tensors autograd keeps for the backward pass of one forward at ``canvas`` (run for real, on
    the CPU unless ``device`` is given: call it at small canvases)."""
    net_config.check_canvas(canvas)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_network(net_config).to(device)
    set_save_memory(net, save_memory)
    guide = torch.zeros(1, net_config.input_depth, *canvas) if net_config.input_kind.guided else None
    x = make_input(net_config, *canvas, seed=0, guide=guide).to(device)
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    # the bytes are what matters: fp16 is counted as bf16 (2 bytes too), which CPU autocast always supports
    dtype = torch.bfloat16 if Precision(precision).reduced else None
    autocast = torch.autocast(torch.device(device).type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        out = net(x)
    del out
    return sum(storages.values())


@functools.lru_cache(maxsize=64)
def _activation_line(net_config: NetConfig, precision: str) -> tuple[float, float]:
    """(bytes, bytes per pixel) of what a default fit keeps, from two small canvases: counted once per net and
    precision, however many sizes and switches a refusal message tries."""
    small = max(2 * net_config.multiple, net_config.min_side)  # the smallest canvas may be larger: 5x5 kernels
    sides = (small, 2 * small)
    low, high = (kept_bytes(net_config, (side, side), precision) for side in sides)
    per_pixel = (high - low) / (sides[1] ** 2 - sides[0] ** 2)
    return low - per_pixel * sides[0] ** 2, per_pixel


def activation_bytes(net_config: NetConfig, canvas: tuple[int, int], precision: str) -> int:
    """``kept_bytes`` of a default fit at ``canvas``: a + b * area, exact for a conv net up to padding."""
    base, per_pixel = _activation_line(net_config, precision)
    return int(max(0.0, base + per_pixel * canvas[0] * canvas[1]))


def estimate(
    config: FitConfig, canvas: tuple[int, int], channels: int, device: str, *, precision: str | None = None
) -> Estimate:
    """The peak memory of fitting ``config`` at ``canvas`` on ``device`` (the precision ``auto`` resolves to)."""
    precision = precision or choose(config, device, canvas).precision
    activations = activation_bytes(config.net, canvas, precision)
    with torch.device("meta"):  # parameter count only: no memory, no initialisation
        params = count_parameters(build_network(config.net))
    copies = 4 + (1 if config.backtrack_db is not None else 0)  # weights, gradients, 2 Adam moments, backtrack copy
    state = 4 * params * copies
    pixels = canvas[0] * canvas[1]
    image = 4 * channels * pixels
    images = 3 * 4 * config.net.input_depth * pixels + 8 * image  # input, perturbed input, its noise; outputs
    if config.stop != "fixed":  # auto-stop's window (WMV) and kept images; the held-out rule keeps two images too
        window = config.stop == "auto" and config.stop_variant == "wmv"
        images += (config.stop_window * image if window else 0) + 2 * 2 * image
    reduced = Precision(precision).reduced

    def peak(kept: bool) -> int:
        return int(KEEP[reduced, config.save_memory, kept] * activations + state + images + OVERHEAD_BYTES[kept])

    base = peak(False)
    return Estimate(canvas, precision, activations, state, images, base, peak(True) if keeps(base, device) else base)


def keeps(base: int, device: str) -> bool:
    """Whether a fit whose first step peaks at ``base`` bytes will keep its freed memory: a CPU fit with glibc where
    the grown peak fits (``allocator.room_for``, the rule a fit applies to its measured first step)."""
    return not device.startswith("cuda") and allocator.available() and allocator.room_for(base)


def available_bytes(device: str) -> tuple[int, str] | None:
    """The memory a fit may use on ``device`` and what it is called, or None when unknown."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory, "GPU memory"
    total = machine_bytes()
    return None if total is None else (total, "memory")


def largest_side(config: FitConfig, canvas: tuple[int, int], channels: int, device: str, budget: float) -> int:
    """The longest side (a multiple of the net's) an image of this aspect ratio may have within ``budget`` bytes."""
    m = config.net.multiple
    unit = estimate(config, canvas, channels, device)
    # what must fit (base_bytes) is affine in the area: solve from two points
    other = (canvas[0] * 2, canvas[1] * 2)
    two = estimate(config, other, channels, device, precision=unit.precision)
    per_area = (two.base_bytes - unit.base_bytes) / (3 * canvas[0] * canvas[1])
    base = unit.base_bytes - per_area * canvas[0] * canvas[1]
    if per_area <= 0 or budget <= base:
        return 0
    scale = math.sqrt((budget - base) / per_area / (canvas[0] * canvas[1]))
    return int(max(canvas) * scale) // m * m


def probe_seconds(config: FitConfig, canvas: tuple[int, int], channels: int, device: str, steps: int = 3) -> float:
    """Seconds per iteration at ``canvas`` from ``steps`` timed iterations at a small canvas (after one untimed),
    scaled by the pixel count (to the power ``TIME_EXPONENT``)."""
    from .fitting import Fitter

    m = config.net.multiple
    side = max(m, 128 // m * m)
    small = (min(side, canvas[0]), min(side, canvas[1]))
    probe = config.replace(iterations=1 + steps, stop="fixed", log_every=10**6, coarse_share=0.0)
    fitter = Fitter(probe, _probe_problem(probe, small, channels), device=device)
    fitter.run(1)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    fitter.run(1 + steps)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / steps
    return float(per_step * ((canvas[0] * canvas[1]) / (small[0] * small[1])) ** TIME_EXPONENT)


def _probe_problem(config: FitConfig, canvas: tuple[int, int], channels: int) -> Problem:
    """A problem of ``config``'s task on a random image whose canvas is ``canvas``."""
    task = spec(config.task)
    h, w = canvas[0] // config.factor, canvas[1] // config.factor  # (the factor is 1 unless the task scales)
    image = torch.rand(channels, h, w, generator=torch.Generator().manual_seed(0))
    return make_problem(
        config,
        image,
        mask=torch.ones(h, w) if task.needs("mask") else None,
        guide=image if config.net.input_kind.guided else None,
        kernel=torch.full((3, 3), 1 / 9) if task.needs("kernel") else None,
    )
