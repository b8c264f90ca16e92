"""vitpose_batch.schemas.coco against real COCO ground truth: results score AP 1.0, datasets load in pycocotools, box files."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from vitpose_batch.files.addresses import image_id_from_uri, image_id_of, image_name, split_image_uri
from vitpose_batch.schemas.box_files import load_boxes
from vitpose_batch.schemas.coco import (
    ExportStats,
    coco_dataset,
    coco_results,
    iter_prediction_rows,
    person_category,
    write_coco_dataset,
    write_json_stream,
)
from vitpose_batch.schemas.predictions import make_table
from tests import coco_data
from tests.optional import require
from tests.shared_data import shared_path
from vitpose_core.keypoint_sets import COCO, MPII

require("pycocotools")
from pycocotools.coco import COCO as CocoApi  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

SETS = ("coco-val-4", "coco-mini-train")


# ----------------------------------------------------------------------------------------------------------------
# Helpers (also used by tests/test_export_render.py)
# ----------------------------------------------------------------------------------------------------------------


def gt_rows(name: str, with_ids: bool = True) -> list[dict]:
    """One prediction row per GT image: persons = non-crowd annotations with keypoints, keypoint score 1 where v > 0
    and 0 where v = 0, person and box score 1."""
    coco = json.loads(coco_data.annotation_file(name).read_text())
    folder = coco_data.image_folder(name)
    persons: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) or ann["category_id"] != 1 or not ann.get("num_keypoints", 0):
            continue
        kps = np.asarray(ann["keypoints"], np.float32).reshape(-1, 3)
        kps[:, 2] = (kps[:, 2] > 0).astype(np.float32)
        persons.setdefault(ann["image_id"], []).append(
            {"bbox": ann["bbox"], "box_score": 1.0, "score": 1.0, "keypoints": kps.reshape(-1).tolist()}
        )
    return [
        {"image_uri": str(folder / info["file_name"]), "image_id": info["id"] if with_ids else None,
         "width": info["width"], "height": info["height"], "persons": persons.get(info["id"], []), "error": None}
        for info in sorted(coco["images"], key=lambda i: i["id"])
    ]


def table_of(rows: list[dict]):
    return make_table(*(([r[k] for r in rows]) for k in ("image_uri", "image_id", "width", "height", "persons",
                                                          "error")))


def split_tables(rows: list[dict], parts: int = 2) -> list:
    size = -(-len(rows) // parts)
    return [table_of(rows[i:i + size]) for i in range(0, len(rows), size)]


def error_row(uri: str, image_id: int | None = None) -> dict:
    return {"image_uri": uri, "image_id": image_id, "width": 0, "height": 0, "persons": [],
            "error": "OSError: cannot identify image file"}


def keypoint_ap(gt_file: Path, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = CocoApi(str(gt_file))
        evaluator = COCOeval(gt, gt.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def load_coco(path: Path) -> CocoApi:
    with contextlib.redirect_stdout(io.StringIO()):
        return CocoApi(str(path))


# ----------------------------------------------------------------------------------------------------------------
# Categories, names, ids
# ----------------------------------------------------------------------------------------------------------------


def test_person_category_matches_coco_files():
    category = person_category()
    assert category["id"] == 1 and category["name"] == "person"
    assert category["keypoints"] == list(COCO.keypoint_names) and len(category["keypoints"]) == 17
    assert len(category["skeleton"]) == 19
    for name in SETS:
        gt_category = json.loads(coco_data.annotation_file(name).read_text())["categories"][0]
        assert category["keypoints"] == gt_category["keypoints"]
        assert category["skeleton"] == gt_category["skeleton"]
    mpii = person_category(MPII)
    assert len(mpii["keypoints"]) == 16 and min(min(e) for e in mpii["skeleton"]) == 1


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"image_uri": "/data/coco/000000000785.jpg", "image_id": None}, 785),
        ({"image_uri": "s3://bucket/val/000000040083.jpg"}, 40083),
        ({"image_uri": "/data/000000000785.jpg", "image_id": 7}, 7),  # the column wins
        ({"image_uri": "/data/holiday.jpg", "image_id": None}, None),
        ({"image_uri": "/data/IMG_0001.jpg", "image_id": None}, None),
        ({"image_uri": "s3://b/shard-000.tar#000012.jpg", "image_id": None}, 12),
        ({"image_uri": "s3://b/shard-000.tar#sub/dir/000000197388.jpg", "image_id": None}, 197388),
        ({"image_uri": "s3://b/shard-000.tar.gz#000013.png", "image_id": None}, 13),
        ({"image_uri": "s3://b/shard-000.tar#cat.jpg", "image_id": None}, None),
        ({"image_uri": "s3://b/images-000.parquet#12", "image_id": None}, None),  # a row index, not an id
        ({"image_uri": "s3://b/images-000.parquet#12", "image_id": 99}, 99),
        ({"image_uri": "/data/odd#1/000000000785.jpg", "image_id": None}, 785),  # '#' in a plain path
        ({"image_uri": "/data/odd#name.jpg", "image_id": None}, None),
        ({"image_uri": "/data/000000000785", "image_id": None}, None),  # a bare number is no file name
    ],
)
def test_image_id_of(row, expected):
    assert image_id_of(row) == expected


def test_split_and_name_uris():
    assert split_image_uri("/a/b.jpg") == ("/a/b.jpg", None, None)
    assert split_image_uri("s3://b/s-1.tar#x/000012.jpg") == ("s3://b/s-1.tar", "x/000012.jpg", "tar")
    assert split_image_uri("gs://b/s-1.parquet#7") == ("gs://b/s-1.parquet", "7", "parquet")
    assert image_name("s3://b/s-1.tar#x/000012.jpg") == "000012.jpg"
    assert image_name("gs://b/s-1.parquet#7") == "s-1-7"
    assert image_name("/data/a/000000000785.jpg") == "000000000785.jpg"
    assert image_id_from_uri("gs://b/000000000785.parquet#3") is None


# ----------------------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SETS)
def test_ground_truth_results_score_ap_1(name):
    rows = gt_rows(name)
    stats = ExportStats()
    results = list(coco_results(split_tables(rows, 3), stats=stats))
    expected_persons = sum(len(r["persons"]) for r in rows)
    assert len(results) == expected_persons > 0
    assert stats.images == len(rows) and stats.persons == expected_persons and stats.rows == len(rows)
    first = results[0]
    assert set(first) == {"image_id", "category_id", "keypoints", "score", "bbox", "box_score"}
    assert first["category_id"] == 1 and len(first["keypoints"]) == 51 and len(first["bbox"]) == 4
    # through the JSON writer and back, as a results file would be
    buffer = io.BytesIO()
    assert write_json_stream(iter(results), buffer) == len(results)
    assert keypoint_ap(coco_data.annotation_file(name), json.loads(buffer.getvalue())) == pytest.approx(1.0)


def test_results_ids_from_file_names_and_skips():
    rows = gt_rows("coco-val-4", with_ids=False)  # ids only from 000000000785.jpg-style names
    rows.append(error_row("/missing/000000000999.jpg", 999))
    rows.append({**rows[0], "image_uri": "/elsewhere/holiday.jpg"})  # no id anywhere
    rows.append(dict(rows[1]))  # the same image twice
    lowered = {**rows[2], "persons": [{**p, "score": 0.25} for p in rows[2]["persons"]]}
    rows[2] = lowered
    stats = ExportStats()
    results = list(coco_results([table_of(rows)], min_person_score=0.5, stats=stats))
    assert stats.skipped_error == 1 and stats.skipped_no_image_id == 1 and stats.skipped_duplicate_image_id == 1
    assert stats.images == 4 and stats.persons_below_score == len(lowered["persons"]) > 0
    assert {r["image_id"] for r in results} == {int(Path(rows[i]["image_uri"]).stem) for i in (0, 1, 3)}
    assert all(r["score"] >= 0.5 for r in results)


def test_write_json_stream_text_binary_empty():
    text = io.StringIO()
    assert write_json_stream((i for i in [{"a": 1}, {"b": [1.5, 2]}]), text) == 2
    assert json.loads(text.getvalue()) == [{"a": 1}, {"b": [1.5, 2]}]
    binary = io.BytesIO()
    assert write_json_stream(iter(()), binary) == 0
    assert json.loads(binary.getvalue()) == []

    def lazy():  # the writer must consume items one at a time, not list() them first
        yield {"i": 0}
        assert text2.getvalue().startswith("[\n{")
        yield {"i": 1}

    text2 = io.StringIO()
    write_json_stream(lazy(), text2)
    assert json.loads(text2.getvalue()) == [{"i": 0}, {"i": 1}]


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def test_dataset_of_ground_truth_loads_and_roundtrips(tmp_path):
    name = "coco-mini-train"
    rows = gt_rows(name)
    out = tmp_path / "dataset.json"
    with open(out, "wb") as handle:
        stats = write_coco_dataset(lambda: iter(split_tables(rows, 4)), handle, min_keypoint_score=0.5)
    coco = load_coco(out)
    n_persons = sum(len(r["persons"]) for r in rows)
    assert len(coco.getImgIds()) == len(rows) == stats.images == 80  # images without persons are kept
    assert len(coco.getAnnIds()) == n_persons == stats.persons
    assert len(set(coco.getAnnIds())) == n_persons
    category = coco.loadCats(1)[0]
    assert category["keypoints"] == list(COCO.keypoint_names)
    assert category["skeleton"] == [[a + 1, b + 1] for a, b in COCO.skeleton] and len(category["skeleton"]) == 19

    # every GT keypoint with v > 0 (score 1 >= 0.5) is labelled v=2 at the same place; v = 0 (score 0) -> 0,0,0
    gt = load_coco(coco_data.annotation_file(name))
    gt_by_key = {}
    for ann in gt.loadAnns(gt.getAnnIds(iscrowd=False)):
        if ann["num_keypoints"]:
            gt_by_key[(ann["image_id"], tuple(np.round(ann["bbox"], 2)))] = ann
    unlabelled = 0
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0 and ann["score"] == 1.0
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], rel=1e-4)
        ref = gt_by_key[(ann["image_id"], tuple(np.round(ann["bbox"], 2)))]
        ours, theirs = np.reshape(ann["keypoints"], (-1, 3)), np.reshape(ref["keypoints"], (-1, 3))
        visible = theirs[:, 2] > 0
        assert np.array_equal(ours[:, 2], np.where(visible, 2, 0))
        np.testing.assert_allclose(ours[visible, :2], theirs[visible, :2], atol=1e-3)
        assert not ours[~visible].any()
        assert ann["num_keypoints"] == ref["num_keypoints"]
        unlabelled += int((~visible).sum())
    assert stats.keypoints_unlabelled == unlabelled > 0

    # the dataset as ground truth scores the GT-derived results at AP 1.0
    assert keypoint_ap(out, list(coco_results(split_tables(rows)))) == pytest.approx(1.0)


def test_dataset_thresholds_errors_and_assigned_ids(tmp_path):
    rows = gt_rows("coco-val-4")
    # person scores 0.9 / 0.1 alternating; keypoint scores 0.2 on the nose, 0.8 elsewhere
    for row in rows:
        new = []
        for i, person in enumerate(row["persons"]):
            kps = np.reshape(person["keypoints"], (-1, 3)).copy()
            kps[:, 2] = 0.8
            kps[0, 2] = 0.2
            new.append({**person, "score": 0.9 if i % 2 == 0 else 0.1, "keypoints": kps.reshape(-1).tolist()})
        row["persons"] = new
    rows.append(error_row("/missing/000000000001.jpg", 1))
    rows.append({"image_uri": "/photos/holiday.jpg", "image_id": None, "width": 30, "height": 20,
                 "persons": [], "error": None})
    rows.append({"image_uri": "s3://b/imgs.parquet#3", "image_id": None, "width": 30, "height": 20,
                 "persons": [], "error": None})
    stats = ExportStats()
    out = tmp_path / "dataset.json"
    with open(out, "w", encoding="utf-8") as handle:
        for chunk in coco_dataset([table_of(rows[:3]), table_of(rows[3:])], min_person_score=0.5,
                                  min_keypoint_score=0.5, stats=stats):
            handle.write(chunk)
    coco = load_coco(out)
    kept = [p for r in rows for i, p in enumerate(r["persons"]) if i % 2 == 0]
    assert len(coco.getAnnIds()) == len(kept) == stats.persons
    assert stats.persons_below_score == sum(len(r["persons"]) for r in rows) - len(kept)
    assert stats.skipped_error == 1 and 1 not in coco.getImgIds()
    assert len(coco.getImgIds()) == 4 + 2 == stats.images and stats.assigned_image_ids == 2
    by_name = {img["file_name"]: img for img in coco.loadImgs(coco.getImgIds())}
    largest = max(r["image_id"] for r in rows[:4])
    assert {by_name["holiday.jpg"]["id"], by_name["imgs-3"]["id"]} == {largest + 1, largest + 2}
    assert by_name["holiday.jpg"]["image_uri"] == "/photos/holiday.jpg"
    assert by_name["000000000785.jpg"]["id"] == 785 and by_name["000000000785.jpg"]["width"] == 640
    for ann in coco.loadAnns(coco.getAnnIds()):
        kps = np.reshape(ann["keypoints"], (-1, 3))
        assert kps[0].tolist() == [0, 0, 0]  # nose scored 0.2 < 0.5: unlabelled
        assert (kps[1:, 2] == 2).all() and ann["num_keypoints"] == 16
        assert ann["score"] == pytest.approx(0.9)


def test_dataset_without_persons_and_mixed_k():
    empty = "".join(coco_dataset([table_of([{"image_uri": "/a/x.jpg", "image_id": None, "width": 4,
                                              "height": 3, "persons": [], "error": None}])]))
    document = json.loads(empty)
    assert document["images"] == [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 3, "image_uri": "/a/x.jpg"}]
    assert document["annotations"] == [] and document["categories"][0]["keypoints"] == list(COCO.keypoint_names)

    person = {"bbox": [0, 0, 2, 2], "box_score": 1.0, "score": 1.0}
    mpii = table_of([{"image_uri": "/a/1.jpg", "image_id": 1, "width": 4, "height": 3, "error": None,
                      "persons": [{**person, "keypoints": [1.0, 1.0, 1.0] * 16}]}])
    document = json.loads("".join(coco_dataset([mpii])))
    assert document["categories"][0]["keypoints"] == list(MPII.keypoint_names)
    mixed = table_of([{"image_uri": "/a/1.jpg", "image_id": 1, "width": 4, "height": 3, "error": None,
                       "persons": [{**person, "keypoints": [1.0, 1.0, 1.0] * 16},
                                   {**person, "keypoints": [1.0, 1.0, 1.0] * 17}]}])
    with pytest.raises(ValueError, match="keypoints"):
        "".join(coco_dataset([mixed]))


def test_iter_prediction_rows_handles_sliced_tables():
    rows = gt_rows("coco-val-4")
    table = table_of(rows)
    sliced = table.slice(1, 2)
    got = list(iter_prediction_rows([sliced]))
    assert [r.image_id for r in got] == [rows[1]["image_id"], rows[2]["image_id"]]
    for row, ref in zip(got, rows[1:3]):
        assert len(row.keypoints) == len(ref["persons"])
        np.testing.assert_allclose(row.boxes, [p["bbox"] for p in ref["persons"]], rtol=1e-6)
        np.testing.assert_allclose(np.stack(row.keypoints).reshape(len(ref["persons"]), -1),
                                   [p["keypoints"] for p in ref["persons"]], rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Box files
# ----------------------------------------------------------------------------------------------------------------


def _val4():
    return json.loads(coco_data.annotation_file("coco-val-4").read_text())


def test_load_boxes_annotation_file():
    path = coco_data.annotation_file("coco-val-4")
    coco = _val4()
    index = load_boxes(str(path))
    for info in coco["images"]:
        anns = [a for a in coco["annotations"]
                if a["image_id"] == info["id"] and a["category_id"] == 1 and not a.get("iscrowd", 0)]
        expected = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        for key in ({"file_name": info["file_name"]}, {"file_name": f"s3://bucket/x/{info['file_name']}"},
                    {"image_id": info["id"]}):
            boxes, scores = index.boxes_for(**key)
            assert boxes.dtype == np.float32 and scores.dtype == np.float32
            np.testing.assert_array_equal(boxes, expected)
            np.testing.assert_array_equal(scores, np.ones(len(anns), np.float32))
        assert index.image_id_for(info["file_name"]) == info["id"]
    assert index.num_boxes == sum(1 for a in coco["annotations"] if a["category_id"] == 1 and not a["iscrowd"])
    boxes, scores = index.boxes_for(file_name="holiday.jpg")
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    assert index.image_id_for("holiday.jpg") is None
    # an image list given explicitly wins: the file names must come from it
    assert load_boxes(str(path), images=[]).boxes_for(file_name="000000000785.jpg")[0].shape == (0, 4)


def test_load_boxes_annotation_file_skips_crowd_and_other_categories(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({
        "images": [{"id": 5, "file_name": "a/img.jpg"}, {"id": 6, "file_name": "b/other.jpg"}],
        "annotations": [
            {"image_id": 5, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"image_id": 5, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1},
            {"image_id": 5, "category_id": 3, "bbox": [0, 0, 9, 9], "iscrowd": 0},
            {"image_id": 6, "category_id": 1, "bbox": [5, 6, 7, 8]},
        ],
    }))
    index = load_boxes(str(path))
    np.testing.assert_array_equal(index.boxes_for(file_name="img.jpg")[0], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(index.boxes_for(file_name="b/other.jpg")[0], [[5, 6, 7, 8]])
    assert index.num_boxes == 2


def test_load_boxes_detection_results():
    det_path = shared_path("data/coco-val-4/test_coco_det_AP_H_56.json")
    detections = json.loads(det_path.read_text())
    coco = _val4()
    names = {info["file_name"]: info["id"] for info in coco["images"]}
    for index in (load_boxes(str(det_path)), load_boxes(str(det_path), images=coco["images"])):
        total = 0
        for file_name, image_id in names.items():
            mine = [d for d in detections if d["image_id"] == image_id and d["category_id"] == 1]
            boxes, scores = index.boxes_for(file_name=f"/any/folder/{file_name}")
            np.testing.assert_allclose(boxes, np.asarray([d["bbox"] for d in mine], np.float32))
            np.testing.assert_allclose(scores, np.asarray([d["score"] for d in mine], np.float32))
            assert index.image_id_for(file_name) == image_id
            total += len(boxes)
        # a bare number (e.g. the row index of a Parquet-row URI) does not name image 785
        assert index.image_id_for("785") is None and index.boxes_for(file_name="785")[0].shape == (0, 4)
        assert total == 118 == index.num_boxes
        assert index.boxes_for(image_id=785)[0].shape == (22, 4)


def test_load_boxes_detection_results_filters_categories(tmp_path):
    path = tmp_path / "det.json"
    path.write_text(json.dumps([
        {"image_id": 3, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5},
        {"image_id": 3, "category_id": 18, "bbox": [1, 1, 2, 2], "score": 0.9},
    ]))
    index = load_boxes(str(path), images=[{"id": 3, "file_name": "dog.jpg"}])
    boxes, scores = index.boxes_for(file_name="dog.jpg")
    assert boxes.tolist() == [[1, 1, 2, 2]] and scores.tolist() == [0.5]
    assert index.image_id_for("000000000003.jpg") is None  # an image list was given: names come from it


@pytest.mark.parametrize(
    "content, problem",
    [
        ("not json at all {", "not JSON"),
        ('{"images": []}', "annotations"),
        ('{"annotations": [], "info": {}}', "images"),
        ('"just a string"', "neither"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]', "score"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}]', "bbox"),
        ('[{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]', "category_id"),
        ('[[1, 2, 3, 4]]', "not an object"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "category_id": 1}]}',
         "bbox"),
        ('{"images": [{"id": 1}], "annotations": []}', "file_name"),
    ],
)
def test_load_boxes_bad_files(tmp_path, content, problem):
    path = tmp_path / "boxes.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        load_boxes(str(path))
    message = str(info.value)
    assert str(path) in message and problem in message and "\n" not in message


def test_load_boxes_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found") as info:
        load_boxes(str(tmp_path / "nope.json"))
    assert "\n" not in str(info.value)
