"""Top-down pipeline throughput: the seed page's transformers pipeline against `PoseEstimator`.

Same real images (../shared/data/coco-mini-train), same ground-truth person boxes, same random ViTPose weights.
The seed pipeline runs as its page shows it, one image at a time: VitPoseImageProcessor -> VitPoseForPoseEstimation
-> post_process_pose_estimation. Prints crops/s of each (medians of `--rounds` alternating rounds) and the ratio; asserts nothing.

    python benchmarks/bench_pipeline.py                       # ViTPose-S and -B on CPU, fp32
    python benchmarks/bench_pipeline.py --device cuda --dtype bf16 --sizes B --images 80
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import vitpose_core as vc  # noqa: E402
from benchmarks.bench_model import DTYPES, hf_model  # noqa: E402
from benchmarks.seed import seed_pipeline  # noqa: E402

SHARED = Path(os.environ.get("VITPOSE_SHARED", ROOT.parent / "shared"))


def load_images(limit: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    folder = SHARED / "data" / "coco-mini-train"
    coco = json.loads((folder / "person_keypoints_train2017.json").read_text())
    boxes: dict[int, list] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    images, per_image = [], []
    for info in sorted(coco["images"], key=lambda i: i["id"])[:limit]:
        with Image.open(folder / "images" / info["file_name"]) as img:
            images.append(np.asarray(ImageOps.exif_transpose(img).convert("RGB")))
        per_image.append(np.array(boxes.get(info["id"], []), np.float32).reshape(-1, 4))
    return images, per_image


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="S,B")
    parser.add_argument("--images", type=int, default=24, help="images of coco-mini-train to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--batch-size", type=int, default=None, help="PoseEstimator crops per forward")
    parser.add_argument("--flip-test", action="store_true")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed rounds, seed and ours alternating (a shared machine's load hits both alike); "
                             "the medians are printed")
    args = parser.parse_args()
    from transformers import VitPoseImageProcessor

    images, boxes = load_images(args.images)
    crops = sum(len(b) for b in boxes)
    dtype = DTYPES[args.dtype]
    print(f"{len(images)} images, {crops} crops, device {args.device}, {args.dtype}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'model':<10}{'seed crops/s':>14}{'ours crops/s':>14}{'ratio':>8}")
    for size in args.sizes.split(","):
        hf = hf_model(size)
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            model = vc.load_pose_model(tmp, device=args.device, dtype=dtype)
        hf = hf.to(args.device, dtype)
        processor = VitPoseImageProcessor()
        estimator = vc.PoseEstimator(model, device=args.device, batch_size=args.batch_size, flip_test=args.flip_test)
        estimator(images[:1], boxes[:1])  # warm-up both
        seed_pipeline(processor, hf, images[:1], boxes[:1], args.device, dtype)
        seed_times, ours_times = [], []
        for _ in range(args.rounds):
            seed_times.append(timed(lambda: seed_pipeline(processor, hf, images, boxes, args.device, dtype)))
            ours_times.append(timed(lambda: estimator(images, boxes)))
        seed_s, ours_s = float(np.median(seed_times)), float(np.median(ours_times))
        print(f"ViTPose-{size:<3}{crops / seed_s:>14.2f}{crops / ours_s:>14.2f}{seed_s / ours_s:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
