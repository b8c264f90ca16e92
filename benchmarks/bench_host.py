"""Host work per image: the whole job with a tiny ViTPose and ground-truth boxes against a bare PIL decode loop.

    python benchmarks/bench_host.py [--images 8000] [--batch-size 32]

The corpus is coco-mini-train's 80 real images as hard links under new names (no copies), with their ground-truth
boxes. With a 1-layer, 32-wide ViTPose the model costs almost nothing, so the job's rate is its host work: reading,
decoding, cropping, heatmap decoding, building rows, Ray's hand-offs and writing. Printed in the same run:

* bare decode: PIL decode to RGB of the same files, one process pinned to one core (images/s);
* the job end to end, and after start-up (images/s), and its ratio to bare decode (target >= 0.5 on 2 cores);
* a per-stage profile of the same work in one process (ms/image): read, decode, crop, model, heatmap decoding,
  rows, write.

Prints figures only; asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.bench_pipeline import SHARED  # noqa: E402


def build_corpus(folder: Path, images: int) -> Path:
    """`images` hard links of the mini-train images, and a COCO boxes file naming them; returns the boxes file."""
    source = SHARED / "data" / "coco-mini-train"
    coco = json.loads((source / "person_keypoints_train2017.json").read_text())
    by_id = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0):
            by_id.setdefault(ann["image_id"], []).append(ann)
    entries, annotations = [], []
    for i in range(images):
        info = coco["images"][i % len(coco["images"])]
        name = f"{i:06d}-{info['file_name']}"
        os.link(source / "images" / info["file_name"], folder / name)
        entries.append({"id": i + 1, "file_name": name, "width": info["width"], "height": info["height"]})
        for ann in by_id.get(info["id"], []):
            annotations.append(dict(ann, id=len(annotations) + 1, image_id=i + 1))
    boxes = folder.parent / "boxes.json"
    boxes.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": coco["categories"]}))
    return boxes


def bare_decode_rate(files: list[Path]) -> float:
    """PIL decode to an RGB array, one core: images/s."""
    from PIL import Image

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            np.asarray(image.convert("RGB"))
    return len(files) / (time.perf_counter() - start)


def stage_profile(files: list[Path], boxes_file: Path, model_ref: str) -> dict[str, float]:
    """ms per image of each stage, run one after the other in this process on `files`."""
    import torch

    import vitpose_core as vc
    from vitpose_batch.pipeline.image_decoding import decode_image, read_bytes
    from vitpose_batch.files.addresses import image_name
    from vitpose_batch.schemas.box_files import load_boxes
    from vitpose_batch.schemas.predictions import make_table, persons_column
    from vitpose_core.heatmap_decoding import decode_heatmaps, rescore

    index = load_boxes(str(boxes_file))
    estimator = vc.PoseEstimator(vc.load_pose_model(model_ref))
    clock: dict[str, float] = {k: 0.0 for k in ("read", "decode", "crop", "model", "heatmaps", "rows", "write")}

    def timed(stage: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        clock[stage] += time.perf_counter() - start
        return out

    tables = []
    for path in files:
        data = timed("read", read_bytes, str(path))
        image = timed("decode", decode_image, data)
        boxes, scores = index.boxes_for(file_name=image_name(str(path)))
        pixels = timed("crop", estimator.preprocess, [image], [boxes])
        heatmaps = timed("model", lambda x: estimator.heatmaps(x) if len(x) else torch.zeros(0, 17, 64, 48), pixels)
        keypoints, keypoint_scores = timed("heatmaps", decode_heatmaps, heatmaps.float().numpy(), boxes)
        result = {"boxes": boxes, "box_scores": scores, "keypoints": keypoints, "keypoint_scores": keypoint_scores,
                  "scores": rescore(scores, keypoint_scores)}
        tables.append(timed("rows", lambda r: make_table([str(path)], [None], [image.shape[1]], [image.shape[0]],
                                                         persons_column([r]), [None]), result))
    timed("write", lambda: pq.write_table(pa.concat_tables(tables), io.BytesIO(), compression="zstd"))
    return {k: 1000 * v / len(files) for k, v in clock.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--profile-images", type=int, default=300)
    args = parser.parse_args()
    from tests import checkpoint_factory as factory

    work = Path(tempfile.mkdtemp(prefix="bench-host-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        boxes = build_corpus(corpus, args.images)
        model = work / "tiny"
        factory.save_hf(factory.hf_model(hidden=32, heads=2, depth=1, seed=3), model)
        files = sorted(corpus.iterdir())

        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(1) as pool:
            bare = pool.apply(bare_decode_rate, (files[: min(len(files), 2000)],))
        profile = stage_profile(files[: args.profile_images], boxes, str(model))

        from vitpose_batch.pipeline.job import AnnotateOptions, run_annotate

        summary = run_annotate(AnnotateOptions(input=str(corpus), output=str(work / "out"), model=str(model),
                                               boxes=str(boxes), batch_size=args.batch_size))
        rate = summary.images / summary.seconds
        crops_per_image = summary.persons / max(summary.images, 1)
        steady = (summary.steady_crops_per_s or 0.0) / max(crops_per_image, 1e-9)
        print(f"{summary.images} images, {summary.persons} persons, {os.cpu_count()} CPUs")
        print(f"bare PIL decode, one core:          {bare:8.1f} images/s")
        print(f"the job end to end:                 {rate:8.1f} images/s ({rate / bare:.2f}x bare decode)")
        print(f"the job after start-up:             {steady:8.1f} images/s ({steady / bare:.2f}x bare decode)")
        print("per-stage profile, one process (ms/image): "
              + ", ".join(f"{k} {v:.2f}" for k, v in profile.items())
              + f"; total {sum(profile.values()):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
