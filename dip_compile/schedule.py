"""The learning rate over a fit: the paper's constant rate, or a warm-up and a cosine decay.

The rate is a pure function of the iteration, so a resumed fit continues on exactly the rate an uninterrupted fit
would have used, and nothing about it needs saving.
"""

from __future__ import annotations

import math

from .config import FitConfig, LrSchedule

# the cosine schedule ends at this fraction of --lr at the fit's last iteration (--iterations)
COSINE_FLOOR = 0.1


def learning_rate(config: FitConfig, iteration: int) -> float:
    """The rate of the optimizer step that completes iteration ``iteration`` (0-based)."""
    lr, warmup = config.lr, config.lr_warmup
    if config.lr_schedule == LrSchedule.constant:
        return lr
    if iteration < warmup:  # linear from lr / warmup up to lr
        return lr * (iteration + 1) / warmup
    if config.lr_schedule == LrSchedule.warmup:
        return lr
    span = max(config.iterations - warmup, 1)
    progress = min((iteration - warmup) / span, 1.0)
    return lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))
