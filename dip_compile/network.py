"""The hourglass generators of the Deep Image Prior and their fixed input.

Two structures share the building blocks:

* ``paper``: the original "skip" network. Per level the input ``x`` feeds a skip branch (1x1 conv, BN, act)
  and a deeper branch (stride-2 conv, BN, act, conv, BN, act, [deeper levels], upsample x2); both are
  concatenated, then BN, conv, BN, act, [1x1 conv, BN, act].
* ``seed``: the independent reproduction this project started from. The skip is taken after each down block
  and the up block ends in the upsampling: BN, conv, BN, act, 1x1 conv, BN, act, upsample.

BatchNorm: DIP never calls ``eval()``, so every BN normalises with the statistics of the one input. At batch 1
that is InstanceNorm2d with affine weights. We build BN with ``track_running_stats=False``: it then uses the
batch statistics in train and eval mode alike, and there are no buffers that a step mutates (which keeps the
step compilable and CUDA-graph safe, and makes ``eval()`` harmless).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import BnInit, Generator, InputKind, NetConfig
from .degradations import Downsampler
from .problem import crop_box


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose reflection padding keeps its input's dtype under autocast (the same module otherwise: the
    same parameters and state dict). CPU autocast runs ``reflection_pad2d`` in fp32, so a bf16 step cast every
    padded activation to fp32 and back, forward and backward (even a 1x1 conv's, padded by nothing): a fifth of
    the step at 512 px (docs/fast.md, "Per iteration"). Padding copies values, so bf16 loses nothing here."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        device = input.device.type
        if self.padding_mode == "zeros" or isinstance(self.padding, str) or not torch.is_autocast_enabled(device):
            return super()._conv_forward(input, weight, bias)
        if any(self.padding):  # (a 1x1 conv needs no padding at all)
            with torch.autocast(device, enabled=False):
                pad = [p for p in reversed(self.padding) for _ in range(2)]  # (left, right, top, bottom)
                input = F.pad(input, pad, mode=self.padding_mode)
        return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)


def conv(cfg: NetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    mode: Literal["reflect", "zeros"] = "reflect" if cfg.padding == "reflection" else "zeros"
    return Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, padding_mode=mode)


def norm(cfg: NetConfig, channels: int) -> nn.BatchNorm2d:
    """BatchNorm of the batch's statistics; its scale starts at ones, or (``--bn-init uniform``) drawn from U(0, 1)
    as PyTorch did before 1.2, which the paper's published outputs were fitted with."""
    bn = nn.BatchNorm2d(channels, track_running_stats=False)
    if cfg.bn_init == BnInit.uniform:
        nn.init.uniform_(bn.weight)
    return bn


def act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2)


def conv_bn_act(cfg: NetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [conv(cfg, c_in, c_out, kernel, stride), norm(cfg, c_out), act()]


def _half_sums(g: torch.Tensor, dim: int) -> torch.Tensor:
    """The gradient of a x2 bilinear upsampling (corners not aligned) along ``dim``, from the output's gradient
    ``g``: input ``i`` fed outputs ``2i`` and ``2i + 1`` with weight 3/4 and ``2i - 1``, ``2i + 2`` with 1/4 (the edge
    inputs take the clamped neighbour's share too). Strided views and in-place adds: the layout of ``g`` is kept."""
    before = (slice(None),) * dim
    even, odd = g[before + (slice(0, None, 2),)], g[before + (slice(1, None, 2),)]
    n = even.shape[dim]
    out = torch.add(even, odd).mul_(0.75)
    out.narrow(dim, 1, n - 1).add_(odd.narrow(dim, 0, n - 1), alpha=0.25)  # (empty where n is 1)
    out.narrow(dim, 0, n - 1).add_(even.narrow(dim, 1, n - 1), alpha=0.25)
    out.narrow(dim, 0, 1).add_(even.narrow(dim, 0, 1), alpha=0.25)
    out.narrow(dim, n - 1, 1).add_(odd.narrow(dim, n - 1, 1), alpha=0.25)
    return out


class _BilinearX2(torch.autograd.Function):
    """x2 bilinear upsampling whose backward keeps a channels-last gradient channels-last. ATen's backward makes it
    contiguous (NCHW) first and runs a scalar kernel: on the default net at 512 px in bf16 that copy and kernel
    were the largest cost after the convolutions (docs/fast.md, "Per iteration"). The forward is ATen's."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.input_size = tuple(x.shape)  # type: ignore[attr-defined]
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> torch.Tensor:
        size = ctx.input_size  # type: ignore[attr-defined]
        if g.stride(1) != 1:  # not channels innermost (a channels-last tensor or a channel slice of one, as a skip's)
            return torch.ops.aten.upsample_bilinear2d_backward(g, g.shape[-2:], size, False, 2.0, 2.0)
        return _half_sums(_half_sums(g, 3), 2)


class Upsample(nn.Upsample):
    """``nn.Upsample`` x2 (the same module: no parameters, the same state dict and export), whose bilinear backward
    on channels-last activations is ``_BilinearX2``'s. Elsewhere (NCHW, as explicit fp32 fits and fp32 fits on AVX2
    CPUs run; aligned corners; export and no-grad) it is ATen's interpolation unchanged."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if (
            self.mode == "bilinear"
            and not self.align_corners
            and input.requires_grad
            and torch.is_grad_enabled()
            and input.dim() == 4
            and input.is_contiguous(memory_format=torch.channels_last)
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()
        ):
            return _BilinearX2.apply(input)
        return super().forward(input)


def split_merge(s: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether a paper level merges its skip apart (``PaperLevel._merge_split``): bf16 CPU training steps, whose
    activations are channels-last. fp32 CPU fits (NCHW, or channels-last on AVX-512, where merging apart measured
    faster on one net and slower on another), GPUs, export and no-grad runs concatenate as the original does, the
    same arithmetic in the same order."""
    return (
        y.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and y.requires_grad  # (False inside torch.func transforms, the packed steps: vmap cannot query a layout)
        and y.is_contiguous(memory_format=torch.channels_last)
        and s.is_contiguous(memory_format=torch.channels_last)
    )


def upsample(cfg: NetConfig, level: int) -> nn.Upsample:
    """x2 upsampling; bilinear and bicubic with ``--align-corners`` as PyTorch < 0.4 did (the paper's framework)."""
    mode = cfg.at("upsample", level)
    return Upsample(scale_factor=2, mode=str(mode), align_corners=None if mode == "nearest" else cfg.align_corners)


def down_conv(cfg: NetConfig, level: int, c_in: int, c_out: int) -> list[nn.Module]:
    """The conv that halves the size: stride 2, or stride 1 followed by pooling or the paper's Lanczos2 filter
    (``downsample``). The Lanczos2 filter is fixed per channel; the original wraps it in a dense trainable conv
    initialised to that kernel (see the README)."""
    kernel, mode = cfg.at("kernel_down", level), cfg.at("downsample", level)
    if mode == "stride":
        return [conv(cfg, c_in, c_out, kernel, stride=2)]
    pool = {
        "avg": lambda: nn.AvgPool2d(2, 2),
        "max": lambda: nn.MaxPool2d(2, 2),
        "lanczos2": lambda: Downsampler(2, c_out),
    }
    return [conv(cfg, c_in, c_out, kernel), pool[str(mode)]()]


def segments(block: nn.Sequential) -> list[nn.Sequential]:
    """``block`` cut before each conv: the units whose activations ``--save-memory`` recomputes instead of keeping.
    Only each unit's input stays alive between forward and backward (a conv-BN-act keeps one tensor, not three)."""
    cuts = [i for i, m in enumerate(block) if isinstance(m, nn.Conv2d) and i > 0]
    bounds = [0, *cuts, len(block)]
    return [nn.Sequential(*list(block)[a:b]) for a, b in itertools.pairwise(bounds) if b > a]


def recomputed(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)`` whose intermediate tensors are recomputed in the backward pass (activation checkpointing)."""
    return checkpoint(fn, *args, use_reentrant=False)


def run_block(block: nn.Sequential, x: torch.Tensor, save_memory: bool) -> torch.Tensor:
    if not save_memory or not torch.is_grad_enabled():
        return block(x)
    for unit in segments(block):
        x = recomputed(unit, x)
    return x


class Level(nn.Module):
    """What the hourglass levels share: ``save_memory`` (set by ``set_save_memory``) recomputes their blocks."""

    save_memory = False


def set_save_memory(net: nn.Module, on: bool) -> None:
    """Turns activation checkpointing on or off for every level of ``net`` (weights and results unchanged)."""
    for module in net.modules():
        if isinstance(module, Level):
            module.save_memory = on


def down_block(cfg: NetConfig, level: int, c_in: int, c_out: int) -> nn.Sequential:
    kernel = cfg.at("kernel_down", level)
    return nn.Sequential(
        *down_conv(cfg, level, c_in, c_out), norm(cfg, c_out), act(), *conv_bn_act(cfg, c_out, c_out, kernel)
    )


class PaperLevel(Level):
    """One level of the paper's skip network; ``deeper`` is the next level (None at the coarsest)."""

    def __init__(self, cfg: NetConfig, level: int, c_in: int, deeper: nn.Module | None) -> None:
        super().__init__()
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        self.skip = nn.Sequential(*conv_bn_act(cfg, c_in, skip, cfg.kernel_skip)) if skip else None
        self.down = down_block(cfg, level, c_in, down)
        self.deeper = deeper
        self.upsample = upsample(cfg, level)
        merged = skip + (cfg.channels_up[level + 1] if deeper is not None else down)
        self.merge_norm = norm(cfg, merged)
        layers = conv_bn_act(cfg, merged, up, cfg.at("kernel_up", level))
        if cfg.need_1x1_up:
            layers += conv_bn_act(cfg, up, up, 1)
        self.up = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        save = self.save_memory and torch.is_grad_enabled()
        y = run_block(self.down, x, save)
        if self.deeper is not None:
            y = self.deeper(y)
        s = run_block(self.skip, x, save) if self.skip is not None else None
        if not save and s is not None and split_merge(s, y):
            y = self._merge_split(s, y)
            for layer in list(self.up)[1:]:
                y = layer(y)
            return y
        if not save:
            return self.up(self._merge(s, y))
        first, *rest = segments(self.up)  # the merge and the first up conv-BN-act keep only s and y
        if s is None:
            y = recomputed(lambda y_: first(self._merge(None, y_)), y)
        else:
            y = recomputed(lambda s_, y_: first(self._merge(s_, y_)), s, y)
        return run_block(nn.Sequential(*rest), y, save)

    def _merge(self, s: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        y = self.upsample(y)
        return self.merge_norm(y if s is None else torch.cat([s, y], dim=1))

    def _merge_split(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``self.up[0](self._merge(s, y))`` (the merge and the first up convolution) without the concatenation:
        BatchNorm is per channel and a convolution is a sum over its input channels, so the skip's and the upsampled
        branch's channels are normalised and convolved apart and the two results added. Saves the concatenated copy
        and the convolution over 132 channels, which oneDNN runs far slower than one over 128 (docs/fast.md, "Per
        iteration"); the same parameters."""
        first = self.up[0]
        assert isinstance(first, nn.Conv2d)
        y, k, bn = self.upsample(y), s.shape[1], self.merge_norm
        w, b = bn.weight, bn.bias
        s = F.batch_norm(s, None, None, w[:k], b[:k], True, 0.0, bn.eps)
        y = F.batch_norm(y, None, None, w[k:], b[k:], True, 0.0, bn.eps)
        weight = first.weight
        return first._conv_forward(y, weight[:, k:], first.bias) + first._conv_forward(s, weight[:, :k], None)


class SeedLevel(Level):
    """One level of the seed reproduction: skip after the down block, upsampling at the end of the up block."""

    def __init__(self, cfg: NetConfig, level: int, c_in: int, deeper: nn.Module | None) -> None:
        super().__init__()
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        self.down = down_block(cfg, level, c_in, down)
        self.skip = nn.Sequential(*conv_bn_act(cfg, down, skip, cfg.kernel_skip)) if skip else None
        self.deeper = deeper
        merged = skip + (cfg.channels_up[level + 1] if deeper is not None else down)
        layers: list[nn.Module] = [norm(cfg, merged), *conv_bn_act(cfg, merged, up, cfg.at("kernel_up", level))]
        if cfg.need_1x1_up:
            layers += conv_bn_act(cfg, up, up, 1)
        self.up = nn.Sequential(*layers, upsample(cfg, level))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = run_block(self.down, x, self.save_memory)
        y = self.deeper(d) if self.deeper is not None else d
        if self.skip is not None:
            y = torch.cat([run_block(self.skip, d, self.save_memory), y], dim=1)
        return run_block(self.up, y, self.save_memory)


class Hourglass(nn.Module):
    """Maps the fixed input (B, input_depth, H, W) to an image (B, C, H, W) in (0, 1); H, W divisible by 2^depth."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.config = cfg
        level_cls = PaperLevel if cfg.structure == "paper" else SeedLevel
        deeper: nn.Module | None = None
        for level in reversed(range(cfg.depth)):
            c_in = cfg.input_depth if level == 0 else cfg.channels_down[level - 1]
            deeper = level_cls(cfg, level, c_in, deeper)
        assert deeper is not None
        self.body = deeper
        self.head = nn.Sequential(nn.Conv2d(cfg.channels_up[0], cfg.output_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class RandomProjector(Hourglass):
    """The Deep Random Projector (Li et al., CVPR 2023): a BatchNorm of the input, then the hourglass, whose
    convolutions keep their random initialisation (``requires_grad`` off, so no weight gradient is even computed).
    The fit optimises the input (``NetConfig.trains_input``) and the BatchNorm weights, through a much shallower
    net than DIP's (one level in the paper's code): far less work per step, none of it on weight gradients."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__(cfg)
        self.input_norm = norm(cfg, cfg.input_depth)  # the code's BNNet: the fitted seed, standardised per channel
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.input_norm(x))


class Decoder(Level):
    """A decoder from a small noise input (canvas / 2^depth): per level, coarsest first, the layers of
    ``level_layers`` (each doubles the size), then ``tail_layers``, a 1x1 conv to the image and a sigmoid (which
    keeps it in (0, 1) like the hourglass). ``channels_up`` and ``kernel_up`` run from the finest level."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.config = cfg
        layers: list[nn.Module] = []
        c_in = cfg.input_depth
        for level in reversed(range(cfg.depth)):
            layers += self.level_layers(cfg, level, c_in, cfg.channels_up[level])
            c_in = cfg.channels_up[level]
        self.body = nn.Sequential(*layers, *self.tail_layers(cfg, c_in))
        self.head = nn.Sequential(nn.Conv2d(c_in, cfg.output_channels, 1), nn.Sigmoid())

    def level_layers(self, cfg: NetConfig, level: int, c_in: int, c: int) -> list[nn.Module]:
        raise NotImplementedError

    def tail_layers(self, cfg: NetConfig, c: int) -> list[nn.Module]:
        return []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(run_block(self.body, x, self.save_memory))


class ConvDecoder(Decoder):
    """ConvDecoder (Darestani & Heckel 2021): per level an x2 upsampling, a kxk conv, ReLU and BatchNorm; then one
    more kxk conv, ReLU and BatchNorm."""

    def level_layers(self, cfg: NetConfig, level: int, c_in: int, c: int) -> list[nn.Module]:
        return [upsample(cfg, level), conv(cfg, c_in, c, cfg.at("kernel_up", level)), nn.ReLU(), norm(cfg, c)]

    def tail_layers(self, cfg: NetConfig, c: int) -> list[nn.Module]:
        return [conv(cfg, c, c, cfg.at("kernel_up", 0)), nn.ReLU(), norm(cfg, c)]


class DeepDecoder(Decoder):
    """Deep Decoder (Heckel & Hand 2019): per level a 1x1 conv (``--kernel-up``), an x2 upsampling, ReLU and channel
    normalisation (BatchNorm at batch 1). Few weights: meant to fit noise slowly."""

    def level_layers(self, cfg: NetConfig, level: int, c_in: int, c: int) -> list[nn.Module]:
        return [conv(cfg, c_in, c, cfg.at("kernel_up", level)), upsample(cfg, level), nn.ReLU(), norm(cfg, c)]


Network = Hourglass | ConvDecoder | DeepDecoder
GENERATORS: dict[str, type[Network]] = {
    Generator.skip: Hourglass,
    Generator.convdecoder: ConvDecoder,
    Generator.deepdecoder: DeepDecoder,
    Generator.drp: RandomProjector,
}


def build_network(cfg: NetConfig) -> Network:
    if cfg.structure not in ("paper", "seed"):
        raise ValueError(f"unknown network structure {cfg.structure!r}; choose paper or seed")
    return GENERATORS[cfg.generator](cfg)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def make_input(cfg: NetConfig, height: int, width: int, seed: int, guide: torch.Tensor | None = None) -> torch.Tensor:
    """The fixed network input (1, input_depth, height, width) of ``cfg.input_kind`` (``INPUTS``)."""
    channels = cfg.input_kind.channels
    if channels is not None and cfg.input_depth != channels:
        raise ValueError(f"a {cfg.input_kind} input has {channels} channels: set input_depth to {channels}")
    return INPUTS[cfg.input_kind](cfg, (height, width), seed, guide)


def noise_input(cfg: NetConfig, canvas: tuple[int, int], seed: int, guide: torch.Tensor | None) -> torch.Tensor:
    """U[0,1) * input_scale noise from ``seed`` (the paper's default)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(cfg.input_shape(canvas), generator=generator) * cfg.input_scale


def meshgrid_input(cfg: NetConfig, canvas: tuple[int, int], seed: int, guide: torch.Tensor | None) -> torch.Tensor:
    """x and y from 0 to 1 across the canvas (the paper's vase inpainting)."""
    height, width = canvas
    ys = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
    xs = torch.linspace(0, 1, width).view(1, width).expand(height, width)
    return torch.stack([xs, ys]).unsqueeze(0).contiguous()


def guide_input(cfg: NetConfig, canvas: tuple[int, int], seed: int, guide: torch.Tensor | None) -> torch.Tensor:
    """The guide image (flash-no-flash) centred on the canvas and reflected into its margins."""
    if guide is None:
        raise ValueError("an image input needs the guide image (flash-no-flash: --flash)")
    return pad_to(guide.reshape(1, -1, *guide.shape[-2:]).float(), canvas)


# One maker of the fixed input per config.InputKind, in the style of GENERATORS.
INPUTS: dict[InputKind, Callable[[NetConfig, tuple[int, int], int, torch.Tensor | None], torch.Tensor]] = {
    InputKind.noise: noise_input,
    InputKind.meshgrid: meshgrid_input,
    InputKind.image: guide_input,
}


def pad_to(image: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """``image`` (1, C, h, w) centred on a ``canvas`` (where ``problem.CenterCrop`` takes it back), margins reflected
    where the image is large enough and replicated otherwise."""
    h, w = image.shape[-2:]
    top, left, _, _ = crop_box(canvas, (h, w))
    pad = (left, canvas[1] - w - left, top, canvas[0] - h - top)
    if not any(pad):
        return image.contiguous()
    mode = "reflect" if max(pad[0], pad[1]) < w and max(pad[2], pad[3]) < h else "replicate"
    return F.pad(image, pad, mode=mode).contiguous()
