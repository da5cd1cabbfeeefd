"""What a fit checks before it allocates anything: the memory it would need (refused, with the ways it would fit,
when the machine lacks it), ``--dry-run``'s estimate, and whether an exception is running out of memory. Shared by
``restore`` and ``tiling`` (for every tile)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .acceleration import choose
from .coarse import coarse_iterations, half_size
from .config import FitConfig, Precision
from .errors import DipError
from .estimate import TIME_EXPONENT, Estimate, available_bytes, estimate, largest_side, probe_seconds, size_text
from .problem import Problem, canvas_for
from .tasks import names

MEMORY_SHARE = 0.9  # of the machine's (or GPU's) memory a fit may plan to use
TILED_TASKS = names(lambda s: s.tiles)  # the tasks ``--tile`` supports (tiling.TASKS)


def check_memory(config: FitConfig, problem: Problem, device: str) -> Estimate:
    """The fit's estimated peak memory; refuses, before any allocation, an image whose fit would not fit (its
    first step's peak, ``base_bytes``: a fit keeps its freed memory afterwards only where that fits too), naming the
    largest size that would and the options that would make this one fit."""
    guess = estimate(config, problem.canvas, problem.channels, device)
    have = available_bytes(device)
    if have is None or guess.base_bytes <= MEMORY_SHARE * have[0]:
        return guess
    budget, where = MEMORY_SHARE * have[0], have[1]
    (h, w), factor = problem.canvas, config.factor  # (the factor is 1 unless the task scales)
    side = largest_side(config, problem.canvas, problem.channels, device, budget)
    ways = []
    if side >= config.net.multiple:
        scale = side / max(h, w)
        ways.append(f"an image of at most about {int(w * scale) // factor}x{int(h * scale) // factor}")
    ways += _options_that_fit(config, problem, device, guess.precision, budget)
    if config.task in TILED_TASKS and side >= 2 * config.net.multiple:
        ways.append(f"--tile {min(side, 1024) // factor * factor}")
    ways.append("a smaller network (--channels, --depth)")
    raise DipError(
        f"fitting at {w}x{h} needs about {size_text(guess.base_bytes)} ({guess.precision}) but this machine has "
        f"{size_text(have[0])} of {where}; it would fit with {'; or '.join(ways)}"
    )


def _options_that_fit(config: FitConfig, problem: Problem, device: str, precision: str, budget: float) -> list[str]:
    """The cheapest switches (alone, else together) under which this fit's estimate is within ``budget``."""
    switches: list[tuple[str, dict[str, Any], Optional[str]]] = []
    if not config.save_memory:
        switches.append(("--save-memory", {"save_memory": True}, None))
    if (
        not Precision(precision).reduced
        and choose(config.replace(precision=Precision.auto), device, problem.canvas).precision.reduced
    ):
        switches.append(("--precision bf16", {}, Precision.bf16))
    if config.stop == "auto" and config.stop_variant == "wmv":  # its window holds stop_window images
        switches.append(("--stop-rule emv", {"stop_variant": "emv"}, None))
    fitting: list[str] = []
    for count in range(1, len(switches) + 1):
        for chosen in itertools.combinations(switches, count):
            changes = {k: v for _, c, _ in chosen for k, v in c.items()}
            lower = next((p for _, _, p in chosen if p), precision)
            need = estimate(config.replace(**changes), problem.canvas, problem.channels, device, precision=lower)
            if need.base_bytes <= budget:
                fitting.append(f"{' '.join(flag for flag, _, _ in chosen)} (about {size_text(need.base_bytes)})")
        if fitting:
            return fitting
    return []


@dataclass(frozen=True)
class Forecast:
    """What a fit will cost before it starts (``--dry-run``'s numbers): its peak memory, its step (backend and
    precision) and seconds per iteration, and the iterations it has left."""

    memory: Estimate
    step: str  # acceleration.Plan.describe()
    seconds_per_iteration: float
    iterations: int
    auto_stop: bool  # may end sooner
    coarse: int = 0  # --coarse-share: how many of the iterations run at half size
    coarse_scale: float = 1.0  # a half-size iteration's time as a share of a full one's

    @property
    def seconds(self) -> float:
        return (self.iterations - self.coarse + self.coarse * self.coarse_scale) * self.seconds_per_iteration

    def describe(self) -> str:
        """The ``--dry-run`` line."""
        auto = ", less if auto-stop ends it sooner" if self.auto_stop else ""
        at_half = f", {self.coarse} of them at half size" if self.coarse else ""
        return (
            f"dry run: {self.memory.describe()}; about {self.seconds_per_iteration:.2f} s per iteration ({self.step}), "
            f"{self.iterations} iterations{at_half}: about {duration(self.seconds)}{auto}; nothing was fitted or written"
        )


def forecast(config: FitConfig, problem: Problem, device: str, done: int = 0) -> Forecast:
    """The memory check (a refusal raises) and a timed probe at a small canvas; nothing is fitted or written."""
    guess = check_memory(config, problem, device)
    seconds = probe_seconds(config, problem.canvas, problem.channels, device)
    left = config.iterations - done
    coarse = min(left, max(0, coarse_iterations(config) - done))  # --coarse-share: the iterations at half size
    half = canvas_for(config.net, half_size(problem.size))
    shrunk = (half[0] * half[1] / (problem.canvas[0] * problem.canvas[1])) ** TIME_EXPONENT  # as probe_seconds scales
    step = choose(config, device, problem.canvas).describe()
    return Forecast(guess, step, seconds, left, config.stop != "fixed", coarse, shrunk)


def dry_run(config: FitConfig, problem: Problem, device: str, console: Any, done: int = 0) -> int:
    """``--dry-run``: prints the ``forecast``."""
    console.print(forecast(config, problem, device, done).describe())
    return 0


def duration(seconds: float) -> str:
    """``2 h 38 min``, ``4 min 05 s``, ``12 s``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (
        (oom is not None and isinstance(exc, oom))
        or isinstance(exc, MemoryError)
        or (isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)))
    )
