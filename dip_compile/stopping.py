"""Early stopping without ground truth (Wang et al., "Early Stopping for Deep Image Prior", ES-WMV / ES-EMV).

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
"""

from __future__ import annotations

from typing import Any

import torch

from .config import FitConfig

# No minimum counts before this many windows of iterations: while the net first fits the coarse image its outputs can
# settle briefly before changing fast again, and a fit stopped there loses 10 dB (zebra, sigma 50, 256 px: README)
BURN_IN_WINDOWS = 3


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
        self.capture_at = torch.full((), -1, dtype=torch.long, device=device)
        self.kept_at = torch.zeros((), dtype=torch.long, device=device)
        self.device, self.check_every = device, check_every
        self.buffer: torch.Tensor | None = None  # WMV: the last W outputs, a ring
        self.sum: torch.Tensor | None = None  # WMV: float64 running sums, O(pixels) updates
        self.sum_sq: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None  # EMV
        self.var = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0
        self.best_var = torch.tensor(float("inf"), dtype=torch.float64, device=device)
        self.best_iteration = torch.zeros((), dtype=torch.long, device=device)
        self.best_image: torch.Tensor | None = None
        self.variance_history: list[float] = []

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
        # the image at a new minimum at once, then again ``lag`` iterations later unless a newer minimum came first
        capture = better | (self.capture_at == iteration)
        self.capture_at = torch.where(better, now + self.lag, self.capture_at)
        self.kept_at = torch.where(capture, now, self.kept_at)
        if self.best_image is None:
            self.best_image = kept.clone()
        else:
            self.best_image.copy_(torch.where(capture, kept, self.best_image))

    def chosen_iteration(self) -> int | None:
        """The iteration of the current minimum (one host read), or None before any variance was defined."""
        return int(self.best_iteration.item()) if self.best_image is not None else None

    def kept_iteration(self) -> int | None:
        """The iteration whose image is kept (the minimum, or ``lag`` later once reached; one host read)."""
        return int(self.kept_at.item()) if self.best_image is not None else None

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
            "best_image": self.best_image,
            "capture_at": self.capture_at,
            "kept_at": self.kept_at,
            "variance_history": self.variance_history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def move(t: Any) -> Any:
            return None if t is None else t.to(self.device)

        self.buffer, self.sum, self.sum_sq = move(state["buffer"]), move(state["sum"]), move(state["sum_sq"])
        self.mean, self.var = move(state["mean"]), move(state["var"])
        self.count = int(state["count"])
        self.best_var, self.best_iteration = move(state["best_var"]), move(state["best_iteration"])
        self.best_image = move(state["best_image"])
        # checkpoints from before the lag kept the image at the minimum
        self.capture_at = move(state.get("capture_at", torch.tensor(-1)))
        self.kept_at = move(state.get("kept_at", state["best_iteration"]))
        self.variance_history = list(state["variance_history"])


def make_stopper(config: FitConfig, device: torch.device) -> VarianceStopper | None:
    if config.stop == "fixed":
        return None
    return VarianceStopper(
        config.stop_variant,
        config.stop_window,
        config.stop_patience,
        config.stop_alpha,
        device,
        check_every=config.log_every,
        lag=ema_lag(config),
    )


def ema_lag(config: FitConfig) -> int:
    """How far the EMA image trails the outputs: the mean age of its weights, ema / (1 - ema) (99 at 0.99)."""
    return 0 if config.ema is None else round(config.ema / (1 - config.ema))
