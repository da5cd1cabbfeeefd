"""The task registry: one ``TaskSpec`` per task, read by the configuration, the problem, the checkpoint, the memory
estimate, tiling, the fit job and the batch manifest instead of comparing the task's name (a test keeps it so).

A new task is: its ``TaskSpec`` here (``config.Task``, the CLI's TASK choices, is read from ``TASKS``) and its default
preset in ``presets.PRESETS``; a new kind of operator adds its factory to ``degradations.OPERATORS``. What a spec does not say
stays code keyed by its fields: ``--from-reference`` blurs for a task that needs a kernel and downsamples (PIL
Lanczos, as the paper) for one that scales, and a scaling task's corrupted view is the bicubic upscale.

Torch-free on purpose: ``config`` validates with it and ``dipc --help`` must start without torch. The operator is
named, not imported: ``degradations.OPERATORS`` maps the name to its factory (the torch side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import DipError, joined

INPUTS = ("mask", "kernel", "guide")  # the inputs besides IMAGE a task may need (and only then accept)


class TaskError(DipError):
    """A task the registry does not know, or a registry entry that cannot work."""


MAX_ITERATIONS_SHARE = 2.0  # a Fast record's iterations share: a higher cap, never an open-ended fit


@dataclass(frozen=True)
class Fast:
    """What ``--fast`` changes in a task's preset, chosen by the study in benchmarks/fast_study.py (docs/fast.md):
    the convolutions' channels (down and up; the skip channels stay) and the iterations, as shares of the preset's.
    Auto-stop, EMA and backtracking stay as the preset has them; an iteration share caps where auto-stop runs, and
    may exceed 1 there (a narrow net fits texture more slowly, so at full size the preset's cap ends it early).
    ``generator="drp"``: the task's Deep Random Projector settings (``drp.projected``: its own network, learning
    rate and loss) replace the preset's network, and the share applies to the preset's count."""

    width: float = 1.0  # the preset's channels per level times this (at least 1)
    iterations: float = 1.0  # the preset's iterations times this (at least 1; at most MAX_ITERATIONS_SHARE)
    generator: str = ""  # "": the preset's network made narrower; "drp": the task's projector instead

    def __post_init__(self) -> None:
        if not (0 < self.width <= 1 and 0 < self.iterations <= MAX_ITERATIONS_SHARE):
            raise TaskError(
                f"a Fast record takes shares in (0, 1] (iterations up to {MAX_ITERATIONS_SHARE}), got width "
                f"{self.width}, iterations {self.iterations}"
            )
        if self.generator not in ("", "drp"):
            raise TaskError(f'a Fast record\'s generator is the preset\'s ("") or "drp", not {self.generator!r}')
        if self.generator and self.width != 1:
            raise TaskError("a Fast record with a generator brings that generator's network: its width stays 1")


@dataclass(frozen=True)
class TaskSpec:
    """What the code needs to know about a task; every field says how it differs from plain denoising."""

    name: str
    operator: str  # the key of its factory in degradations.OPERATORS
    default_preset: str  # the key of presets.BY_NAME a fit of this task starts from
    inputs: frozenset[str] = frozenset()  # of INPUTS: needed, and refused by the other tasks
    factors: tuple[int, ...] = ()  # super-resolution: the restored image is factor times the observation
    tiles: bool = False  # --tile supports it
    from_reference: bool = False  # --from-reference: IMAGE is sharp and the task's operator makes the observation
    clean_image: bool = False  # --noise may corrupt IMAGE itself (it is the clean image)
    observed: bool = False  # the observation is the operator applied to IMAGE (inpaint: unknown pixels zeroed)
    no_poisson: str = ""  # why --loss poisson does not fit it ("": it does)
    fast: Fast | None = None  # what --fast changes (None: the study has not covered the task, so --fast refuses)

    def __post_init__(self) -> None:
        unknown = self.inputs - set(INPUTS)
        if unknown:
            raise TaskError(f"task {self.name}: unknown input(s) {', '.join(sorted(unknown))}; use {', '.join(INPUTS)}")

    def needs(self, name: str) -> bool:
        """Whether the task needs (and so accepts) the input ``name`` (one of INPUTS)."""
        return name in self.inputs

    @property
    def scales(self) -> bool:
        """Whether the restored image is larger than the observation (by ``--factor``)."""
        return bool(self.factors)


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("inpaint", "mask", "kate", inputs=frozenset({"mask"}), observed=True, fast=Fast(0.5, 0.3333)),
        # 64 channels, the cap at 5/3 of f16's 3000: at full size the narrow net reaches the preset's cap (docs/fast.md)
        TaskSpec("denoise", "identity", "f16", tiles=True, clean_image=True, fast=Fast(0.5, 5 / 3)),
        TaskSpec(
            "super-resolve",
            "downsample",
            "sr-x4",
            factors=(2, 4, 8),
            tiles=True,
            from_reference=True,
            no_poisson="its Lanczos downsampler has negative lobes, so the rates it compares with the counts can be "
            "negative",
            fast=Fast(1.0, 0.125, "drp"),  # 250 of sr-x4's 2000 iterations
        ),
        TaskSpec("flash-no-flash", "identity", "flash", inputs=frozenset({"guide"})),
        # denoising's record: with the preset's cap of 8000 the narrow net fell short on a motion blur (docs/fast.md)
        TaskSpec("deblur", "blur", "deblur", inputs=frozenset({"kernel"}), from_reference=True, fast=Fast(0.5, 5 / 3)),
    )
}


def spec(task: str) -> TaskSpec:
    """The registry entry of ``task`` (a name or a ``config.Task`` member)."""
    try:
        return TASKS[str(task)]
    except KeyError:
        raise TaskError(f"unknown task {str(task)!r}; choose one of {', '.join(TASKS)}") from None


def names(where: Callable[[TaskSpec], bool]) -> tuple[str, ...]:
    """The tasks, in registry order, whose entry satisfies ``where``."""
    return tuple(name for name, s in TASKS.items() if where(s))


def needing(name: str) -> str:
    """The tasks that need the input ``name``, as a message lists them (``inpaint``)."""
    return joined(names(lambda s: s.needs(name)))
