"""Tiles against the whole image: the producer of the tiling figures in docs/fit.md and of docs/tile-seam.png.

Not a test: minutes to hours per fit at the default sizes. Makes a noisy observation of a clean image (resized so its
short side is ``--size``, centre-cropped square), restores it with ``dipc fit denoise`` once whole and once with
``--tile --overlap``, the same network, iterations and seed (fixed stop, so both run every iteration), and reports:
the PSNR of each against the clean image, the PSNR of the tiled result inside the blending zones (pixels that two or
more tiles cover) and outside them, and each fit's wall seconds. Writes ``tiling_seams.json`` and the picture of the
square where the first four tiles meet (``--crop`` px, enlarged ``--zoom`` times): clean | tiled | whole image.

    python benchmarks/tiling_seams.py --size 512 --tile 256 --overlap 32 --channels 32 --iterations 500 --threads 1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import (
    RESULTS,
    ROOT,
    environment,
    fit,
    masked_psnr,
    set_threads,
    study_parser,
    write_case,
    write_json,
)
from dip_compile.imageio import load_image, save_side_by_side
from dip_compile.metrics import psnr
from dip_compile.tiling import grid


def blend_zones(size: tuple[int, int], tile: int, overlap: int) -> torch.Tensor:
    """(H, W) 1 where two or more tiles of the grid overlap (where their images are blended), else 0."""
    count = torch.zeros(size)
    for box in grid(size, tile, overlap):
        box.crop(count).add_(1)
    return (count > 1).float()


def meeting_square(size: tuple[int, int], tile: int, overlap: int, side: int) -> tuple[int, int]:
    """(top, left) of the ``side`` square centred where the first row and column of overlaps cross."""
    boxes = grid(size, tile, overlap)
    second_row = min((b.top for b in boxes if b.top > 0), default=0)
    second_col = min((b.left for b in boxes if b.left > 0), default=0)
    centre_y, centre_x = (second_row + tile) // 2, (second_col + tile) // 2  # mid-overlap: [second, first end)
    clamp = lambda c, n: min(max(c - side // 2, 0), max(n - side, 0))  # noqa: E731
    return clamp(centre_y, size[0]), clamp(centre_x, size[1])


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS / "tiling", size=512, iterations=500, fit_args=True)
    parser.add_argument("--image", default="F16_GT.png")
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "tile-seam.png")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--channels", default="32", help="the network's channels (--channels of dipc fit)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crop", type=int, default=128, help="side of the pictured square (px)")
    parser.add_argument("--zoom", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    clean_path = write_case(args.data, args.image, args.size, args.out / f"clean-{args.size}.png")
    clean = load_image(clean_path)[None]
    size = (clean.shape[-2], clean.shape[-1])
    shared = ["--sigma", str(args.sigma), "--iterations", str(args.iterations), "--stop", "fixed", "--seed",
              str(args.seed), "--precision", args.precision, "--channels", args.channels, "--force", "-q", *args.fit_args]  # fmt: skip
    tiles = {"whole": [], "tiled": ["--tile", str(args.tile), "--overlap", str(args.overlap)]}
    seconds = {
        name: fit(["denoise", str(clean_path), "-o", str(args.out / f"{name}.png"), "--report",
                   str(args.out / f"{name}.json"), *shared, *extra], args.out / f"{name}.log")
        for name, extra in tiles.items()
    }  # fmt: skip
    whole, tiled = (load_image(args.out / f"{name}.png")[None] for name in tiles)
    zones = blend_zones(size, args.tile, args.overlap)
    result = {
        **environment(),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "tiles": len(grid(size, args.tile, args.overlap)),
        "noisy_psnr": json.loads((args.out / "whole.json").read_text()).get("input_psnr"),
        "whole_psnr": psnr(whole, clean).item(),
        "tiled_psnr": psnr(tiled, clean).item(),
        "tiled_psnr_in_blend_zones": masked_psnr(tiled, clean, zones),
        "tiled_psnr_outside_blend_zones": masked_psnr(tiled, clean, 1 - zones),
        "whole_psnr_in_blend_zones": masked_psnr(whole, clean, zones),
        "seconds": seconds,
    }
    write_json(args.out / "tiling_seams.json", result)

    top, left = meeting_square(size, args.tile, args.overlap, args.crop)
    side = min(args.crop, size[0], size[1])

    def square(image: torch.Tensor) -> torch.Tensor:
        cut = image[0, :, top : top + side, left : left + side]
        return cut.repeat_interleave(args.zoom, dim=-2).repeat_interleave(args.zoom, dim=-1)

    save_side_by_side([square(clean), square(tiled), square(whole)], args.picture, overwrite=True)
    for key, value in result.items():
        if key != "settings":
            print(f"{key}: {value}")
    print(f"picture (clean | tiled | whole, {side} px at y={top}, x={left}, x{args.zoom}): {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
