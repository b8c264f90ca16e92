"""Person detectors on the shared COCO sets: box AP per score threshold, boxes per image, and ms per image.

    python benchmarks/bench_detectors.py [--thresholds 0.05,0.1,0.3] [--device cpu] [--num-threads N]
                                         [--timing-iters 3] (0: AP only)  [--thresholds ''] (timing only)

Reads ../shared (or $VITPOSE_SHARED) in place. Prints figures and asserts nothing.

Measured figures (they chose the defaults of `vitpose_core.detectors`, `score_threshold=None`).

Person box AP (pycocotools COCOeval, iouType bbox, catIds [1], maxDets 100) on the shared real COCO sets
(coco-val-4: 4 images / 14 persons; coco-mini-train: 80 images / 172 persons), with the mean boxes per image handed
to the pose model:

    detector                threshold   AP coco-val-4   AP coco-mini-train   boxes / image (val-4, mini-train)
    YOLOX-nano 416x416         0.05         0.727            0.313                  4.2,  3.9
                               0.10         0.727            0.305                  3.5,  2.5   <- default
                               0.30         0.618            0.276                  2.8,  1.3
    RTMDet-nano 640x640        0.05         0.823            0.401                 62.8, 89.6
                               0.10         0.823            0.401                 24.5, 45.5
                               0.30         0.823            0.384                  3.8,  5.2   <- default
    (RTMDet-nano 416x416       0.10 / 0.30  0.744 / 0.744    0.371 / 0.326: 640 is clearly better)

YOLOX: 0.1 keeps the AP of 0.05 with a third fewer boxes; 0.3 costs 0.11 AP on coco-val-4. RTMDet scores are lower
and flatter (its graph keeps everything above ~0.05, up to 100 boxes): 0.1 still sends 25-45 boxes per image, 0.3
sends 4-5 for the same val AP and 0.017 less on mini-train. transformers models default to 0.3, the threshold of the
reference RT-DETR pipeline (no pretrained RT-DETR weights were at hand to measure). Lower thresholds (e.g. 0.05)
raise recall for COCO-style keypoint AP runs at the price of many more pose crops.

Speed on a 2-core CPU (onnxruntime 1.32, 2 intra-op threads, 32 mini-train images, pre/post-processing included),
from `--timing-iters 5`, which alternates the configurations round by round and prints the median round.
The machine is shared: whole runs vary 2-5x with its load (an earlier, busier one gave YOLOX ~59 and RTMDet ~153
ms/image), so compare rows of one run only. Two quiet runs, ms/image:

    detector              one image per call   batch_size 8 (numpy images)   batch_size 8, torch tensors (CPU)
    YOLOX-nano 416            11.3 / 12.2              11.3 / 11.7                     19.5 / 18.9
    RTMDet-nano 640           30.5 / 29.6              36.4 / 32.4                     35.2 / 36.3

On the CPU batching buys little (YOLOX at most ~5%); what it saves, one kernel launch sequence per 8 images, is a
GPU matter that could not be measured here. The torch path costs ~7 ms/image more on the CPU (integer torch ops
vs cv2's SIMD resize), hence numpy images keep the numpy path on a CPU session.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitpose_core.detectors import load_detector  # noqa: E402

SHARED = Path(os.environ.get("VITPOSE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
SETS = {
    "coco-val-4": ("data/coco-val-4/test_coco.json", "data/coco-val-4"),
    "coco-mini-train": ("data/coco-mini-train/person_keypoints_train2017.json", "data/coco-mini-train/images"),
}
DETECTORS = {"yolox-nano": "models/yolox_nano.onnx", "rtmdet-nano": "models/rtmdet_nano_person.onnx"}


def read_set(name: str) -> tuple[dict, list[tuple[int, np.ndarray]]]:
    gt_path, image_dir = SETS[name]
    gt = json.loads((SHARED / gt_path).read_text())
    images = []
    for info in gt["images"]:
        bgr = cv2.imread(str(SHARED / image_dir / info["file_name"]), cv2.IMREAD_COLOR)
        images.append((info["id"], np.ascontiguousarray(bgr[:, :, ::-1])))
    return gt, images


def person_box_ap(gt: dict, detections: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        if not detections:
            return 0.0
        result = coco.loadRes(detections)
        evaluator = COCOeval(coco, result, "bbox")
        evaluator.params.catIds = [1]
        evaluator.params.imgIds = [image["id"] for image in gt["images"]]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def run(detector, images):
    found = detector([image for _, image in images])
    detections = [
        {"image_id": image_id, "category_id": 1, "bbox": [float(v) for v in box], "score": float(score)}
        for (image_id, _), (boxes, scores) in zip(images, found)
        for box, score in zip(boxes, scores)
    ]
    return detections, sum(len(scores) for _, scores in found) / max(len(images), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0.05,0.1,0.3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--rtmdet-size", type=int, default=640)
    parser.add_argument("--timing-iters", type=int, default=3)
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",") if t]
    sets = {name: read_set(name) for name in SETS}
    if thresholds:
        print(f"{'detector':<14}{'thr':>6}" + "".join(f"{n + ' AP':>20}{'boxes/img':>11}" for n in sets))
    for det_name, rel in DETECTORS.items():
        extra = {"input_size": args.rtmdet_size} if det_name.startswith("rtmdet") else {}
        for thr in thresholds:
            detector = load_detector(SHARED / rel, device=args.device, score_threshold=thr,
                                     num_threads=args.num_threads, **extra)
            row = f"{det_name:<14}{thr:>6.2f}"
            for gt, images in sets.values():
                detections, per_image = run(detector, images)
                row += f"{person_box_ap(gt, detections):>20.3f}{per_image:>11.1f}"
            print(row, flush=True)
    if args.timing_iters <= 0:
        return
    time_detectors(args, [image for _, image in sets["coco-mini-train"][1][:32]])


def time_detectors(args, batch: list[np.ndarray]) -> None:
    """ms/image of one image per session call vs batches of 8 (numpy images), and of the torch path (tensors).

    The configurations take turns, one pass each per round, so that a shared machine's load hits them alike;
    the median round (and the fastest) is printed.
    """
    import torch

    tensors = [torch.from_numpy(image).to(args.device) for image in batch]
    configs = []
    for det_name, rel in DETECTORS.items():
        extra = {"input_size": args.rtmdet_size} if det_name.startswith("rtmdet") else {}
        for batch_size, images, what in [(1, batch, "numpy"), (8, batch, "numpy"), (8, tensors, "torch tensors")]:
            detector = load_detector(SHARED / rel, device=args.device, num_threads=args.num_threads,
                                     batch_size=batch_size, **extra)
            label = f"batch_size={batch_size} ({detector.batch_size} per call), {what}"
            detector(images[:2])  # warm up
            configs.append((det_name, label, detector, images, []))
    for _ in range(args.timing_iters):
        for _, _, detector, images, times in configs:
            start = time.perf_counter()
            detector(images)
            times.append((time.perf_counter() - start) * 1000 / len(images))
    for det_name, label, detector, _, times in configs:
        print(f"{det_name:<14} {label:<42} {np.median(times):7.1f} ms/image (fastest {min(times):5.1f})  "
              f"({detector.name}, {detector.device})", flush=True)

if __name__ == "__main__":
    main()
