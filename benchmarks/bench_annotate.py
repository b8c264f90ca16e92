"""Ray overhead: the annotate job's crops/s against in-process PoseEstimator, same images, boxes and weights.

The corpus is coco-mini-train's 80 real images, repeated (under new names) until it holds >= `--crops` person boxes;
boxes are the ground truth, so both sides run exactly the same crops. Prints both rates and the overhead; asserts
nothing.

    python benchmarks/bench_annotate.py                      # ViTPose-S, CPU, >= 300 crops
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vitpose_core as vc  # noqa: E402
from benchmarks.bench_model import hf_model  # noqa: E402
from benchmarks.bench_pipeline import SHARED  # noqa: E402
from vitpose_batch.pipeline.job import AnnotateOptions, run_annotate  # noqa: E402


def build_corpus(folder: Path, min_crops: int) -> tuple[Path, int]:
    """Copies of the mini-train images under new names, with a detection-results box file; returns (boxes, crops)."""
    source = SHARED / "data" / "coco-mini-train"
    coco = json.loads((source / "person_keypoints_train2017.json").read_text())
    boxes = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    results, crops, copy = [], 0, 0
    while crops < min_crops:
        for info in coco["images"]:
            new_id = copy * 10_000_000 + info["id"]
            shutil.copy(source / "images" / info["file_name"], folder / f"{new_id:012d}.jpg")
            for box in boxes.get(info["id"], []):
                results.append({"image_id": new_id, "category_id": 1, "bbox": box, "score": 1.0})
            crops += len(boxes.get(info["id"], []))
        copy += 1
    box_file = folder.parent / "boxes.json"
    box_file.write_text(json.dumps(results))
    return box_file, crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="S")
    parser.add_argument("--crops", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--actors", type=int)
    parser.add_argument("--cpus-per-actor", type=float)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = tmp_path / "model"
        hf_model(args.size).save_pretrained(model_dir)
        images_dir = tmp_path / "images"
        images_dir.mkdir()
        box_file, crops = build_corpus(images_dir, args.crops)

        # In process: decode every image, then one PoseEstimator call per 16 images (the job's batch size).
        from vitpose_batch.pipeline.image_decoding import decode_image
        from vitpose_batch.schemas.box_files import load_boxes

        index = load_boxes(str(box_file))
        paths = sorted(images_dir.iterdir())
        estimator = vc.PoseEstimator(vc.load_pose_model(str(model_dir), device=args.device), device=args.device)
        start = time.perf_counter()
        for i in range(0, len(paths), 16):
            chunk = paths[i:i + 16]
            images = [decode_image(p.read_bytes()) for p in chunk]
            found = [index.boxes_for(file_name=p.name) for p in chunk]
            estimator(images, [f[0] for f in found], [f[1] for f in found])
        in_process = time.perf_counter() - start

        summary = run_annotate(AnnotateOptions(
            input=str(images_dir), output=str(tmp_path / "out"), model=str(model_dir), detector=None,
            boxes=str(box_file), device=args.device, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
        ))
        job_rate = summary.persons / summary.seconds
        in_rate = crops / in_process
        print(f"{len(paths)} images, {crops} crops, ViTPose-{args.size}, {args.device}")
        print(f"in-process PoseEstimator: {in_rate:.2f} crops/s ({in_process:.1f} s)")
        print(f"annotate job on Ray:      {job_rate:.2f} crops/s ({summary.seconds:.1f} s, Ray start included)")
        print(f"Ray overhead end to end: {100 * (in_rate / job_rate - 1):.1f} %")
        if summary.steady_crops_per_s:
            print(f"annotate job after start-up: {summary.steady_crops_per_s:.2f} crops/s -> overhead "
                  f"{100 * (in_rate / summary.steady_crops_per_s - 1):.1f} %")


if __name__ == "__main__":
    main()
