"""The evaluation stage: ViTPose's protocol and raw pycocotools scoring, on the real COCO ground truth."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest

from vitpose_batch.cli import main as cli
from vitpose_batch.demo_checkpoint import write_demo_checkpoint
from vitpose_batch.review.evaluate import METRICS, evaluate, oks_nms, vitpose_protocol
from tests import coco_data
from tests.optional import require
from tests.shared_data import shared_path
from vitpose_core.keypoint_sets import COCO as COCO_SET

require("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

SIGMAS = np.asarray(COCO_SET.sigmas)


def ground_truth_results(name: str) -> list[dict]:
    data = json.loads(coco_data.annotation_file(name).read_text())
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0,
             "bbox": a["bbox"]}
            for a in data["annotations"] if a.get("num_keypoints", 0) and not a.get("iscrowd", 0)]


def write(path, results) -> str:
    path.write_text(json.dumps(results))
    return str(path)


def pycocotools_directly(gt_file: str, results_file: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        evaluator = COCOeval(gt, gt.loadRes(results_file), "keypoints")
        evaluator.evaluate(), evaluator.accumulate(), evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("name", ["coco-val-4", "coco-mini-train"])
@pytest.mark.parametrize("raw", [False, True], ids=["vitpose", "raw"])
def test_ground_truth_as_predictions_scores_one(tmp_path, name, raw):
    results = ground_truth_results(name)
    report = evaluate(write(tmp_path / "r.json", results), str(coco_data.annotation_file(name)), raw=raw)
    if not raw and name == "coco-mini-train":
        # ViTPose's OKS-NMS compares all 17 keypoints; image 322517 holds a person with a single labelled keypoint,
        # whose unlabelled (0, 0) ones match another sparse person's: the protocol keeps only one of the two.
        assert report["predictions"] - report["predictions_kept"] == 1
        assert report["AP"] >= 0.98
    else:
        assert report["predictions_kept"] == len(results)
        assert report["AP"] == pytest.approx(1.0) and report["AR"] == pytest.approx(1.0)


def noisy(results: list[dict], seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for r in results:
        kp = np.array(r["keypoints"], np.float64).reshape(-1, 3)
        kp[:, :2] += rng.normal(0, 4, kp[:, :2].shape)
        kp[:, 2] = rng.uniform(0, 1, len(kp))
        out.append(dict(r, keypoints=kp.reshape(-1).tolist(), score=float(rng.uniform(0.3, 1))))
    return out


def test_raw_equals_pycocotools_run_directly(tmp_path):
    gt_file = str(coco_data.annotation_file("coco-mini-train"))
    results_file = write(tmp_path / "noisy.json", noisy(ground_truth_results("coco-mini-train"), seed=1))
    report = evaluate(results_file, gt_file, raw=True)
    direct = pycocotools_directly(gt_file, results_file)
    assert 0.2 < report["AP"] < 0.99
    np.testing.assert_allclose([report[m] for m in METRICS], direct, rtol=0, atol=1e-9)


def test_duplicates_are_removed_by_oks_nms(tmp_path):
    gt_file = str(coco_data.annotation_file("coco-mini-train"))
    clean = noisy(ground_truth_results("coco-mini-train"), seed=2)
    duplicated = clean + [dict(r, score=r["score"] * 0.9,
                               keypoints=(np.array(r["keypoints"]) + np.tile([0.5, 0.5, 0], 17)).tolist())
                          for r in clean]
    with_duplicates = evaluate(write(tmp_path / "d.json", duplicated), gt_file)
    without = evaluate(write(tmp_path / "c.json", clean), gt_file)
    assert with_duplicates["predictions_kept"] == len(clean)
    assert with_duplicates["AP"] == pytest.approx(without["AP"], abs=1e-9)
    raw = evaluate(write(tmp_path / "d2.json", duplicated), gt_file, raw=True)
    assert raw["AP"] < with_duplicates["AP"]  # duplicates are false positives when nothing removes them


def test_oks_nms_keeps_distinct_people():
    pose = np.zeros((3, 17, 3))
    pose[0, :, :2] = np.random.default_rng(3).uniform(0, 100, (17, 2))
    pose[1] = pose[0] + [0.3, 0.3, 0]  # same person again
    pose[2, :, :2] = pose[0, :, :2] + 300  # someone else
    keep = oks_nms(pose, np.array([0.5, 0.9, 0.7]), np.full(3, 100 * 100.0), SIGMAS)
    assert sorted(keep) == [1, 2]


def test_rescoring_is_box_score_times_mean_of_confident_keypoints():
    kp = np.zeros((17, 3))
    kp[:, 0] = np.arange(17) * 10
    kp[:, 2] = np.r_[[0.9, 0.5, 0.1], np.zeros(14)]
    result = {"image_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 0.3, "box_score": 0.8,
              "bbox": [0, 0, 100, 100]}
    kept = vitpose_protocol([result], SIGMAS)
    assert kept[0]["score"] == pytest.approx(0.8 * (0.9 + 0.5) / 2)
    no_box_score = vitpose_protocol([{k: v for k, v in result.items() if k != "box_score"}], SIGMAS)
    assert no_box_score[0]["score"] == pytest.approx(0.3 * 0.7)


def test_predictions_for_unknown_images_are_counted_and_left_out(tmp_path):
    results = ground_truth_results("coco-val-4")
    extra = [dict(results[0], image_id=999_999_999)]
    report = evaluate(write(tmp_path / "r.json", results + extra), str(coco_data.annotation_file("coco-val-4")))
    assert report["predictions_for_unknown_images"] == 1 and report["AP"] == pytest.approx(1.0)


def test_missing_images_count_as_misses(tmp_path):
    results = ground_truth_results("coco-val-4")
    first = results[0]["image_id"]
    report = evaluate(write(tmp_path / "r.json", [r for r in results if r["image_id"] != first]),
                      str(coco_data.annotation_file("coco-val-4")))
    assert report["AR"] < 1.0


@pytest.mark.slow
def test_annotate_then_evaluate_with_the_56_ap_person_boxes(tmp_path, shared_ray):
    """coco-val-4, person boxes from the detector file the ViTPose paper evaluates with, then evaluate."""
    gt = str(coco_data.annotation_file("coco-val-4"))
    model = write_demo_checkpoint(tmp_path / "demo.pth")
    boxes = str(shared_path("data/coco-val-4/test_coco_det_AP_H_56.json"))
    assert cli(["annotate", str(coco_data.image_folder("coco-val-4")), str(tmp_path / "out"), "--model", str(model),
                "--boxes", boxes]) == 0
    assert cli(["evaluate", str(tmp_path / "out"), "--ground-truth", gt, "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(METRICS) <= set(metrics) and all(0.0 <= metrics[m] <= 1.0 for m in METRICS)
    assert metrics["predictions"] == 118 and metrics["predictions_kept"] <= 118
    assert "detector_box" not in metrics  # boxes came from a file, not a detector


@pytest.mark.slow
def test_detector_box_ap_is_reported(tmp_path, shared_ray):
    gt = str(coco_data.annotation_file("coco-val-4"))
    model = write_demo_checkpoint(tmp_path / "demo.pth")
    assert cli(["annotate", str(coco_data.image_folder("coco-val-4")), str(tmp_path / "out"), "--model", str(model),
                "--detector", str(shared_path("models/yolox_nano.onnx"))]) == 0
    assert cli(["evaluate", str(tmp_path / "out"), "--ground-truth", gt, "--output", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["detector_box"]["AP"] >= 0.6  # YOLOX-nano's person box AP on these images (README: 0.725)


def test_bad_ground_truth_is_one_line(tmp_path):
    (tmp_path / "gt.json").write_text("[]")
    result_file = write(tmp_path / "r.json", [])
    with pytest.raises(ValueError, match="a COCO file needs images, annotations and categories"):
        evaluate(result_file, str(tmp_path / "gt.json"))
    _ = copy
