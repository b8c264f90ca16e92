"""Heatmap decoding cost per crop, each DARK blur side by side with no blur, on the same noisy ViTPose-sized maps.

    python benchmarks/bench_decoding.py [--crops 2000] [--device cpu|cuda]

Prints ms per crop for blur "none", "original" (mmpose 0.x post_dark_udp) and "transformers", and each blur's cost
as a multiple of "none" (target: at most 2x). Also the whole-map cv2 blur that post_dark_udp runs, for scale.
Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitpose_core as vc  # noqa: E402
from vitpose_core.heatmap_decoding import render_gaussians  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0], [47, 63], size=(args.crops, 17, 2)).astype(np.float32)
    maps = render_gaussians(points, (64, 48)) + rng.uniform(0, 0.05, (args.crops, 17, 64, 48)).astype(np.float32)
    heatmaps = torch.from_numpy(maps).to(args.device)
    boxes = np.tile(np.array([[10, 20, 120, 240]], np.float32), (args.crops, 1))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def decode(blur: str):
        return lambda: (vc.decode_heatmaps(heatmaps, boxes, blur=blur), sync())

    base = timed(decode("none"), args.repeats)
    print(f"{args.crops} crops x 17 keypoints of 64x48 on {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"  none          {1000 * base / args.crops:.4f} ms/crop")
    for blur in ("original", "transformers"):
        seconds = timed(decode(blur), args.repeats)
        print(f"  {blur:<13} {1000 * seconds / args.crops:.4f} ms/crop  ({seconds / base:.2f}x none)")
    try:
        import cv2

        sample = maps[: min(200, args.crops)].copy()
        seconds = timed(lambda: [cv2.GaussianBlur(m, (11, 11), 0, m) for crop in sample for m in crop], 3)
        print(f"  whole-map cv2 blur alone (what post_dark_udp runs per map): "
              f"{1000 * seconds / len(sample):.4f} ms/crop")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
