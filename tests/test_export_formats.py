"""`vitpose-batch export --format coco-results|coco-dataset|label-studio`, OKS-NMS of pseudo-labels, and evaluate on
every keypoint set.

Label Studio tasks are checked with Label Studio's own validation (label-studio-sdk's LabelInterface), not by a
Label Studio server import (a server takes ~40 s to start).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest

from vitpose_batch.cli import main
from vitpose_batch.review.evaluate import METRICS, evaluate, load_ground_truth, load_results, predictions_keypoint_set
from vitpose_batch.review.export import export, export_coco, label_config_path
from vitpose_batch.review.label_studio import parse_image_prefix, rewrite_uri
from vitpose_batch.output.layout import Output
from vitpose_batch.output.parts import part_metadata, with_metadata, write_parquet_atomic
from vitpose_batch.output.provenance import Provenance, create_record
from tests.test_coco_schema import error_row, gt_rows, table_of
from vitpose_core.keypoint_sets import COCO, get_keypoint_set

LOCAL = fsspec.filesystem("file")
MODEL = "usyd-community/vitpose-base-simple"
VERSION = "9.8.7"


def write_output(folder: Path, parts: list[list[dict]], keypoint_set: str = "coco") -> str:
    """An annotate OUTPUT as annotate writes it: parts with their keypoint set in the metadata, and `_job.json`."""
    names = get_keypoint_set(keypoint_set).keypoint_names
    provenance = Provenance(model=MODEL, model_fingerprint="sha256:0", detector=None, detector_fingerprint=None,
                            boxes="gt.json", boxes_fingerprint="sha256:1", flip_test=False, dataset_index=None,
                            dtype="fp32", keypoint_set=keypoint_set)
    metadata = part_metadata(provenance.as_dict(), names, keypoint_set, VERSION, "run0")
    for i, rows in enumerate(parts):
        write_parquet_atomic(LOCAL, with_metadata(table_of(rows), metadata), str(folder / f"part-run0-{i:05d}.parquet"))
    create_record(Output.open(str(folder)), provenance)
    return str(folder)


def read_rows(output: str) -> list[dict]:
    """The rows of an OUTPUT in the order export reads them (part file order, then row order)."""
    return [row for part in sorted(Path(output).glob("part-*.parquet")) for row in pq.read_table(part).to_pylist()]


# ----------------------------------------------------------------------------------------------------------------
# Label Studio
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture
def ls_output(tmp_path):
    """coco-val-4's ground truth as predictions, an error row, and an s3:// image whose person reaches out of it."""
    rows = gt_rows("coco-val-4")
    keypoints = np.tile([30.0, 30.0, 0.9], (17, 1))
    keypoints[0] = [120.0, 10.0, 0.9]  # outside the 100 x 50 image
    keypoints[1] = [20.0, 20.0, 0.2]  # under the threshold
    outside = {"image_uri": "s3://bucket/photos/cat.jpg", "image_id": None, "width": 100, "height": 50,
               "error": None, "persons": [{"bbox": [-10.0, 5.0, 50.0, 60.0], "box_score": 0.9, "score": 0.7,
                                           "keypoints": keypoints.reshape(-1).tolist()}]}
    parts = [rows[:2] + [error_row("/photos/broken.jpg", 12345)], rows[2:] + [outside]]
    return write_output(tmp_path / "OUTPUT", parts)


def expected_regions(row: dict, threshold: float = 0.3) -> tuple[list[dict], list[dict]]:
    """Rectangles and keypoints (percent of the image size) that the row's persons should become."""
    width, height = row["width"], row["height"]
    boxes, points = [], []
    for person in row["persons"]:
        x, y, w, h = person["bbox"]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        boxes.append({"x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
                      "height": 100 * (y1 - y0) / height, "score": person["score"]})
        for k, (px, py, s) in enumerate(np.reshape(person["keypoints"], (-1, 3))):
            if s >= threshold and 0 <= px <= width and 0 <= py <= height:
                points.append({"x": 100 * px / width, "y": 100 * py / height, "label": COCO.keypoint_names[k],
                               "score": s, "person": len(boxes) - 1})
    return boxes, points


def label_interface(config_xml: str):
    with warnings.catch_warnings():  # the SDK's pydantic-v1-style models warn on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from label_studio_sdk.label_interface import LabelInterface
    return LabelInterface(config_xml)


def validate(config_xml: str, tasks: list[dict]) -> None:
    """Every task and prediction passes Label Studio's own validation against the config."""
    interface = label_interface(config_xml)
    interface.validate()
    for task in tasks:
        # validate_task itself calls validate_prediction() without its argument in label-studio-sdk 2.0.19 (a
        # TypeError whenever a task has predictions), so the data and each prediction are validated separately
        assert interface.validate_task({"data": task["data"]}), task["data"]
        for prediction in task.get("predictions", []):
            assert interface.validate_prediction(prediction, return_errors=True) == []


def test_label_studio_tasks(ls_output, tmp_path):
    out = tmp_path / "ls" / "tasks.json"
    stats = export(ls_output, str(out), "label-studio")
    tasks = json.loads(out.read_text())
    config = Path(label_config_path(str(out)))
    assert config.name == "tasks.label_config.xml" and stats["label_config"] == str(config)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tasks.json", "tasks.label_config.xml"]
    validate(config.read_text(), tasks)
    interface = label_interface(config.read_text())
    assert interface.get_control("keypoints").labels == list(COCO.keypoint_names)
    assert interface.get_control("person").labels == ["person"]

    rows = read_rows(ls_output)
    assert len(tasks) == len(rows) == stats["tasks"] == 6 and stats["error_tasks"] == 1
    for task, row in zip(tasks, rows):
        assert task["data"]["image"] == task["data"]["image_uri"] == row["image_uri"]
        if row["error"] is not None:  # error rows: a task without predictions that says what failed
            assert "predictions" not in task and task["data"]["error"] == row["error"]
            continue
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == f"{MODEL} (vitpose-batch {VERSION})"
        result = prediction["result"]
        boxes, points = expected_regions(row)
        rects = [r for r in result if r["type"] == "rectanglelabels"]
        kps = [r for r in result if r["type"] == "keypointlabels"]
        assert len(rects) == len(boxes) and len(kps) == len(points)
        for region in result:
            assert (region["original_width"], region["original_height"]) == (row["width"], row["height"])
            assert region["to_name"] == "image" and 0 <= region["score"] <= 1
            assert all(0 <= region["value"][key] <= 100 for key in ("x", "y"))
        for rect, box in zip(rects, boxes):
            assert rect["from_name"] == "person" and rect["value"]["rectanglelabels"] == ["person"]
            for key in ("x", "y", "width", "height"):
                assert rect["value"][key] == pytest.approx(box[key], abs=1e-4)
            assert rect["value"]["x"] + rect["value"]["width"] <= 100 + 1e-9
            assert rect["score"] == pytest.approx(box["score"], abs=1e-6)
        for kp, point in zip(kps, points):
            assert kp["from_name"] == "keypoints" and kp["value"]["keypointlabels"] == [point["label"]]
            assert kp["value"]["x"] == pytest.approx(point["x"], abs=1e-4)
            assert kp["value"]["y"] == pytest.approx(point["y"], abs=1e-4)
            assert kp["score"] == pytest.approx(min(point["score"], 1.0), abs=1e-6)
            assert kp["parentID"] == rects[point["person"]]["id"]  # grouped under its person
        assert len({r["id"] for r in result}) == len(result)
        if boxes:
            assert prediction["score"] == pytest.approx(np.mean([b["score"] for b in boxes]), abs=1e-6)
        else:
            assert "score" not in prediction
    cat = tasks[-1]["predictions"][0]["result"]  # the box was clipped to the image, 2 of its keypoints left out
    assert cat[0]["value"]["x"] == 0 and cat[0]["value"]["width"] == pytest.approx(40.0)
    assert len(cat) == 1 + 15
    assert stats["persons"] == sum(len(r["persons"]) for r in rows)


def test_label_studio_image_prefixes_and_skipped_errors(ls_output, tmp_path):
    rows = read_rows(ls_output)
    local_folder = str(Path(rows[0]["image_uri"]).parent) + "/"
    prefixes = [parse_image_prefix("s3://=gs://wrong/"), parse_image_prefix("s3://bucket/=https://cdn.example.com/"),
                parse_image_prefix(f"{local_folder}=/data/local-files/?d=val4/")]
    out = tmp_path / "tasks"  # no extension: the config is tasks.label_config.xml
    stats = export(ls_output, str(out), "label-studio", image_prefixes=prefixes, skip_errors=True)
    tasks = json.loads(out.read_text())
    validate((tmp_path / "tasks.label_config.xml").read_text(), tasks)
    assert stats["skipped_error"] == 1 and len(tasks) == len(rows) - 1
    assert all("error" not in t["data"] and t["predictions"] for t in tasks)
    images = [t["data"]["image"] for t in tasks]
    assert images[-1] == "https://cdn.example.com/photos/cat.jpg"  # the longest matching prefix wins
    assert images[0] == "/data/local-files/?d=val4/" + Path(rows[0]["image_uri"]).name
    assert [t["data"]["image_uri"] for t in tasks] == [r["image_uri"] for r in rows if r["error"] is None]
    assert rewrite_uri("gs://other/x.jpg", prefixes) == "gs://other/x.jpg"
    with pytest.raises(ValueError, match="OLD=NEW"):
        parse_image_prefix("no-equals-sign")


def test_label_studio_failure_leaves_nothing(tmp_path):
    person = {"bbox": [0.0, 0.0, 2.0, 2.0], "box_score": 1.0, "score": 1.0, "keypoints": [1.0, 1.0, 1.0] * 17}
    rows = [{"image_uri": f"/a/{i}.jpg", "image_id": i, "width": 4, "height": 4, "error": None,
             "persons": [copy.deepcopy(person)]} for i in range(1, 4)]
    rows[2]["persons"][0]["keypoints"] = [1.0] * 50  # a broken row after the first part was converted
    predictions = write_output(tmp_path / "OUTPUT", [rows[:2], rows[2:]])
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="not a multiple of 3"):
        export(predictions, str(tmp_path / "out" / "tasks.json"), "label-studio")
    assert list((tmp_path / "out").iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# OKS-NMS of pseudo-labels
# ----------------------------------------------------------------------------------------------------------------


def pose(rng: np.random.Generator, box: list[float], num_keypoints: int, score: float) -> dict:
    x, y, w, h = box
    points = np.column_stack([x + w * rng.random(num_keypoints), y + h * rng.random(num_keypoints),
                              np.full(num_keypoints, 0.9)])
    return {"bbox": box, "box_score": score, "score": score, "keypoints": points.reshape(-1).tolist()}


def duplicate_rows(num_keypoints: int) -> list[dict]:
    """One image: person A, A again 0.5 px off and scored lower (a double detection), and a distinct person B."""
    rng = np.random.default_rng(num_keypoints)
    a = pose(rng, [100.0, 100.0, 120.0, 240.0], num_keypoints, 0.9)
    again = copy.deepcopy(a)
    again.update(score=0.8, keypoints=(np.asarray(a["keypoints"]) + [0.5, 0.5, 0.0] * num_keypoints).tolist())
    b = pose(rng, [400.0, 120.0, 110.0, 230.0], num_keypoints, 0.7)
    return [{"image_uri": "/photos/000000000001.jpg", "image_id": 1, "width": 640, "height": 480, "error": None,
             "persons": [a, again, b]}]


@pytest.mark.parametrize("keypoint_set", ["coco", "coco_wholebody", "aic", "mpii", "ap10k", "apt36k"])
def test_oks_nms_drops_duplicates_only(tmp_path, keypoint_set):
    kset = get_keypoint_set(keypoint_set)
    predictions = write_output(tmp_path / "OUTPUT", [duplicate_rows(kset.num_keypoints)], keypoint_set)
    a, _, b = duplicate_rows(kset.num_keypoints)[0]["persons"]

    out = tmp_path / "dataset.json"
    assert main(["export", predictions, str(out), "--format", "coco-dataset"]) == 0
    dataset = json.loads(out.read_text())
    assert [ann["bbox"] for ann in dataset["annotations"]] == [a["bbox"], b["bbox"]]
    assert [ann["area"] for ann in dataset["annotations"]] == [120.0 * 240.0, 110.0 * 230.0]  # the box's w*h
    assert dataset["categories"][0]["keypoints"] == list(kset.keypoint_names)
    assert main(["export", predictions, str(out), "--format", "coco-dataset", "--no-oks-nms"]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == 3
    assert main(["export", predictions, str(out), "--format", "coco-dataset", "--oks-nms", "1"]) == 0
    assert len(json.loads(out.read_text())["annotations"]) == 3

    tasks_file = tmp_path / "tasks.json"
    stats = export(predictions, str(tasks_file), "label-studio")
    assert stats["persons"] == 2 and stats["persons_suppressed"] == 1
    tasks = json.loads(tasks_file.read_text())
    validate((tmp_path / "tasks.label_config.xml").read_text(), tasks)
    rects = [r for r in tasks[0]["predictions"][0]["result"] if r["type"] == "rectanglelabels"]
    assert [r["score"] for r in rects] == [pytest.approx(0.9), pytest.approx(0.7)]
    assert rects[0]["value"]["rectanglelabels"] == ["animal" if keypoint_set in ("ap10k", "apt36k") else "person"]
    assert export(predictions, str(tasks_file), "label-studio", oks_nms=None)["persons"] == 3

    # coco-results stay as predicted: evaluate applies the NMS itself
    assert len(json.loads(Path(export(predictions, str(out), "coco-results")["output"]).read_text())) == 3


def test_export_cli_refusals(ls_output, tmp_path, capsys):
    for argv in (["--format", "yaml"], ["--format", "label-studio", "--image-prefix", "nothing"],
                 ["--format", "coco-dataset", "--oks-nms", "0.5", "--no-oks-nms"], []):
        with pytest.raises(SystemExit) as info:
            main(["export", ls_output, str(tmp_path / "x.json"), *argv])
        assert info.value.code == 2
    assert not (tmp_path / "x.json").exists()
    assert "OLD=NEW" in capsys.readouterr().err


def test_export_coco_formats_match_export_coco(ls_output, tmp_path):
    """coco-results / coco-dataset are export-coco's files (NMS off, same thresholds)."""
    for fmt, legacy in (("coco-results", "results"), ("coco-dataset", "dataset")):
        new, old = tmp_path / f"{fmt}.json", tmp_path / f"{legacy}.json"
        export(ls_output, str(new), fmt, keypoint_threshold=0.5, oks_nms=None)
        export_coco(ls_output, str(old), legacy, min_keypoint_score=0.5)
        assert json.loads(new.read_text()) == json.loads(old.read_text())


# ----------------------------------------------------------------------------------------------------------------
# evaluate on every keypoint set
# ----------------------------------------------------------------------------------------------------------------


def ground_truth_file(path: Path, keypoint_names: tuple[str, ...] | None, rows: list[dict]) -> str:
    """A COCO keypoints file whose annotations are the rows' persons (all keypoints labelled v=2)."""
    images, annotations = [], []
    for row in rows:
        images.append({"id": row["image_id"], "file_name": Path(row["image_uri"]).name, "width": row["width"],
                       "height": row["height"]})
        for person in row["persons"]:
            flat = np.reshape(person["keypoints"], (-1, 3)).copy()
            flat[:, 2] = 2
            x, y, w, h = person["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": row["image_id"], "category_id": 1,
                                "bbox": person["bbox"], "area": w * h, "iscrowd": 0,
                                "keypoints": flat.reshape(-1).tolist(), "num_keypoints": len(flat)})
    category = {"id": 1, "name": "person", "supercategory": "person"}
    if keypoint_names:
        category["keypoints"] = list(keypoint_names)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [category]}))
    return str(path)


def synthetic_rows(num_keypoints: int, noise: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Ground truth rows (8 images, 2 persons each) and predictions: the same keypoints plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    truth, predicted = [], []
    for image_id in range(1, 9):
        persons = [pose(rng, [60.0 + 250 * i, 50.0, 150.0, 300.0], num_keypoints, 1.0) for i in range(2)]
        row = {"image_uri": f"/gt/{image_id:012d}.jpg", "image_id": image_id, "width": 640, "height": 480,
               "error": None, "persons": persons}
        truth.append(row)
        noisy = copy.deepcopy(row)
        for p, person in enumerate(noisy["persons"]):
            kps = np.reshape(person["keypoints"], (-1, 3))
            kps[:, :2] += rng.normal(0, noise, (num_keypoints, 2))
            person.update(keypoints=kps.reshape(-1).tolist(), score=0.9 - 0.1 * p, box_score=0.9 - 0.1 * p)
        predicted.append(noisy)
    return truth, predicted


def cocoeval_stats(gt_file: str, results: list[dict], sigmas: np.ndarray) -> list[float]:
    from pycocotools.coco import COCO as CocoApi
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = CocoApi(gt_file)
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
        evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


@pytest.mark.parametrize("keypoint_set", ["aic", "mpii", "ap10k"])
def test_evaluate_uses_the_sets_sigmas(tmp_path, keypoint_set):
    kset = get_keypoint_set(keypoint_set)
    truth, predicted = synthetic_rows(kset.num_keypoints, noise=4.0)
    # no keypoint names in the ground truth: only the parts' metadata can tell AP-10K's 17 keypoints from COCO's
    gt_file = ground_truth_file(tmp_path / "gt.json", None, truth)
    exact = write_output(tmp_path / "exact", [truth], keypoint_set)
    assert evaluate(exact, gt_file)["AP"] == pytest.approx(1.0)

    noisy = write_output(tmp_path / "noisy", [predicted], keypoint_set)
    results, _ = load_results(Output.open(noisy))
    expected = cocoeval_stats(gt_file, results, np.asarray(kset.sigmas))
    assert 0.0 < expected[0] < 1.0
    assert stats_of(evaluate(noisy, gt_file, raw=True)) == pytest.approx(expected, abs=1e-12)
    assert 0.0 < evaluate(noisy, gt_file)["AP"] <= 1.0
    # the set (hence the sigmas) comes from the metadata, not from the count (17 would be COCO)
    assert predictions_keypoint_set(Output.open(noisy), load_ground_truth(gt_file), results) is kset

    # a results JSON has no metadata: the ground truth's keypoint names pick the set
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    named_gt = ground_truth_file(tmp_path / "named.json", kset.keypoint_names, truth)
    assert predictions_keypoint_set(Output.open(str(results_file)), load_ground_truth(named_gt), results).name \
        == keypoint_set
    assert stats_of(evaluate(str(results_file), named_gt, raw=True)) == pytest.approx(expected, abs=1e-12)


def stats_of(report: dict) -> list[float]:
    return [report[name] for name in METRICS]


def test_parts_without_keypoint_set_metadata_fall_back_to_the_count(tmp_path):
    """Parts written before they named their keypoint set: 16 keypoints read as MPII (its names and sigmas)."""
    rows = duplicate_rows(16)
    (tmp_path / "OUTPUT").mkdir()
    write_parquet_atomic(LOCAL, table_of(rows), str(tmp_path / "OUTPUT" / "part-old-00000.parquet"))
    stats = export(str(tmp_path / "OUTPUT"), str(tmp_path / "d.json"), "coco-dataset")
    dataset = json.loads((tmp_path / "d.json").read_text())
    assert dataset["categories"][0]["keypoints"] == list(get_keypoint_set("mpii").keypoint_names)
    assert stats["persons"] == 2 and stats["persons_suppressed"] == 1
