"""`python -m benchmarks.gpu_check` in its CPU smoke form, on a box as bare as a GPU node: no Ray, pycocotools,
object-store clients or torchvision importable, the checkout on PYTHONPATH, nothing installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parents[1]
ABSENT = ("ray", "pycocotools", "s3fs", "gcsfs", "torchvision")

# Imported by every Python started with this folder on PYTHONPATH: the packages in ABSENT are not found, exactly
# as when they are not installed (importlib.util.find_spec says None, import raises ModuleNotFoundError).
SITECUSTOMIZE = f'''
import importlib.machinery
import sys

ABSENT = {ABSENT!r}


class _Bare(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in ABSENT else super().find_spec(name, path, target)


sys.meta_path[:] = [_Bare if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path]
'''


def ground_truth_persons(annotations: Path, images: int) -> int:
    coco = json.loads(annotations.read_text())
    usable = [a for a in coco["annotations"] if a.get("category_id", 1) == 1 and not a.get("iscrowd", 0)
              and a["bbox"][2] > 0 and a["bbox"][3] > 0]
    ids = [info["id"] for info in coco["images"][:images]]
    return sum(sum(a["image_id"] == i for a in usable) for i in ids)


def test_gpu_check_smoke_on_a_bare_cpu_box(tmp_path):
    data = shared_path("data/coco-mini-train")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "VITPOSE_SHARED")}  # a GPU node is no CI
    env["PYTHONPATH"] = os.pathsep.join([str(bare), str(ROOT)])
    for module in ABSENT:
        probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, module
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--data", str(data), "--out", str(out),
                           "--device", "cpu", "--images", "8"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    figures = json.loads((out / "gpu_check.json").read_text())
    assert figures["ok"] and figures["environment"]["device"] == "cpu" and "torchvision" not in figures["environment"]

    tests = figures["gpu_tests"]
    assert tests["failures"] == tests["errors"] == 0 and tests["passed"] >= 6
    assert tests["skipped"] >= 10  # the nvJPEG tests: no torchvision here
    measured = {m["test"]: m for m in tests["measured"]}
    assert measured["test_fp32_heatmaps_on_the_device_equal_cpu"]["relative_max"] <= 1e-4
    assert measured["test_half_precision_heatmaps_and_keypoints_against_fp32[bf16]"]["clear_peaks"] >= 20

    persons = ground_truth_persons(data / "person_keypoints_train2017.json", 8)
    hot = figures["hot_path"]
    assert (hot["images"], hot["persons"], hot["errors"]) == (8, persons, 0) and persons > 0
    assert hot["crops_per_s"] == persons / hot["seconds"]
    assert {"boxes", "decode", "crop", "model", "heatmaps", "rows", "call"} <= set(hot["stages_per_image"])
    assert 0 < hot["host_ms_per_image"] < hot["stages_per_image"]["call"]["cpu_ms"]

    alone = figures["model_alone"]
    assert {(r["dtype"], r["batch"]) for r in alone["runs"]} == {("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)}
    assert alone["compiled"]["crops_per_s"] > 0 and alone["peak_tflops"] is None  # a CPU has no table entry
    assert figures["seed"]["images"] == 8 and figures["seed"]["persons"] == persons
    ratio = figures["measured_against_targets"]["hot_path_vs_seed"]
    assert ratio == hot["crops_per_s"] / figures["seed"]["crops_per_s"]
    log = (out / "gpu_check.log").read_text()
    assert f"{hot['crops_per_s']:.1f} crops/s" in log and "against the targets" in log
    assert "6 passed" in log or f"{tests['passed']} passed" in log
