"""The pose actor's hot path, in-process: `PoseWorker` (the actor class itself, no Ray) fed ENCODED batches exactly
as its actor receives them, with two calls in flight as the actor runs them.

    python -m benchmarks.hot_path --data ../shared/data/coco-mini-train --device cpu --size tiny --images 2000

Prints images/s, crops/s and where the time goes per stage, and the host work per image outside JPEG decoding and
the model (the bookkeeping every image costs a core: boxes, rows, copies, hand-off), which is what limits a GPU
actor given a few CPUs. Stages (vitpose_core.stage_clock), summed over both threads, per image:

* read: the harness reading the distinct files once and building the Arrow batches (in the job, read tasks on
  other CPUs do it ahead of the actor; here it is not overlapped and not in the rates);
* boxes: Arrow rows -> items with their ground-truth boxes attached; decode: JPEG bytes -> pixels (nvjpeg on CUDA);
* crop: crops warped and normalised (on CUDA: launches, and the host's copy into pinned memory, `upload`);
* model: the forward (on CUDA: launches); heatmaps: decoding, and the keypoints' copy to the host (on CUDA this
  waits for the GPU); rows: the Arrow rows out;
* host: the calling threads' CPU time outside decode, crop's warps, model and heatmaps (upload stays in).

On CUDA each device stage's GPU time, and the GPU's busy share (union of the device stages' intervals over the wall
time), come from CUDA events. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchmarks.corpus import Corpus, load_corpus
from vitpose_core.stage_clock import StageClock

STAGES = ("boxes", "decode", "crop", "upload", "model", "heatmaps", "rows")
DEVICE_COMPUTE = ("decode", "crop", "model", "heatmaps")  # not host bookkeeping (upload, a copy, is counted back)


def write_model(folder: Path, size: str) -> Path:
    """A random-weight ViTPose of `size` (S, B, L, H, or "tiny": 1 layer, 32 wide) as an original .pth."""
    from vitpose_batch.demo_checkpoint import write_demo_checkpoint
    from vitpose_core.model import ViTPose, ViTPoseConfig

    if size != "tiny":
        return write_demo_checkpoint(Path(folder) / f"vitpose-{size}-random.pth", size=size)
    torch.manual_seed(0)
    model = ViTPose(ViTPoseConfig(hidden_size=32, num_layers=1, num_heads=1))
    path = Path(folder) / "vitpose-tiny-random.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def run_hot_path(model: Path, corpus: Corpus, *, device: str, dtype: str | None, batch_size: int, threads: int,
                 calls_in_flight: int = 2, crops_per_forward: int | None = None, compile: bool = False,
                 warmup_batches: int = 2) -> dict:
    """Time PoseWorker over the corpus; the figures as a dict (rates per second, stages in ms per image)."""
    from vitpose_batch.pipeline.pose_worker import PoseWorker
    from vitpose_batch.schemas.box_files import load_boxes

    torch.set_num_threads(threads)
    worker = PoseWorker(str(model), None, device, dtype, False, None, crops_per_forward, threads,
                        boxes=load_boxes(str(corpus.boxes_file)), compile=compile)
    build = time.perf_counter()
    batches = corpus.batches(batch_size)
    build_s = time.perf_counter() - build
    for batch in batches[:warmup_batches]:  # kernels chosen, allocator warm, compile done
        worker(batch)
    cuda = worker.estimator.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    clock = worker.clock = worker.estimator.clock = StageClock(worker.estimator.device)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=calls_in_flight, thread_name_prefix="call") as pool:
        tables = list(pool.map(worker, batches))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    images = sum(len(t) for t in tables)
    persons = sum(len(p) for t in tables for p in t.column("persons").to_pylist())
    errors = sum(e is not None for t in tables for e in t.column("error").to_pylist())
    totals = clock.totals()
    per_image = {name: {"wall_ms": 1e3 * s.wall_s / images, "cpu_ms": 1e3 * s.cpu_s / images,
                        **({"gpu_ms": 1e3 * s.device_s / images} if s.device_s is not None else {})}
                 for name, s in totals.items()}
    cpu = {name: s.cpu_s for name, s in totals.items()}
    host_s = cpu.get("call", 0.0) - sum(cpu.get(name, 0.0) for name in DEVICE_COMPUTE) + cpu.get("upload", 0.0)
    busy = clock.busy_s()
    return {
        "device": str(worker.estimator.device), "dtype": str(worker.estimator.dtype).removeprefix("torch."),
        "images": images, "persons": persons, "errors": errors, "batch_size": batch_size,
        "calls_in_flight": calls_in_flight, "threads": threads,
        "crops_per_forward": worker.estimator.batch_size, "seconds": seconds,
        "images_per_s": images / seconds, "crops_per_s": persons / seconds,
        "read_ms_per_image": 1e3 * (corpus.read_s / corpus.distinct + build_s / max(len(corpus.names), 1)),
        "stages_per_image": per_image,
        "host_ms_per_image": 1e3 * host_s / images,
        "gpu_busy_share": None if busy is None else busy / seconds,
        "gpu_memory_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def report(figures: dict, out=sys.stdout) -> None:
    f = figures
    print(f"hot path: PoseWorker in-process, {f['device']} {f['dtype']}, batches of {f['batch_size']}, "
          f"{f['calls_in_flight']} calls in flight, {f['threads']} threads, {f['crops_per_forward']} crops/forward",
          file=out)
    print(f"  {f['images']} images, {f['persons']} crops, {f['errors']} errors in {f['seconds']:.2f} s: "
          f"{f['images_per_s']:.1f} images/s, {f['crops_per_s']:.1f} crops/s", file=out)
    print("  per image (ms, summed over threads): "
          + ", ".join(f"{name} {s['wall_ms']:.3f}" + (f" (GPU {s['gpu_ms']:.3f})" if "gpu_ms" in s else "")
                      for name, s in f["stages_per_image"].items() if name in STAGES)
          + f"; read {f['read_ms_per_image']:.3f} (not overlapped, not in the rates)", file=out)
    print(f"  host work outside decoding and the model: {f['host_ms_per_image']:.3f} ms of one core per image "
          f"(target <= 0.5)", file=out)
    if f["gpu_busy_share"] is not None:
        print(f"  GPU busy share {f['gpu_busy_share']:.2f}, memory peak {f['gpu_memory_peak_mib']:.0f} MiB", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="a COCO keypoints folder (e.g. coco-mini-train)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--size", default=None, help="S, B, L, H or tiny (default: B on cuda, tiny on cpu)")
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, help="images per call (default: 64 on cuda, 16 on cpu)")
    parser.add_argument("--threads", type=int, default=4, help="the actor's CPUs (decode pool, torch threads)")
    parser.add_argument("--crops-per-forward", type=int)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="hot-path-") as work:
        corpus = load_corpus(args.data, args.images, Path(work))
        model = write_model(Path(work), args.size or ("B" if cuda else "tiny"))
        figures = run_hot_path(model, corpus, device=args.device, dtype=args.dtype or ("bf16" if cuda else None),
                               batch_size=args.batch_size or (64 if cuda else 16), threads=args.threads,
                               crops_per_forward=args.crops_per_forward)
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
