"""The Python API through Ray: a pose stage for any Ray Dataset (its columns kept), then OUTPUT written and read back.

The two examples of the README's "Use it from Python": a Parquet dataset with a caption and a label beside the images
and their boxes, and `ray.data.read_images` with a detector."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vitpose_batch as vb
import vitpose_core as vc
from tests import coco_data
from tests.shared_data import shared_path
from vitpose_batch.schemas.predictions import person_arrays


@pytest.fixture(scope="module")
def photos():
    return coco_data.load("coco-val-4")


def test_parquet_with_extra_columns_to_output_and_back(tmp_path, photos, tiny_vitpose, shared_ray):
    import ray

    shard = tmp_path / "data" / "train.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({
        "name": [p.path.name for p in photos], "image": [p.path.read_bytes() for p in photos],
        "caption": [f"{len(p.boxes)} people" for p in photos], "label": list(range(len(photos))),
        "boxes": [p.boxes.tolist() for p in photos]}), shard)
    ds = ray.data.read_parquet(str(shard))
    ds = vb.estimate_poses(ds, image_column="image", model=tiny_vitpose, boxes_column="boxes", batch_size=2)
    output = tmp_path / "out"
    summary = vb.write_output(ds.drop_columns(["image"]), str(output), key_column="name")
    assert (summary.images, summary.errors, summary.skipped) == (len(photos), 0, 0)
    assert summary.persons == sum(len(p.boxes) for p in photos)

    rows = {r["name"]: r for r in vb.read_output(str(output)).take_all()}
    expected = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose))([p.image for p in photos],
                                                                   [p.boxes for p in photos])
    for photo, want in zip(photos, expected):
        row = rows[photo.path.name]
        assert (row["caption"], row["label"]) == (f"{len(photo.boxes)} people", photos.index(photo))  # kept
        assert row["image_uri"] == photo.path.name and row["error"] is None  # keyed by the name column
        assert (row["width"], row["height"]) == photo.image.shape[1::-1]
        got = person_arrays(row["persons"])
        np.testing.assert_allclose(got["boxes"], photo.boxes, atol=1e-3)
        np.testing.assert_allclose(got["keypoints"][..., :2], want["keypoints"], atol=0.05)
    assert not [c for c in vb.read_output(str(output)).schema().names if c.startswith("_")]  # no private columns
    job = json.loads((output / "_job.json").read_text())
    assert job["settings"]["boxes"] == "column boxes" and job["settings"]["model"].endswith("tiny-vitpose-32")

    again = vb.write_output(ds.drop_columns(["image"]), str(output), key_column="name")
    assert (again.images, again.skipped) == (0, len(photos))  # exactly once: nothing written twice
    assert vb.read_output(str(output)).count() == len(photos)


def test_read_images_with_a_detector(tmp_path, photos, tiny_vitpose, shared_ray):
    import ray

    yolox = str(shared_path("models/yolox_nano.onnx"))
    folder = coco_data.image_folder("coco-val-4")
    ds = ray.data.read_images(str(folder), include_paths=True, mode="RGB")
    ds = vb.estimate_poses(ds, image_column="image", model=tiny_vitpose, detector=yolox, batch_size=2)
    output = tmp_path / "out"
    summary = vb.write_output(ds.drop_columns(["image"]), str(output), key_column="path")
    assert (summary.images, summary.errors) == (len(photos), 0)
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in vb.read_output(str(output)).take_all()}
    estimator = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose), detector=vc.load_detector(yolox))
    for photo, want in zip(photos, estimator([p.image for p in photos])):
        got = person_arrays(rows[photo.path.name]["persons"])
        assert len(got["boxes"]) == len(want["boxes"]) > 0
        np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-2)
        np.testing.assert_allclose(got["keypoints"][..., :2], want["keypoints"], atol=0.05)
    assert json.loads((output / "_job.json").read_text())["settings"]["detector"].endswith("yolox_nano.onnx")


def test_bad_images_are_rows_and_bad_calls_are_one_line(tmp_path, photos, tiny_vitpose, shared_ray):
    import ray

    ds = ray.data.from_arrow(pa.table({"id": [1, 2, 3], "image": [photos[0].path.read_bytes(), b"not an image", None],
                                       "boxes": [photos[0].boxes.tolist(), [[1, 1, 10, 10]], []]}))
    rows = {r["id"]: r for r in vb.estimate_poses(ds, image_column="image", model=tiny_vitpose,
                                                  boxes_column="boxes").take_all()}
    assert rows[1]["error"] is None and len(rows[1]["persons"]) == len(photos[0].boxes)
    assert rows[2]["error"].startswith("not an image") and rows[2]["persons"] == []
    assert rows[3]["error"] == "no image in this row (null bytes and no path)"
    for call, message in [
        (lambda: vb.estimate_poses(ds, image_column="image", model=tiny_vitpose), "needs person boxes"),
        (lambda: vb.estimate_poses(ds, image_column="picture", model=tiny_vitpose, boxes_column="boxes"),
         "no column 'picture'"),
        (lambda: vb.estimate_poses(ds, image_column="id", model=tiny_vitpose, boxes_column="boxes"), "not image"),
    ]:
        with pytest.raises(vb.StageError, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)
    plain = ray.data.from_arrow(pa.table({"image_uri": ["a"], "width": [1], "height": [1],
                                          "persons": pa.array([[]], pa.list_(pa.int32())), "error": [None]}))
    with pytest.raises(vb.OutputRowsError, match="carry no settings"):
        vb.write_output(plain, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_gpu_asked_for_on_a_cluster_without_one_is_refused_at_once(tiny_vitpose, shared_ray):
    import ray

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    ds = ray.data.from_arrow(pa.table({"image": [b"x"], "boxes": [[[1.0, 1.0, 10.0, 10.0]]]}))
    with pytest.raises(vb.StageError, match=r"device 'cuda', but the Ray cluster has no GPU"):
        vb.estimate_poses(ds, image_column="image", model=tiny_vitpose, boxes_column="boxes", device="cuda")
