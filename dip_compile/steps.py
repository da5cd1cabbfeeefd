"""The fitting steps: the eager baseline (``EagerStep``) and the accelerated ones that ``acceleration.Plan`` asks
for (a compiled and/or reduced-precision ``AcceleratedStep``, replayed from a CUDA graph by ``CudaGraphStep``).

Their own module so that ``acceleration`` is only the policy and ``fitting`` imports both without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from .acceleration import DTYPES, Plan
from .config import Precision
from .problem import CenterCrop, Problem


class Step(Protocol):
    """One fitting step (forward, loss, backward), the optimizer step, and the NaN/inf count since the last poll."""

    name: str

    def __call__(
        self, net_input: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...

    def poll(self) -> int: ...


class EagerStep:
    """Forward, loss and backward; the optimizer step runs outside so backtracking can act in between."""

    name = "eager"

    def __init__(self, net: torch.nn.Module, problem: Problem, crop: CenterCrop) -> None:
        self.net, self.problem, self.crop = net, problem, crop

    def __call__(self, net_input: torch.Tensor, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer.zero_grad(set_to_none=True)
        out = self.crop(self.net(net_input))
        loss = self.problem.loss(out)
        loss.backward()
        return loss.detach(), out.detach()

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def poll(self) -> int:
        return 0  # fp32 needs no NaN guard


class LossModule(nn.Module):
    """net -> crop -> operator -> the problem's loss (``Problem.loss``), with autocast over the network only (loss and
    output in fp32)."""

    def __init__(
        self,
        net: nn.Module,
        problem: Problem,
        crop: CenterCrop,
        precision: Precision,
        device_type: str,
        cache_autocast: bool = True,
    ) -> None:
        super().__init__()
        self.net, self.crop = net, crop
        self.operator: Callable[[torch.Tensor], torch.Tensor] = problem.operator
        self.fidelity, self.regularizer = problem.fidelity, problem.regularizer
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
        loss = self.fidelity(self.operator(out), self.observation)
        return (loss if self.regularizer is None else loss + self.regularizer(out)), out


class AcceleratedStep:
    """Runs a (possibly compiled) ``LossModule``; with reduced precision it also guards against NaN/inf."""

    def __init__(self, plan: Plan, net: nn.Module, problem: Problem, crop: CenterCrop, device: torch.device) -> None:
        self.plan = plan
        self.name = str(plan.backend)
        self.device = device
        self.module = LossModule(net, problem, crop, plan.precision, device.type, cache_autocast=not plan.cuda_graphs)
        self.forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = self._build()
        self.scaler = torch.amp.GradScaler(device.type) if plan.precision.scaled else None
        self.guarded = plan.precision.reduced
        self.nonfinite = torch.zeros((), device=device)  # counts guarded iterations since the last poll
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.found: torch.Tensor | None = None

    def _build(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        if self.plan.backend.compiled:
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
            loss, out = self.guard(loss, out, optimizer)
        return loss, out

    def guard(
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
            loss, out = inner.guard(loss, out, optimizer)
        return loss, out

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self.inner.optimizer_step(optimizer)

    def poll(self) -> int:
        return self.inner.poll()


def build_step(plan: Plan, net: nn.Module, problem: Problem, crop: CenterCrop, device: torch.device) -> Step:
    """The step object for a plan; the plain eager fp32 plan gets exactly the baseline ``EagerStep``."""
    if not (plan.backend.compiled or plan.precision.reduced or plan.channels_last or plan.cuda_graphs):
        return EagerStep(net, problem, crop)
    step = AcceleratedStep(plan, net, problem, crop, device)
    if plan.cuda_graphs and not plan.backend.compiled:  # inductor's reduce-overhead mode graphs by itself
        return CudaGraphStep(step)
    return step
