"""Tests for vitpose_core.drawing: colours land where they should, nothing else is touched, bad input is rejected."""

from __future__ import annotations

import numpy as np
import pytest

from vitpose_core.drawing import DEFAULT_BOX_COLOR, default_radius, draw_poses, draw_poses_from_result
from vitpose_core.keypoint_sets import AIC, COCO, COCO_WHOLEBODY, MPII, get_keypoint_set

BACKGROUND = (30, 40, 50)
H, W = 200, 240


def blank(h: int = H, w: int = W) -> np.ndarray:
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    return image


def one_person(kset=COCO, where: dict[int, tuple[float, float, float]] | None = None):
    """(1, K, 2) keypoints parked at (0, 0) with score 0, except `where`: {index: (x, y, score)}."""
    kpts = np.zeros((1, kset.num_keypoints, 2), np.float32)
    scores = np.zeros((1, kset.num_keypoints), np.float32)
    for idx, (x, y, s) in (where or {}).items():
        kpts[0, idx] = (x, y)
        scores[0, idx] = s
    return kpts, scores


def pixel(image: np.ndarray, x: float, y: float) -> tuple[int, ...]:
    return tuple(int(c) for c in image[int(round(y)), int(round(x))])


def edge_index(kset, a: int, b: int) -> int:
    for i, edge in enumerate(kset.skeleton):
        if set(edge) == {a, b}:
            return i
    raise AssertionError(f"edge ({a}, {b}) not in {kset.name} skeleton")


LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_ELBOW, NOSE = 5, 6, 7, 0


# ----------------------------------------------------------------------------------------------------------------
# Dots
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("idx", [NOSE, LEFT_SHOULDER, RIGHT_SHOULDER])
def test_dot_has_keypoint_colour_above_threshold(idx):
    x, y = 100.3, 70.6
    kpts, scores = one_person(where={idx: (x, y, 0.9)})
    out = draw_poses(blank(), kpts, scores)
    assert pixel(out, x, y) == COCO.keypoint_colors[idx]
    # A dot, not a stray pixel: the 4-neighbours are coloured too, and far away is untouched.
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        assert pixel(out, x + dx, y + dy) == COCO.keypoint_colors[idx]
    assert pixel(out, x + 30, y) == BACKGROUND
    assert pixel(out, 0, 0) == BACKGROUND  # the score-0 keypoints parked there were not drawn


def test_keypoint_below_threshold_draws_nothing():
    image = blank()
    kpts, scores = one_person(where={NOSE: (100, 70, 0.2)})
    out = draw_poses(image, kpts, scores, score_threshold=0.3)
    assert pixel(out, 100, 70) == BACKGROUND
    np.testing.assert_array_equal(out, image)


def test_threshold_is_strict_and_configurable():
    kpts, scores = one_person(where={NOSE: (100, 70, 0.5)})
    assert pixel(draw_poses(blank(), kpts, scores, score_threshold=0.5), 100, 70) == BACKGROUND
    assert pixel(draw_poses(blank(), kpts, scores, score_threshold=0.49), 100, 70) == COCO.keypoint_colors[NOSE]


def test_no_scores_draws_every_keypoint():
    # well-separated grid positions (random ones may have two dots' anti-aliased rims blend at a centre)
    grid = [(20 + 45 * (i % 5), 20 + 40 * (i // 5)) for i in range(17)]
    kpts = np.array([grid], np.float64)
    out = draw_poses(blank(), kpts)
    for k in range(17):  # dots are drawn after edges, so each keypoint centre carries its own colour
        assert pixel(out, *kpts[0, k]) == COCO.keypoint_colors[k]


def test_scores_as_third_column():
    kpts, scores = one_person(where={NOSE: (100, 70, 0.9), LEFT_SHOULDER: (150, 120, 0.1)})
    packed = np.concatenate([kpts, scores[..., None]], axis=2)
    out = draw_poses(blank(), packed)
    assert pixel(out, 100, 70) == COCO.keypoint_colors[NOSE]
    assert pixel(out, 150, 120) == BACKGROUND
    np.testing.assert_array_equal(out, draw_poses(blank(), kpts, scores))


# ----------------------------------------------------------------------------------------------------------------
# Edges
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, p, q",
    [
        (LEFT_SHOULDER, RIGHT_SHOULDER, (40, 100), (200, 100)),  # horizontal, crosses the midline: centre colour
        (LEFT_SHOULDER, LEFT_ELBOW, (50, 40), (170, 160)),  # diagonal, left side: left colour
    ],
)
def test_edge_midpoint_has_edge_colour(a, b, p, q):
    kpts, scores = one_person(where={a: (*p, 0.9), b: (*q, 0.8)})
    out = draw_poses(blank(), kpts, scores)
    mid = ((p[0] + q[0]) / 2, (p[1] + q[1]) / 2)
    expected = COCO.edge_colors[edge_index(COCO, a, b)]
    assert pixel(out, *mid) == expected
    # and the dots at the ends are on top of the line
    assert pixel(out, *p) == COCO.keypoint_colors[a]
    assert pixel(out, *q) == COCO.keypoint_colors[b]


def test_edge_colour_comes_from_edge_colors_not_keypoints():
    e = edge_index(COCO, LEFT_SHOULDER, RIGHT_SHOULDER)
    assert COCO.edge_colors[e] not in (COCO.keypoint_colors[LEFT_SHOULDER], COCO.keypoint_colors[RIGHT_SHOULDER])
    kpts, scores = one_person(where={LEFT_SHOULDER: (40, 100, 0.9), RIGHT_SHOULDER: (200, 100, 0.9)})
    assert pixel(draw_poses(blank(), kpts, scores), 120, 100) == COCO.edge_colors[e]


def test_edge_not_drawn_when_one_end_below_threshold():
    kpts, scores = one_person(where={LEFT_SHOULDER: (40, 100, 0.9), RIGHT_SHOULDER: (200, 100, 0.1)})
    out = draw_poses(blank(), kpts, scores)
    assert pixel(out, 120, 100) == BACKGROUND
    assert pixel(out, 40, 100) == COCO.keypoint_colors[LEFT_SHOULDER]  # the visible end still gets its dot
    assert pixel(out, 200, 100) == BACKGROUND


def test_thickness_and_radius_are_respected():
    kpts, scores = one_person(where={LEFT_SHOULDER: (40, 100, 0.9), RIGHT_SHOULDER: (200, 100, 0.9)})
    edge_colour = COCO.edge_colors[edge_index(COCO, LEFT_SHOULDER, RIGHT_SHOULDER)]
    thin = draw_poses(blank(), kpts, scores, thickness=2, radius=3)
    thick = draw_poses(blank(), kpts, scores, thickness=12, radius=10)
    assert pixel(thin, 120, 105) == BACKGROUND
    assert pixel(thick, 120, 105) == edge_colour
    assert pixel(thin, 40, 108) == BACKGROUND
    assert pixel(thick, 40, 108) == COCO.keypoint_colors[LEFT_SHOULDER]


def test_default_sizes_scale_with_image():
    assert default_radius(100, 100) == 2
    assert default_radius(1500, 3000) == 10
    kpts, scores = one_person(where={NOSE: (1000, 750, 0.9)})
    out = draw_poses(blank(1500, 2000), kpts, scores)
    assert pixel(out, 1008, 750) == COCO.keypoint_colors[NOSE]  # radius 10 at this size


# ----------------------------------------------------------------------------------------------------------------
# Boxes
# ----------------------------------------------------------------------------------------------------------------


def test_box_drawn_when_given():
    kpts, scores = one_person(where={NOSE: (100, 70, 0.9)})
    boxes = np.array([[40, 50, 120, 90]], np.float32)  # xywh: x 40..160, y 50..140
    out = draw_poses(blank(), kpts, scores, boxes=boxes)
    for x, y in ((40, 95), (160, 95), (100, 50), (100, 140)):  # midpoints of the four sides
        assert pixel(out, x, y) == DEFAULT_BOX_COLOR
    assert pixel(out, 100, 95) == BACKGROUND  # hollow
    assert pixel(out, 100, 70) == COCO.keypoint_colors[NOSE]

    no_box = draw_poses(blank(), kpts, scores, boxes=boxes, draw_boxes=False)
    assert pixel(no_box, 40, 95) == BACKGROUND
    coloured = draw_poses(blank(), kpts, scores, boxes=boxes, box_color=(1, 2, 3))
    assert pixel(coloured, 40, 95) == (1, 2, 3)


def test_boxes_partly_outside_or_non_finite_do_not_raise():
    kpts = np.full((3, 17, 2), 100.0)
    boxes = np.array([[-50, -50, 120, 100], [1e30, 0, 10, 10], [np.nan, 1, 2, 3]])
    out = draw_poses(blank(), kpts, boxes=boxes)
    assert pixel(out, 70, 20) == DEFAULT_BOX_COLOR  # right side of the first box, x = 70


# ----------------------------------------------------------------------------------------------------------------
# Robustness
# ----------------------------------------------------------------------------------------------------------------


def test_input_not_modified():
    image = blank()
    before = image.copy()
    kpts = np.random.default_rng(1).uniform(0, 200, size=(2, 17, 2))
    out = draw_poses(image, kpts, boxes=np.array([[10, 10, 50, 50], [60, 60, 90, 90]]))
    np.testing.assert_array_equal(image, before)
    assert out is not image and not np.shares_memory(out, image)
    assert not np.array_equal(out, image)

    image.setflags(write=False)  # read-only input works too
    draw_poses(image, kpts)


def test_non_contiguous_input():
    big = blank(H, 2 * W)
    view = big[:, ::2]
    kpts, scores = one_person(where={NOSE: (100, 70, 0.9)})
    out = draw_poses(view, kpts, scores)
    assert pixel(out, 100, 70) == COCO.keypoint_colors[NOSE]
    assert (big == BACKGROUND).all()


@pytest.mark.parametrize(
    "keypoints",
    [np.zeros((0, 17, 2)), np.zeros((0, 17, 3)), np.zeros((0, 5, 2)), np.zeros((0,))],
)
def test_no_persons_returns_copy(keypoints):
    image = blank()
    out = draw_poses(image, keypoints, boxes=np.zeros((0, 4)))
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_non_finite_and_out_of_image_keypoints_do_not_raise():
    kpts = np.full((1, 17, 2), 100.0)
    kpts[0, 0] = (np.nan, 10)
    kpts[0, 1] = (np.inf, -np.inf)
    kpts[0, 2] = (1e30, -1e30)
    kpts[0, 3] = (-500, 100)
    kpts[0, 4] = (W + 3, H + 3)
    kpts[0, 5] = (1e12, 50)
    scores = np.ones((1, 17))
    scores[0, 6] = np.nan
    out = draw_poses(blank(), kpts, scores)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    draw_poses(blank(), kpts)  # without scores as well


def test_edge_to_far_away_keypoint_draws_visible_part():
    # left shoulder inside, right shoulder far off to the right on the same row: the in-image part is drawn.
    kpts, scores = one_person(where={LEFT_SHOULDER: (40, 100, 0.9), RIGHT_SHOULDER: (1e9, 100, 0.9)})
    out = draw_poses(blank(), kpts, scores)
    colour = COCO.edge_colors[edge_index(COCO, LEFT_SHOULDER, RIGHT_SHOULDER)]
    assert pixel(out, 120, 100) == colour
    assert pixel(out, W - 1, 100) == colour


def test_multiple_persons():
    kpts = np.zeros((2, 17, 2))
    scores = np.zeros((2, 17))
    kpts[0, NOSE], scores[0, NOSE] = (50, 50), 0.9
    kpts[1, LEFT_SHOULDER], scores[1, LEFT_SHOULDER] = (150, 150), 0.9
    out = draw_poses(blank(), kpts, scores)
    assert pixel(out, 50, 50) == COCO.keypoint_colors[NOSE]
    assert pixel(out, 150, 150) == COCO.keypoint_colors[LEFT_SHOULDER]


# ----------------------------------------------------------------------------------------------------------------
# Keypoint sets
# ----------------------------------------------------------------------------------------------------------------


def test_wholebody_133_keypoints_draw():
    rng = np.random.default_rng(2)
    kpts = rng.uniform(10, 190, size=(1, 133, 2))
    hand = 120  # a right-hand keypoint
    kpts[0, hand] = (200, 30)
    scores = np.full((1, 133), 0.9)
    out = draw_poses(blank(), kpts, scores)  # set chosen by K
    assert not np.array_equal(out, blank())
    assert pixel(out, 200, 30) == COCO_WHOLEBODY.keypoint_colors[hand]
    np.testing.assert_array_equal(out, draw_poses(blank(), kpts, scores, keypoint_set="coco_wholebody"))


@pytest.mark.parametrize("kset", [COCO, COCO_WHOLEBODY, MPII, AIC])
def test_set_chosen_by_k(kset):
    kpts = np.full((1, kset.num_keypoints, 2), 100.0)
    out = draw_poses(blank(), kpts)
    assert pixel(out, 100, 100) == kset.keypoint_colors[-1]  # the last dot drawn wins


def test_keypoint_set_by_name_index_and_object():
    kpts, scores = one_person(where={NOSE: (100, 70, 0.9)})
    ap10k = get_keypoint_set("ap10k")  # also 17 keypoints: must be named explicitly
    for key in ("ap10k", 3, ap10k):
        assert pixel(draw_poses(blank(), kpts, scores, keypoint_set=key), 100, 70) == ap10k.keypoint_colors[NOSE]


# ----------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------


def _one_line_value_error(match: str, *args, **kwargs) -> None:
    with pytest.raises(ValueError, match=match) as info:
        draw_poses(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_mismatched_k_raises():
    _one_line_value_error(r"K=17.*'mpii' has 16", blank(), np.zeros((1, 17, 2)), keypoint_set="mpii")
    _one_line_value_error(r"K=17.*'mpii' has 16", blank(), np.zeros((0, 17, 2)), keypoint_set=MPII)


def test_unknown_k_raises():
    _one_line_value_error(r"K=5", blank(), np.zeros((1, 5, 2)))


def test_bad_shapes_raise():
    kpts = np.zeros((2, 17, 2))
    _one_line_value_error(r"keypoints must have shape", blank(), np.zeros((17, 2)))
    _one_line_value_error(r"keypoints must have shape", blank(), np.zeros((1, 17, 4)))
    _one_line_value_error(r"keypoint_scores must have shape", blank(), kpts, np.zeros((2, 16)))
    _one_line_value_error(r"boxes must have shape", blank(), kpts, boxes=np.zeros((2, 5)))
    _one_line_value_error(r"1 boxes but keypoints for 2", blank(), kpts, boxes=np.zeros((1, 4)))
    _one_line_value_error(r"HxWx3", blank()[..., 0], kpts)
    _one_line_value_error(r"uint8", blank().astype(np.float32), kpts)
    _one_line_value_error(r"radius", blank(), kpts, radius=0)
    _one_line_value_error(r"unknown keypoint set", blank(), kpts, keypoint_set="nope")


# ----------------------------------------------------------------------------------------------------------------
# Result dicts
# ----------------------------------------------------------------------------------------------------------------


def test_draw_poses_from_result():
    kpts, scores = one_person(where={NOSE: (100, 70, 0.9), LEFT_SHOULDER: (150, 120, 0.1)})
    result = {
        "boxes": np.array([[40, 50, 120, 90]], np.float32),
        "box_scores": np.array([0.9], np.float32),
        "keypoints": kpts,
        "keypoint_scores": scores,
        "scores": np.array([0.8], np.float32),
    }
    out = draw_poses_from_result(blank(), result)
    np.testing.assert_array_equal(out, draw_poses(blank(), kpts, scores, boxes=result["boxes"]))
    assert pixel(out, 100, 70) == COCO.keypoint_colors[NOSE]
    assert pixel(out, 150, 120) == BACKGROUND
    assert pixel(out, 40, 95) == DEFAULT_BOX_COLOR
    assert pixel(draw_poses_from_result(blank(), result, draw_boxes=False), 40, 95) == BACKGROUND

    empty = {"boxes": np.zeros((0, 4)), "keypoints": np.zeros((0, 17, 2)), "keypoint_scores": np.zeros((0, 17))}
    np.testing.assert_array_equal(draw_poses_from_result(blank(), empty), blank())

    with pytest.raises(ValueError, match="keypoints"):
        draw_poses_from_result(blank(), {"boxes": result["boxes"]})
    with pytest.raises(TypeError, match="boxes"):
        draw_poses_from_result(blank(), result, boxes=None)
