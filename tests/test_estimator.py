"""PoseEstimator on real images: the crops transformers makes, the seed pipeline's keypoints, flip test, ViTPose++."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import vitpose_core as vc
from tests import checkpoint_factory as factory
from tests import coco_data
from vitpose_core.crops import boxes_to_center_scale

hf_vitpose = pytest.importorskip("transformers.models.vitpose.image_processing_pil_vitpose")


@pytest.fixture(scope="module")
def val4():
    return coco_data.load("coco-val-4")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = factory.hf_model(hidden=128, heads=2, seed=70)
    model = vc.load_pose_model(factory.save_hf(hf, tmp_path_factory.mktemp("m") / "tiny"))
    return hf, model


def reference_crops(images, boxes) -> np.ndarray:
    processor = hf_vitpose.VitPoseImageProcessorPil()
    return processor(images, boxes=[b.tolist() for b in boxes], return_tensors="np")["pixel_values"]


@pytest.mark.parametrize("backend", ["cv2", "torch"])
def test_preprocess_equals_transformers_processor(val4, tiny, backend):
    mini = coco_data.load("coco-mini-train")[:6]
    images = [g.image for g in val4 + mini]
    boxes = [g.boxes for g in val4 + mini]
    estimator = vc.PoseEstimator(tiny[1], crop_backend=backend)
    ours = estimator.preprocess(images, boxes).numpy()
    expected = reference_crops(images, boxes)
    assert ours.shape == expected.shape == (sum(len(b) for b in boxes), 3, 256, 192)
    assert np.abs(ours - expected).mean() <= 0.02
    # No crop is misplaced: beyond rounding, only the image's last row/column differs (scipy's constant mode drops
    # it, cv2 and grid_sample blend it with black).
    assert (np.abs(ours - expected) > 0.1).mean() < 0.01


def seed_pipeline(hf, image, boxes):
    """The seed page: VitPoseImageProcessor, VitPoseForPoseEstimation, post_process_pose_estimation, one image."""
    processor = hf_vitpose.VitPoseImageProcessorPil()
    inputs = processor(image, boxes=[boxes.tolist()], return_tensors="pt")
    with torch.no_grad():
        outputs = hf(inputs["pixel_values"])
    seed = processor.post_process_pose_estimation(outputs, boxes=[boxes])[0]
    return np.stack([p["keypoints"].numpy() for p in seed]), np.stack([p["scores"].numpy() for p in seed])


def test_keypoints_equal_seed_pipeline_on_the_same_crops(val4, tiny, monkeypatch):
    """Model, batching and decoding equal the seed pipeline exactly when both see the same crops."""
    hf, model = tiny
    estimator = vc.PoseEstimator(model, blur="transformers", batch_size=3)
    images, boxes = [g.image for g in val4], [g.boxes for g in val4]
    crops = torch.from_numpy(reference_crops(images, boxes))
    monkeypatch.setattr(estimator, "crops", lambda _i, _o, all_boxes, _u, it=iter(crops.split(3)): next(it))
    for g, result in zip(val4, estimator(images, boxes)):
        seed_kp, seed_scores = seed_pipeline(hf, g.image, g.boxes)
        np.testing.assert_allclose(result["keypoint_scores"], seed_scores, atol=1e-4)
        # A non-positive peak has no location (transformers returns -1-based garbage, we keep the argmax), and
        # where transformers' DARK step exceeds a heatmap pixel we keep the argmax too: exactly there we differ.
        peaked = seed_scores > 0
        step = np.maximum(g.boxes[:, 2], g.boxes[:, 3] * 0.75)[:, None] * 1.25 / 47  # image px per heatmap px
        gap = np.linalg.norm(result["keypoints"] - seed_kp, axis=-1)
        same = gap <= 1e-2
        assert (same | ~peaked | (gap > 0.99 * step)).all()
        assert same[peaked].mean() > 0.8
        center, size = boxes_to_center_scale(g.boxes, aspect_ratio=0.75)
        offset = np.abs(result["keypoints"][~peaked] - np.broadcast_to(center[:, None], seed_kp.shape)[~peaked])
        assert (offset <= np.broadcast_to(size[:, None], seed_kp.shape)[~peaked] / 2 + 1e-3).all()


def test_keypoints_close_to_seed_pipeline_end_to_end(val4, tiny):
    hf, model = tiny
    results = vc.PoseEstimator(model, blur="transformers")([g.image for g in val4], [g.boxes for g in val4])
    close, score_gap = [], []
    for g, result in zip(val4, results):
        seed_kp, seed_scores = seed_pipeline(hf, g.image, g.boxes)
        score_gap.append(np.abs(result["keypoint_scores"] - seed_scores).ravel())
        step = np.maximum(g.boxes[:, 2], g.boxes[:, 3] * 0.75) * 1.25 / 47  # image px per heatmap px
        close.append((np.linalg.norm(result["keypoints"] - seed_kp, axis=-1) < 0.25 * step[:, None]).ravel())
    # Crops differ by interpolation rounding at most; a random model's flat heatmaps move some peaks for that.
    assert np.concatenate(close).mean() >= 0.8
    assert np.median(np.concatenate(score_gap)) < 0.02


def test_result_layout_and_rescoring(val4, tiny):
    estimator = vc.PoseEstimator(tiny[1])
    scores = [np.linspace(0.5, 1.0, len(g.boxes)).astype(np.float32) for g in val4]
    results = estimator([g.image for g in val4], [g.boxes for g in val4], box_scores=scores)
    for g, s, r in zip(val4, scores, results):
        n = len(g.boxes)
        assert r["boxes"].shape == (n, 4) and r["keypoints"].shape == (n, 17, 2)
        assert r["keypoint_scores"].shape == (n, 17) and r["scores"].shape == (n,)
        np.testing.assert_array_equal(r["box_scores"], s)
        kp = r["keypoint_scores"]
        expected = s * np.array([row[row > 0.2].mean() if (row > 0.2).any() else 0.0 for row in kp])
        np.testing.assert_allclose(r["scores"], expected, rtol=1e-5)


def test_batch_size_and_backends_agree(val4, tiny):
    images, boxes = [g.image for g in val4], [g.boxes for g in val4]
    one = vc.PoseEstimator(tiny[1], batch_size=1)(images, boxes)
    many = vc.PoseEstimator(tiny[1], batch_size=64)(images, boxes)
    on_torch = vc.PoseEstimator(tiny[1], batch_size=5, crop_backend="torch")(images, boxes)
    for a, b, c in zip(one, many, on_torch):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)
        np.testing.assert_allclose(a["keypoint_scores"], c["keypoint_scores"], atol=0.05)


def test_flip_test_equals_transformers_flip_back(tiny):
    hf, model = tiny
    x = torch.randn(3, 3, 256, 192, generator=torch.Generator().manual_seed(71))
    pairs = torch.tensor(vc.get_keypoint_set("coco").flip_pairs)
    with torch.no_grad():
        expected = 0.5 * (hf(x).heatmaps + hf(x.flip(3), flip_pairs=pairs).heatmaps)
    ours = vc.PoseEstimator(model, flip_test=True).heatmaps(x)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    plain = vc.PoseEstimator(model, flip_test=False).heatmaps(x)
    assert (plain - ours).abs().max() > 1e-2


def test_no_person_and_no_image(tiny):
    estimator = vc.PoseEstimator(tiny[1])
    blank = np.full((120, 80, 3), 127, np.uint8)
    results = estimator([blank], [np.zeros((0, 4))])
    assert results[0]["keypoints"].shape == (0, 17, 2) and results[0]["scores"].shape == (0,)
    assert estimator([], []) == []
    with pytest.raises(ValueError, match="no boxes given and no detector"):
        estimator([blank])
    with pytest.raises(ValueError, match="image 0: expected an HxWx3 uint8 RGB array"):
        estimator([blank[..., 0]], [np.zeros((0, 4))])


def test_detector_supplies_boxes(tiny, val4):
    def detector(images):
        return [(g.boxes, np.full(len(g.boxes), 0.9, np.float32)) for g in val4[: len(images)]]

    results = vc.PoseEstimator(tiny[1], detector=detector)([g.image for g in val4])
    assert [len(r["boxes"]) for r in results] == [len(g.boxes) for g in val4]
    assert all((r["box_scores"] == np.float32(0.9)).all() for r in results)


def test_vitpose_plus_dataset_index_picks_head_and_flip_pairs(tmp_path, val4):
    counts = [14, 16, 17, 17, 133]
    base = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, seed=72)
    state = factory.original_state_dict(base)
    for i, k in enumerate(counts):
        head = factory.hf_model(hidden=128, heads=2, experts=6, part_features=16, simple=False, keypoints=k, seed=73 + i)
        state.update(factory.head_state_dict(head, f"associate_keypoint_heads.{i}."))
    model = vc.load_pose_model(factory.save_original(state, tmp_path / "plus.pth"))
    estimator = vc.PoseEstimator(model, flip_test=True)
    g = val4[0]
    whole = estimator([g.image], [g.boxes], dataset_index=5)[0]
    assert whole["keypoints"].shape == (len(g.boxes), 133, 2)
    assert estimator.keypoints_of(5).name == "coco_wholebody" and estimator.keypoints_of(2).name == "mpii"
    coco = estimator([g.image], [g.boxes], dataset_index=0)[0]
    assert coco["keypoints"].shape == (len(g.boxes), 17, 2)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler")
def test_compiled_model_gives_the_same_heatmaps(tiny):
    x = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(74))
    eager = vc.PoseEstimator(tiny[1]).heatmaps(x)
    compiled = vc.PoseEstimator(tiny[1], compile=True).heatmaps(x)
    torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)
