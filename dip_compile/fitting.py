"""The fitting loop: Adam on the hourglass weights, so that operator(net(noise + perturbation)) matches the observation.

The loop keeps every piece of state that shapes the next iteration (weights, Adam moments, the perturbation RNG,
the output EMA, the backtracking copy, the stopping statistics) so that a checkpoint resumes bit-for-bit on CPU.
Per-iteration bookkeeping stays on the fitting device; the host reads values only every ``log_every`` iterations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from . import allocator
from .acceleration import Fallback, choose, fp32_plan
from .coarse import coarse_phase, full_input, to_full
from .config import Choice, FinalImage, FitConfig
from .metrics import psnr
from .network import build_network, make_input, set_save_memory
from .problem import CenterCrop, Problem
from .schedule import learning_rate
from .steps import EagerStep as EagerStep  # (re-exported: its home before steps.py)
from .steps import Step, build_step
from .stopping import make_stopper

RETURNED_EVERY = 5  # log intervals between two PSNRs of the returned image (a forward pass each, with a reference)


@dataclass
class LogRecord:
    iteration: int
    total: int
    loss: float
    psnr_observation: float  # PSNR of operator(output) to the observation (noisy/masked/low-res input)
    psnr_reference: float | None  # PSNR of the current output to the clean reference, when given
    psnr_reference_ema: float | None
    iterations_per_second: float
    capped: bool = False  # ``total`` is a cap: a stopping rule may end the fit sooner (its ETA is at most)


@dataclass
class FitResult:
    image: torch.Tensor  # (1, C, H, W) on the CPU: the restored image the fit returns
    iterations: int
    stop_reason: str  # "completed", "auto-stop", "interrupted"
    image_source: str  # "output" (net on the fixed input), "ema" or "auto-stop best"
    history: dict[str, list[float | None]]  # every list one entry per record (None: not computed there)
    fit_seconds: float
    first_step_seconds: float  # includes compilation for compiled backends
    iterations_per_second: float
    backtracks: int
    stop_info: dict[str, Any] = field(default_factory=dict)
    plan: str = "eager fp32"  # the backend and precision the step ran with (acceleration.Plan.describe)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)  # NaN/inf events that switched to fp32


@dataclass
class StepRequest:
    """What a fit session yields once per iteration: compute this fitter's step on this input and send back
    ``(loss, out)``. ``drive`` runs it on the fitter's own step; a packed driver runs many in one batched step."""

    fitter: Fitter
    net_input: torch.Tensor

    def alone(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step computed by the fit's own (eager, accelerated or compiled) step."""
        return self.fitter.step(self.net_input, self.fitter.optimizer)


T = TypeVar("T")
Session = Generator[StepRequest, tuple[torch.Tensor, torch.Tensor], T]


def drive(session: Session[T], on_step: Callable[[Fitter], None] | None = None) -> T:
    """Runs a fit session alone: every step on its fitter's own (eager, accelerated or compiled) step. An error in
    the step is raised inside the session, where the fit would have raised it (so out-of-memory is reported alike).
    ``on_step`` sees the fitter before each step (a live view's count between log points)."""
    try:
        request = next(session)
        while True:
            if on_step is not None:
                on_step(request.fitter)
            try:
                reply = request.alone()
            except Exception as exc:
                request = session.throw(exc)
                continue
            request = session.send(reply)
    except StopIteration as done:
        return done.value


class ImageKind(Choice):
    """The images a fit can return: the network on the fixed input, the EMA of its outputs, the auto-stop image,
    and the network on the last perturbed input (the notebooks' last cell, under --paper-exact)."""

    output = "output"
    ema = "ema"
    best = "best"
    perturbed = "perturbed"


def returned_kind(
    best: torch.Tensor | None, ema: torch.Tensor | None, final: FinalImage = FinalImage.auto
) -> ImageKind:
    """The one rule for what a fit returns: with ``final`` perturbed, the network on the last perturbed input;
    otherwise the auto-stop image when there is one, else the EMA when the fit keeps one, else the network output."""
    if final == FinalImage.perturbed:
        return ImageKind.perturbed
    if best is not None:
        return ImageKind.best
    return ImageKind.ema if ema is not None else ImageKind.output


def describe_image(kind: ImageKind, known: bool) -> str:
    words = {
        ImageKind.best: "auto-stop best",
        ImageKind.ema: "ema",
        ImageKind.output: "output",
        ImageKind.perturbed: "output on the last perturbed input",
    }[kind]
    return words + (" + known pixels" if known else "")


def paste_known(image: torch.Tensor, mask: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
    """Inpainting with --keep-known: the observed pixels exactly, the network's values only in the holes."""
    known = mask.to(image)
    return image * (1 - known) + observation.to(image) * known


def keeps_known(config: FitConfig, problem: Problem) -> bool:
    """Whether the returned image has the observed pixels pasted in (inpainting with --keep-known)."""
    return config.keep_known and problem.mask is not None


def returned_image(
    kind: ImageKind,
    output: Callable[[], torch.Tensor],
    ema: torch.Tensor | None,
    best: torch.Tensor | None,
    problem: Problem,
    known_pixels: bool,
    perturbed: Callable[[], torch.Tensor | None] = lambda: None,
) -> torch.Tensor:
    """The image of ``kind`` (the network images computed only when they are the one), with the observed pixels
    pasted in when the fit keeps them: what a running fit and a saved one return alike."""
    image = {
        ImageKind.best: lambda: best,
        ImageKind.ema: lambda: ema,
        ImageKind.output: output,
        ImageKind.perturbed: perturbed,
    }[kind]()
    assert image is not None
    if known_pixels:
        assert problem.mask is not None
        return paste_known(image, problem.mask, problem.observation)
    return image


def stop_flag(
    given: Callable[[], bool] | None, notify: Callable[[str], None] | None = None
) -> contextlib.AbstractContextManager[Callable[[], bool]]:
    """``given`` when a driver already owns Ctrl-C (a batch), else this process's Ctrl-C flag (``interrupt_flag``)."""
    return contextlib.nullcontext(given) if given is not None else interrupt_flag(notify)


@contextlib.contextmanager
def interrupt_flag(notify: Callable[[str], None] | None = None) -> Iterator[Callable[[], bool]]:
    """Ctrl-C (or SIGTERM) asks to stop after the current iteration and save; a second one only says that the save
    is under way; a third quits at once (``KeyboardInterrupt``: atomic writes leave no half-written file)."""
    hits = 0
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        nonlocal hits
        hits += 1
        if hits >= 3:
            raise KeyboardInterrupt
        if notify is not None:
            notify(
                "stopping after this iteration and saving a checkpoint (press Ctrl-C twice more to quit without saving)"
                if hits == 1
                else "still stopping and saving; press Ctrl-C once more to quit without saving"
            )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: hits > 0
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Fitter:
    """One DIP fit. ``run`` may be called repeatedly (each call continues towards a new total)."""

    def __init__(self, config: FitConfig, problem: Problem, device: str | torch.device | None = None) -> None:
        self.config = config
        self.device = torch.device(device or config.device)
        self.problem = problem.to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.net = build_network(config.net).to(self.device)
        set_save_memory(self.net, config.save_memory)
        self.net_input = make_input(config.net, *problem.canvas, seed=config.seed, guide=problem.guide).to(self.device)
        self.net_input.requires_grad_(config.net.trains_input)  # DRP: the input is fitted (see ``optimised``)
        self.last_input: torch.Tensor | None = None  # the last perturbed input, kept for FinalImage.perturbed
        self.crop = CenterCrop(problem.canvas, problem.size)
        self.coarse = coarse_phase(config, self.problem, self.device)  # --coarse-share: the half-size phase
        self.net_input = full_input(config, self.coarse, self.net_input, problem.canvas)
        self.fit_problem, self.fit_crop = self.problem, self.crop  # what the step fits now (see _enter_phase)
        self.plan = choose(config, self.device, problem.canvas)
        self.optimizer = torch.optim.Adam(self.optimised(), lr=config.lr, **self.plan.optimizer_options())
        self.fallbacks: list[dict[str, Any]] = []
        self.generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.iteration = 0
        self.ema: torch.Tensor | None = None
        self.backtrack_saved: list[torch.Tensor] | None = None
        self.backtrack_psnr = torch.tensor(float("-inf"), device=self.device)
        self.backtracks = torch.zeros((), dtype=torch.long, device=self.device)
        self.stopper = make_stopper(config, self.problem, self.device)
        if self.stopper is not None:  # --stop holdout fits on all but its held-out pixels
            self.problem = self.stopper.watch(self.problem)
        self.history: dict[str, list[float | None]] = {
            "iteration": [], "seconds": [], "loss": [], "psnr_observation": []
        }  # fmt: skip
        if problem.reference is not None:
            self.history.update(psnr_reference=[], psnr_reference_ema=[])
        self.elapsed = 0.0
        self._enter_phase()

    @property
    def capped(self) -> bool:
        """Whether ``config.iterations`` is a cap that the stopping rule may end the fit before (its ETA: at most)."""
        return self.stopper is not None

    def optimised(self) -> list[torch.Tensor]:
        """What Adam steps and backtracking restores: the network's parameters (a frozen one gets no gradient, so
        Adam leaves it as it is), then the input where the generator fits it (DRP), in the checkpoint's order."""
        params: list[torch.Tensor] = list(self.net.parameters())
        return [*params, self.net_input] if self.net_input.requires_grad else params

    def make_step(self) -> Step:
        return build_step(self.plan, self.net, self.fit_problem, self.fit_crop, self.device)

    def coarse_now(self) -> bool:
        """Whether the next iteration runs at half size (``--coarse-share``)."""
        return self.coarse is not None and self.coarse.active(self.iteration)

    def _enter_phase(self) -> None:
        """The problem, crop and step of the phase the next iteration is in: the coarse phase's, else the fit's."""
        coarse = self.coarse if self.coarse_now() else None
        self.fit_problem = coarse.problem if coarse is not None else self.problem
        self.fit_crop = coarse.crop if coarse is not None else self.crop
        self.step = self.make_step()

    def _start_full_size(self) -> None:
        """The switch from the coarse phase: backtracking's last good PSNR was the half-size observation's."""
        self.backtrack_psnr = torch.full_like(self.backtrack_psnr, float("-inf"))
        self._enter_phase()

    def _check_finite(self) -> None:
        """At a log point (the host syncs there anyway): after NaN/inf in reduced precision, go on in fp32."""
        bad = self.step.poll()
        if bad:
            before = self.plan
            self.plan = fp32_plan(before)
            self.step = self.make_step()
            self.fallbacks.append(
                dataclasses.asdict(Fallback(self.iteration, bad, before.describe(), self.plan.describe()))
            )

    # --- images --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def output(self) -> torch.Tensor:
        """The network's image on the unperturbed input, with train-mode BatchNorm: what an export reproduces."""
        return self.crop(self.net(self.net_input)).float()

    @torch.no_grad()
    def perturbed_output(self) -> torch.Tensor:
        """The network's image on the last perturbed input (the fixed input before the first iteration)."""
        return self.crop(self.net(self.net_input if self.last_input is None else self.last_input)).float()

    def returned_kind(self) -> ImageKind:
        """Which image the fit returns, without computing it (the stopper watches raw outputs but keeps the EMA at
        the minimum when the EMA is on; stop_info says which)."""
        best = self.stopper.best_image if self.stopper is not None else None
        return returned_kind(best, self.ema, self.config.final_image)

    def keeps_known(self) -> bool:
        return keeps_known(self.config, self.problem)

    def image_source(self) -> str:
        """Where the returned image comes from, in words (reports, export metadata)."""
        return describe_image(self.returned_kind(), self.keeps_known())

    def image(self) -> tuple[torch.Tensor, str]:
        """The image this fit returns now, and where it comes from."""
        best = self.stopper.best_image if self.stopper is not None else None
        image = returned_image(
            self.returned_kind(), self.output, self.ema, best, self.problem, self.keeps_known(), self.perturbed_output
        )
        return image, self.image_source()

    # --- one iteration -------------------------------------------------------------------------------------
    def perturbed_input(self) -> torch.Tensor:
        base = self.coarse.net_input if self.coarse is not None and self.coarse_now() else self.net_input
        if self.config.reg_noise_std <= 0:
            return base
        noise = torch.randn(base.shape, generator=self.generator, device=self.device)
        return base + self.perturbation() * noise

    def perturbation(self) -> float:
        """The perturbation's std at this iteration: --reg-noise, grown in linearly over --reg-noise-ramp
        iterations (a net fitted without it is sharp early, and the ramp keeps that head start: docs/fast.md)."""
        cfg = self.config
        ramp = min(1.0, self.iteration / cfg.reg_noise_ramp) if cfg.reg_noise_ramp else 1.0
        return cfg.reg_noise_std * ramp

    def backtracks_now(self) -> bool:
        """Whether this iteration (0-based, before it runs) checks for backtracking: every ``backtrack_every``-th,
        except multiples of ``backtrack_skip`` (the denoising notebook's ``if i % show_every`` under --paper-exact)."""
        cfg, i = self.config, self.iteration
        return (
            cfg.backtrack_db is not None
            and i % cfg.backtrack_every == 0
            and not (cfg.backtrack_skip and i % cfg.backtrack_skip == 0)
        )

    def _backtrack(self, out: torch.Tensor) -> None:
        """The paper's fallback: when PSNR to the observation drops by more than ``backtrack_db`` dB, the weights
        go back to those that produced the last good output. Written with ``torch.where`` so it never syncs."""
        params = [p.detach() for p in self.optimised()]
        if self.backtrack_saved is None:
            self.backtrack_saved = [p.clone() for p in params]
        current = psnr(self.fit_problem.operator(out), self.fit_problem.observation)
        assert self.config.backtrack_db is not None
        bad = (self.backtrack_psnr - current) > self.config.backtrack_db
        for param, saved in zip(params, self.backtrack_saved, strict=True):
            param.copy_(torch.where(bad, saved, param))
            saved.copy_(param)
        self.backtrack_psnr = torch.where(bad, self.backtrack_psnr, current)
        self.backtracks += bad.long()

    def iterate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return drive(self.iteration_session())

    def iteration_session(self) -> Session[tuple[torch.Tensor, torch.Tensor]]:
        """One iteration, whose forward/backward step is computed by whoever drives it (see ``StepRequest``)."""
        coarse = self.coarse_now()  # (the EMA and auto-stop watch only full-size outputs)
        net_input = self.perturbed_input()
        if self.config.final_image == FinalImage.perturbed and not coarse:
            self.last_input = net_input.detach()
        loss, out = yield StepRequest(self, net_input)
        if self.backtracks_now():
            self._backtrack(out)
        self._set_learning_rate()
        self.step.optimizer_step(self.optimizer)
        out = out.float()
        if self.config.ema is not None and not coarse:
            self.ema = out.clone() if self.ema is None else self.ema.lerp_(out, 1.0 - self.config.ema)
        self.iteration += 1
        if self.stopper is not None and not coarse:
            self.stopper.update(out, self.iteration, keep=self.ema)
        if coarse and not self.coarse_now():
            self._start_full_size()
        return loss, out

    def _set_learning_rate(self) -> None:
        """The rate of the next optimizer step (the schedule's, a function of the iteration alone)."""
        rate = learning_rate(self.config, self.iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    # --- the loop ------------------------------------------------------------------------------------------
    def _log(self, loss: torch.Tensor, out: torch.Tensor, total: int, rate: float, seconds: float) -> LogRecord:
        ref, problem = self.problem.reference, self.problem
        if tuple(out.shape[-2:]) != problem.size:  # a half-size output (the last one is logged after the switch)
            assert self.coarse is not None
            problem = self.coarse.problem
        p_obs = psnr(problem.operator(out), problem.observation).item()
        if problem is not self.problem:  # its reference PSNR: upsampled to the full size
            out = to_full(out, self.problem.size)
        p_ref = psnr(out, ref).item() if ref is not None else None
        p_ema = psnr(self.ema, ref).item() if ref is not None and self.ema is not None else p_ref
        record = LogRecord(self.iteration, total, float(loss.item()), p_obs, p_ref, p_ema, rate, capped=self.capped)
        self.history["iteration"].append(self.iteration)
        self.history.setdefault("seconds", []).append(seconds)  # fitting time so far (over resumes too)
        self.history["loss"].append(record.loss)
        self.history["psnr_observation"].append(p_obs)
        if ref is not None and p_ref is not None and p_ema is not None:
            self.history["psnr_reference"].append(p_ref)
            self.history["psnr_reference_ema"].append(p_ema)
            # the image a fit stopped here would return (the network on its fixed input, the EMA, the kept image or
            # the perturbed output, known pixels pasted), every few records and at the end (None between): the
            # step's output above is for the perturbed input, up to 0.5 dB off it, and a study's fixed-count
            # estimates read this one. (A history resumed from an older checkpoint is padded.)
            returned = self.history.setdefault("psnr_returned", [])
            returned.extend([None] * (len(self.history["iteration"]) - 1 - len(returned)))
            now = self.iteration % (RETURNED_EVERY * self.config.log_every) == 0 or self.iteration == total
            returned.append(psnr(self.image()[0], ref).item() if now else None)
        return record

    def run(self, iterations: int | None = None, **options: Any) -> FitResult:
        """Fits until ``iterations`` in total (the config's count by default), an auto-stop, or Ctrl-C; the options
        are ``session``'s."""
        return drive(self.session(iterations, **options))

    def session(
        self,
        iterations: int | None = None,
        *,
        on_log: Callable[[LogRecord], None] | None = None,
        snapshot_every: int = 0,
        on_snapshot: Callable[[int, torch.Tensor], None] | None = None,
        stop_requested: Callable[[], bool] | None = None,
    ) -> Session[FitResult]:
        """``run`` as a session: it yields a ``StepRequest`` per iteration (so a driver can pack many fits).

        ``stop_requested`` replaces the Ctrl-C handling installed here (a caller that must also save after the loop
        installs ``interrupt_flag`` around both)."""
        total = iterations if iterations is not None else self.config.iterations
        if total <= 0:
            raise ValueError(f"iterations must be positive, got {total}")
        self.net.train()
        if self.stopper is not None:
            self.stopper.begin(total)
        start_iteration, reason, first_step = self.iteration, "completed", 0.0
        t_start = time.perf_counter()
        t_window, it_window = t_start, self.iteration
        rate = 0.0
        with stop_flag(stop_requested) as interrupted, contextlib.ExitStack() as memory:
            while self.iteration < total:
                if interrupted():
                    reason = "interrupted"
                    break
                t0 = time.perf_counter()
                loss, out = yield from self.iteration_session()
                if self.iteration == start_iteration + 1:
                    if self.plan.kept_memory and allocator.room_to_keep():  # (the first step's peak measured)
                        memory.enter_context(allocator.freed_memory_kept())
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    first_step = time.perf_counter() - t0
                    t_window, it_window = time.perf_counter(), self.iteration
                if self.iteration % self.config.log_every == 0 or self.iteration == total:
                    now = time.perf_counter()
                    if self.iteration > it_window:
                        rate = (self.iteration - it_window) / max(now - t_window, 1e-9)
                    self._check_finite()
                    record = self._log(loss, out, total, rate, self.elapsed + now - t_start)
                    if on_log is not None:
                        on_log(record)
                if snapshot_every and on_snapshot is not None and self.iteration % snapshot_every == 0:
                    on_snapshot(self.iteration, self.image()[0].cpu())
                if self.stopper is not None and self.stopper.should_stop(self.iteration):
                    reason = "auto-stop"
                    break
        fit_seconds = time.perf_counter() - t_start
        self.elapsed += fit_seconds
        done = self.iteration - start_iteration
        steady = fit_seconds - first_step
        image, source = self.image()
        return FitResult(
            image=image.detach().cpu(),
            iterations=self.iteration,
            stop_reason=reason,
            image_source=source,
            history=self.history,
            fit_seconds=fit_seconds,
            first_step_seconds=first_step,
            iterations_per_second=(done - 1) / steady
            if done > 1 and steady > 0
            else (done / fit_seconds if fit_seconds else 0.0),
            backtracks=int(self.backtracks.item()),
            stop_info={**self.stopper.info(), "kept_image": "ema" if self.config.ema is not None else "output"}
            if self.stopper is not None
            else {},
            plan=self.plan.describe(),
            fallbacks=list(self.fallbacks),
        )

    # --- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that shapes the next iteration, as plain tensors and containers (``weights_only`` loadable)."""
        return {
            "iteration": self.iteration,
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "net_input": self.net_input.detach().cpu(),
            "generator": self.generator.get_state().cpu(),
            "ema": None if self.ema is None else self.ema.cpu(),
            "last_input": None if self.last_input is None else self.last_input.cpu(),
            "backtrack_saved": None if self.backtrack_saved is None else [t.cpu() for t in self.backtrack_saved],
            "backtrack_psnr": self.backtrack_psnr.cpu(),
            "backtracks": self.backtracks.cpu(),
            "stopper": None if self.stopper is None else _to_cpu(self.stopper.state_dict()),
            "history": self.history,
            "elapsed": self.elapsed,
            "coarse_until": 0 if self.coarse is None else self.coarse.until,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        dev = self.device
        self.iteration = int(state["iteration"])
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.net_input.requires_grad:  # a fitted input (DRP): the optimizer holds this tensor; it takes the values
            with torch.no_grad():
                self.net_input.copy_(state["net_input"])
        else:
            self.net_input = state["net_input"].to(dev)
        saved_rng = state["generator"]
        if saved_rng.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved_rng)
        else:  # saved on another device type (CPU and CUDA generators keep different states): a fresh stream
            self.generator.manual_seed(self.config.seed + 1 + self.iteration)
        self.ema = None if state["ema"] is None else state["ema"].to(dev)
        last = state.get("last_input")
        self.last_input = None if last is None else last.to(dev)
        saved = state["backtrack_saved"]
        self.backtrack_saved = None if saved is None else [t.to(dev) for t in saved]
        self.backtrack_psnr = state["backtrack_psnr"].to(dev)
        self.backtracks = state["backtracks"].to(dev)
        if self.stopper is not None and state.get("stopper") is not None:
            self.stopper.load_state_dict(state["stopper"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.elapsed = float(state.get("elapsed", 0.0))
        if self.coarse is not None:  # where the saved fit switches to full size (--iterations may have changed)
            self.coarse.until = int(state.get("coarse_until", self.coarse.until))
        self._set_learning_rate()  # a resumed fit may change the learning rate or its schedule
        self._enter_phase()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
