"""Large JPEGs are decoded no larger than their crops need, keypoints still in full-resolution image pixels."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import vitpose_core as vc
import vitpose_batch.pipeline.image_decoding
from vitpose_batch.pipeline.image_decoding import (decode_image, decode_items, decode_reduced, detector_reduction, full_size, reduction_for,
                         to_full, to_reduced)
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.pipeline.sources import ITEM_SCHEMA
from vitpose_batch.schemas.predictions import person_arrays
from tests.shared_data import shared_path
from vitpose_batch.schemas.box_files import load_boxes
from tests import coco_data


SHARED_MODELS = shared_path("models")


@pytest.fixture(scope="module")
def big_photo():
    """A real COCO image upscaled 4x (2560 px wide), saved as JPEG, with its ground-truth boxes scaled alike."""
    image = coco_data.load("coco-val-4")[0]
    big = Image.fromarray(image.image).resize((image.image.shape[1] * 4, image.image.shape[0] * 4), Image.BICUBIC)
    data = io.BytesIO()
    big.save(data, format="JPEG", quality=95)
    return data.getvalue(), image.boxes * 4, big.size


def test_small_images_are_decoded_whole():
    image = coco_data.load("coco-val-4")[0]  # 640 px: reduced decoding would save little and change the rows
    assert decode_reduced(image.path.read_bytes(), 4)[1] == 1


def test_reduction_leaves_every_crop_a_source_pixel_per_crop_pixel():
    assert reduction_for(np.zeros((0, 4))) == 8  # nothing to crop: only the size is needed
    assert reduction_for([[0, 0, 100, 204.8]]) == 1  # padded region 256 rows: exactly one per crop row
    assert reduction_for([[0, 0, 100, 409.6], [0, 0, 100, 2000]]) == 2  # the smallest person decides
    assert reduction_for([[0, 0, 4000, 1000]]) == 8  # a wide box is widened to the crop's aspect, then padded


def test_reduced_geometry_is_exact():
    """Crops taken at reduced boxes and decoded back land exactly where full-resolution ones do."""
    rng = np.random.default_rng(0)
    heatmaps = rng.random((20, 17, 64, 48), np.float32)
    boxes = np.column_stack([rng.uniform(0, 2000, (20, 2)), rng.uniform(300, 1500, (20, 2))]).astype(np.float32)
    for f in (2, 4, 8):
        full, _ = vc.decode_heatmaps(heatmaps, boxes)
        reduced, _ = vc.decode_heatmaps(heatmaps, to_reduced(boxes, f))
        np.testing.assert_allclose(to_full(reduced, f), full, rtol=0, atol=2e-3)


def test_big_photo_decodes_at_a_quarter_with_the_same_crops(big_photo, tmp_path, tiny_vitpose):
    data, boxes, (width, height) = big_photo
    reduced, f = decode_reduced(data, reduction_for(boxes))
    full, _ = decode_reduced(data, 1)
    assert f == 4 and reduced.shape == (-(-height // 4), -(-width // 4), 3) and full.shape == (height, width, 3)
    estimator = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose))
    crops_full = estimator.preprocess([full], [boxes])
    crops_reduced = estimator.preprocess([reduced], [to_reduced(boxes, f)])
    assert float((crops_full - crops_reduced).abs().mean()) < 0.05  # normalised units: the same people, resampled

    # through the decode stage: items keep the full size and the boxes as given; pixels are a sixteenth
    gt = tmp_path / "boxes.json"
    gt.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": b.tolist(), "score": 0.9}
                                            for b in boxes]))
    item = decode_items(pa.table({"image_uri": ["/photos/000000000001.jpg"], "image_id": [1], "data": [data]}),
                        load_boxes(str(gt)))[0]
    assert (item.width, item.height, item.reduction) == (width, height, 4)
    assert item.image.shape == reduced.shape


def test_full_size_follows_exif_orientation(big_photo):
    data, _, (width, height) = big_photo
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    exif[0x0112] = 6  # stored sideways: shown rotated
    rotated = io.BytesIO()
    image.save(rotated, format="JPEG", exif=exif.tobytes(), quality=90)
    assert full_size(rotated.getvalue()) == (height, width)
    pixels, f = decode_reduced(rotated.getvalue(), 2)
    assert f == 2 and pixels.shape == (-(-width // 2), -(-height // 2), 3)



def test_detector_runs_decode_what_the_detector_needs():
    assert reduction_for(None) is None  # a detector looks first
    assert detector_reduction(4032, 3024) == 4  # a 12 MP phone photo: 1008 px for a 640 px detector
    assert detector_reduction(2560, 1700) == 2 and detector_reduction(1000, 800) == 1


def test_detector_run_on_a_big_photo_matches_full_decoding(big_photo, tiny_vitpose):
    """YOLOX on the photo decoded at 1/2 finds the persons it finds at full size; small persons get a second,
    larger decode; rows are in full-image pixels."""
    data, _, (width, height) = big_photo
    detector = SHARED_MODELS / "yolox_nano.onnx"
    worker = PoseWorker(tiny_vitpose, str(detector), "cpu", None, False, None, None, 2)
    decodes = []
    original = vitpose_batch.pipeline.image_decoding.decode_reduced

    def counting(raw, reduction):
        decodes.append(reduction)
        return original(raw, reduction)

    vitpose_batch.pipeline.image_decoding.decode_reduced = counting
    try:
        row = worker(pa.Table.from_pylist([{"image_uri": "/photos/big.jpg", "image_id": None, "data": data}],
                                          schema=ITEM_SCHEMA)).to_pylist()[0]
    finally:
        vitpose_batch.pipeline.image_decoding.decode_reduced = original
    full = decode_image(data)
    expected, _ = vc.load_detector(str(detector))([full])[0]
    got = person_arrays(row["persons"])["boxes"]
    assert (row["width"], row["height"]) == (width, height) and row["error"] is None
    assert decodes[0] is None and len(expected) and abs(len(got) - len(expected)) <= 1
    for box in expected:  # every person found at full size is found on the reduced decode, in full-image pixels
        assert max(iou(box, other) for other in got) > 0.8


def test_small_persons_get_a_second_decode(big_photo, tiny_vitpose):
    data, _, _ = big_photo
    worker = PoseWorker(tiny_vitpose, None, "cpu", None, False, None, None, 1)
    items = decode_items(pa.Table.from_pylist([{"image_uri": "/a.jpg", "image_id": None, "data": data}] * 2,
                                              schema=ITEM_SCHEMA))
    assert [i.reduction for i in items] == [2, 2] and items[0].data is not None
    sizes = iter([np.array([[100, 100, 600, 1200]], np.float32), np.array([[100, 100, 30, 60]], np.float32)])
    # a detector whose boxes (in the reduced pixels it is shown) are a tall person and a small one
    worker.estimator.detector = lambda images: [(next(sizes), np.ones(1, np.float32)) for _ in images]
    worker.detect_reduced(items)
    assert items[0].reduction == 2 and items[1].reduction == 1  # the small one is decoded again, whole
    np.testing.assert_allclose(items[0].boxes, [[100 * 2 + 0.5, 100 * 2 + 0.5, 1200, 2400]])
    assert items[1].image.shape == decode_image(data).shape


def iou(a, b) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(a[0], b[0])) * max(0.0, min(ay2, by2) - max(a[1], b[1]))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)
