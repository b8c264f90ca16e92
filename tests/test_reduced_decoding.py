"""Large JPEGs are decoded no larger than their crops need, keypoints still in full-resolution image pixels."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import vitpose_core as vc
from jobs.decode import decode_items, decode_reduced, full_size, reduction_for, to_full, to_reduced
from schemas.coco import load_boxes
from tests import coco_data


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
    assert reduction_for(None) == 1  # a detector looks at the whole image
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

