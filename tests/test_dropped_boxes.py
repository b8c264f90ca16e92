"""Every box left out is named: the summary gives each reason's count and its first boxes (image, box, where in the
boxes file), whether the box was refused when the boxes file was read or in the actors; the run record keeps the
counts per reason and a bounded list of examples."""

from __future__ import annotations

import json
import shutil

import numpy as np

import vitpose_core as vc
from vitpose_batch.cli import main as cli
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.schemas.predictions import person_arrays
from tests import coco_data

PARTLY_OUTSIDE = [[600.0, 300.0, 80.0, 150.0], [-20.0, 100.0, 60.0, 200.0]]  # 640x425: kept
WHOLLY_OUTSIDE = [[700.0, 10.0, 50.0, 80.0], [-100.0, 10.0, 50.0, 50.0], [10.0, 500.0, 40.0, 40.0],
                  [100.0, -300.0, 40.0, 200.0], [640.0, 0.0, 10.0, 10.0]]
OVER_8X = [[-3000.0, -3000.0, 7000.0, 7000.0]]
UNDER_A_PIXEL = [[100.0, 100.0, 0.5, 40.0], [50.0, 60.0, 30.0, 0.9]]
NO_AREA = [[200.0, 50.0, -30.0, 100.0], [10.0, 10.0, 20.0, 0.0]]


def test_every_box_left_out_is_named_with_its_reason(tmp_path, tiny_vitpose, shared_ray, capsys):
    photo = coco_data.load("coco-val-4")[0]  # 000000000785.jpg, 640x425, one person
    assert photo.image.shape[:2] == (425, 640)
    corpus = tmp_path / "in"
    corpus.mkdir()
    shutil.copyfile(photo.path, corpus / photo.path.name)
    shutil.copyfile(photo.path, corpus / "second.jpg")
    true_box = photo.boxes[0].tolist()
    first = PARTLY_OUTSIDE[:1] + WHOLLY_OUTSIDE[:1] + OVER_8X + UNDER_A_PIXEL[:1] + NO_AREA[:1] + [true_box] \
        + PARTLY_OUTSIDE[1:]
    second = WHOLLY_OUTSIDE[1:] + UNDER_A_PIXEL[1:] + NO_AREA[1:] + [[float("nan"), 10.0, 50.0, 50.0], true_box]
    detections = [{"image_id": image_id, "category_id": 1, "bbox": box, "score": 0.9}
                  for image_id, boxes in ((785, first), (2, second)) for box in boxes]
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps({
        "images": [{"id": 785, "file_name": photo.path.name}, {"id": 2, "file_name": "second.jpg"}],
        "annotations": [dict(d, id=i + 1, area=1.0, iscrowd=0) for i, d in enumerate(detections)],
        "categories": [{"id": 1, "name": "person"}]}, allow_nan=True))
    output = tmp_path / "out"
    assert cli(["annotate", str(corpus), str(output), "--model", tiny_vitpose, "--boxes", str(boxes_file)]) == 0
    printed = capsys.readouterr().out

    rows = {r["image_uri"].rsplit("/", 1)[1]: r for t in iter_part_tables(str(output)) for r in t.to_pylist()}
    kept = [PARTLY_OUTSIDE[0], true_box, PARTLY_OUTSIDE[1]]  # in file order
    got = person_arrays(rows[photo.path.name]["persons"])
    np.testing.assert_allclose(got["boxes"], np.array(kept, np.float32), atol=1e-3)
    expected = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose))([photo.image], [np.array(kept, np.float32)])[0]
    np.testing.assert_allclose(got["keypoints"][..., :2], expected["keypoints"], atol=0.05)
    np.testing.assert_allclose(person_arrays(rows["second.jpg"]["persons"])["boxes"], [true_box], atol=1e-3)

    counts = {"wholly outside the image": 5, "over 8x the image": 1, "under a pixel": 2, "no area": 2,
              "not finite": 1}
    total = sum(counts.values())
    assert f"unusable boxes left out: {total}" in printed
    lines = {line.strip().split(":", 1)[0]: line for line in printed.splitlines() if line.startswith("  ")}
    for reason, count in counts.items():
        assert lines[reason].strip().startswith(f"{reason}: {count} ("), printed
    # named: the image, the box, and for refusals at reading, the item of the boxes file
    assert f"{photo.path.name} [700.0, 10.0, 50.0, 80.0]" in lines["wholly outside the image"]
    assert f"{photo.path.name} [-3000.0, -3000.0, 7000.0, 7000.0]" in lines["over 8x the image"]
    assert f"{photo.path.name} [100.0, 100.0, 0.5, 40.0]" in lines["under a pixel"]
    assert f"annotations[4] of {photo.path.name} [200.0, 50.0, -30.0, 100.0]" in lines["no area"]
    assert "annotations[" in lines["not finite"] and "second.jpg" in lines["not finite"]
    assert lines["wholly outside the image"].rstrip().endswith(", ...)")  # 5 boxes: the first 3 named

    record = json.loads(next((output / "_runs").glob("*.json")).read_text())["dropped_boxes"]
    assert record["counts"] == counts
    outside = record["examples"]["wholly outside the image"]
    assert len(outside) == 5 and {tuple(e["bbox"]) for e in outside} == {tuple(b) for b in WHOLLY_OUTSIDE}
    assert {e["image"].rsplit("/", 1)[-1] for e in outside} == {photo.path.name, "second.jpg"}
