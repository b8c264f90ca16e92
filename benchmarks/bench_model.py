"""Model-only throughput: vitpose_core's ViTPose against transformers' VitPoseForPoseEstimation, same weights.

Prints crops/s of each and the ratio; asserts nothing. Random weights (no pretrained ones here) cost the same FLOPs.

    python benchmarks/bench_model.py                      # ViTPose-S and -B, fp32, batch 32, CPU
    python benchmarks/bench_model.py --device cuda --dtype bf16 --batch-size 128
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitpose_core as vc  # noqa: E402
from vitpose_core.model import SIZES  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def hf_model(size: str):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    hidden, depth, heads = SIZES[size]
    backbone = VitPoseBackboneConfig(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads, out_indices=[depth], layer_norm_eps=1e-6
    )
    torch.manual_seed(0)
    return VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=17)).eval()


def crops_per_second(fn, batch: torch.Tensor, iters: int, device: str) -> float:
    with torch.inference_mode():
        fn(batch)  # warm-up: allocator, kernels selection
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            fn(batch)
        if device == "cuda":
            torch.cuda.synchronize()
    return iters * batch.shape[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S,B")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    args = parser.parse_args()
    dtype = DTYPES[args.dtype]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}, {args.dtype}, "
          f"batch {args.batch_size}, {args.iters} timed batches")
    print(f"{'model':<10}{'ours crops/s':>14}{'transformers':>14}{'ratio':>8}")
    for size in args.sizes.split(","):
        hf = hf_model(size)
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            ours = vc.load_pose_model(tmp, device=args.device, dtype=dtype)
        hf = hf.to(args.device, dtype)
        batch = torch.randn(args.batch_size, 3, 256, 192, device=args.device, dtype=dtype)
        ours_rate = crops_per_second(ours, batch, args.iters, args.device)
        hf_rate = crops_per_second(lambda x: hf(x).heatmaps, batch, args.iters, args.device)
        print(f"ViTPose-{size:<3}{ours_rate:>14.2f}{hf_rate:>14.2f}{ours_rate / hf_rate:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
