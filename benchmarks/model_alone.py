"""ViTPose alone at its best batch: crops/s per dtype and batch, achieved TFLOP/s against the card's peak.

    python -m benchmarks.model_alone --size B --device cuda --dtypes bf16,fp16 --batches 64,128,256,512 [--compile]

The input is a random (N, 3, 256, 192) tensor already on the device: no crops, no decoding, no copies. FLOPs per
crop are 2x the model's multiply-accumulates (`macs_per_crop`, counted from its config). Peaks are the dense (no
sparsity) bf16/fp16 tensor-core figures of NVIDIA's datasheets (`PEAK_TFLOPS`); an unknown card has none unless
`--peak-tflops` gives it. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vitpose_core.model import ViTPoseConfig

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Dense bf16 = fp16 tensor TFLOP/s (fp32 accumulate), NVIDIA datasheets; matched in this order against
# torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_TFLOPS = (
    ("H200 NVL", 835.5), ("H200", 989.4), ("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H100", 989.4),
    ("H800", 989.4), ("GH200", 989.4), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.05),
    ("L40", 181.05), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 4090", 165.2), ("RTX 6000 Ada", 364.2),
)


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16/fp16 tensor peak in TFLOP/s, or None when the name is not in PEAK_TFLOPS."""
    return next((peak for name, peak in PEAK_TFLOPS if name in device_name), None)


def macs_per_crop(config: ViTPoseConfig) -> float:
    """Multiply-accumulates of one forward (one crop): patch embedding, every block (qkv, attention, projection,
    MLP), and the simple decoder's 3x3 convolution (or the classic decoder's two 4x4 deconvolutions and 1x1)."""
    rows, cols = config.patch_grid
    tokens, width = rows * cols, config.hidden_size
    patch = tokens * width * 3 * config.patch_size ** 2
    block = tokens * width * width * (3 + 1 + 2 * config.mlp_ratio) + 2 * tokens * tokens * width
    h, w = config.heatmap_size
    if config.decoder == "simple":
        head = h * w * config.num_keypoints * width * 9
    else:  # deconvs 4x4 stride 2 to 256 channels at 2x and 4x the token grid, then 1x1
        head = (rows * 2 * cols * 2) * 256 * width * 16 + h * w * 256 * 256 * 16 + h * w * config.num_keypoints * 256
    return float(patch + config.num_layers * block + head)


def crops_per_s(forward, batch: torch.Tensor, seconds: float = 1.0, min_iters: int = 3) -> float:
    """Forward passes of `batch` for at least `seconds` (and `min_iters`), after one untimed pass."""
    cuda = batch.device.type == "cuda"
    with torch.inference_mode():
        forward(batch)
        if cuda:
            torch.cuda.synchronize()
        iters, start = 0, time.perf_counter()
        while iters < min_iters or time.perf_counter() - start < seconds:
            forward(batch)
            iters += 1
            if cuda and iters % 4 == 0:
                torch.cuda.synchronize()
        if cuda:
            torch.cuda.synchronize()
        return iters * len(batch) / (time.perf_counter() - start)


def run_model_alone(model_ref: str, *, device: str, dtypes: list[str], batches: list[int], compile: bool,
                    seconds: float = 1.0, peak: float | None = None) -> dict:
    """crops/s of each dtype x batch, the best of each dtype with its TFLOP/s, and the compiled model's at the best
    bf16 (else first dtype) batch."""
    import vitpose_core as vc

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    peak = peak if peak is not None else peak_tflops(name)
    results: dict = {"device_name": name, "peak_tflops": peak, "runs": [], "best": {}}
    for dtype in dtypes:
        model = vc.load_pose_model(model_ref, device=device, dtype=dtype)
        results["gmacs_per_crop"] = macs_per_crop(model.config) / 1e9
        flops = 2 * macs_per_crop(model.config)
        for size in batches:
            batch = torch.randn(size, 3, *model.config.image_size, device=device, dtype=DTYPES[dtype])
            rate = crops_per_s(model, batch, seconds)
            results["runs"].append({"dtype": dtype, "batch": size, "crops_per_s": rate,
                                    "tflops": rate * flops / 1e12})
        best = max((r for r in results["runs"] if r["dtype"] == dtype), key=lambda r: r["crops_per_s"])
        results["best"][dtype] = dict(best, peak_share=best["tflops"] / peak if peak else None)
        del model
    if compile:
        dtype = "bf16" if "bf16" in dtypes else dtypes[0]
        size = results["best"][dtype]["batch"]
        model = vc.load_pose_model(model_ref, device=device, dtype=dtype)
        compiled = torch.compile(model)
        batch = torch.randn(size, 3, *model.config.image_size, device=device, dtype=DTYPES[dtype])
        start = time.perf_counter()
        with torch.inference_mode():
            compiled(batch)
        compile_s = time.perf_counter() - start
        rate = crops_per_s(compiled, batch, seconds)
        tflops = rate * 2 * macs_per_crop(model.config) / 1e12
        results["compiled"] = {"dtype": dtype, "batch": size, "crops_per_s": rate, "tflops": tflops,
                               "peak_share": tflops / peak if peak else None, "compile_s": compile_s,
                               "speedup": rate / results["best"][dtype]["crops_per_s"]}
    return results


def report(figures: dict, out=sys.stdout) -> None:
    peak = figures["peak_tflops"]
    print(f"model alone on {figures['device_name']} ({figures['gmacs_per_crop']:.2f} GMACs per crop, peak "
          + (f"{peak:.1f} TFLOP/s)" if peak else "unknown)"), file=out)
    for run in figures["runs"]:
        print(f"  {run['dtype']} batch {run['batch']:4d}: {run['crops_per_s']:10.1f} crops/s, "
              f"{run['tflops']:7.2f} TFLOP/s", file=out)
    for dtype, best in figures["best"].items():
        share = f", {100 * best['peak_share']:.1f} % of peak" if best["peak_share"] is not None else ""
        print(f"  best {dtype}: batch {best['batch']}, {best['crops_per_s']:.1f} crops/s{share}", file=out)
    if "compiled" in figures:
        c = figures["compiled"]
        share = f", {100 * c['peak_share']:.1f} % of peak" if c["peak_share"] is not None else ""
        print(f"  torch.compile {c['dtype']} batch {c['batch']}: {c['crops_per_s']:.1f} crops/s "
              f"({c['speedup']:.2f}x eager{share}; compiled in {c['compile_s']:.1f} s)", file=out)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from benchmarks.hot_path import write_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="B", help="S, B, L, H or tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="bf16,fp16")
    parser.add_argument("--batches", default="64,128,256,512")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per run")
    parser.add_argument("--peak-tflops", type=float, help="the card's peak when its name is not known here")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        model = write_model(Path(work), args.size)
        figures = run_model_alone(str(model), device=args.device, dtypes=args.dtypes.split(","),
                                  batches=[int(b) for b in args.batches.split(",")], compile=args.compile,
                                  seconds=args.seconds, peak=args.peak_tflops)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
