"""Probes of ways a denoising fit might need less work that ``dipc fit`` has no option for (docs/fast.md).

Not a test and not the product's path: a plain loop (bf16 autocast, channels-last, Adam, the input perturbed by
``--reg`` x N(0, 1) each step, no held-out stop and no backtracking) on one CSet9 image at sigma 25 (the paper's noisy
file), which scores the network on the whole image every ``--every`` iterations and keeps an EMA of those outputs
(0.99 per iteration). It reports the best PSNR the EMA reached and when: what a perfect stopping rule could return.
Each variant changes one thing against the plain loop (``--crop 0 --shuffle 1 --finest 0 --ramp 0``), which matches
``dipc fit denoise --stop fixed`` closely (F16's 256 px crop, 64 channels: EMA 30.08 dB at iteration 1200 here,
30.16 in the fit's report):

* ``--crop C``: each step fits a random C x C window (offsets on the net's 32 px grid) of the input and the
  observation, a quarter of the work at C = side / 2; the image is the network on the whole input;
* ``--shuffle 2``: the network runs at half the size with 12 outputs, rearranged into the image (pixel shuffle), so
  no layer runs at full resolution;
* ``--finest N``: N channels at the finest level (the others ``--channels``), whose full-resolution layers are most
  of a step;
* ``--ramp N``: the input perturbation grows linearly from 0 to ``--reg`` over the first N steps (without it the
  net reaches its best in a few hundred steps and then fits the noise).

PSNR does not depend on the load, so probes may run side by side (``--threads 1``); their seconds do.

    python benchmarks/prior_probes.py --image F16 --side 256 --channels 64 --finest 16 --out f16-finest16.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from benchmarks.common import DATA, centre_crop, machine
from dip_compile.config import NetConfig
from dip_compile.imageio import load_image
from dip_compile.metrics import psnr
from dip_compile.network import build_network, make_input

CSET9 = DATA / "paper" / "denoising" / "CSet9"


def load(path: Path, side: int) -> torch.Tensor:
    """(1, 3, H, W) in [0, 1], its centre ``side`` x ``side`` crop when side > 0."""
    image = load_image(path)[None]
    return centre_crop(image, side) if side else image


def network(args: argparse.Namespace) -> torch.nn.Module:
    """The f16 preset's hourglass at ``--channels`` (``--finest`` at level 0), with 3 x shuffle^2 outputs."""
    levels = (args.finest or args.channels,) + (args.channels,) * 4
    cfg = NetConfig(channels_down=levels, channels_up=levels)
    object.__setattr__(cfg, "output_channels", 3 * args.shuffle**2)  # NetConfig allows 1 or 3: this probe only
    net: torch.nn.Module = build_network(cfg)
    return net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stubs lack it


def probe(args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(args.seed)
    clean = load(CSET9 / f"{args.image}_GT.png", args.side)
    noisy = load(CSET9 / f"{args.image}_noisy25.png", args.side)
    f = args.shuffle
    height, width = clean.shape[-2] // f, clean.shape[-1] // f  # the network's canvas
    net = network(args)
    z = make_input(NetConfig(), height, width, args.seed)
    adam = torch.optim.Adam(net.parameters(), lr=args.lr)
    draws = torch.Generator().manual_seed(args.seed + 1)
    crop = min(args.crop or height, height, width)

    def run(x: torch.Tensor, step: int) -> torch.Tensor:
        scale = args.reg * min(1.0, step / args.ramp) if args.ramp else args.reg
        x = (x + torch.randn(x.shape, generator=draws) * scale).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x).float()
        return F.pixel_shuffle(out, f) if f > 1 else out

    def score(x: torch.Tensor, reference: torch.Tensor) -> float:
        return float(psnr(x.clamp(0, 1), reference))

    alpha, ema, rows, start = 0.99**args.every, None, [], time.time()
    best: tuple[float, int] = (0.0, 0)
    for step in range(args.iterations):
        top = left = 0
        if crop < min(height, width):
            top = int(torch.randint(0, (height - crop) // 32 + 1, (1,), generator=draws)) * 32
            left = int(torch.randint(0, (width - crop) // 32 + 1, (1,), generator=draws)) * 32
        out = run(z[..., top : top + crop, left : left + crop], step)
        target = noisy[..., top * f : (top + crop) * f, left * f : (left + crop) * f]
        loss = ((out - target) ** 2).mean()
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        if (step + 1) % args.every:
            continue
        if crop < min(height, width):
            with torch.no_grad():
                out = run(z, step)
        out = out.detach()
        ema = out if ema is None else alpha * ema + (1 - alpha) * out
        rows.append([step + 1, round(score(out, clean), 3), round(score(ema, clean), 3), round(time.time() - start, 1)])
        best = max(best, (rows[-1][2], step + 1))
        if not args.quiet and (step + 1) % 100 == 0:
            print(*rows[-1], "best EMA", best, flush=True)
    return {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "best_ema_psnr": best[0],
        "best_iteration": best[1],
        "curve": {"iteration, output PSNR, EMA PSNR, seconds": rows},
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="F16", help="a CSet9 image: F16, baboon, ...")
    parser.add_argument("--side", type=int, default=256, help="its centre crop's side (0: the whole image)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--finest", type=int, default=0, help="channels at the finest level (0: --channels)")
    parser.add_argument("--crop", type=int, default=0, help="fit a random window of this side per step (0: all)")
    parser.add_argument("--shuffle", type=int, default=1, choices=(1, 2), help="2: the net at half size, shuffled")
    parser.add_argument("--ramp", type=int, default=0, help="steps over which the perturbation grows from 0")
    parser.add_argument("--reg", type=float, default=1 / 30, help="the input perturbation's deviation")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--every", type=int, default=10, help="score (and average) every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON written at the end")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = probe(args)
    args.out.write_text(json.dumps(result) + "\n")
    print(f"{args.image} {args.side or 'full'}: best EMA {result['best_ema_psnr']} dB at {result['best_iteration']}")


if __name__ == "__main__":
    main()
