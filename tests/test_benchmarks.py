"""benchmarks/bench_gpu.py in its CPU smoke form: the real job and the seed pipeline run; it reports what they did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def gt_persons(coco: dict, count: int) -> int:
    """Usable ground-truth person boxes of the first `count` corpus images; the corpus repeats the annotation file's
    images in its order (benchmarks/bench_host.build_corpus: link i is images[i % len(images)])."""
    boxes: dict[int, int] = {}
    for ann in coco["annotations"]:
        w, h = ann["bbox"][2:]
        if ann.get("category_id") == 1 and not ann.get("iscrowd", 0) and w > 0 and h > 0:
            boxes[ann["image_id"]] = boxes.get(ann["image_id"], 0) + 1
    images = coco["images"]
    return sum(boxes.get(images[i % len(images)]["id"], 0) for i in range(count))


@pytest.mark.slow
def test_bench_gpu_cpu_smoke(tmp_path):
    annotations = shared_path("data/coco-mini-train/person_keypoints_train2017.json")
    coco = json.loads(annotations.read_text())
    images, seed_images = 20, 4  # batches of 2: enough batches for the job's after-start-up rate
    figures_file = tmp_path / "figures.json"
    ray_dir = tempfile.mkdtemp(prefix="vpray", dir="/tmp")  # Ray's socket paths must stay short
    env = dict(os.environ, RAY_TMPDIR=ray_dir, RAY_USAGE_STATS_ENABLED="0",
               VITPOSE_SHARED=str(annotations.parents[2]))
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "S", "--images", str(images),
             "--seed-images", str(seed_images), "--batch-size", "2", "--workdir", str(tmp_path),
             "--json", str(figures_file)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(figures_file.read_text())
    job, seed = figures["job"], figures["seed"]

    assert (figures["device"], figures["dtype"], figures["size"]) == ("cpu", "fp32", "S")
    assert figures["parameters"] > 0
    assert job["images"] == images and job["errors"] == 0
    assert job["persons"] == gt_persons(coco, images) > 0
    assert seed["images"] == seed_images and seed["persons"] == gt_persons(coco, seed_images) > 0
    for rate in (job["images_per_s"], job["crops_per_s"], job["steady_crops_per_s"], seed["crops_per_s"],
                 figures["ratio_end_to_end"], figures["ratio_after_start_up"]):
        assert rate > 0
    assert job["crops_per_s"] == pytest.approx(job["persons"] / job["seconds"])
    # the printed figures are the measured ones
    assert f"{job['crops_per_s']:10.2f} crops/s" in done.stdout
    assert f"{seed['crops_per_s']:.2f} crops/s" in done.stdout
    assert f"end to end {figures['ratio_end_to_end']:.2f}x" in done.stdout
    assert not list(tmp_path.glob("bench-gpu-*")), "the temporary corpus is left behind"


def test_bench_gpu_refuses_cuda_without_gpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cuda"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "no GPU" in done.stderr
