"""Frozen configuration: the network, the task and the fit, with named presets from the paper's notebooks."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, TypeVar

from .checks import finite_number, is_number, is_whole, whole_number
from .errors import DipError, joined
from .tasks import TASKS as TASK_SPECS
from .tasks import names, needing, spec

ChoiceT = TypeVar("ChoiceT", bound="Choice")


class Choice(str, Enum):
    """A string option with a fixed set of values: typer lists them in --help, and it prints as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(m.value) for m in cls)

    @classmethod
    def named(cls: type[ChoiceT], value: object) -> ChoiceT | None:
        """The member ``value`` names (a member or its string), None where it names none: for a rule read before
        the config validates the value (which then refuses an unknown one in one line)."""
        try:
            return cls(value)
        except (ValueError, TypeError):
            return None


# The tasks are the registry's (tasks.TASKS): a new task is its TaskSpec, not a member here too. mypy cannot read an
# Enum built from a registry, so it sees a Choice; the code names tasks by their registry keys ("inpaint").
if TYPE_CHECKING:
    Task = Choice
else:
    Task = Choice("Task", [(name.replace("-", "_"), name) for name in TASK_SPECS], module=__name__)


class Structure(Choice):
    paper = "paper"
    seed = "seed"


class Generator(Choice):
    """The network that maps the fixed input to the image: the paper's hourglass with skips, a decoder from a
    small input (ConvDecoder, Darestani & Heckel 2021; Deep Decoder, Heckel & Hand 2019), or the Deep Random
    Projector (Li et al. 2023): the hourglass with its convolutions frozen at their random initialisation, whose
    input and BatchNorm weights are fitted instead (``drp.py``)."""

    skip = "skip"
    convdecoder = "convdecoder"
    deepdecoder = "deepdecoder"
    drp = "drp"


DECODERS: frozenset[str] = frozenset({Generator.convdecoder, Generator.deepdecoder})  # grow a small input


class Upsample(Choice):
    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"


class Downsample(Choice):
    """How a down block halves the size: a stride-2 conv, or a stride-1 conv followed by a pooling or a fixed
    Lanczos2 filter (the original's ``downsample_mode``)."""

    stride = "stride"
    avg = "avg"
    max = "max"
    lanczos2 = "lanczos2"


class BnInit(Choice):
    """BatchNorm's scale at the start: ones (PyTorch since 1.2) or uniform in (0, 1), as PyTorch drew it before 1.2
    (the 0.2/0.3 of the paper's published outputs)."""

    ones = "ones"
    uniform = "uniform"


class Padding(Choice):
    reflection = "reflection"
    zeros = "zeros"


class InputKind(Choice):
    """The network's fixed input (``network.INPUTS`` makes each): noise drawn from the seed (the paper's), a
    2-channel meshgrid, or the task's guide image (flash-no-flash: the flash photo)."""

    noise = "noise"
    meshgrid = "meshgrid"
    image = "image"

    @property
    def drawn(self) -> bool:
        """Drawn from the seed: what the decoders grow, coarse to fine upsamples and ``--noise seed`` rebuilds."""
        return self is InputKind.noise

    @property
    def guided(self) -> bool:
        """The task's guide image: it has the image's channels, the problem and checkpoint hold it, and only a task
        that needs a guide takes it."""
        return self is InputKind.image

    @property
    def channels(self) -> int | None:
        """The channels the input has by its nature (a meshgrid: y and x), None where --input-depth chooses."""
        return 2 if self is InputKind.meshgrid else None


class FinalImage(Choice):
    """What a fit returns: ``auto`` is the auto-stop image, else the EMA, else the network on its fixed input;
    ``perturbed`` is the network on the last perturbed input, which is what several notebooks' last cell shows
    (they keep the perturbed input in a global), chosen by --paper-exact."""

    auto = "auto"
    perturbed = "perturbed"


class StopRule(Choice):
    """When a fit ends: its fixed count, the variance of its outputs (auto) or the error on held-out observed
    pixels (holdout); ``stopping.STOPPERS`` maps the latter two to their rules."""

    fixed = "fixed"
    auto = "auto"
    holdout = "holdout"


class StopVariant(Choice):
    wmv = "wmv"
    emv = "emv"


class Loss(Choice):
    """The data fidelity, one per noise model: mse (Gaussian, the paper's), l1 (impulse), poisson (photon counts);
    rmse is mse's root (the same minimum; the Deep Random Projector's data term, beside its total variation)."""

    mse = "mse"
    l1 = "l1"
    poisson = "poisson"
    rmse = "rmse"  # the root of mse: the Deep Random Projector's data term


class LrSchedule(Choice):
    """The learning rate over a fit: constant (the paper's), warmup (linear over --lr-warmup iterations, then
    constant) or cosine (that warm-up, then a cosine decay to a tenth of --lr at --iterations)."""

    constant = "constant"
    warmup = "warmup"
    cosine = "cosine"


class Automatic(Choice):
    """A choice whose ``auto`` member ``acceleration.choose`` resolves for the device (and the fit) to a named one."""

    @property
    def is_auto(self) -> bool:
        return self.value == "auto"


class Backend(Automatic):
    auto = "auto"
    eager = "eager"
    inductor = "inductor"

    @property
    def compiled(self) -> bool:
        """torch.compile builds the step (inductor); eager runs the modules as they are."""
        return self is Backend.inductor


class Precision(Automatic):
    """The network's float type in the step; loss, optimizer state, EMA and PSNR stay fp32 whatever it is."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"

    @property
    def reduced(self) -> bool:
        """Autocast runs the network in 16 bits (2 bytes an activation), and a NaN guard watches the step."""
        return self in (Precision.bf16, Precision.fp16)

    @property
    def scaled(self) -> bool:
        """fp16's narrow range needs a grad scaler (one per fit, so such fits do not pack), hence CUDA."""
        return self is Precision.fp16


TASKS: tuple[str, ...] = Task.values()
MAX_DEPTH = 10
MAX_CHANNELS = 4096


class ConfigError(DipError):
    """A setting outside its valid range (a ValueError subclass, shown by the CLI as one line)."""


PANELS: tuple[str, ...] = ("problem", "network", "fitting", "stopping", "outputs", "speed")  # of dipc fit --help


def option(
    default: Any = dataclasses.MISSING,
    *,
    flag: str,
    help: str = "",
    panel: str = "",
    resume: bool = False,
    cli_default: Any = None,
    machine: bool = False,
    job: bool = False,
    argument: bool = False,
    names: tuple[str, ...] = (),
    kind: Any = None,
    metavar: Optional[str] = None,
    show_default: bool = True,
    role: str = "",
    added: bool = False,
    batch_owned: bool | str = False,
    api: bool = False,
    source: str = "",
    negatable: bool = False,
    **kwargs: Any,
) -> Any:
    """A field with what the command line needs to offer it, so that a new ``dipc fit`` option is this one
    declaration, on the field where its value lives (``FitConfig``, ``NetConfig``, the job's ``FitJob`` and
    ``NetShape``, ``ExportOptions``): ``cli/options.py`` builds the option, and the map to the field, from it; the
    manifest's checks, ``restore_image``'s keywords and the page's job read it too.

    ``flag``: the option (a field whose flag does not start with ``--`` has none: the name only labels its errors),
    or with ``argument`` the name of a positional argument (TASK); ``names``: every spelling where there are more
    (``-o``, ``--output``); the option's help and --help panel (one of ``PANELS``); ``kind``: what the command line
    parses where it is not the field's type (a Task for a str field, text for an output path, so that the check
    sees a trailing separator); ``metavar`` and ``show_default`` as typer takes them.

    Settings (``FitConfig``, ``NetConfig``): ``resume``, whether a resumed fit may change it; ``cli_default``, the
    option's default where the command line's differs from the library's (``auto`` picks the device; an option not
    given is otherwise the preset's value); ``machine``: the setting says where the fit runs, not what it computes,
    so that its command-line default applies on --resume too (a resumed fit keeps the checkpoint's other settings,
    its precision and backend among them, unless they are given); ``job``: the flag sets the ``FitJob`` field of
    the same name, which chooses the starting point (--preset, --paper-exact) instead of overriding a setting. The help may name
    ``{kernels}``, ``{noise}``, ``{presets}`` and ``{fast_presets}``: the CLI fills in their lists.

    Job fields (``FitJob``; their option's default is the field's): ``role``, ``problem`` (what is fitted: the
    checkpoint holds it, so --resume refuses it; in the fingerprint; a ``restore_image`` keyword) or ``kept`` (where
    the results go and how the run reports: a resumed job keeps it; not in the fingerprint); ``added``: a field added
    since the first fingerprints, which enters one only when given, so that a batch rerun still recognises the jobs
    it finished before the option existed; ``batch_owned``: ``dipc batch`` writes that file itself, so a job may not
    give it (text: what to use instead); ``api``: a ``restore_image`` keyword although not of the problem;
    ``source``: an input image, and what its errors call it. ``negatable``: a switch that is off by default but that
    a preset or --paper-exact may turn on, so the command line offers --no-FLAG too (a switch on by default always
    has it)."""
    metadata = {
        "flag": flag,
        "help": help,
        "panel": panel,
        "resume": resume,
        "cli_default": cli_default,
        "machine": machine,
        "job": job,
        "argument": argument,
        "names": names or (flag,),
        "kind": kind,
        "metavar": metavar,
        "show_default": show_default,
        "role": role,
        "added": added,
        "batch_owned": batch_owned,
        "api": api,
        "source": source,
        "negatable": negatable,
    }
    return field(default=default, metadata=metadata, **kwargs)


def field_of(cls: type, name: str) -> Optional[dataclasses.Field[Any]]:
    """The dataclass field ``name`` of ``cls`` (None: it has none): where its option metadata lives."""
    return next((f for f in dataclasses.fields(cls) if f.name == name), None)


def flag_of(cls: type, name: str) -> str:
    field = field_of(cls, name)
    if field is None:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    return str(field.metadata.get("flag", name))


def flagged(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a config class that a ``dipc fit`` option sets, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("flag", "").startswith("--")]


def command_line_defaults(cls: type, resuming: bool = False) -> dict[str, Any]:
    """The fields whose ``dipc fit`` default differs from the library's (``auto`` device, backend, precision): what
    the Python API applies too, so that a call and the command fit alike. ``resuming``: only those of the machine
    (the device), since a resumed fit keeps its checkpoint's precision and backend unless they are given."""
    return {
        f.name: f.metadata["cli_default"]
        for f in flagged(cls)
        if f.metadata.get("cli_default") is not None and (f.metadata.get("machine") or not resuming)
    }


def choice_fields(obj: Any) -> list[tuple[str, type[Choice]]]:
    """(name, Enum) of every field whose default is a ``Choice``: the Enum is read from the default, not restated."""
    return [(f.name, type(f.default)) for f in dataclasses.fields(obj) if isinstance(f.default, Choice)]


def _coerce_choices(obj: Any) -> None:
    """Turns the strings given for Choice fields into their members; an unknown value is a one-line ConfigError."""
    for name, kind in choice_fields(obj):
        value = getattr(obj, name)
        try:
            object.__setattr__(obj, name, kind(value))
        except ValueError:
            raise ConfigError(
                f"{flag_of(type(obj), name)} must be one of {', '.join(kind.values())}, got {value!r}"
            ) from None


def _finite(
    obj: Any,
    name: str,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    """A float setting of ``obj`` (None where ``allow_none``): ``checks.finite_number`` under its flag."""
    value = getattr(obj, name)
    if not (value is None and allow_none):
        finite_number(
            flag_of(type(obj), name), value, low, high, low_open=low_open, high_open=high_open, error=ConfigError
        )


def _count(obj: Any, name: str, low: int = 1, high: int | None = None) -> None:
    whole_number(flag_of(type(obj), name), getattr(obj, name), low, high, error=ConfigError)


# What a field of a plain type must hold, in the words of its one-line error (int is a number; bool is not)
_PLAIN_TYPES: dict[type, tuple[Callable[[object], bool], str]] = {
    bool: (lambda value: isinstance(value, bool), "True or False"),
    int: (is_whole, "a whole number"),
    float: (is_number, "a number"),
    str: (lambda value: isinstance(value, str), "text (a str)"),
    Path: (lambda value: isinstance(value, (str, os.PathLike)), "a file path (str or Path)"),
}


@functools.cache
def _plain_fields(cls: type) -> dict[str, tuple[type, bool]]:
    """The fields of ``cls`` annotated with one of ``_PLAIN_TYPES`` (or Optional of one): name -> (type, optional)."""
    found = {}
    for name, hint in typing.get_type_hints(cls).items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = typing.get_args(hint) if union else (hint,)
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in _PLAIN_TYPES:
            found[name] = (kinds[0], type(None) in args)
    return found


def label(cls: type, name: str) -> str:
    """How a message names a field: its flag, else ``--name`` (a ``FitJob`` field is its option of that name)."""
    field = field_of(cls, name)
    flag = None if field is None else field.metadata.get("flag")
    return flag or f"--{name.replace('_', '-')}"


def shown(value: Any) -> str:
    """A value as a one-line message shows it: its repr, or its type where the repr is long or spans lines."""
    text = repr(value)
    return text if len(text) <= 60 and "\n" not in text else f"a {type(value).__name__}"


def check_types(obj: Any) -> None:
    """Every field of a plain type (bool, int, float, str, a path) holds one, from the field's annotation: the one
    check of types for the configs and the fit job, so that a Python caller's ``sigma="25"``, ``device=5`` or
    ``fast="no"`` is a one-line ConfigError naming the option instead of a TypeError later (or a string taken as
    true). Ranges stay with each field's own check."""
    cls: type = type(obj)
    for name, (kind, optional) in _plain_fields(cls).items():
        value = getattr(obj, name)
        if value is None and optional:
            continue
        holds, words = _PLAIN_TYPES[kind]
        if not holds(value):
            raise ConfigError(f"{label(cls, name)} must be {words}, got {shown(value)}")


def check_depth(depth: int) -> None:
    if not is_whole(depth, 1, MAX_DEPTH):
        raise ConfigError(f"--depth (levels of the hourglass) must be between 1 and {MAX_DEPTH}, got {depth!r}")


@dataclass(frozen=True)
class NetConfig:
    """The hourglass. Lists run from the finest level (0) to the coarsest; a skip of 0 drops that skip. The per-level
    options (upsample, downsample, kernel_down, kernel_up) hold one value for every level or one per level."""

    generator: Generator = option(
        Generator.skip,
        flag="--generator",
        panel="network",
        help="skip (the paper's hourglass), convdecoder or deepdecoder (decoders from a small noise input), drp "
        "(Deep Random Projector: the task's one-level net with frozen random weights; its input is fitted)",
    )
    structure: Structure = option(  # of the skip generator
        Structure.paper, flag="--structure", panel="network", help="network structure (preset paper)"
    )
    input_depth: int = option(32, flag="--input-depth", panel="network", help="channels of the noise input (preset 32)")
    output_channels: int = option(3, flag="output channels")
    channels_down: tuple[int, ...] = option(
        (128, 128, 128, 128, 128),
        flag="--channels-down",
        panel="network",
        help="channels of the down blocks, per level",
    )
    channels_up: tuple[int, ...] = option(
        (128, 128, 128, 128, 128), flag="--channels-up", panel="network", help="channels of the up blocks, per level"
    )
    channels_skip: tuple[int, ...] = option(
        (4, 4, 4, 4, 4), flag="--skip-channels", panel="network", help="skip channels per level (0 = no skip)"
    )
    kernel_down: tuple[int, ...] = option(
        (3,), flag="--kernel-down", panel="network", help="kernel size of the down convs (odd), per level"
    )
    kernel_up: tuple[int, ...] = option(
        (3,), flag="--kernel-up", panel="network", help="kernel size of the up convs (odd), per level"
    )
    kernel_skip: int = option(
        1, flag="--kernel-skip", panel="network", help="kernel size of the skip convs (odd; preset 1)"
    )
    upsample: tuple[Upsample, ...] = option(
        (Upsample.bilinear,),
        flag="--upsample",
        panel="network",
        help=f"upsampling: {'|'.join(Upsample.values())}, one or per level",
    )
    downsample: tuple[Downsample, ...] = option(
        (Downsample.stride,),
        flag="--downsample",
        panel="network",
        help=f"downsampling: {'|'.join(Downsample.values())}, one or per level",
    )
    padding: Padding = option(
        Padding.reflection,
        flag="--padding",
        panel="network",
        help="how the convolutions pad the borders: reflection (the paper's) or zeros",
    )
    bn_init: BnInit = option(
        BnInit.ones,
        flag="--bn-init",
        panel="network",
        help="BatchNorm's starting scale: ones (PyTorch >= 1.2) or uniform in (0, 1) (PyTorch < 1.2: the paper's 2017 "
        "framework; --paper-exact's)",
    )
    align_corners: bool = option(
        False,
        flag="--align-corners",
        panel="network",
        negatable=True,
        help="bilinear/bicubic upsampling with align_corners=True, as PyTorch < 0.4 did (the paper's 2017 framework; "
        "--paper-exact's)",
    )
    need_1x1_up: bool = option(True, flag="--1x1-up", panel="network", help="the 1x1 conv at the end of each up block")
    input_kind: InputKind = option(
        InputKind.noise,
        flag="--input",
        panel="network",
        help="the fixed input: noise, a 2-channel meshgrid, or the flash image",
    )
    input_scale: float = option(0.1, flag="input_scale")  # the paper's noise is U[0, 1) * 1/10

    def __post_init__(self) -> None:
        check_types(self)
        _coerce_choices(self)
        for name in ("channels_down", "channels_up", "channels_skip"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.channels_down)
        check_depth(n)
        if len(self.channels_up) != n or len(self.channels_skip) != n:
            raise ConfigError(
                f"--channels-down, --channels-up and --skip-channels need one entry per level, got "
                f"{len(self.channels_down)}, {len(self.channels_up)} and {len(self.channels_skip)}"
            )
        for c in self.channels_down + self.channels_up:
            if not is_whole(c, 1, MAX_CHANNELS):
                raise ConfigError(f"--channels must be whole numbers between 1 and {MAX_CHANNELS}, got {c!r}")
        for c in self.channels_skip:
            if not is_whole(c, 0, MAX_CHANNELS):
                raise ConfigError(f"--skip-channels must be whole numbers between 0 and {MAX_CHANNELS}, got {c!r}")
        _count(self, "input_depth", 1, MAX_CHANNELS)
        if self.output_channels not in (1, 3):
            raise ConfigError(f"output channels must be 1 or 3, got {self.output_channels!r}")
        _per_level(self, "upsample", Upsample)
        _per_level(self, "downsample", Downsample)
        for name in ("kernel_down", "kernel_up"):
            _per_level(self, name, int)
            for k in getattr(self, name):
                _kernel(flag_of(NetConfig, name), k)
        _kernel("--kernel-skip", self.kernel_skip)
        _finite(self, "input_scale", 0, low_open=True)
        if self.align_corners and all(u == Upsample.nearest for u in self.upsample):
            raise ConfigError(
                "--align-corners changes bilinear and bicubic upsampling; this network upsamples by nearest"
            )
        if self.generator in DECODERS and not self.input_kind.drawn:
            raise ConfigError(
                f"the {self.generator} generator starts from a small noise input, not a {self.input_kind}"
            )
        if self.trains_input and self.input_kind.guided:
            raise ConfigError(
                f"the {self.generator} generator fits its input, which starts as noise or a meshgrid, not the "
                f"flash image (--input image)"
            )
        channels = self.input_kind.channels
        if channels is not None and self.input_depth != channels:
            raise ConfigError(
                f"a {self.input_kind} input has {channels} channels, but --input-depth is {self.input_depth}"
            )

    def at(self, name: str, level: int) -> Any:
        """A per-level option's value at ``level`` (0 = finest)."""
        values = getattr(self, name)
        return values[0] if len(values) == 1 else values[level]

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def trains_input(self) -> bool:
        """Whether the fit optimises the network's input (DRP) besides the weights the network leaves trainable."""
        return self.generator == Generator.drp

    @property
    def multiple(self) -> int:
        """Spatial sizes the hourglass takes without cropping must be divisible by this."""
        return 2**self.depth

    @property
    def min_coarsest(self) -> int:
        """The smallest side the coarsest level may have: BatchNorm needs more than one value per channel, and
        reflection padding needs a side larger than the pad of every convolution. Every level's convolutions run at
        the coarsest side or larger (a level's down block halves its input once: the second conv of the deepest one
        runs at the coarsest side; skips and up convs at that side or twice it; a decoder only grows), so the
        largest pad of any level bounds them all."""
        pad = max(*self.kernel_down, *self.kernel_up, self.kernel_skip) // 2
        return max(2, pad + 1)

    def input_shape(self, canvas: tuple[int, int]) -> tuple[int, int, int, int]:
        """The fixed input's shape for a canvas: the canvas for the hourglass, canvas / 2^depth for a decoder (each of
        its levels doubles the size)."""
        if self.generator not in DECODERS:
            return (1, self.input_depth, *canvas)
        return (1, self.input_depth, canvas[0] // self.multiple, canvas[1] // self.multiple)

    @property
    def min_side(self) -> int:
        """The smallest canvas side this network runs at (a smaller image is fitted on a larger canvas)."""
        return self.min_coarsest * self.multiple

    def check_canvas(self, canvas: tuple[int, int]) -> None:
        """Refuses, in one line naming the minimum, a canvas this network cannot run at: built at one, torch fails
        deep in a padding with a traceback (the memory estimate once probed the library preset at 128 px)."""
        h, w = canvas
        if min(h, w) < self.min_side or h % self.multiple or w % self.multiple:
            pad = max(*self.kernel_down, *self.kernel_up, self.kernel_skip) // 2
            raise ConfigError(
                f"this {self.depth}-level network cannot run at {w}x{h}: its sides must be multiples of "
                f"{self.multiple} and at least {self.min_side} px ({self.min_coarsest} px at the coarsest level, "
                f"for BatchNorm and the padding of {2 * pad + 1}x{2 * pad + 1} kernels)"
            )

    def summary(self) -> str:
        """One line for tables: levels, channels, skips and the options that differ from the paper's defaults."""

        def short(values: tuple[Any, ...]) -> str:
            return str(values[0]) if len(set(values)) == 1 else ",".join(str(v) for v in values)

        if self.generator in DECODERS:
            return (
                f"{self.generator}, {self.depth} levels, ch {short(self.channels_up)}, {short(self.upsample)}, "
                f"kernel {short(self.kernel_up)}, input noise x{self.input_depth}"
            )
        parts = [f"{self.depth} levels", f"ch {short(self.channels_down)}"]
        if self.channels_up != self.channels_down:
            parts.append(f"up {short(self.channels_up)}")
        parts.append(f"skip {short(self.channels_skip)}")
        parts.append(short(self.upsample))
        if self.downsample != (Downsample.stride,):
            parts.append(f"{short(self.downsample)} down")
        if self.kernel_down != (3,) or self.kernel_up != (3,):
            parts.append(f"k {short(self.kernel_down)}/{short(self.kernel_up)}")
        if not self.need_1x1_up:
            parts.append("no 1x1 up")
        if self.bn_init != BnInit.ones:
            parts.append(f"BN init {self.bn_init}")
        if self.align_corners:
            parts.append("align corners")
        parts.append(f"input {self.input_kind} x{self.input_depth}")
        if self.structure != Structure.paper:
            parts.append(f"{self.structure} structure")
        if self.generator == Generator.drp:
            parts.insert(0, "drp (frozen convs)")
        return ", ".join(parts)


def _per_level(obj: NetConfig, name: str, kind: type) -> None:
    """A per-level option becomes a tuple of one value (every level) or one value per level, each of ``kind``."""
    value = getattr(obj, name)
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    flag = flag_of(type(obj), name)
    if len(values) not in (1, obj.depth):
        raise ConfigError(f"{flag} needs one value or one per level ({obj.depth}), got {len(values)}")
    if issubclass(kind, Choice):
        try:
            values = tuple(kind(v) for v in values)
        except ValueError:
            bad = next(v for v in values if v not in kind.values())
            raise ConfigError(f"{flag} must be one of {', '.join(kind.values())}, got {bad!r}") from None
    object.__setattr__(obj, name, values)


def _kernel(flag: str, k: Any) -> None:
    if not is_whole(k, 1, 31) or k % 2 == 0:
        raise ConfigError(f"{flag} must be odd whole numbers between 1 and 31, got {k!r}")


@dataclass(frozen=True)
class FitConfig:
    """Everything that shapes one fit apart from the data. ``resume=True`` fields may change when resuming."""

    task: Task = option(Task("denoise"), flag="TASK")
    net: NetConfig = option(flag="network options", default_factory=NetConfig)
    iterations: int = option(
        3000,
        flag="--iterations",
        panel="fitting",
        resume=True,
        help="total iterations (preset: the paper's count)",
    )
    coarse_share: float = option(
        0.0,
        flag="--coarse-share",
        panel="fitting",
        help="coarse to fine: fit this share of --iterations at half resolution, the rest at full size from the "
        "same weights (0 = off; docs/fast.md)",
    )
    lr: float = option(0.01, flag="--lr", panel="fitting", resume=True, help="Adam learning rate")
    lr_schedule: LrSchedule = option(
        LrSchedule.constant,
        flag="--lr-schedule",
        panel="fitting",
        resume=True,
        help="the rate over the fit: constant (the paper's), warmup (linear over --lr-warmup iterations), cosine "
        "(that warm-up, then a cosine decay to --lr/10 at --iterations)",
    )
    lr_warmup: int = option(
        100,
        flag="--lr-warmup",
        panel="fitting",
        resume=True,
        help="warm-up iterations of --lr-schedule warmup/cosine (100)",
    )
    reg_noise_std: float = option(
        1.0 / 30.0,
        flag="--reg-noise",
        panel="fitting",
        resume=True,
        help="std of the input perturbation per iteration",
    )
    reg_noise_ramp: int = option(
        0,
        flag="--reg-noise-ramp",
        panel="fitting",
        resume=True,
        help="iterations over which the input perturbation grows linearly from 0 to --reg-noise (0 = all of it "
        "from the first; docs/fast.md)",
    )
    ema: float | None = option(0.99, flag="ema")  # the paper's output smoothing (exp_weight); None disables it
    backtrack_db: float | None = option(
        5.0,
        flag="--backtrack",
        panel="fitting",
        help="restore the last good weights when the PSNR to the input drops by more than DB dB (0 = off)",
    )
    backtrack_every: int = option(  # check at 0-based iterations divisible by this
        1,
        flag="--backtrack-every",
        panel="fitting",
        help="check for backtracking every N iterations (preset 1; 50 for restoration)",
    )
    backtrack_skip: int = option(0, flag="backtrack_skip")  # never check at multiples of this (0: none), see presets
    factor: int = option(1, flag="--factor", panel="problem", help="super-resolution factor: 2, 4 or 8 (default 4)")
    kernel: str = option(  # the checkpoint holds the kernel itself
        "", flag="--kernel", panel="problem", help="deblur: the known blur, {kernels}"
    )
    loss: Loss = option(
        Loss.mse,
        flag="--loss",
        panel="fitting",
        help="data fidelity: mse (Gaussian noise), l1 (impulse noise), poisson (counts), rmse (mse's root; drp's)",
    )
    tv_weight: float = option(
        0.0,
        flag="--tv-weight",
        panel="fitting",
        help="weight of a total-variation term on the restored image, added to the loss (0 = none; --generator "
        "drp: the paper's per task)",
    )
    peak: float | None = option(
        None,
        flag="--peak",
        panel="fitting",
        help="--loss poisson: photons of a white pixel (default: --noise poisson:PEAK's)",
    )
    seed: int = option(
        0,
        flag="--seed",
        panel="fitting",
        help="seed of the network weights, the input noise and --sigma noise (default 0)",
    )
    stop: StopRule = option(
        StopRule.fixed,
        flag="--stop",
        panel="stopping",
        help="holdout: stop at the minimum of the error on held-out observed pixels (denoise and deblur default; "
        "docs/stopping.md); auto: at the minimum of the outputs' variance; fixed: run --iterations",
    )
    stop_window: int = option(100, flag="--stop-window", panel="stopping", help="auto stopping window W (preset 100)")
    stop_patience: int = option(  # ES-WMV patience P
        300,
        flag="--stop-patience",
        panel="stopping",
        resume=True,
        help="auto stopping: stop after this many iterations without a new variance minimum (preset 300)",
    )
    stop_variant: StopVariant = option(
        StopVariant.wmv,
        flag="--stop-rule",
        panel="stopping",
        help="auto stopping rule: wmv (window of W outputs) or emv (exponential, no buffer)",
    )
    stop_alpha: float = option(0.1, flag="stop_alpha")  # ES-EMV smoothing
    stop_holdout: float = option(
        0.05,
        flag="--stop-holdout",
        panel="stopping",
        help="--stop holdout: the share of the observed pixels held out of the fit and watched (0.05)",
    )
    stop_finish: int = option(
        0,
        flag="--stop-finish",
        panel="stopping",
        resume=True,
        help="--stop holdout: after the stop, fit this many more iterations on all pixels and return that image "
        "(0: the image at the held-out minimum)",
    )
    backend: Backend = option(
        Backend.eager,
        flag="--backend",
        panel="speed",
        resume=True,
        cli_default=Backend.auto,
        help="training step: eager, inductor (torch.compile) or auto",
    )
    precision: Precision = option(
        Precision.fp32,
        flag="--precision",
        panel="speed",
        resume=True,
        cli_default=Precision.auto,
        help="bf16 (CPUs with AVX512-BF16/AMX, CUDA), fp16 (CUDA), fp32 or auto",
    )
    device: str = option(
        "cpu",
        flag="--device",
        panel="speed",
        resume=True,
        cli_default="auto",
        machine=True,
        help="cpu, cuda, cuda:N or auto",
    )
    save_memory: bool = option(
        False,
        flag="--save-memory",
        panel="speed",
        resume=True,
        help="recompute activations in the backward pass instead of keeping them: 0.5-0.8 of the peak memory at "
        "512 px (the most in fp32) for 1.3-1.5x the time per iteration, the same results",
    )
    log_every: int = option(  # host reads of loss/PSNR happen only this often
        10,
        flag="--log-every",
        panel="speed",
        resume=True,
        help="read loss/PSNR from the device every N iterations (default 10)",
    )
    keep_known: bool = option(  # not in the paper
        False,
        flag="--keep-known",
        panel="fitting",
        resume=True,
        help="inpaint: keep the observed pixels in the output, use the network only in the holes",
    )
    final_image: FinalImage = option(FinalImage.auto, flag="final_image")
    crop_to: int = option(1, flag="crop_to")  # centre-crop the image to a multiple of this (the notebooks' crops)
    paper_exact: bool = option(
        False,
        flag="--paper-exact",
        panel="problem",
        job=True,
        help="run the notebook's choices where dip-compile differs (see the README)",
    )
    fast: bool = option(
        False,
        flag="--fast",
        panel="speed",
        job=True,
        help="the task's preset made cheaper as a study chose (a narrower network, and fewer iterations where the "
        "count is fixed; for x4 super-resolution the Deep Random Projector for an eighth of the iterations): a "
        "fraction of the time for nearly the same image; only on the presets it was measured on ({fast_presets}); "
        "docs/fast.md has the study and its numbers",
    )
    preset: str = option(  # the named preset the settings started from ("" = none)
        "",
        flag="--preset",
        panel="problem",
        job=True,
        help="start from this preset ({presets}; dipc presets lists them); default: the task's",
    )

    def __post_init__(self) -> None:
        check_types(self)
        _coerce_choices(self)
        if not isinstance(self.net, NetConfig):
            raise ConfigError("net must be a NetConfig")
        _count(self, "iterations", 1, 10**9)
        _finite(self, "coarse_share", 0, 1, high_open=True)
        _finite(self, "lr", 0, 10, low_open=True)
        _count(self, "lr_warmup", 0, 10**9)
        _count(self, "reg_noise_ramp", 0, 10**9)
        _finite(self, "reg_noise_std", 0, 100)
        _finite(self, "ema", 0, 1, high_open=True, allow_none=True)
        _finite(self, "backtrack_db", 0, allow_none=True)
        if self.backtrack_db == 0:  # --backtrack 0 turns it off
            object.__setattr__(self, "backtrack_db", None)
        _count(self, "seed", 0, 2**63 - 1)
        task = spec(self.task)
        if task.factors:
            if self.factor not in task.factors:
                raise ConfigError(f"--factor must be {joined(task.factors, 'or')}, got {self.factor!r}")
        elif self.factor != 1:
            raise ConfigError(f"--factor only applies to {joined(names(lambda s: s.scales))}")
        _count(self, "stop_window", 1, 10**6)
        _count(self, "stop_patience", 1, 10**9)
        _count(self, "log_every", 1, 10**9)
        _finite(self, "stop_alpha", 0, 1, low_open=True)
        _finite(self, "stop_holdout", 0, 0.5, low_open=True)
        _count(self, "stop_finish", 0, 10**9)
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
        _finite(self, "peak", 0, 1e6, low_open=True, allow_none=True)
        _finite(self, "tv_weight", 0, 100)
        if self.loss == Loss.poisson and self.peak is None:
            raise ConfigError(
                "--loss poisson needs --peak (the photon count of a white pixel), or --noise poisson:PEAK"
            )
        if self.loss == Loss.poisson and task.no_poisson:
            raise ConfigError(f"--loss poisson does not fit {self.task}: {task.no_poisson}; use mse or l1")
        if self.peak is not None and self.loss != Loss.poisson:  # the other losses have no photon count to use
            raise ConfigError("--peak only applies to --loss poisson")
        if self.kernel and not task.needs("kernel"):
            raise ConfigError(f"--kernel only applies to {needing('kernel')}")
        if self.keep_known and not task.needs("mask"):
            raise ConfigError(f"--keep-known only applies to {needing('mask')}")
        _count(self, "backtrack_every", 1, 10**9)
        _count(self, "backtrack_skip", 0, 10**9)
        _count(self, "crop_to", 1, 4096)
        if task.needs("guide") and not self.net.input_kind.guided:
            raise ConfigError(f"{self.task} fits the network on the flash image: --input must be image")
        if self.net.input_kind.guided and not task.needs("guide"):
            raise ConfigError(f"--input image takes the flash image of {needing('guide')}, not a {self.task} input")

    def replace(self, **changes: Any) -> FitConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (Enums become strings), so checkpoints load with ``weights_only`` and JSON is plain."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        data = dict(data)
        net = dict(data.pop("net"))
        for key in (
            "channels_down",
            "channels_up",
            "channels_skip",
            "upsample",
            "downsample",
            "kernel_down",
            "kernel_up",
        ):
            if key in net:  # checkpoints from before per-level options held one value
                net[key] = tuple(net[key]) if isinstance(net[key], (list, tuple)) else (net[key],)
        known = {f.name for f in dataclasses.fields(cls)}
        if data.get("backend") == "script":  # checkpoints from before the TorchScript step was removed
            data["backend"] = Backend.eager.value
        return cls(net=NetConfig(**net), **{k: v for k, v in data.items() if k in known})

    @staticmethod
    def resumable() -> frozenset[str]:
        """The settings a resumed fit may change; the others define the problem, the network or saved state."""
        return frozenset(f.name for f in dataclasses.fields(FitConfig) if f.metadata.get("resume"))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value
