"""Video tracking: PoseTracker (per segment), boxes_from_poses, and the driver's TrackLinker across segments.

Synthetic video with known motion (640x480, 60 sampled frames, a fixed COCO-17 skeleton, small keypoint noise):
A and B walk towards each other and cross; C walks out of the right edge; D walks in from the left edge at frame 30
(a segment boundary); E is hidden for frames 20-22. Persons come in a shuffled order each frame.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vitpose_batch.video.track_links import (
    FramePersons,
    SegmentTracker,
    TrackLinker,
    match_persons,
    relabel,
)
from vitpose_batch.video.tracking import (
    DEFAULT_MIN_SIMILARITY,
    PoseTracker,
    boxes_from_poses,
    pose_similarity,
)
from vitpose_core.keypoint_sets import COCO

SIGMAS = np.asarray(COCO.sigmas, dtype=np.float64)
WIDTH, HEIGHT = 640, 480
FRAMES = 60
SEGMENTS = [(0, 15), (15, 30), (30, 45), (45, 60)]

# A standing person, pixels about the mid-body (COCO order).
SKELETON = np.array([
    (0, -75), (4, -80), (-4, -80), (9, -77), (-9, -77),
    (18, -55), (-18, -55), (24, -25), (-24, -25), (28, 3), (-28, 3),
    (12, 5), (-12, 5), (14, 45), (-14, 45), (15, 85), (-15, 85),
], dtype=np.float64)  # fmt: skip

# label: (position at frame 0, velocity per frame, scale, first frame, frames hidden)
PERSONS = {
    "A": ((120.0, 190.0), (6.0, 0.5), 1.0, 0, ()),
    "B": ((560.0, 235.0), (-6.0, -0.2), 0.9, 0, ()),
    "C": ((430.0, 330.0), (5.0, 1.0), 1.0, 0, ()),
    "D": ((5.0 - 5.0 * 30, 380.0), (5.0, 0.0), 0.95, 30, ()),
    "E": ((300.0, 110.0), (4.0, 0.3), 0.8, 0, (20, 21, 22)),
}


def person_box(keypoints: np.ndarray) -> np.ndarray:
    """A detector-like xywh box: the keypoints' extent plus 10%, clipped to the frame."""
    x1, y1 = keypoints[:, :2].min(0)
    x2, y2 = keypoints[:, :2].max(0)
    mx, my = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
    x1, x2 = np.clip([x1 - mx, x2 + mx], 0, WIDTH)
    y1, y2 = np.clip([y1 - my, y2 + my], 0, HEIGHT)
    return np.array([x1, y1, x2 - x1, y2 - y1])


def make_video(seed: int = 0, persons: dict | None = None):
    """Per frame: (labels, boxes (N, 4), keypoints (N, 17, 3)), persons in a shuffled order."""
    persons = PERSONS if persons is None else persons
    rng = np.random.default_rng(seed)
    frames = []
    for f in range(FRAMES):
        labels, boxes, keypoints = [], [], []
        for label, (start, velocity, scale, first, hidden) in persons.items():
            centre = np.add(start, np.multiply(velocity, f))
            if f < first or f in hidden or not (0 <= centre[0] < WIDTH and 0 <= centre[1] < HEIGHT):
                continue
            xy = centre + SKELETON * scale + rng.normal(0, 1.0, SKELETON.shape)
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < WIDTH) & (xy[:, 1] >= 0) & (xy[:, 1] < HEIGHT)
            score = np.where(inside, rng.uniform(0.7, 0.95, len(xy)), 0.05)
            kps = np.concatenate([xy, score[:, None]], axis=1)
            labels.append(label)
            keypoints.append(kps)
            boxes.append(person_box(kps))
        order = rng.permutation(len(labels))
        if f == 30:  # D, born at a boundary frame, comes after persons already tracked
            order = np.array(sorted(order, key=lambda i: labels[i] == "D"))
        frames.append(([labels[i] for i in order], np.array([boxes[i] for i in order]),
                       np.array([keypoints[i] for i in order])))
    return frames


VIDEO = make_video()


def expected_ids(frames) -> dict[str, int]:
    """Birth id of each person: first frame * 1000 + its rank among the persons new in that frame, in frame order."""
    seen: dict[str, int] = {}
    for f, (labels, _, _) in enumerate(frames):
        new = [label for label in labels if label not in seen]
        for r, label in enumerate(new):
            seen[label] = f * 1000 + r
    return seen


def run_tracker(frames, first: int, stop: int, tracker: PoseTracker | None = None) -> dict[int, np.ndarray]:
    tracker = tracker or PoseTracker(SIGMAS)
    return {f: tracker.step(f, frames[f][1], frames[f][2]) for f in range(first, stop)}


FULL = run_tracker(VIDEO, 0, FRAMES)


def test_synthetic_video_is_what_the_tests_claim():
    present = {label: [f for f, (labels, _, _) in enumerate(VIDEO) if label in labels] for label in PERSONS}
    assert present["D"][0] == 30 and VIDEO[30][0][-1] == "D" and len(VIDEO[30][0]) > 1
    assert 30 < present["C"][-1] < FRAMES - 11  # C leaves the frame, and stays gone for more than max_gap frames
    assert [f for f in range(present["E"][0], present["E"][-1]) if f not in present["E"]] == [20, 21, 22]
    gap = [VIDEO[f][1][VIDEO[f][0].index("A")][0] - VIDEO[f][1][VIDEO[f][0].index("B")][0] for f in (0, FRAMES - 1)]
    assert gap[0] < 0 < gap[1]  # A and B cross
    boxes_a = [VIDEO[f][1][VIDEO[f][0].index(x)] for f in (37,) for x in "AB"]
    overlap = max(0.0, min(boxes_a[0][1] + boxes_a[0][3], boxes_a[1][1] + boxes_a[1][3])
                  - max(boxes_a[0][1], boxes_a[1][1]))
    assert overlap > 0.5 * boxes_a[1][3]  # ... with boxes overlapping by more than half when they meet


def test_similarity_margins_around_the_threshold():
    """The same person scores above min_similarity between neighbouring sampled frames (well above) and across E's
    3-frame gap (16 px of motion at 0.8 scale: ~0.54, the box IoU; the case nearest the threshold at 0.3); different persons
    score below it (their boxes touch at most), except A and B while they cross, where the IoU of overlapping boxes (and their OKS) passes the
    threshold and the assignment, not the threshold, tells them apart: each one's own pose scores higher."""
    genuine, after_gap, impostor, crossing = [], [], [], []
    last: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}
    for f, (labels, boxes, keypoints) in enumerate(VIDEO):
        own = {}
        for j, label in enumerate(labels):
            for other, (seen, box, kps) in last.items():
                s = pose_similarity(box[None], kps[None], boxes[j:j + 1], keypoints[j:j + 1], SIGMAS)[0, 0]
                if other == label:
                    (genuine if seen == f - 1 else after_gap).append(s)
                    own[label] = s
                elif {label, other} == {"A", "B"}:
                    crossing.append((f, label, s))
                else:
                    impostor.append(s)
        for f_, label, s in crossing:
            if f_ == f:
                assert own[label] > s + 0.05, (f, label, own[label], s)
        for j, label in enumerate(labels):
            last[label] = (f, boxes[j], keypoints[j])
    assert min(genuine) > 0.7, min(genuine)
    assert len(after_gap) == 1 and DEFAULT_MIN_SIMILARITY + 0.05 < after_gap[0] < 0.7, after_gap
    assert max(impostor) < DEFAULT_MIN_SIMILARITY - 0.05, max(impostor)  # boxes that touch: IoU below the threshold
    assert max(s for _, _, s in crossing) > DEFAULT_MIN_SIMILARITY  # the crossing is a real test of the assignment


def test_tracker_has_no_id_switches_and_gives_birth_ids():
    ids_of: dict[str, set[int]] = {label: set() for label in PERSONS}
    for f, (labels, _, _) in enumerate(VIDEO):
        assert FULL[f].dtype == np.int64 and FULL[f].shape == (len(labels),)
        for label, track in zip(labels, FULL[f].tolist()):
            ids_of[label].add(track)
    assert all(len(ids) == 1 for ids in ids_of.values()), ids_of  # E re-identified after its gap
    final = {label: next(iter(ids)) for label, ids in ids_of.items()}
    assert len(set(final.values())) == len(PERSONS)
    assert final == expected_ids(VIDEO)
    assert final["D"] == 30000  # first new track of frame 30, though it comes last in that frame


def test_tracker_closes_tracks_after_max_gap():
    tracker = PoseTracker(SIGMAS)
    run_tracker(VIDEO, 0, FRAMES, tracker)
    assert sorted(tracker.live_ids.tolist()) == sorted(v for k, v in expected_ids(VIDEO).items() if k != "C")

    pose = np.concatenate([SKELETON + 200, np.full((17, 1), 0.9)], axis=1)
    box = person_box(pose)[None]
    tracker = PoseTracker(SIGMAS, max_gap=3)
    assert tracker.step(0, box, pose[None]).tolist() == [0]
    for f in (1, 2, 3):  # hidden for max_gap frames: same id after
        tracker.step(f, np.zeros((0, 4)), np.zeros((0, 17, 3)))
    assert tracker.step(4, box, pose[None]).tolist() == [0]
    for f in (5, 6, 7, 8):  # hidden for max_gap + 1 frames: a new track
        tracker.step(f, np.zeros((0, 4)), np.zeros((0, 17, 3)))
    assert tracker.live_ids.tolist() == []
    assert tracker.step(9, box, pose[None]).tolist() == [9000]


def test_tracker_falls_back_to_box_iou_without_confident_keypoints():
    tracker = PoseTracker(SIGMAS)
    rng = np.random.default_rng(1)
    for f in range(10):
        boxes = np.array([[100 + 3 * f, 100, 80, 180], [400 - 3 * f, 120, 80, 180]], dtype=np.float64)
        keypoints = np.concatenate([rng.uniform(0, 640, (2, 17, 2)), np.full((2, 17, 1), 0.1)], axis=2)
        order = [1, 0] if f % 2 else [0, 1]
        ids = tracker.step(f, boxes[order], keypoints[order])
        assert dict(zip(order, ids.tolist())) == {0: 0, 1: 1}


def test_tracker_is_deterministic():
    again = run_tracker([(labels, boxes.copy(), kps.copy()) for labels, boxes, kps in VIDEO], 0, FRAMES)
    assert all(np.array_equal(FULL[f], again[f]) for f in range(FRAMES))
    assert all(np.array_equal(FULL[f], ids) for f, ids in run_tracker(VIDEO, 0, FRAMES).items())


def test_tracker_rejects_frames_out_of_order():
    tracker = PoseTracker(SIGMAS)
    tracker.step(5, VIDEO[5][1], VIDEO[5][2])
    with pytest.raises(ValueError):
        tracker.step(5, VIDEO[5][1], VIDEO[5][2])


def test_boxes_from_poses():
    pose = np.array([[100, 100, 0.9], [200, 100, 0.8], [150, 300, 0.5], [0, 0, 0.1]] + [[0, 0, 0.0]] * 13)
    corner = np.array([[2, 5, 0.9], [42, 5, 0.9], [22, 85, 0.9]] + [[300, 300, 0.2]] * 14)
    far = np.array([[600, 440, 0.9], [630, 440, 0.9], [620, 478, 0.9]] + [[0, 0, 0.0]] * 14)
    sparse = np.array([[50, 50, 0.9], [60, 90, 0.9]] + [[10, 10, 0.29]] * 15)
    boxes, index = boxes_from_poses(np.stack([pose, sparse, corner, far]), width=620, height=470)
    assert index.tolist() == [0, 2, 3]  # too few confident keypoints -> no box
    assert boxes.dtype == np.float32
    np.testing.assert_allclose(boxes, [
        [87.5, 75.0, 125.0, 250.0],  # tight box 100..200 x 100..300, x1.25 about (150, 200)
        [0.0, 0.0, 47.0, 95.0],  # -3..47 x -5..95, clipped at the top-left corner
        [596.25, 435.25, 23.75, 34.75],  # 596.25..633.75 x 435.25..482.75, clipped at the bottom-right
    ])
    boxes, index = boxes_from_poses(np.stack([pose, sparse]), 620, 470, min_keypoints=2, padding=1.0)
    assert index.tolist() == [0, 1]
    np.testing.assert_allclose(boxes, [[100, 100, 100, 200], [50, 50, 10, 40]])
    outside = np.array([[700, 100, 0.9], [720, 100, 0.9], [710, 150, 0.9]] + [[0, 0, 0.0]] * 14)
    boxes, index = boxes_from_poses(outside[None], 640, 480)
    assert boxes.shape == (0, 4) and index.shape == (0,)
    boxes, index = boxes_from_poses(np.zeros((0, 17, 3)), 640, 480)
    assert boxes.shape == (0, 4) and index.shape == (0,)


def persons(f: int, ids: np.ndarray, frames=VIDEO) -> FramePersons:
    return FramePersons(f, ids, frames[f][1], frames[f][2])


def run_segments(frames=VIDEO):
    """What each segment's actor produces (as vitpose_batch.pipeline.video_worker does, with a SegmentTracker): ids
    per frame (local), head and anchor."""
    out = {}
    for s, (first, stop) in enumerate(SEGMENTS):
        tracker = SegmentTracker(SIGMAS)
        ids = {f: tracker.step(f, frames[f][1], frames[f][2]) for f in range(first, stop)}
        anchor = None
        if stop < FRAMES:
            tracker.step(stop, frames[stop][1], frames[stop][2])
            anchor = tracker.anchor(stop)
        out[s] = (ids, tracker.head(), anchor)
    return out


SEGMENTED = run_segments()


def test_segments_start_with_birth_ids():
    for s, (first, _) in enumerate(SEGMENTS):
        ids = SEGMENTED[s][0]
        assert ids[first].tolist() == [first * 1000 + r for r in range(len(VIDEO[first][0]))]
    # D, born at frame 30, is 30000 to one tracker over the video but last of frame 30 to segment 2's tracker
    assert SEGMENTED[2][0][30][VIDEO[30][0].index("D")] == 30000 + len(VIDEO[30][0]) - 1


@pytest.mark.parametrize("order", list(itertools.permutations(range(len(SEGMENTS)))))
def test_linked_segments_equal_one_tracker_over_the_video(order):
    """Segments added in any order; the driver writes (relabels) each as soon as it is ready and forgets it."""
    linker = TrackLinker(SIGMAS)
    written: dict[int, np.ndarray] = {}
    changed = 0
    for s in order:
        _, head, anchor = SEGMENTED[s]
        linker.add("v.mp4", s, head, anchor)
        ready = linker.ready("v.mp4")
        assert ready == sorted(ready)
        for r in ready:
            mapping = linker.mapping("v.mp4", r)
            assert mapping is not None
            changed += len(mapping)
            for f, local in SEGMENTED[r][0].items():
                written[f] = relabel(local, mapping)
            linker.forget("v.mp4", r)
            with pytest.raises(KeyError):
                linker.mapping("v.mp4", r)
        for pending in set(order[:order.index(s) + 1]) - {f // 15 for f in written}:
            assert linker.mapping("v.mp4", pending) is None
    assert linker.ready("v.mp4") == []
    assert sorted(written) == list(range(FRAMES))
    assert changed > 0
    for f in range(FRAMES):
        np.testing.assert_array_equal(written[f], FULL[f], err_msg=f"frame {f}")
    assert written[30][VIDEO[30][0].index("D")] == 30000  # born at a boundary frame: its own birth id
    # forgotten segments keep nothing but the anchor a later segment still needs; all needed ones were used
    assert all(seg.anchor_final is None and seg.head is None for seg in linker._videos["v.mp4"].segments.values())


def link_all(segmented) -> dict[int, np.ndarray]:
    linker = TrackLinker(SIGMAS)
    for s in range(len(SEGMENTS)):
        linker.add("v.mp4", s, segmented[s][1], segmented[s][2])
    return {f: relabel(local, linker.mapping("v.mp4", s)) for s in range(len(SEGMENTS))
            for f, local in segmented[s][0].items()}


def test_a_person_hidden_across_a_boundary_keeps_its_id():
    """E is hidden at frames 29-31, across the boundary at 30: one tracker bridges the gap (max_gap), and so do the
    linked segments (segment 1's anchor holds E as last seen; segment 2's head holds E as first seen at 32)."""
    frames = make_video(seed=1, persons=dict(PERSONS, E=PERSONS["E"][:4] + ((29, 30, 31),)))
    assert "E" not in frames[30][0] and "E" in frames[28][0] and "E" in frames[32][0]
    full = run_tracker(frames, 0, FRAMES)
    linked = link_all(run_segments(frames))
    for f in range(FRAMES):
        np.testing.assert_array_equal(linked[f], full[f], err_msg=f"frame {f}")
    e_ids = {int(full[f][frames[f][0].index("E")]) for f in range(FRAMES) if "E" in frames[f][0]}
    assert len(e_ids) == 1


def test_resume_with_previous_persons_equals_one_tracker():
    """Segments 0-1 were written by an earlier run: segment 2 gets the final persons of frame 29 instead."""
    linker = TrackLinker(SIGMAS)
    linker.add("v.mp4", 3, SEGMENTED[3][1], SEGMENTED[3][2])
    assert linker.ready("v.mp4") == [] and linker.mapping("v.mp4", 3) is None
    previous = persons(29, FULL[29])
    linker.add("v.mp4", 2, SEGMENTED[2][1], SEGMENTED[2][2], previous=previous)
    assert linker.ready("v.mp4") == [2, 3]
    for s in (2, 3):
        for f, local in SEGMENTED[s][0].items():
            np.testing.assert_array_equal(relabel(local, linker.mapping("v.mp4", s)), FULL[f], err_msg=f"frame {f}")
    assert linker.mapping("v.mp4", 2)[30000 + len(VIDEO[30][0]) - 1] == 30000  # D keeps its own birth id


def test_link_gives_no_id_twice_when_heads_and_anchor_disagree():
    """Segment 1's head sees a person its anchor lacks (e.g. detected anew): it gets a birth id of the boundary
    frame that nobody else has."""
    pose = np.concatenate([SKELETON, np.full((17, 1), 0.9)], axis=1)
    at = [pose + [x, 200, 0] for x in (100, 300, 500)]
    boxes = [person_box(p) for p in at]
    linker = TrackLinker(SIGMAS)
    # segment 0's tracker at frame 15: person 0 tracked since frame 0 (id 2), person 1 new at frame 15 (id 15000)
    anchor = FramePersons(15, [2, 15000], boxes[:2], at[:2])
    linker.add("v", 0, FramePersons(0, [0, 1, 2], boxes, at), anchor)
    # segment 1's head: persons 1, 0, 2 (2 unseen by the anchor)
    head = FramePersons(15, [15000, 15001, 15002], [boxes[1], boxes[0], boxes[2]], [at[1], at[0], at[2]])
    linker.add("v", 1, head, None)
    assert linker.ready("v") == [0, 1]
    mapping = linker.mapping("v", 1)
    assert mapping == {15001: 2, 15002: 15001}  # 15000 stays (the anchor's own 15000 is the same person)
    final = relabel(head.track_ids, mapping)
    assert final.tolist() == [15000, 2, 15001] and len(set(final.tolist())) == 3


def test_match_persons_and_relabel():
    a = persons(29, FULL[29])
    b = persons(30, FULL[30])
    matches = match_persons(a, b, SIGMAS, DEFAULT_MIN_SIMILARITY)
    assert matches == {t: t for t in FULL[30].tolist() if t != 30000}  # D is new at frame 30
    assert match_persons(b, b, SIGMAS, DEFAULT_MIN_SIMILARITY) == {t: t for t in FULL[30].tolist()}
    assert match_persons(a, FramePersons(30, [], np.zeros((0, 4)), np.zeros((0, 17, 3))), SIGMAS, 0.3) == {}
    assert relabel(np.array([1, 2, 3]), {1: 2, 2: 1}).tolist() == [2, 1, 3]
    assert relabel(np.array([], dtype=np.int64), {1: 2}).dtype == np.int64


def test_segments_without_head_or_anchor():
    linker = TrackLinker(SIGMAS)
    linker.add("v", 1, None, None)  # no persons at its first frame: nothing to link, known at once
    assert linker.ready("v") == [1] and linker.mapping("v", 1) == {}
    linker.add("v", 2, SEGMENTED[2][1], None)  # segment 1 had no anchor: nothing to match, ids stay
    assert linker.ready("v") == [2] and linker.mapping("v", 2) == {}
    with pytest.raises(ValueError):
        linker.add("v", 2, None, None)
    linker.add("w", 5, SEGMENTED[2][1], None)
    with pytest.raises(ValueError):
        linker.forget("w", 5)  # not known yet
    assert linker.mapping("w", 4) is None and linker.ready("unknown") == []
