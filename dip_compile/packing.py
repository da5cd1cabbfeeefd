"""Several fits in one batched step (``dipc batch --pack K``).

Every fit keeps its own weights, Adam state, input, perturbation stream, EMA and stopping rule: only the forward and
backward of the networks are batched. The K networks' weights are stacked into one leading dimension and the network
is run under ``torch.func.vmap`` of ``functional_call``, so convolutions become grouped convolutions and BatchNorm
normalises each sample alone (the jobs never mix). The stack is made from the fits' own parameters, so the backward
pass leaves each fit's gradients on its own parameters and each fit's optimizer steps exactly as it would alone.

Fits are driven as sessions (``fitting.StepRequest``): each round, the pending requests are grouped by ``pack_key``
(same network, canvas, device and precision) and each group is one batched step; a group of one runs the fit's own
step, so a fit packed alone is the fit run alone.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import nullcontext
from typing import Any, TypeVar

import torch
from torch import nn
from torch.func import functional_call, vmap

from .acceleration import DTYPES
from .config import Backend
from .fitting import Fitter, Session, StepRequest
from .steps import AcceleratedStep

T = TypeVar("T")
Reply = tuple[torch.Tensor, torch.Tensor]


def pack_key(fitter: Fitter) -> Hashable:
    """Fits with equal keys can share one batched step."""
    return (
        repr(fitter.config.net),
        fitter.fit_problem.canvas,  # (a coarse-to-fine fit's half-size phase packs with its own kind)
        str(fitter.device),
        fitter.plan.precision,
        fitter.plan.backend,
    )


def packable(fitter: Fitter) -> bool:
    """fp16 needs a grad scaler per fit (its loss scale), and activation checkpointing (--save-memory, for images
    too large to pack anyway) does not run under vmap: such fits run their own step."""
    return not fitter.plan.precision.scaled and not fitter.config.save_memory


class PackedForward:
    """The batched network: ``(stacked weights, stacked inputs) -> stacked outputs``, compiled for inductor plans."""

    def __init__(self, template: nn.Module, backend: Backend) -> None:
        self.template = template
        buffers = dict(template.named_buffers())

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(template, {**params, **buffers}, (x,))

        batched = vmap(one)
        self.forward: Callable[..., torch.Tensor] = (
            torch.compile(batched, dynamic=False) if backend.compiled else batched
        )

    def __call__(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.forward(params, inputs)


class PackedStep:
    """One forward/backward for several fits of one ``pack_key``; caches a batched network per key."""

    def __init__(self) -> None:
        self.forwards: dict[Hashable, PackedForward] = {}

    def __call__(self, requests: Sequence[StepRequest]) -> list[Reply]:
        fitters = [r.fitter for r in requests]
        lead = fitters[0]
        key = pack_key(lead)
        if key not in self.forwards:
            self.forwards[key] = PackedForward(lead.net, lead.plan.backend)
        forward = self.forwards[key]
        names = [name for name, _ in lead.net.named_parameters()]
        own = [dict(f.net.named_parameters()) for f in fitters]
        for f in fitters:  # zeroed in place: a fit's captured CUDA graph (when it ran alone) keeps its gradients
            f.optimizer.zero_grad(set_to_none=False)
        params = {name: torch.stack([p[name] for p in own]) for name in names}
        inputs = torch.stack([r.net_input for r in requests])
        precision = lead.plan.precision
        autocast = torch.autocast(lead.device.type, dtype=DTYPES[precision]) if precision.reduced else nullcontext()
        with autocast:
            outs = forward(params, inputs)
        outs = outs.float()
        losses, replies = [], []
        for f, out in zip(fitters, outs, strict=True):
            out = f.fit_crop(out)
            loss = f.fit_problem.loss(out)
            losses.append(loss)
            replies.append((loss.detach(), out.detach()))
        torch.stack(losses).sum().backward()  # each fit's loss reaches only its own weights
        guarded = []
        for f, (loss, out) in zip(fitters, replies, strict=True):
            step = getattr(f.step, "inner", f.step)  # a CUDA-graph step wraps the accelerated one
            if isinstance(step, AcceleratedStep) and step.guarded:  # bf16: the NaN/inf guard, per fit
                loss, out = step.guard(loss, out, f.optimizer)
            guarded.append((loss, out))
        return guarded


def drive_packed(
    sessions: Iterator[Session[T]], pack: int, stop_starting: Callable[[], bool] = lambda: False
) -> list[T]:
    """Runs sessions with up to ``pack`` at a time, in lockstep, each round batching the requests of equal key.

    Sessions are started as slots free up (so give them sorted by key to keep packs full); ``stop_starting`` stops
    starting new ones (Ctrl-C: the running ones finish by themselves). An error in a batched step is raised inside
    each of its sessions, where a fit alone would raise it. Returns the sessions' values in the order they finish.
    """
    if pack < 1:
        raise ValueError(f"pack must be >= 1, got {pack}")
    step = PackedStep()
    active: dict[int, tuple[Session[T], StepRequest]] = {}
    done: list[T] = []
    counter = 0
    exhausted = False

    def advance(index: int, session: Session[T], send: Callable[[], StepRequest]) -> None:
        try:
            active[index] = (session, send())
        except StopIteration as finished:
            active.pop(index, None)
            done.append(finished.value)

    while True:
        while not exhausted and len(active) < pack and not stop_starting():
            session = next(sessions, None)
            if session is None:
                exhausted = True
                break
            counter += 1
            advance(counter, session, lambda s=session: next(s))  # type: ignore[misc]
        if not active:
            break
        groups: dict[Hashable, list[int]] = {}
        for index, (_, request) in active.items():
            key = pack_key(request.fitter) if packable(request.fitter) else ("alone", index)
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            requests = [active[i][1] for i in members]
            replies: list[Any]
            try:
                replies = [requests[0].alone()] if len(requests) == 1 else step(requests)
            except Exception as exc:  # e.g. out of memory: each session reports it as it would alone
                for i in members:
                    session = active[i][0]
                    advance(i, session, lambda s=session, e=exc: s.throw(e))  # type: ignore[misc]
                continue
            for i, reply in zip(members, replies, strict=True):
                session = active[i][0]
                advance(i, session, lambda s=session, r=reply: s.send(r))  # type: ignore[misc]
    return done
