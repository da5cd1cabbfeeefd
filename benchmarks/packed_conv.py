"""Why packing does or does not pay on this device: one convolution of K jobs, separately vs grouped.

Not a test: seconds. ``--pack K`` runs K networks under ``torch.func.vmap``, which turns each convolution of K
different weight sets into one grouped convolution (groups=K). This times forward + backward of a 3x3 convolution
at the paper net's widths (128 channels, and 132 = 128 + 4 skip channels, the input of its up blocks) for K
separate convolutions, the grouped one, and (the best a batch could do) K inputs through one shared weight.
Prints a table and writes ``packed_conv.json``.

    python benchmarks/packed_conv.py --k 4 --sizes 8,32,64 --threads 1
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, Results, Row, environment, interleaved, markdown, set_threads, study_parser


def case(k: int, channels: int, size: int, device: str, repeats: int) -> Row:
    xs = [torch.randn(1, channels, size, size, device=device, requires_grad=True) for _ in range(k)]
    ws = [torch.randn(128, channels, 3, 3, device=device, requires_grad=True) for _ in range(k)]
    grouped_x = torch.cat(xs, 1).detach().requires_grad_()
    grouped_w = torch.cat(ws, 0).detach().requires_grad_()
    batch_x = torch.cat(xs, 0).detach().requires_grad_()

    def synced(step: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            step().backward()
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        return run

    runners = {
        "separate_ms": synced(lambda: sum(F.conv2d(x, w, padding=1).sum() for x, w in zip(xs, ws, strict=True))),  # type: ignore[arg-type,return-value]
        "grouped_ms": synced(lambda: F.conv2d(grouped_x, grouped_w, padding=1, groups=k).sum()),
        "shared_weight_ms": synced(lambda: F.conv2d(batch_x, ws[0], padding=1).sum()),
    }
    times = interleaved(runners, repeats)
    return {"k": k, "channels": channels, "size": size} | {n: 1000 * statistics.mean(t) for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS, data=False)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--sizes", default="8,32,64")
    parser.add_argument("--channels", default="128,132")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    results = Results(args.out / "packed_conv.json", "rows", environment())
    for c in map(int, args.channels.split(",")):
        for s in map(int, args.sizes.split(",")):
            results.add(case(args.k, c, s, args.device, args.repeats))
    head = [
        "K",
        "in channels",
        "size",
        "K separate (ms)",
        "grouped (ms)",
        "grouped / separate",
        "one shared weight (ms)",
    ]
    print(markdown(head, ([r["k"], r["channels"], r["size"], f"{r['separate_ms']:.1f}", f"{r['grouped_ms']:.1f}",
                           f"{r['grouped_ms'] / r['separate_ms']:.2f}x", f"{r['shared_weight_ms']:.1f}"]
                          for r in results.rows)))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
