"""Why packing does or does not pay on this device: one convolution of K jobs, separately vs grouped.

Not a test: seconds. ``--pack K`` runs K networks under ``torch.func.vmap``, which turns each convolution of K
different weight sets into one grouped convolution (groups=K). This times forward + backward of a 3x3 convolution
at the paper net's widths (128 channels, and 132 = 128 + 4 skip channels, the input of its up blocks) for K
separate convolutions, the grouped one, and (the best a batch could do) K inputs through one shared weight.
Prints a table and writes ``packed_conv.json``.

    python benchmarks/packed_conv.py --k 4 --sizes 8,32,64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def case(k: int, channels: int, size: int, device: str, repeats: int) -> dict[str, Any]:
    xs = [torch.randn(1, channels, size, size, device=device, requires_grad=True) for _ in range(k)]
    ws = [torch.randn(128, channels, 3, 3, device=device, requires_grad=True) for _ in range(k)]
    grouped_x = torch.cat(xs, 1).detach().requires_grad_()
    grouped_w = torch.cat(ws, 0).detach().requires_grad_()
    batch_x = torch.cat(xs, 0).detach().requires_grad_()

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def separate() -> None:
        sum(F.conv2d(x, w, padding=1).sum() for x, w in zip(xs, ws, strict=True)).backward()  # type: ignore[union-attr]
        sync()

    def grouped() -> None:
        F.conv2d(grouped_x, grouped_w, padding=1, groups=k).sum().backward()
        sync()

    def shared() -> None:
        F.conv2d(batch_x, ws[0], padding=1).sum().backward()
        sync()

    row: dict[str, Any] = {"k": k, "channels": channels, "size": size}
    row.update(
        {
            name: timed(fn, repeats)
            for name, fn in (("separate_ms", separate), ("grouped_ms", grouped), ("shared_weight_ms", shared))
        }
    )
    return row  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--sizes", default="8,32,64")
    parser.add_argument("--channels", default="128,132")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        case(args.k, c, s, args.device, args.repeats)
        for c in (int(c) for c in args.channels.split(","))
        for s in (int(s) for s in args.sizes.split(","))
    ]
    print("| K | in channels | size | K separate (ms) | grouped (ms) | grouped / separate | one shared weight (ms) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['k']} | {r['channels']} | {r['size']} | {r['separate_ms']:.1f} | {r['grouped_ms']:.1f} | "
            f"{r['grouped_ms'] / r['separate_ms']:.2f}x | {r['shared_weight_ms']:.1f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    info = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "rows": rows}
    (args.out / "packed_conv.json").write_text(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
