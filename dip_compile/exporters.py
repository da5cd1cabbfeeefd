"""Exporting a fitted DIP network with its fixed noise, so the restored image can be regenerated without torch.

The fit's image is the network's output on the one fixed input with BatchNorm in train mode: every BN normalises
with the statistics of its input. Since that input is a constant, so are those statistics. We run the network
once on the fixed noise, capture each BN's batch mean and biased variance, and build an inference graph in which
the BN is either

* ``frozen``: a per-channel scale and shift with the captured statistics, folded into the convolution before it
  (and the BN after a concat into the convolution after it, which is exact when that convolution pads by
  reflection or not at all). Fastest; exact for the shipped noise, but other noise is normalised with the
  shipped noise's statistics;
* ``batch``: live per-sample statistics (ONNX InstanceNormalization), which is what DIP's BN computes at batch 1:
  exact for any input noise, and each sample of a batch is normalised as if it were alone.

The graph is a small list of nodes (:class:`Node`) built by walking the hourglass; it is emitted to ONNX directly
(full control over the ops, no exporter decompositions) and executed by a torch module that TorchScript records,
so both files hold the same network. The image is cropped from the canvas to the image size inside the graph.
With fp16 weights only the convolutions are stored in half precision; BN then stays a separate fp32 scale+shift
whose frozen statistics are taken from the fp16-rounded network, so they match the weights that ship.
The EMA (or auto-stop) image is not a function of the network, nor is an inpainting fit's image with its observed
pixels kept (``--keep-known``): it is shipped as a stored constant correction ``target - output`` added to the
network's output, and the metadata says so. By default (``--image fit``) the export reproduces the image the fit
returned, whichever of these it was.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .checkpoint import Checkpoint
from .errors import DipError
from .export_options import BatchNormMode, ExportFormat, ExportImage, ExportOptions, NoiseMode, Weights, choice
from .metrics import psnr
from .network import Hourglass, PaperLevel, SeedLevel
from .problem import crop_box
from .replay import regenerate as replay

FORMAT = replay.FORMAT
VERSION = replay.VERSION
OPSET = 17
DEFAULTS = ExportOptions()
KNOWN_PIXELS = " + known pixels"  # Fitter.image_source()'s suffix when the fit pasted the observed pixels
M = TypeVar("M", bound=nn.Module)


@dataclass
class Node:
    """One operation: conv | affine | norm | leaky | sigmoid | upsample | concat | crop | add | clip."""

    op: str
    inputs: list[str]
    output: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # float64 until emitted
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    nodes: list[Node]
    input: str
    output: str

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]


@dataclass
class ExportPlan:
    """Everything an exporter writes: the graph, the fixed noise, the image it must reproduce, and metadata."""

    graph: Graph
    noise: torch.Tensor  # (1, D, Hc, Wc) float32
    target: torch.Tensor  # (1, C, H, W): the image the export reproduces on ``noise``
    metadata: dict[str, str]
    weights: Weights
    embed_noise: bool = True  # False: the ONNX noise input has no initializer; regenerate.py rebuilds it from the seed


# --- building the graph ---------------------------------------------------------------------------------------


def capture_bn_statistics(net: Hourglass, noise: torch.Tensor) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Runs the network once on ``noise`` and records, per BatchNorm, the batch mean and biased variance it used."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        stats[module] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            net(noise)
    finally:
        for h in handles:
            h.remove()
    return stats


class _Builder:
    """Walks the hourglass in forward order and appends one node per operation."""

    def __init__(self, stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]], bn: str) -> None:
        self.stats, self.bn = stats, bn
        self.nodes: list[Node] = []

    def add(self, op: str, inputs: list[str], tensors: dict[str, torch.Tensor] | None = None, **attrs: Any) -> str:
        name = f"{op}_{len(self.nodes)}"
        self.nodes.append(Node(op, inputs, name, tensors or {}, attrs))
        return name

    def module(self, m: nn.Module, x: str) -> str:
        if isinstance(m, nn.Sequential):
            for child in m:
                x = self.module(child, x)
            return x
        if isinstance(m, nn.Conv2d):
            bias = m.bias.detach().double() if m.bias is not None else torch.zeros(m.out_channels, dtype=torch.float64)
            return self.add(
                "conv",
                [x],
                {"weight": m.weight.detach().double(), "bias": bias},
                stride=m.stride[0],
                pad=m.padding[0],
                pad_mode="reflect" if m.padding_mode == "reflect" else "zeros",
            )
        if isinstance(m, nn.BatchNorm2d):
            gamma = (
                m.weight.detach().double() if m.weight is not None else torch.ones(m.num_features, dtype=torch.float64)
            )
            beta = m.bias.detach().double() if m.bias is not None else torch.zeros(m.num_features, dtype=torch.float64)
            if self.bn == "batch":
                return self.add("norm", [x], {"weight": gamma, "bias": beta}, eps=m.eps)
            mean, var = self.stats[m]
            scale = gamma / torch.sqrt(var + m.eps)
            return self.add("affine", [x], {"scale": scale, "shift": beta - mean * scale})
        if isinstance(m, nn.LeakyReLU):
            return self.add("leaky", [x], slope=m.negative_slope)
        if isinstance(m, nn.Sigmoid):
            return self.add("sigmoid", [x])
        if isinstance(m, nn.Upsample):
            return self.add("upsample", [x], mode=m.mode)
        if isinstance(m, PaperLevel):
            y = self.module(m.down, x)
            if m.deeper is not None:
                y = self.module(m.deeper, y)
            y = self.module(m.upsample, y)
            if m.skip is not None:
                y = self.add("concat", [self.module(m.skip, x), y])
            return self.module(m.up, self.module(m.merge_norm, y))
        if isinstance(m, SeedLevel):
            d = self.module(m.down, x)
            y = self.module(m.deeper, d) if m.deeper is not None else d
            if m.skip is not None:
                y = self.add("concat", [self.module(m.skip, d), y])
            return self.module(m.up, y)
        if isinstance(m, Hourglass):
            return self.module(m.head, self.module(m.body, x))
        raise DipError(f"cannot export a network containing {m.__class__.__name__}")


def fold_affines(graph: Graph) -> Graph:
    """Folds each frozen-BN scale+shift into the convolution before it, or else into the convolutions after it
    when every one of them pads by reflection or not at all (a constant per-channel shift survives reflection)."""
    nodes = list(graph.nodes)
    changed = True
    while changed:
        changed = False
        for a in [n for n in nodes if n.op == "affine"]:
            scale, shift = a.tensors["scale"], a.tensors["shift"]
            producer = next((n for n in nodes if n.output == a.inputs[0]), None)
            users = [n for n in nodes if a.inputs[0] in n.inputs]
            if producer is not None and producer.op == "conv" and users == [a]:
                producer.tensors["weight"] = producer.tensors["weight"] * scale[:, None, None, None]
                producer.tensors["bias"] = producer.tensors["bias"] * scale + shift
                _rename(nodes, a.output, producer.output)
                nodes.remove(a)
                changed = True
                continue
            after = [n for n in nodes if a.output in n.inputs]
            if (
                after
                and graph.output != a.output
                and all(n.op == "conv" and (n.attrs["pad"] == 0 or n.attrs["pad_mode"] == "reflect") for n in after)
            ):
                for conv in after:
                    w = conv.tensors["weight"]
                    conv.tensors["bias"] = conv.tensors["bias"] + (w * shift[None, :, None, None]).sum((1, 2, 3))
                    conv.tensors["weight"] = w * scale[None, :, None, None]
                    conv.inputs = [a.inputs[0] if i == a.output else i for i in conv.inputs]
                nodes.remove(a)
                changed = True
    return Graph(nodes, graph.input, graph.output)


def _rename(nodes: list[Node], old: str, new: str) -> None:
    for n in nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def build_graph(
    net: Hourglass,
    noise: torch.Tensor,
    canvas: tuple[int, int],
    size: tuple[int, int],
    *,
    bn: str = DEFAULTS.bn,
    fold: bool = True,
    correction: torch.Tensor | None = None,
) -> Graph:
    """The inference graph of ``net`` on the canvas, cropped to ``size``; ``correction`` is added after the crop."""
    bn = choice(BatchNormMode, bn, "--bn")
    stats = capture_bn_statistics(net, noise) if bn == BatchNormMode.frozen else {}
    b = _Builder(stats, bn)
    y = b.module(net, "noise")
    if tuple(canvas) != tuple(size):
        y = b.add("crop", [y], box=crop_box(canvas, size))
    if correction is not None:
        y = b.add("add", [y], {"value": correction.detach().double()})
        y = b.add("clip", [y])
    graph = Graph(b.nodes, "noise", y)
    return fold_affines(graph) if fold and bn == BatchNormMode.frozen else graph


# --- the torch executor (what TorchScript records, and the torch side of verification) ------------------------


class GraphModule(nn.Module):
    """Executes a :class:`Graph` with torch ops; weights are stored in ``dtype`` and computed in float32."""

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.graph = graph
        for i, node in enumerate(graph.nodes):
            for key, t in node.tensors.items():
                keep = dtype if node.op == "conv" else torch.float32  # only convolutions are stored in fp16
                self.register_buffer(f"n{i}_{key}", t.to(keep).contiguous())

    def tensor(self, i: int, key: str) -> torch.Tensor:
        return getattr(self, f"n{i}_{key}").float()

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        env = {self.graph.input: noise}
        for i, node in enumerate(self.graph.nodes):
            x = [env[name] for name in node.inputs]
            a = node.attrs
            if node.op == "conv":
                h = x[0]
                pad = a["pad"]
                if pad and a["pad_mode"] == "reflect":
                    h = F.pad(h, (pad,) * 4, mode="reflect")
                    pad = 0
                y = F.conv2d(h, self.tensor(i, "weight"), self.tensor(i, "bias"), stride=a["stride"], padding=pad)
            elif node.op == "affine":
                y = x[0] * self.tensor(i, "scale").view(1, -1, 1, 1) + self.tensor(i, "shift").view(1, -1, 1, 1)
            elif node.op == "norm":
                y = F.instance_norm(x[0], weight=self.tensor(i, "weight"), bias=self.tensor(i, "bias"), eps=a["eps"])
            elif node.op == "leaky":
                y = F.leaky_relu(x[0], a["slope"])
            elif node.op == "sigmoid":
                y = torch.sigmoid(x[0])
            elif node.op == "upsample":
                align = None if a["mode"] == "nearest" else False
                y = F.interpolate(x[0], scale_factor=2.0, mode=a["mode"], align_corners=align)
            elif node.op == "concat":
                y = torch.cat(x, dim=1)
            elif node.op == "crop":
                top, left, h, w = a["box"]
                y = x[0][:, :, top : top + h, left : left + w]
            elif node.op == "add":
                y = x[0] + self.tensor(i, "value")
            elif node.op == "clip":
                y = x[0].clamp(0.0, 1.0)
            else:
                raise ValueError(f"unknown node {node.op}")
            env[node.output] = y
        return env[self.graph.output]


class Regenerator(nn.Module):
    """The TorchScript export: ``forward()`` returns the restored image; other noise may be passed instead."""

    def __init__(self, core: nn.Module, noise: torch.Tensor) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("noise", noise.contiguous())

    def forward(self, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.noise if noise is None else noise
        return self.core(x)


# --- plans, metadata, exporters --------------------------------------------------------------------------------


def noise_checksum(noise: torch.Tensor) -> str:
    """sha256 of the noise as little-endian float32 in C order (what the ONNX initializer stores), computed by the
    code regenerate.py checks it with."""
    return replay.checksum(noise.detach().cpu().float().numpy())


def _target(fitter: Any, image: ExportImage) -> tuple[torch.Tensor, str]:
    """The image the export reproduces and what it is: output, ema, best, or (for ``fit``) the fit's own choice,
    with ``KNOWN_PIXELS`` appended when the fit pasted the observed pixels."""
    if image == ExportImage.fit:
        target, source = fitter.image()
        return target.float(), image_kind(source)
    if image == ExportImage.output:
        return fitter.output(), "output"
    if image == ExportImage.ema:
        if fitter.ema is None:
            raise DipError("this checkpoint has no EMA image (the fit ran without --ema smoothing); use --image fit")
        return fitter.ema.float(), "ema"
    best = fitter.stopper.best_image if fitter.stopper is not None else None
    if best is None:
        raise DipError("this checkpoint has no auto-stop image (the fit did not use --stop auto); use --image fit")
    return best.float(), "best"


def image_kind(source: str) -> str:
    """The metadata's name (``image``) for a ``Fitter.image_source()``: the --image choice it corresponds to, with
    ``KNOWN_PIXELS`` kept."""
    return source.replace("auto-stop best", ExportImage.best.value)


def _finite(tensors: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


IMAGE_NOTES = {
    "output": "network output on the fixed noise, BatchNorm in train mode (batch statistics)",
    "ema": "the fit's EMA image = network output + a stored constant correction (clipped to [0,1])",
    "best": "the auto-stop image = network output + a stored constant correction (clipped to [0,1])",
}


def _image_note(kind: str) -> str:
    base = kind.removesuffix(KNOWN_PIXELS)
    if kind == base:
        return IMAGE_NOTES[kind]
    return (
        f"the fit's image with its observed pixels kept (--keep-known): its {base} image in the holes and the "
        f"observed pixels elsewhere = network output + a stored constant correction (clipped to [0,1])"
    )


def plan_export(
    ckpt: Checkpoint,
    *,
    image: str = DEFAULTS.image,
    bn: str = DEFAULTS.bn,
    weights: str = DEFAULTS.weights,
    noise_mode: str = DEFAULTS.noise,
    fold: bool = True,
) -> ExportPlan:
    """Builds the inference graph and metadata of a checkpoint's network (on the CPU, float32); strings or the
    Enums of :mod:`export_options`."""
    options = ExportOptions.of(image=image, bn=bn, weights=weights, noise=noise_mode)
    fitter = ckpt.fitter(device="cpu", config=ckpt.config.replace(device="cpu", backend="eager"))
    net, noise, problem = fitter.net, fitter.net_input.float(), fitter.problem
    if not _finite(net.parameters()):
        raise DipError("the fit diverged: its network weights contain NaN/inf; nothing to export")
    if options.noise == NoiseMode.seed:
        _check_seed_noise(ckpt, noise)
    output = fitter.output()
    target, kind = _target(fitter, options.image)
    target = target.cpu()
    if not _finite([target]):
        raise DipError(f"the fit's {kind} image contains NaN/inf; nothing to export")
    correction = None if kind == "output" else target - output
    if options.weights == Weights.fp16:
        # Round the convolutions to fp16 first and take the frozen statistics of that network, so the statistics
        # match the weights that ship; BN stays an fp32 scale+shift (folding would round the products again).
        net = half_rounded(net)
        fold = False
        if not _finite(net.parameters()):
            raise DipError("some network weights exceed fp16's range (65504); use --weights fp32")
    graph = build_graph(net, noise, problem.canvas, problem.size, bn=options.bn, fold=fold, correction=correction)
    fit_source = fitter.image_source()
    cfg = ckpt.config
    bn, weights, noise_mode = options.bn.value, options.weights.value, options.noise.value
    loss = F.mse_loss(problem.operator(target), problem.observation).item()
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": str(VERSION),
        "task": cfg.task,
        "image_size": f"{problem.size[1]}x{problem.size[0]}",
        "image_height": str(problem.size[0]),
        "image_width": str(problem.size[1]),
        "canvas": f"{problem.canvas[1]}x{problem.canvas[0]}",
        "channels": str(cfg.net.output_channels),
        "iterations": str(ckpt.iteration),
        "seed": str(cfg.seed),
        "image": kind,
        "image_option": options.image.value,
        "image_note": _image_note(kind),
        "fit_image": fit_source,
        "bn": bn,
        "bn_note": (
            "BatchNorm statistics frozen to those of the shipped noise and folded into the convolutions; "
            "exact for the shipped noise"
            if bn == "frozen"
            else "BatchNorm uses each sample's own statistics (InstanceNormalization), exact for any noise"
        ),
        "weights": weights,
        "weights_note": (
            "convolution weights in fp32"
            if weights == "fp32"
            else "convolution weights stored in fp16 and cast to fp32 in the graph; BatchNorm scale/shift "
            "in fp32 with the statistics of the fp16-rounded network (not bit-exact)"
        ),
        "loss": f"{loss:.8g}",
        "psnr_observation": f"{psnr(problem.operator(target), problem.observation).item():.4f}",
        "psnr_reference": (f"{psnr(target, problem.reference).item():.4f}" if problem.reference is not None else ""),
        "noise": noise_mode,
        "noise_note": (
            "the fixed noise is the initializer of the noise input: an empty feed regenerates the image"
            if noise_mode == "embedded"
            else "the fixed noise is not stored: it is torch.rand(noise_shape) * noise_scale from a CPU "
            "generator seeded with noise_seed (MT19937), rebuilt by regenerate.py and checked against "
            "noise_sha256; other ONNX Runtime callers must feed it"
        ),
        "noise_seed": str(cfg.seed),
        "noise_sha256": noise_checksum(noise),
        "noise_shape": "x".join(str(s) for s in noise.shape),
        "noise_kind": cfg.net.input_kind,
        "noise_scale": str(cfg.net.input_scale),
        "parameters": str(sum(p.numel() for p in net.parameters())),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "fit_package_version": str(ckpt.meta.get("package_version", "")),
        "fit_torch_version": str(ckpt.meta.get("torch_version", "")),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
    }
    return ExportPlan(
        graph,
        noise.contiguous(),
        target.contiguous(),
        {k: str(v) for k, v in meta.items()},
        options.weights,
        embed_noise=options.noise == NoiseMode.embedded,
    )


def _check_seed_noise(ckpt: Checkpoint, noise: torch.Tensor) -> None:
    """--noise seed is only offered when the seed really rebuilds the checkpoint's noise, bit for bit."""
    cfg = ckpt.config.net
    if cfg.input_kind != "noise":
        raise DipError(f"--noise seed needs a random-noise input; this fit used a {cfg.input_kind} input")
    rebuilt = replay.seed_noise(ckpt.config.seed, tuple(noise.shape), cfg.input_scale)
    if not np.array_equal(rebuilt, noise.numpy()):
        raise DipError("this checkpoint's noise cannot be rebuilt from its seed; use --noise embedded")


def half_rounded(net: M) -> M:
    """A copy of ``net`` whose convolution weights and biases are rounded to fp16 (and kept in fp32)."""
    import copy

    net = copy.deepcopy(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(m.weight.half().float())
                if m.bias is not None:
                    m.bias.copy_(m.bias.half().float())
    return net


def _initializer(name: str, t: torch.Tensor, dtype: str = "fp32") -> Any:
    from onnx import numpy_helper

    array = t.detach().cpu().numpy()
    array = array.astype(np.float16 if dtype == "fp16" else np.float32) if array.dtype.kind == "f" else array
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def to_onnx(plan: ExportPlan) -> Any:
    """The ONNX model: input ``noise`` (its initializer is the fixed noise, so an empty feed works), output
    ``image`` (N, C, H, W) in [0, 1]."""
    import onnx
    from onnx import TensorProto, helper

    g = plan.graph
    nodes, inits = [], [_initializer("noise", plan.noise)] if plan.embed_noise else []
    fp16 = plan.weights == "fp16"

    def weight(name: str, t: torch.Tensor, shape: tuple[int, ...] | None = None, half: bool = False) -> str:
        """An fp32 initializer, or with ``half`` and fp16 weights an fp16 one cast back to fp32 in the graph."""
        t = t if shape is None else t.reshape(shape)
        inits.append(_initializer(name + ("_fp16" if fp16 and half else ""), t, plan.weights if half else "fp32"))
        if not (fp16 and half):
            return name
        nodes.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT))
        return name

    def const(name: str, values: float | list[int] | list[float], dtype: Any = np.int64) -> str:
        inits.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    for n in g.nodes:
        a, x, out = n.attrs, n.inputs, n.output
        if n.op == "conv":
            w = weight(f"{out}.weight", n.tensors["weight"], half=True)
            b = weight(f"{out}.bias", n.tensors["bias"], half=True)
            pad, src = a["pad"], x[0]
            if pad and a["pad_mode"] == "reflect":
                src = f"{out}.padded"
                nodes.append(
                    helper.make_node(
                        "Pad", [x[0], const(f"{out}.pads", [0, 0, pad, pad, 0, 0, pad, pad])], [src], mode="reflect"
                    )
                )
                pad = 0
            k = n.tensors["weight"].shape[-1]
            nodes.append(
                helper.make_node(
                    "Conv", [src, w, b], [out], kernel_shape=[k, k], strides=[a["stride"]] * 2, pads=[pad] * 4
                )
            )
        elif n.op == "affine":
            c = n.tensors["scale"].numel()
            s = weight(f"{out}.scale", n.tensors["scale"], (1, c, 1, 1))
            t = weight(f"{out}.shift", n.tensors["shift"], (1, c, 1, 1))
            nodes.append(helper.make_node("Mul", [x[0], s], [f"{out}.scaled"]))
            nodes.append(helper.make_node("Add", [f"{out}.scaled", t], [out]))
        elif n.op == "norm":
            s, b = weight(f"{out}.weight", n.tensors["weight"]), weight(f"{out}.bias", n.tensors["bias"])
            nodes.append(helper.make_node("InstanceNormalization", [x[0], s, b], [out], epsilon=float(a["eps"])))
        elif n.op == "leaky":
            nodes.append(helper.make_node("LeakyRelu", x, [out], alpha=float(a["slope"])))
        elif n.op == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", x, [out]))
        elif n.op == "upsample":
            scales = const(f"{out}.scales", [1.0, 1.0, 2.0, 2.0], np.float32)
            kw: dict[str, Any]
            if a["mode"] == "nearest":
                kw = dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            elif a["mode"] == "bilinear":
                kw = dict(mode="linear", coordinate_transformation_mode="half_pixel")
            else:
                kw = dict(mode="cubic", coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75)
            nodes.append(helper.make_node("Resize", [x[0], "", scales], [out], **kw))
        elif n.op == "concat":
            nodes.append(helper.make_node("Concat", x, [out], axis=1))
        elif n.op == "crop":
            top, left, height, width = a["box"]
            nodes.append(
                helper.make_node(
                    "Slice",
                    [
                        x[0],
                        const(f"{out}.starts", [top, left]),
                        const(f"{out}.ends", [top + height, left + width]),
                        const(f"{out}.axes", [2, 3]),
                    ],
                    [out],
                )
            )
        elif n.op == "add":
            inits.append(_initializer(f"{out}.value", n.tensors["value"]))
            nodes.append(helper.make_node("Add", [x[0], f"{out}.value"], [out]))
        elif n.op == "clip":
            nodes.append(
                helper.make_node(
                    "Clip", [x[0], const(f"{out}.min", 0.0, np.float32), const(f"{out}.max", 1.0, np.float32)], [out]
                )
            )
        else:
            raise ValueError(f"unknown node {n.op}")
    nodes.append(helper.make_node("Identity", [g.output], ["image"]))

    _, d, hc, wc = plan.noise.shape
    _, c, height, width = plan.target.shape
    graph = helper.make_graph(
        nodes,
        "dip_compile_regenerate",
        [helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["batch", d, hc, wc])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", c, height, width])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dip-compile",
        producer_version=__version__,
        doc_string="Deep Image Prior network with its fixed noise: run with an empty feed "
        "to regenerate the restored image.",
    )
    model.ir_version = 8  # opset 17's IR version: loadable by onnxruntime >= 1.13
    helper.set_model_props(model, plan.metadata)
    onnx.checker.check_model(model)
    return model


def to_torchscript(plan: ExportPlan) -> torch.jit.ScriptModule:
    dtype = torch.float16 if plan.weights == "fp16" else torch.float32
    core = torch.jit.trace(GraphModule(plan.graph, dtype).eval(), (plan.noise,), check_trace=False)
    return torch.jit.script(Regenerator(core, plan.noise))


def _write_bytes(path: str | Path, data: bytes) -> Path:
    from .imageio import atomic_write

    def write(tmp: Path) -> None:
        Path(tmp).write_bytes(data)

    return atomic_write(path, write)


def write_onnx(plan: ExportPlan, path: str | Path) -> Path:
    return _write_bytes(path, to_onnx(plan).SerializeToString())


def write_torchscript(plan: ExportPlan, path: str | Path) -> Path:
    """The TorchScript file always carries its noise (as the module's ``noise`` buffer)."""
    module = to_torchscript(plan)
    meta = {**plan.metadata, "noise": "embedded", "noise_note": "the fixed noise is the module's noise buffer"}
    extra = {"dip_compile.json": json.dumps(meta, sort_keys=True)}
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files=extra)
    return _write_bytes(path, buffer.getvalue())


# --- verification -------------------------------------------------------------------------------------------


def run_onnx(path_or_bytes: str | Path | bytes, noise: np.ndarray | None = None, provider: str = "cpu") -> np.ndarray:
    """The image (N, C, H, W) an exported ONNX model returns (empty feed unless ``noise`` is given)."""
    session, _ = replay.open_session(path_or_bytes, provider)
    return replay.run(session, noise)


def run_torchscript(path: str | Path, noise: torch.Tensor | None = None) -> torch.Tensor:
    module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module() if noise is None else module(noise)


def agreement(image: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> dict[str, float]:
    """max |a - b| in [0, 1], the share of identical 8-bit pixels and the largest 8-bit difference."""

    def arr(t: Any) -> np.ndarray:
        return t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)

    return replay.compare(arr(image), arr(target))


def weight_bytes(plan: ExportPlan) -> int:
    """The fitted network's parameters in fp32 bytes: the least a file holding the weights needs."""
    return int(plan.metadata["parameters"]) * 4


# --- the export job (what ``dipc export`` runs) -------------------------------------------------------------

SUFFIX = {ExportFormat.onnx: ".onnx", ExportFormat.torchscript: ".pt"}


@dataclass
class Written:
    checkpoint: Path
    format: str  # onnx | torchscript
    path: Path
    bytes: int
    weight_bytes: int
    noise_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    correction_bytes: int = 0  # the stored correction (an EMA, auto-stop or known-pixels image)
    check: dict[str, float] | None = None


def output_paths(checkpoints: list[Path], output: Path, fmt: str) -> list[tuple[Path, str, Path]]:
    """(checkpoint, format, path) for every file to write. One checkpoint: ``output`` is the file (its suffix
    replaced per format with --format all); several: ``output`` is a folder that gets ``<checkpoint stem>.onnx``."""
    fmt = choice(ExportFormat, fmt, "--format")
    formats = list(SUFFIX) if fmt == ExportFormat.all else [fmt]
    if len(checkpoints) == 1 and not output.is_dir():
        if fmt == ExportFormat.all:
            return [(checkpoints[0], f.value, output.with_suffix(SUFFIX[f])) for f in formats]
        path = output if output.suffix else output.with_suffix(SUFFIX[fmt])
        return [(checkpoints[0], fmt.value, path)]
    if not output.is_dir():
        raise DipError(f"with several checkpoints, -o must be an existing folder (got {output})")
    stems = [c.stem for c in checkpoints]
    if len(set(stems)) != len(stems):
        raise DipError("two checkpoints share a file name; export them to different folders")
    return [(c, f.value, output / (c.stem + SUFFIX[f])) for c in checkpoints for f in formats]


def fit_image_note(metadata: dict[str, str]) -> str | None:
    """A hint when an explicit --image exported another image than the one the fit returned (``--image fit``,
    the default, always exports that one)."""
    returned = metadata.get("fit_image", "")
    if not returned or image_kind(returned) == metadata.get("image"):
        return None
    base = returned.removesuffix(KNOWN_PIXELS)
    what = f"{base} image" + (" with the observed pixels kept (--keep-known)" if base != returned else "")
    return f"note: this fit returned its {what}; --image fit (the default) exports that one"


def passes(check: dict[str, float], tolerance: float = 1e-4) -> bool:
    """The exactness target: no NaN/inf, max abs difference <= 1e-4, >= 99.9% identical 8-bit pixels, none off
    by more than 1."""
    return check["max_abs_diff"] <= tolerance and replay.passes(check)


def export_checkpoints(
    checkpoints: Sequence[str | Path], output: str | Path, options: ExportOptions | None = None, **choices: Any
) -> list[Written]:
    """Exports each checkpoint; checks every input and output before writing anything, writes atomically.

    ``options``, or keyword choices over the defaults (``fmt="onnx", image="fit", bn=..., weights=..., noise=...,
    verify=..., force=...``, strings or Enums), so library callers need not build an ExportOptions."""
    from .checkpoint import load_checkpoint
    from .imageio import check_output

    options = dataclasses.replace(options or DEFAULTS, **choices)
    jobs = output_paths([Path(c) for c in checkpoints], Path(output), options.fmt)
    for _, _, path in jobs:
        check_output(path, options.force)
    loaded = {c: load_checkpoint(c) for c in dict.fromkeys(c for c, _, _ in jobs)}
    plans = {}
    for c, ck in loaded.items():
        try:
            plans[c] = plan_export(
                ck, image=options.image, bn=options.bn, weights=options.weights, noise_mode=options.noise
            )
        except DipError as exc:
            raise DipError(f"{c}: {exc}" if len(loaded) > 1 else str(exc)) from None
    written = []
    for ckpt_path, f, path in jobs:
        plan = plans[ckpt_path]
        (write_onnx if f == "onnx" else write_torchscript)(plan, path)
        noise_bytes = plan.noise.numel() * 4 if plan.embed_noise or f == "torchscript" else 0
        correction = sum(n.tensors["value"].numel() * 4 for n in plan.graph.nodes if n.op == "add")
        result = Written(
            ckpt_path, f, path, path.stat().st_size, weight_bytes(plan), noise_bytes, plan.metadata, correction
        )
        if options.verify:
            got = run_onnx(path) if f == "onnx" else run_torchscript(path)
            result.check = agreement(got, plan.target)
        written.append(result)
    return written
