"""One ``dipc fit`` job as data: ``FitJob`` (files in, files out, how the run behaves) and ``NetShape`` (the network
options it gives). Each of their options is declared once, on its field (``config.option``): ``dipc fit``'s options
(``cli/options.py``), the batch's checks, ``restore_image``'s keywords and the page's job are read from these
declarations. No torch here, so that ``dipc --help`` reads them cheaply; ``fitjob`` turns a job into a configuration
and a problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .config import (
    DECODERS,
    Choice,
    FitConfig,
    Generator,
    InputKind,
    NetConfig,
    Task,
    check_depth,
    check_types,
    flag_of,
    flagged,
    option,
)
from .errors import DipError

if TYPE_CHECKING:
    from .imageio import ImageSource
else:  # a Path or a torch tensor (imageio's); read by the type check of the fields, which skips it as before
    ImageSource = object

PROBLEM, KEPT = "problem", "kept"  # the roles of FitJob fields (``config.option``)
# The names the first fingerprints gave the network options that NetConfig names otherwise, and the options they
# always held (None when not given): an option added since enters a fingerprint only when given, so that a batch
# rerun still recognises the jobs it finished before the option existed.
FIRST_NAMES = {"channels_skip": "skip_channels", "input_kind": "input"}
FINGERPRINTED_NET = frozenset(
    ("generator", "structure", "depth", "channels", "channels_down", "channels_up", "skip_channels", "upsample")
    + ("downsample", "kernel_down", "kernel_up", "kernel_skip", "need_1x1_up", "input", "input_depth")
)


@dataclass(frozen=True, init=False)
class NetShape:
    """The network options of a job (an option not given is the preset's): ``depth`` and ``channels`` (down and up
    alike), the two that are no ``NetConfig`` field, and the flagged ``NetConfig`` fields given, by their field's
    name (``NetShape(depth=4, channels_skip=0, upsample="nearest")``; ``net.upsample`` reads one, None when not
    given). List options take one value for every level or comma-separated values, one per level
    (``16,32,64,128,128``), as text or as sequences. A new network option is its ``NetConfig`` field."""

    depth: Optional[int] = option(None, flag="--depth", panel="network", help="hourglass levels (preset 5)")
    channels: Any = option(
        None,
        flag="--channels",
        kind=str,
        panel="network",
        help="channels per level, down and up: one value or one per level, comma-separated from the finest level "
        "(16,32,64,128,128)",
    )
    settings: Mapping[str, Any] = field(default_factory=dict)  # NetConfig fields given, by name

    def __init__(self, depth: Optional[int] = None, channels: Any = None, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(NET_SETTINGS))
        if unknown:
            raise TypeError(f"NetShape has no network option {unknown[0]!r}")
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "settings", {k: v for k, v in settings.items() if v is not None})

    def __getattr__(self, name: str) -> Any:
        """A NetConfig option by its field's name: its value given, or None (the preset's)."""
        if name in NET_SETTINGS:
            return self.__dict__.get("settings", {}).get(name)
        raise AttributeError(name)

    @staticmethod
    def names() -> frozenset[str]:
        """Every network option, by the name a job (and ``restore_image``) gives it."""
        return frozenset({f.name for f in flagged(NetShape)} | set(NET_SETTINGS))

    def values(self) -> dict[str, Any]:
        """The options given, by name, depth and channels first."""
        own = {"depth": self.depth, "channels": self.channels}
        return {k: v for k, v in {**own, **self.settings}.items() if v is not None}

    def given(self) -> list[str]:
        """The flags given, as the user typed them."""
        return [flag_of(NetShape if name in ("depth", "channels") else NetConfig, name) for name in self.values()]

    def fingerprinted(self) -> dict[str, Any]:
        """The options as the first fingerprints held them (their names, and None for one of theirs not given)."""
        named = {FIRST_NAMES.get(k, k): v for k, v in self.values().items()}
        return {**{k: None for k in FINGERPRINTED_NET}, **named}

    def apply(self, net: NetConfig) -> NetConfig:
        """The preset's network with these options. The depth is --depth, else the length of a channel list given
        here, else the preset's. A new depth keeps the preset's finest levels (as the library notebook's ``[:depth]``
        does) or repeats its coarsest level's values; every list given here must match it."""
        get = self.settings.get
        given = {
            "channels_down": _levels(_first(get("channels_down"), self.channels), "channels_down", int),
            "channels_up": _levels(_first(get("channels_up"), self.channels), "channels_up", int),
            "channels_skip": _levels(get("channels_skip"), "channels_skip", int),
            "upsample": _levels(get("upsample"), "upsample", str),
            "downsample": _levels(get("downsample"), "downsample", str),
            "kernel_down": _levels(get("kernel_down"), "kernel_down", int),
            "kernel_up": _levels(get("kernel_up"), "kernel_up", int),
        }
        if self.depth is not None:
            check_depth(self.depth)
        lengths = [len(v) for k, v in given.items() if v is not None and len(v) > 1 and k.startswith("channels")]
        depth = self.depth or (lengths[0] if lengths else net.depth)
        changes: dict[str, Any] = {}
        for name, value in given.items():
            if value is not None:
                changes[name] = value * depth if len(value) == 1 and name.startswith("channels") else value
            elif depth != net.depth and (len(getattr(net, name)) > 1 or name.startswith("channels")):
                old = getattr(net, name)  # (the channel lists hold one entry per level: a one-level net's too, DRP's)
                changes[name] = old[:depth] + (old[-1],) * max(0, depth - len(old))
        generator, structure, kind = get("generator"), get("structure"), get("input_kind")
        if generator is not None and generator != net.generator:
            changes["generator"] = generator
            if generator in DECODERS:  # a decoder: its input has its first level's channels, no skips
                coarsest = changes.get("channels_up", net.channels_up)[-1]
                changes.setdefault("kernel_up", (3,) if generator == "convdecoder" else (1,))
                changes["input_depth"] = coarsest
                changes["input_kind"] = "noise"
            elif generator == Generator.drp and net.input_kind.guided:
                changes["input_kind"] = InputKind.noise  # drp fits its input, which cannot be the flash image
        if structure is not None:
            changes["structure"] = structure
            if structure == "seed" and get("upsample") is None:
                changes["upsample"] = ("bicubic",)
        for name, value in self.settings.items():  # the others set their NetConfig field as they are
            if name not in (*given, "generator", "structure", "input_kind"):
                changes[name] = value
        if kind is not None:
            changes["input_kind"] = kind
            named = InputKind.named(kind)
            if named is not None and named.channels is not None and get("input_depth") is None:
                changes["input_depth"] = named.channels  # a meshgrid has two channels
        return dataclasses.replace(net, **changes) if changes else net


NET_SETTINGS = {f.name: f for f in flagged(NetConfig)}  # the network options that are NetConfig fields


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _levels(value: Any, name: str, kind: type) -> Optional[tuple[Any, ...]]:
    """``"16,32,64"``, ``16`` or ``[16, 32, 64]`` as a tuple; a value that does not parse is a one-line error."""
    if value is None:
        return None
    flag = flag_of(NetConfig, name)
    items = (
        [v.strip() for v in value.split(",")]
        if isinstance(value, str)
        else list(value)
        if isinstance(value, (list, tuple))
        else [value]
    )
    if not items or any(v == "" for v in items):
        raise DipError(f"{flag} takes one value or comma-separated values, one per level, got {value!r}")
    if kind is int:
        try:
            return tuple(int(v) for v in items)
        except (TypeError, ValueError):
            raise DipError(
                f"{flag} takes whole numbers (one, or one per level separated by commas), got {value!r}"
            ) from None
    return tuple(str(v) for v in items)


def _held(default: Any = None, *, role: str, added: bool = False) -> Any:
    """A FitJob field that no option of its own sets (``FitConfig``'s ``job`` options do)."""
    return field(default=default, metadata={"role": role, "added": added})


PATH = "<path>"


@dataclass
class FitJob:
    """Files in, files out. ``settings`` holds the ``FitConfig`` fields the user set (by field name); the preset
    gives the rest. With ``resume`` the checkpoint gives the problem and the settings, and only the fields that
    ``FitConfig.resumable()`` names may change. Every field that is a ``dipc fit`` option is declared with it."""

    output: Path = option(  # text on the command line: Path("newdir/") would drop the separator the check refuses
        flag="--output",
        names=("-o", "--output"),
        kind=str,
        metavar=PATH,
        panel="outputs",
        role=KEPT,
        help="restored image (format from the extension, PNG otherwise)",
    )
    task: Optional[str] = option(None, flag="TASK", argument=True, kind=Task, role=PROBLEM, help="the problem")
    # the input images: files (the Python API also passes images it holds: ``imageio.image_source``)
    image: Optional[ImageSource] = option(
        None,
        flag="IMAGE",
        argument=True,
        kind=Path,
        role=PROBLEM,
        source="image",
        help="the corrupted image (or clean one with --sigma / --from-reference)",
    )
    mask: Optional[ImageSource] = option(
        None,
        flag="--mask",
        kind=Path,
        panel="problem",
        role=PROBLEM,
        source="mask",
        help="inpainting mask, same size, white = known pixel",
    )
    holes: Optional[float] = option(
        None,
        flag="--holes",
        panel="problem",
        role=PROBLEM,
        help="inpaint: make a mask dropping this fraction of pixels at random",
    )
    box: Optional[float] = option(
        None,
        flag="--box",
        panel="problem",
        role=PROBLEM,
        help="inpaint: make a mask with a centred hole of this area fraction",
    )
    text: bool = option(False, flag="--text", panel="problem", role=PROBLEM, help="inpaint: make a text-overlay mask")
    from_reference: bool = option(
        False,
        flag="--from-reference",
        panel="problem",
        role=PROBLEM,
        help="super-resolve / deblur: IMAGE is sharp; downsample or blur it for the input, use it as reference",
    )
    sigma: Optional[float] = option(
        None,
        flag="--sigma",
        panel="problem",
        role=PROBLEM,
        help="denoise: add Gaussian noise of this std (0-255 scale) to IMAGE first, and use IMAGE as reference; "
        "deblur --from-reference: the noise added after the blur",
    )
    noise: Optional[str] = option(  # the observation from a clean IMAGE (noise.py)
        None,
        flag="--noise",
        panel="problem",
        role=PROBLEM,
        help="make the observation from a clean IMAGE with {noise}; IMAGE is the reference",
    )
    reference: Optional[ImageSource] = option(
        None,
        flag="--reference",
        kind=Path,
        panel="problem",
        role=PROBLEM,
        source="reference",
        help="clean image: PSNR is logged against it",
    )
    flash: Optional[ImageSource] = option(
        None,
        flag="--flash",
        kind=Path,
        panel="problem",
        role=PROBLEM,
        source="flash image",
        help="flash-no-flash: the flash photo (the network's input), same size as IMAGE",
    )
    preset: Optional[str] = _held(role=PROBLEM)  # a name from ``presets.NAMES`` (None: the task's default)
    paper_exact: bool = _held(False, role=PROBLEM)  # the notebook's choices where this project differs
    fast: bool = _held(False, role=PROBLEM, added=True)  # the preset made cheaper as its task's ``tasks.Fast`` says
    settings: dict[str, Any] = field(default_factory=dict)
    net: NetShape = field(default_factory=NetShape)
    resume: Optional[Path] = option(
        None,
        flag="--resume",
        panel="problem",
        batch_owned="a rerun resumes by itself",
        help="continue the fit saved in this checkpoint (only the options marked so may change)",
    )
    checkpoint: Optional[Path] = option(
        None,
        flag="--checkpoint",
        kind=str,
        metavar=PATH,
        panel="outputs",
        role=KEPT,
        api=True,
        batch_owned="use --checkpoints",
        help="write a checkpoint here at the end (and on Ctrl-C); an existing file needs --force, except the "
        "--resume file itself, which the resumed fit continues",
    )
    checkpoint_every: float = option(
        0.0,
        flag="--checkpoint-every",
        panel="outputs",
        role=KEPT,
        help="with --checkpoint: also write it every N seconds while fitting (0 = at the end)",
    )
    report: Optional[Path] = option(
        None,
        flag="--report",
        kind=str,
        metavar=PATH,
        panel="outputs",
        role=KEPT,
        batch_owned=True,
        help="write a JSON report here",
    )
    compare: Optional[Path] = option(
        None,
        flag="--compare",
        kind=str,
        metavar=PATH,
        panel="outputs",
        role=KEPT,
        batch_owned=True,
        help="write a side-by-side PNG: input | restored [| reference]",
    )
    snapshot_every: int = option(
        0,
        flag="--snapshot-every",
        panel="outputs",
        role=KEPT,
        batch_owned=True,
        help="write OUT-<iteration>.png every N iterations (0 = never)",
    )
    timelapse: Optional[Path] = option(
        None,
        flag="--timelapse",
        kind=str,
        metavar=PATH,
        panel="outputs",
        role=KEPT,
        batch_owned=True,
        help="write the fit's images as an animation (.webp or .gif)",
    )
    timelapse_every: Optional[int] = option(
        None,
        flag="--timelapse-every",
        panel="outputs",
        role=KEPT,
        show_default=False,
        help="--timelapse: one frame every N iterations (default 10)",
    )
    dry_run: bool = option(
        False,
        flag="--dry-run",
        panel="outputs",
        batch_owned=True,
        help="print the estimated peak memory and time per iteration, fit nothing, write nothing",
    )
    force: bool = option(False, flag="--force", panel="outputs", role=KEPT, api=True, help="overwrite existing outputs")
    quiet: bool = option(
        False, flag="--quiet", names=("--quiet", "-q"), panel="outputs", role=KEPT, help="no progress output"
    )
    status_every: float = option(
        30.0,
        flag="--status-every",
        panel="outputs",
        role=KEPT,
        help="seconds between plain progress lines when stderr is not a terminal (logs, CI)",
    )
    report_extra: dict[str, Any] = field(default_factory=dict, metadata={"role": KEPT})  # more keys (dipc batch's)
    tile: Optional[int] = option(
        None,
        flag="--tile",
        panel="speed",
        show_default=False,
        help="denoise / super-resolve of an image too large for one fit: fit SIZE x SIZE tiles one after the "
        "other and blend them (super-resolve: output pixels, a multiple of --factor); Ctrl-C keeps the finished "
        "tiles in OUT.tiles/ and rerunning the same command continues",
    )
    overlap: int = option(
        32, flag="--overlap", panel="speed", help="--tile: pixels neighbouring tiles share, blended with a smooth ramp"
    )

    def __post_init__(self) -> None:
        """Outputs given as text (the CLI passes the user's spelling) become Paths here, after the check that only
        the text allows: ``Path("newdir/")`` drops the separator that says a folder was meant. A value of the wrong
        type (a Python caller's ``sigma="25"``) is a one-line error here."""
        from .imageio import output_path  # (torch: only once a job is made, not for --help)

        check_types(self)
        for name in OUTPUT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, output_path(value))

    @staticmethod
    def names(role: str) -> list[str]:
        """The fields with this role, in declaration order."""
        return [f.name for f in dataclasses.fields(FitJob) if f.metadata.get("role") == role]

    @staticmethod
    def options() -> list[dataclasses.Field[Any]]:
        """The fields that are ``dipc fit`` options or arguments, in declaration order."""
        return [f for f in dataclasses.fields(FitJob) if f.metadata.get("argument") or f.metadata.get("panel")]

    def resumed(self, checkpoint: Path) -> FitJob:
        """This job continued from ``checkpoint``: the same outputs and device; the checkpoint holds the rest."""
        kept = {name: getattr(self, name) for name in FitJob.names(KEPT)}
        device = self.settings.get("device")
        return FitJob(**kept, resume=checkpoint, settings={"device": device} if device else {})


OUTPUT_FIELDS = tuple(f.name for f in FitJob.options() if f.metadata["metavar"] == PATH)  # the files it names to write


def from_options(values: Mapping[str, Any]) -> FitJob:
    """The job of ``dipc fit``'s options by name (a setting's is its config field's name), as the command line
    parsed them or the page's form gives them; an option absent is not given. The settings given go to
    ``FitJob.settings``, the network's to ``NetShape``, every other option to its ``FitJob`` field."""
    job = {f.name: plain(values[f.name]) for f in FitJob.options() if f.name in values}
    net = {f.name: values.get(f.name) for f in flagged(NetShape)}
    settings = {}
    for f in flagged(FitConfig):
        value = values.get(f.name)
        if f.metadata["job"]:
            if f.name in values:
                job[f.name] = value
        elif not _not_given(f, value):
            settings[f.name] = value
    for name, f in NET_SETTINGS.items():
        value = values.get(name)
        net[name] = None if _not_given(f, value) else plain(value)
    return FitJob(**job, settings=settings, net=NetShape(**net))


def _not_given(f: dataclasses.Field[Any], value: Any) -> bool:
    """An option absent, or a one-way switch left off; a switch that can be turned off (on by default, or
    ``negatable``) given False is --no-FLAG, a setting."""
    return value is None or (value is False and f.default is False and not f.metadata["negatable"])


def plain(value: Any) -> Any:
    """A choice as its text, as the job's fields hold it."""
    return value.value if isinstance(value, Choice) else value
