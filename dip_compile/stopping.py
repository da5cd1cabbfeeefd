"""Early stopping without ground truth: the running variance of the outputs (Wang et al., "Early Stopping for Deep
Image Prior", ES-WMV / ES-EMV; ``--stop auto``) and the error on held-out observed pixels (``--stop holdout``).

DIP's outputs change fast while the network fits structure, settle while it fits the image, then start to
wander again as it fits the noise. The running variance of the outputs has a minimum near the PSNR peak:

* ES-WMV: VAR_t = 1/W * sum_{w<W} ||x_{t-w} - mean_W||^2 over the last W outputs;
* ES-EMV: the buffer-free exponential version, m_t = m + a (x_t - m), v_t = (1 - a)(v + a ||x_t - m||^2).

As in the authors' code (sun-umn/Early_Stopping_for_DIP), VAR_t is taken over the window that ENDS at t, so the
minimum is known as soon as it happens and the image kept is x_t itself. Variances are normalised per pixel
(the mean over pixels of each pixel's variance, i.e. the mean of MSE(x_i, mean_W)), which does not change where
the minimum is. Stop once P iterations pass without a new minimum, and return the image at the minimum: the raw
output x_t, or, when the fit smooths its outputs with an EMA, the EMA at t + L (the stopper watches the raw outputs,
as in the paper, but keeps whatever image the fit would return). L = ema / (1 - ema), 99 at 0.99, is the mean age of
the EMA's weights, so the EMA at t + L is centred on t; the EMA at t itself mostly averages older, worse outputs
(README: 0.29 -> 0.16 dB mean gap to the best at 256 px). Until t + L is reached (or when a newer minimum comes
first) the EMA at t is kept. No variance counts before W outputs were seen: for EMV this skips the start-up
transient, where the zero-initialised variance is biased low. And no minimum counts before iteration 3W (the
burn-in): early in a fit the outputs can settle for a moment while the network still fits coarse structure, and
stopping P iterations after such a dip returns a blurred image.

Cost: all statistics stay on the fitting device and cost O(pixels) per step; the host reads a scalar only when
asked whether to stop (every ``check_every`` iterations). Memory: WMV keeps a ring of the last W outputs, W x the
image (W=100 at 3x512x512 fp32 is 315 MB, and checkpoints carry it) plus two float64 sums; EMV keeps only two
images (a float64 mean and the kept best), so it is the cheaper choice for large images or small GPUs.

``--stop holdout`` (``HoldoutStopper``) holds a small random share of the observed pixels out of the loss (the known
pixels of an inpainting mask, the low-resolution pixels of super-resolution, the noisy pixels of denoising) and
watches the error there: the network never saw those values, so their error is what it would be on the rest of the
image (plus the noise's variance, a constant), and its minimum is where the fit stops improving, with no clean image.
Stop ``patience`` iterations after the last minimum that improved by at least ``TOLERANCE``, read every ``check_every``
iterations (the curve the report records, so a replay of it stops where the fit did); then either return the
image at the minimum (``--stop-finish 0``: denoising, where fitting on would fit noise) or fit ``--stop-finish`` more
iterations on all pixels and return the fit's own image (noise-free tasks, where the held-out pixels are worth
fitting). With an EMA the image returned is the EMA ``lag`` iterations after the minimum, as auto-stop keeps it: the
held-out pixels are only predicted from their neighbours, never fitted, so their error turns up before the fitted
pixels stop gaining detail (on a gravel texture the held-out minimum came at 650 iterations, the best image at 1130;
docs/stopping.md). The switch to all pixels is on the device (a weight in the loss), so a checkpoint taken at any
iteration resumes exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from .config import FitConfig, StopRule
from .errors import DipError
from .problem import Problem

# No minimum counts before this many windows of iterations: while the net first fits the coarse image its outputs can
# settle briefly before changing fast again, and a fit stopped there loses 10 dB (zebra, sigma 50, 256 px: README)
BURN_IN_WINDOWS = 3


class LaggedImage:
    """The image a stopper returns: the one offered at a new minimum at once, then again ``lag`` iterations later
    unless a newer minimum came first (with an EMA, the EMA at t + lag is centred on t). On the device: no sync."""

    def __init__(self, lag: int, device: torch.device) -> None:
        self.lag = lag
        self.capture_at = torch.full((), -1, dtype=torch.long, device=device)
        self.kept_at = torch.zeros((), dtype=torch.long, device=device)
        self.image: torch.Tensor | None = None

    def offer(self, better: torch.Tensor, now: torch.Tensor, image: torch.Tensor) -> None:
        """``image`` is iteration ``now``'s; ``better``: whether ``now`` is a new minimum."""
        capture = better | (self.capture_at == now)
        self.capture_at = torch.where(better, now + self.lag, self.capture_at)
        self.kept_at = torch.where(capture, now, self.kept_at)
        if self.image is None:
            self.image = image.clone()
        else:
            self.image.copy_(torch.where(capture, image, self.image))

    def iteration(self) -> int | None:
        """The iteration whose image is kept (the minimum, or ``lag`` later once reached; one host read)."""
        return int(self.kept_at.item()) if self.image is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"best_image": self.image, "capture_at": self.capture_at, "kept_at": self.kept_at}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.image = None if state["best_image"] is None else state["best_image"].to(device)
        # checkpoints from before the lag kept the image at the minimum
        self.capture_at = state.get("capture_at", torch.tensor(-1)).to(device)
        self.kept_at = state.get("kept_at", state["best_iteration"]).to(device)


class VarianceStopper:
    """Tracks the running variance of the outputs and keeps the output at its minimum."""

    def __init__(
        self,
        variant: str,
        window: int,
        patience: int,
        alpha: float,
        device: torch.device,
        check_every: int = 10,
        lag: int = 0,
    ) -> None:
        if variant not in ("wmv", "emv"):
            raise ValueError(f"unknown stopping variant {variant!r}; choose wmv or emv")
        self.variant, self.window, self.patience, self.alpha = variant, window, patience, alpha
        self.burn_in = BURN_IN_WINDOWS * window
        # keep the image ``lag`` iterations after a minimum (the EMA's mean age: the EMA at t + lag is centred on t)
        self.lag = lag
        self.kept = LaggedImage(lag, device)
        self.device, self.check_every = device, check_every
        self.buffer: torch.Tensor | None = None  # WMV: the last W outputs, a ring
        self.sum: torch.Tensor | None = None  # WMV: float64 running sums, O(pixels) updates
        self.sum_sq: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # EMV
        self.var = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.best_var = torch.tensor(float("inf"), dtype=torch.float64, device=device)
        self.best_iteration = torch.zeros((), dtype=torch.long, device=device)
        self.variance_history: list[float] = []

    @property
    def best_image(self) -> torch.Tensor | None:
        return self.kept.image

    def watch(self, problem: Problem) -> Problem:
        """It watches the outputs only: the fit's problem is unchanged."""
        return problem

    def begin(self, total: int) -> None:
        """The fit's length does not matter to it."""

    def _variance(self, x: torch.Tensor) -> torch.Tensor | None:
        """Updates the running statistics with ``x``; returns the current variance once it is defined."""
        if self.variant == "emv":
            if self.mean is None:
                self.mean = x.double().clone()
                self.count = 1
                return None
            delta = x.double() - self.mean
            # EMV_t = (1 - a) EMV_{t-1} + a (1 - a) ||x_t - EMA_{t-1}||^2, per pixel
            self.var = (1 - self.alpha) * (self.var + self.alpha * delta.pow(2).mean())
            self.mean.add_(delta, alpha=self.alpha)
            self.count += 1
            return self.var if self.count >= self.window else None
        x64 = x.double()
        if self.buffer is None:
            self.buffer = torch.zeros((self.window, *x.shape), dtype=x.dtype, device=x.device)
            self.sum = torch.zeros_like(x64)
            self.sum_sq = torch.zeros_like(x64)
        assert self.buffer is not None and self.sum is not None and self.sum_sq is not None
        slot = self.count % self.window
        if self.count >= self.window:
            old = self.buffer[slot].double()
            self.sum.sub_(old)
            self.sum_sq.sub_(old * old)
        self.buffer[slot].copy_(x)
        self.sum.add_(x64)
        self.sum_sq.add_(x64 * x64)
        self.count += 1
        if self.count < self.window:
            return None
        # sum over pixels of the per-pixel variance, normalised per pixel as the paper's VAR (mean over pixels)
        w = float(self.window)
        per_pixel = (self.sum_sq / w - torch.pow(self.sum / w, 2)).clamp_min(0)
        self.var = per_pixel.mean()
        return self.var

    def update(self, out: torch.Tensor, iteration: int, keep: torch.Tensor | None = None) -> None:
        """Feeds the raw output of ``iteration``; ``keep`` is the image to hold at a new minimum (default ``out``)."""
        var = self._variance(out.detach())
        if var is None:
            return
        if iteration % self.check_every == 0:
            self.variance_history.append(float(var.item()))
        if iteration < self.burn_in:
            return
        kept = (out if keep is None else keep).detach().float()
        better = var < self.best_var
        now = torch.full_like(self.best_iteration, iteration)
        self.best_var = torch.where(better, var, self.best_var)
        self.best_iteration = torch.where(better, now, self.best_iteration)
        self.kept.offer(better, now, kept)

    def chosen_iteration(self) -> int | None:
        """The iteration of the current minimum (one host read), or None before any variance was defined."""
        return int(self.best_iteration.item()) if self.best_image is not None else None

    def kept_iteration(self) -> int | None:
        return self.kept.iteration()

    def should_stop(self, iteration: int) -> bool:
        if iteration % self.check_every != 0:
            return False
        best = self.chosen_iteration()
        return best is not None and iteration - best >= self.patience

    def info(self) -> dict[str, Any]:
        best = self.chosen_iteration()
        return {
            "rule": f"es-{self.variant}",
            "window": self.window,
            "patience": self.patience,
            "burn_in": self.burn_in,
            "lag": self.lag,
            "kept_iteration": self.kept_iteration(),
            "alpha": self.alpha,
            "chosen_iteration": best,
            "min_variance": float(self.best_var.item()) if best is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer,
            "sum": self.sum,
            "sum_sq": self.sum_sq,
            "mean": self.mean,
            "var": self.var,
            "count": self.count,
            "best_var": self.best_var,
            "best_iteration": self.best_iteration,
            **self.kept.state_dict(),
            "variance_history": self.variance_history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def move(t: Any) -> Any:
            return None if t is None else t.to(self.device)

        self.buffer, self.sum, self.sum_sq = move(state["buffer"]), move(state["sum"]), move(state["sum_sq"])
        self.mean, self.var = move(state["mean"]), move(state["var"])
        self.count = int(state["count"])
        self.best_var, self.best_iteration = move(state["best_var"]), move(state["best_iteration"])
        self.kept.load_state_dict(state, self.device)
        self.variance_history = list(state["variance_history"])


class Stopper(Protocol):
    """What the fit asks of a stopping rule (``STOPPERS``): it may change the problem it watches, is fed every
    iteration's output (and the image it would keep), says when to stop, and keeps its state for a checkpoint."""

    @property
    def best_image(self) -> torch.Tensor | None:
        """The image to return instead of the fit's own (None: the fit's own)."""

    def watch(self, problem: Problem) -> Problem: ...

    def begin(self, total: int) -> None: ...

    def update(self, out: torch.Tensor, iteration: int, keep: torch.Tensor | None = None) -> None: ...

    def should_stop(self, iteration: int) -> bool: ...

    def chosen_iteration(self) -> int | None: ...

    def kept_iteration(self) -> int | None: ...

    def info(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# --- held-out pixels -------------------------------------------------------------------------------------------

# A new minimum of the held-out error restarts the patience only when it is this much (relative) below the last one
# that did, so that an error that still creeps down by amounts no image shows (a noise-free fit: inpainting,
# super-resolution) does not hold the fit for ever. On the denoising study 0 to 1% returned the same worst case
# (benchmarks/stopping_study.py, docs/stopping.md); the noise-free tasks are not measured yet.
TOLERANCE = 0.003
# The held-out error is smoothed over iterations (an EMA of this weight, mean age ~20 iterations): without an EMA
# image the watched output is the network on a perturbed input, whose error jitters from one iteration to the next.
SMOOTHING = 0.05
HOLDOUT_SEED = 2  # the split's generator is seeded with the fit's seed plus this (the perturbation uses seed + 1)


class HoldoutError(DipError):
    """Too few observed pixels to hold some out."""


def holdout_split(problem: Problem, share: float, seed: int) -> torch.Tensor:
    """(1, 1, h, w) over the observation: 1 at the held-out pixels, a random ``share`` of the observed ones (the
    known pixels of a mask, else every pixel), the same for the same seed; the fit's loss sees only the others."""
    h, w = problem.observation.shape[-2:]
    observed = torch.ones(h * w, dtype=torch.bool)
    if problem.mask is not None:
        observed = problem.mask.detach().cpu().reshape(-1) > 0.5
    index = observed.nonzero().squeeze(1)
    count = max(1, round(share * index.numel()))  # at least one, so that a tiny image still has a held-out pixel
    if count >= index.numel():
        raise HoldoutError(
            f"--stop holdout: {index.numel()} observed pixel(s) leave none to fit once one is held out; "
            "use --stop fixed or --stop auto"
        )
    generator = torch.Generator().manual_seed(seed + HOLDOUT_SEED)
    held = torch.zeros(h * w)
    held[index[torch.randperm(index.numel(), generator=generator)[:count]]] = 1.0
    return held.reshape(1, 1, h, w)


class HeldOutLoss(nn.Module):
    """The problem's data fidelity on the weighted pixels only: both sides times ``weight`` (0 at a held-out pixel,
    1 elsewhere; all 1 once the fit finishes on all pixels), so mse, l1 and poisson count nothing where it is 0.
    A buffer changed in place, never replaced, so a compiled step (checked with inductor on the CPU) or a captured
    CUDA graph reads the switch."""

    weight: torch.Tensor

    def __init__(self, inner: nn.Module, weight: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.inner(x * self.weight, y * self.weight)


class HoldoutStopper:
    """Fits on all but the held-out pixels and watches their (smoothed) squared error; see the module's docstring.
    Everything per iteration stays on the device; the host reads a scalar only at ``should_stop``'s checks."""

    def __init__(
        self,
        held: torch.Tensor,
        patience: int,
        finish: int,
        device: torch.device,
        check_every: int = 10,
        tolerance: float = TOLERANCE,
        share: float = 0.0,
        lag: int = 0,
    ) -> None:
        self.held = held.to(device)
        self.patience, self.finish, self.tolerance, self.share = patience, finish, tolerance, share
        self.device, self.check_every = device, check_every
        self.loss: HeldOutLoss | None = None
        self.operator: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
        self.observation: torch.Tensor | None = None
        self.end = 0  # the session's total: finishing starts ``finish`` iterations before it at the latest
        self.count = 0
        self.error = torch.zeros((), dtype=torch.float64, device=device)
        self.best_error = torch.tensor(float("inf"), dtype=torch.float64, device=device)
        self.best_iteration = torch.zeros((), dtype=torch.long, device=device)
        self.mark_error = torch.tensor(float("inf"), dtype=torch.float64, device=device)
        self.mark_iteration = torch.zeros((), dtype=torch.long, device=device)
        self.finish_from = torch.full((), -1, dtype=torch.long, device=device)
        self.kept = LaggedImage(lag, device)
        self.error_history: list[float] = []
        self.last_check = 0  # the iteration of error_history's last entry (0: none since this session began)

    @property
    def best_image(self) -> torch.Tensor | None:
        return self.kept.image

    def watch(self, problem: Problem) -> Problem:
        """The problem whose loss leaves the held-out pixels out (until the fit finishes on all of them)."""
        self.operator, self.observation = problem.operator, problem.observation
        self.loss = HeldOutLoss(problem.fidelity, self._weight())
        return dataclasses.replace(problem, fidelity=self.loss)

    def _weight(self) -> torch.Tensor:
        return torch.where(self.finish_from >= 0, torch.ones_like(self.held), 1 - self.held)

    def begin(self, total: int) -> None:
        self.end = total

    def update(self, out: torch.Tensor, iteration: int, keep: torch.Tensor | None = None) -> None:
        """Feeds ``iteration``'s output; the error is that of ``keep`` (the EMA image, when the fit keeps one)."""
        assert self.observation is not None and self.loss is not None, "watch() the problem first"
        image = (out if keep is None else keep).detach().float()
        residual = (self.operator(image) - self.observation).double().pow(2) * self.held
        error = residual.sum() / (self.held.sum() * residual.shape[1])
        self.error = error if self.count == 0 else self.error + SMOOTHING * (error - self.error)
        self.count += 1
        check = iteration % self.check_every == 0
        if check:
            self.error_history.append(float(self.error.item()))
            self.last_check = iteration
        fitting = self.finish_from < 0
        now = torch.full_like(self.best_iteration, iteration)
        better = fitting & (self.error < self.best_error)
        self.best_error = torch.where(better, self.error, self.best_error)
        self.best_iteration = torch.where(better, now, self.best_iteration)
        if self.finish == 0:  # the image at the minimum (or ``lag`` after it) is the one returned
            self.kept.offer(better, now, image)
        if check:  # marks only on the recorded curve, so a replay of it (error_history) stops where the fit did
            marked = fitting & (self.error < self.mark_error * (1 - self.tolerance))
            self.mark_error = torch.where(marked, self.error, self.mark_error)
            self.mark_iteration = torch.where(marked, now, self.mark_iteration)
        if self.finish > 0:
            start = fitting & ((now - self.mark_iteration >= self.patience) | (now >= self.end - self.finish))
            self.finish_from = torch.where(start, now, self.finish_from)
            self.loss.weight.copy_(self._weight())

    def should_stop(self, iteration: int) -> bool:
        if iteration % self.check_every != 0:
            return False
        if self.finish == 0:
            return self.count > 0 and iteration - int(self.mark_iteration.item()) >= self.patience
        start = int(self.finish_from.item())  # (a finish that began because the end was near completes the fit)
        return start >= 0 and iteration - start >= self.finish and iteration < self.end

    def chosen_iteration(self) -> int | None:
        """The held-out minimum whose image is returned, or None when the fit returns its own (``--stop-finish``)."""
        return int(self.best_iteration.item()) if self.best_image is not None else None

    def kept_iteration(self) -> int | None:
        return self.kept.iteration()

    def info(self) -> dict[str, Any]:
        minimum = int(self.best_iteration.item()) if self.count else None
        start = int(self.finish_from.item())
        return {
            "rule": "holdout",
            "held_out_share": self.share,
            "held_out_pixels": int(self.held.sum().item()),
            "patience": self.patience,
            "tolerance": self.tolerance,
            "lag": self.kept.lag,
            "finish": self.finish,
            "minimum_iteration": minimum,
            "min_error": float(self.best_error.item()) if minimum is not None else None,
            "finished_from": start if start >= 0 else None,
            "chosen_iteration": self.chosen_iteration(),
            "kept_iteration": self.kept_iteration(),
            # the smoothed held-out error every ``error_every`` iterations: the curve the rule read, so that other
            # patiences and tolerances can be replayed on a finished fit (benchmarks/stopping_study.py)
            "error_every": self.check_every,
            "errors": list(self.error_history),
            "errors_until": self.last_check or None,  # the iteration of the last error (entries are error_every apart)
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "count": self.count,
            "error": self.error,
            "best_error": self.best_error,
            "best_iteration": self.best_iteration,
            "mark_error": self.mark_error,
            "mark_iteration": self.mark_iteration,
            "finish_from": self.finish_from,
            **self.kept.state_dict(),
            "error_history": self.error_history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.device)

        if tuple(state["held"].shape) != tuple(self.held.shape):
            raise HoldoutError("the checkpoint's held-out pixels do not match its observation")
        self.held, self.count, self.error = move(state["held"]), int(state["count"]), move(state["error"])
        self.best_error, self.best_iteration = move(state["best_error"]), move(state["best_iteration"])
        self.mark_error, self.mark_iteration = move(state["mark_error"]), move(state["mark_iteration"])
        self.finish_from = move(state["finish_from"])
        self.kept.load_state_dict(state, self.device)
        self.error_history = list(state["error_history"])
        if self.loss is not None:
            self.loss.weight.copy_(self._weight())


# --- the registry ----------------------------------------------------------------------------------------------


def _variance(config: FitConfig, problem: Problem, device: torch.device) -> Stopper:
    return VarianceStopper(
        config.stop_variant,
        config.stop_window,
        config.stop_patience,
        config.stop_alpha,
        device,
        check_every=config.log_every,
        lag=ema_lag(config),
    )


def _holdout(config: FitConfig, problem: Problem, device: torch.device) -> Stopper:
    held = holdout_split(problem, config.stop_holdout, config.seed)
    return HoldoutStopper(
        held,
        config.stop_patience,
        config.stop_finish,
        device,
        check_every=config.log_every,
        tolerance=TOLERANCE,
        share=config.stop_holdout,
        lag=ema_lag(config),
    )


# The stopping rules of ``--stop`` (``config.StopRule``) other than ``fixed``, in the style of network.GENERATORS.
STOPPERS: dict[str, Callable[[FitConfig, Problem, torch.device], Stopper]] = {
    StopRule.auto: _variance,
    StopRule.holdout: _holdout,
}


def make_stopper(config: FitConfig, problem: Problem, device: torch.device) -> Stopper | None:
    """The stopping rule ``config.stop`` names for this problem (None: a fixed count). The fit then fits the
    problem its ``watch`` returns."""
    if config.stop == "fixed":
        return None
    return STOPPERS[config.stop](config, problem, device)


def still_improving(stop_reason: str, info: Mapping[str, Any]) -> bool:
    """Whether the count, not the rule, ended a held-out fit: it ran every iteration without its error levelling
    off (``patience`` iterations without a gain of ``tolerance``), so a longer fit may return a better image. The
    textured images of CSet9 at full size end so at the f16 preset's 3000 (docs/stopping.md)."""
    return stop_reason == "completed" and info.get("rule") == "holdout"


def ema_lag(config: FitConfig) -> int:
    """How far the EMA image trails the outputs: the mean age of its weights, ema / (1 - ema) (99 at 0.99)."""
    return 0 if config.ema is None else round(config.ema / (1 - config.ema))
