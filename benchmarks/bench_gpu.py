"""End to end on one GPU: the annotate job's crops/s from JPEG bytes, with the seed page's pipeline beside it.

    python benchmarks/bench_gpu.py                      # ViTPose-B, bf16, cuda, 4,000 images, seed on 200
    python benchmarks/bench_gpu.py --device cpu --size S --images 20 --seed-images 4 --batch-size 2   # CPU smoke

The corpus is coco-mini-train's 80 real JPEGs repeated as hard links (bench_host.build_corpus) up to `--images`,
with a COCO annotation file giving each link its source image's ground-truth person boxes (`--boxes`), so crops/s
does not depend on a detector (`--detector PATH` runs one instead). The model is a random-weight ViTPose of
`--size` written as an original .pth (vitpose_batch.demo_checkpoint); random weights cost the FLOPs of trained ones.

1. The job, end to end (`run_annotate`: checks, Ray start in this process, model load, every image read, decoded,
   cropped, estimated and written as Parquet), and its rate after start-up (Summary.steady_crops_per_s).
2. The seed page's pipeline on the first `--seed-images` of the same files, one image at a time: PIL decode,
   VitPoseImageProcessor, VitPoseForPoseEstimation holding the same weights, post_process_pose_estimation, on the
   same device and dtype, always with the ground-truth boxes.

Prints the figures measured (and writes them with `--json`); asserts nothing beyond the two models agreeing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.bench_host import build_corpus  # noqa: E402
from benchmarks.bench_pipeline import SHARED  # noqa: E402
from benchmarks.seed import DTYPES, hf_twin, run_seed  # noqa: E402
from vitpose_core.model import SIZES  # noqa: E402

MIN_STEADY_BATCHES = 10  # fewer batches: no after-start-up rate is reported


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="B", choices=sorted(SIZES), help="ViTPose size (default B)")
    parser.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--images", type=int, default=4000, help="images the job labels (default 4000)")
    parser.add_argument("--seed-images", type=int, default=200, help="of those, how many the seed pipeline runs")
    parser.add_argument("--batch-size", type=int, help="the job's images per actor call (its default if unset)")
    parser.add_argument("--crops-per-forward", type=int, help="the job's crops per model forward")
    parser.add_argument("--compile", action="store_true", help="the job runs torch.compile in its actors")
    parser.add_argument("--detector", help="a person detector for the job instead of the ground-truth boxes")
    parser.add_argument("--workdir", help="where the temporary corpus goes (same file system as the shared data)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.images < 1 or args.seed_images < 0:
        parser.error("--images must be >= 1 and --seed-images >= 0")
    args.seed_images = min(args.seed_images, args.images)
    return args


def build_models(folder: Path, size: str):
    """(checkpoint .pth, transformers model with the same weights, parameter count); benchmarks.seed checks that
    both agree."""
    from vitpose_batch.demo_checkpoint import write_demo_checkpoint

    checkpoint = write_demo_checkpoint(folder / f"vitpose-{size}-random.pth", size=size)
    hf = hf_twin(checkpoint)
    return checkpoint, hf, sum(p.numel() for p in hf.parameters())


def run_job(args, corpus: Path, boxes: Path, checkpoint: Path, output: Path) -> dict:
    """The annotate job end to end; its figures (seconds: the whole run_annotate call)."""
    from vitpose_batch.pipeline.job import AnnotateOptions, run_annotate

    options = AnnotateOptions(
        input=str(corpus), output=str(output), model=str(checkpoint), detector=args.detector,
        boxes=None if args.detector else str(boxes), device=args.device, dtype=args.dtype, compile=args.compile,
        crops_per_forward=args.crops_per_forward,
    )
    if args.batch_size:
        options.batch_size = args.batch_size
    start = time.perf_counter()
    summary = run_annotate(options)
    seconds = time.perf_counter() - start
    # The job's after-start-up rate spans its first to its last batch; over a few batches that arrive together it
    # says nothing (measured: 30 crops/s for ViTPose-S on 2 cores over 4 batches, where the model alone does 8).
    batches = -(-summary.images // options.batch_size)
    steady = summary.steady_crops_per_s if batches >= MIN_STEADY_BATCHES else None
    return {"images": summary.images, "persons": summary.persons, "errors": summary.errors, "seconds": seconds,
            "images_per_s": summary.images / seconds, "crops_per_s": summary.persons / seconds,
            "batches": batches, "steady_crops_per_s": steady}


def run_seed_on(args, files: list[Path], boxes: Path, hf) -> dict:
    """The seed page's pipeline on `files`, one image at a time, with their ground-truth boxes."""
    from vitpose_batch.schemas.box_files import load_boxes

    index = load_boxes(str(boxes))
    found = [index.boxes_for(file_name=path.name)[0] for path in files]
    try:
        return run_seed(hf, [path.read_bytes() for path in files], found, args.device, args.dtype)
    except ValueError as exc:
        sys.exit(f"bench_gpu.py: error: {exc}: more --seed-images")


def report(figures: dict) -> None:
    job, seed = figures["job"], figures.get("seed")
    print(f"device: {figures['device_name']} ({figures['device']}), torch {figures['torch']}, {figures['dtype']}, "
          f"ViTPose-{figures['size']} ({figures['parameters'] / 1e6:.1f} M parameters, random weights)")
    print(f"job: {job['images']} images, {job['persons']} persons, {job['errors']} error rows, "
          f"{figures['boxes']}, in {job['seconds']:.1f} s")
    print(f"job end to end:       {job['images_per_s']:10.2f} images/s {job['crops_per_s']:10.2f} crops/s")
    steady = job["steady_crops_per_s"]
    print(f"job after start-up:   {'':>19} " + (f"{steady:10.2f} crops/s" if steady else
                                           f"       n/a ({job['batches']} batches; {MIN_STEADY_BATCHES} needed)"))
    if seed is None:
        return
    print(f"seed pipeline:        {seed['images']} images, {seed['persons']} persons, in {seed['seconds']:.1f} s: "
          f"{seed['crops_per_s']:.2f} crops/s")
    ratios = f"end to end {figures['ratio_end_to_end']:.2f}x"
    if figures.get("ratio_after_start_up"):
        ratios += f", after start-up {figures['ratio_after_start_up']:.2f}x"
    print(f"job / seed crops/s:   {ratios}")
    if figures["boxes"] != "ground-truth boxes":
        print("(the job's time includes detection; the seed pipeline's does not: it was given the ground-truth boxes)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu.py: error: --device cuda, but torch sees no GPU here (use --device cpu for a smoke run)")
    if not (SHARED / "data" / "coco-mini-train" / "person_keypoints_train2017.json").is_file():
        sys.exit(f"bench_gpu.py: error: no coco-mini-train under {SHARED}/data (set VITPOSE_SHARED)")
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=args.workdir))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        try:
            boxes = build_corpus(corpus, args.images)
        except OSError as exc:
            sys.exit(f"bench_gpu.py: error: cannot hard-link the shared images into {corpus} ({exc.strerror}); "
                     "give --workdir on the shared data's file system")
        checkpoint, hf, parameters = build_models(work, args.size)
        figures = {
            "device": args.device, "torch": torch.__version__, "dtype": args.dtype, "size": args.size,
            "parameters": parameters, "compile": args.compile,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores",
            "boxes": f"detector {args.detector}" if args.detector else "ground-truth boxes",
        }
        try:
            figures["job"] = run_job(args, corpus, boxes, checkpoint, work / "out")
        except Exception as exc:  # noqa: BLE001 - the job's refusals and failures, in one line as the CLI says them
            from vitpose_batch.cli import one_line_reason

            sys.exit(f"bench_gpu.py: the job failed: {one_line_reason(exc)}")
        if args.seed_images:
            files = sorted(corpus.iterdir())[: args.seed_images]
            seed = figures["seed"] = run_seed_on(args, files, boxes, hf)
            figures["ratio_end_to_end"] = figures["job"]["crops_per_s"] / seed["crops_per_s"]
            steady = figures["job"]["steady_crops_per_s"]
            figures["ratio_after_start_up"] = steady / seed["crops_per_s"] if steady else None
        report(figures)
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
