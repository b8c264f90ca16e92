"""Online pose tracking for video rows: one `PoseTracker` per segment of a video, run by the actor that processes it.

Each sampled frame's persons are matched to the live tracks greedily, most similar pair first (as mmpose's pose
tracking demos and the PoseTrack baselines match), on a similarity that is the larger of the OKS (COCO's, `vitpose_batch.review.oks.oks`, with
the keypoint set's sigmas and box areas w*h) between the track's last pose and the person's pose over the keypoints
confident in both, and the IoU of the two boxes. A pair needs `min_similarity` to match. OKS carries a person
through crossings and boxes that jump; IoU carries it where its keypoints are unsure (small, blurred, occluded
persons: a detector still boxes them frame after frame).

Track ids need no shared counter: a track born at frame index f as the r-th new track of that frame (r counting the
unmatched persons in the order they come in the frame) gets the "birth id" ``f * 1000 + r``. A tracker started at a
segment's first sampled frame therefore gives every person there a birth id of that frame; the driver
(`vitpose_batch.video.track_links`) maps those to the previous segment's ids.

`pose_similarity` and `assign` are the one definition of "same person" that `track_links.match_persons` shares.

Greedy rather than Hungarian (maximum total similarity): a detector's weak partial box beside a person can make
two middling pairs outscore one clear pair, and the sum-maximising assignment then swaps two persons' ids; greedy
keeps the clear pair (measured on the known-motion video of tests/test_video_tracking_job.py).

Pure numpy; deterministic (no randomness, stable orders).
"""

from __future__ import annotations

import numpy as np

from vitpose_batch.review.oks import oks

__all__ = [
    "BIRTH_STRIDE",
    "DEFAULT_MAX_GAP",
    "DEFAULT_MIN_SIMILARITY",
    "DEFAULT_SCORE_THRESHOLD",
    "PoseTracker",
    "assign",
    "birth_id",
    "box_iou",
    "boxes_from_poses",
    "pose_similarity",
]

# A birth id is frame_index * BIRTH_STRIDE + rank: at most BIRTH_STRIDE new tracks per frame.
BIRTH_STRIDE = 1000
# OKS of one person between neighbouring sampled frames stays well above 0.5 for motion of a few percent of the
# person's size per frame (and ~0.5 after a short occlusion); OKS of two distinct, merely overlapping persons stays
# below ~0.2: 0.3 sits between (the tests check both sides).
DEFAULT_MIN_SIMILARITY = 0.3
# Sampled frames a track may stay unmatched and still be re-identified (mmdeploy's PoseTracker's
# track_max_missing default).
DEFAULT_MAX_GAP = 10
# Keypoint score for "confident" (used in the similarity and for boxes from poses).
DEFAULT_SCORE_THRESHOLD = 0.3


def birth_id(frame_index: int, rank: int) -> int:
    """Id of the `rank`-th track born at `frame_index`."""
    if not 0 <= rank < BIRTH_STRIDE:
        raise ValueError(f"at most {BIRTH_STRIDE} new tracks per frame (rank {rank} at frame {frame_index})")
    return int(frame_index) * BIRTH_STRIDE + int(rank)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU (Na, Nb) of COCO xywh boxes."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def pose_similarity(boxes_a: np.ndarray, keypoints_a: np.ndarray, boxes_b: np.ndarray, keypoints_b: np.ndarray,
                    sigmas: np.ndarray, score_threshold: float = DEFAULT_SCORE_THRESHOLD) -> np.ndarray:
    """Similarity (Na, Nb) in [0, 1] of two person sets: the larger of OKS over the keypoints confident
    (score >= threshold) in both poses (areas = box w*h; 0 with no keypoint confident in both) and box IoU."""
    boxes_a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    boxes_b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    k = sigmas.shape[0]
    keypoints_a = np.asarray(keypoints_a, dtype=np.float64).reshape(-1, k, 3)
    keypoints_b = np.asarray(keypoints_b, dtype=np.float64).reshape(-1, k, 3)
    na, nb = len(keypoints_a), len(keypoints_b)
    if len(boxes_a) != na or len(boxes_b) != nb:
        raise ValueError(f"boxes and keypoints disagree: {len(boxes_a)} vs {na}, {len(boxes_b)} vs {nb}")
    similarity = np.zeros((na, nb), dtype=np.float64)
    if na == 0 or nb == 0:
        return similarity
    confident_a = keypoints_a[..., 2] >= score_threshold  # NaN scores are not confident
    confident_b = keypoints_b[..., 2] >= score_threshold
    areas_a = boxes_a[:, 2] * boxes_a[:, 3]
    areas_b = boxes_b[:, 2] * boxes_b[:, 3]
    iou = box_iou(boxes_a, boxes_b)
    for i in range(na):
        joint = confident_a[i][None] & confident_b  # (nb, K)
        # One OKS call per distinct joint keypoint mask (usually one: all confident).
        groups: dict[bytes, list[int]] = {}
        for j in range(nb):
            groups.setdefault(joint[j].tobytes(), []).append(j)
        for members in groups.values():
            mask = joint[members[0]]
            if not mask.any():
                continue
            similarity[i, members] = oks(keypoints_a[i][mask], keypoints_b[members][:, mask], areas_a[i],
                                         areas_b[members], sigmas[mask])
    return np.maximum(similarity, iou)


def assign(similarity: np.ndarray, min_similarity: float) -> list[tuple[int, int]]:
    """Greedy matching: pairs (row, column) taken most similar first, each row and column once, down to
    `min_similarity`; ties go to the lower row, then column. Returns the pairs sorted by row."""
    similarity = np.nan_to_num(np.asarray(similarity, dtype=np.float64), nan=0.0)
    if similarity.size == 0:
        return []
    rows, cols = np.nonzero(similarity >= min_similarity)
    order = np.lexsort((cols, rows, -similarity[rows, cols]))
    used_rows, used_cols, pairs = set(), set(), []
    for r, c in zip(rows[order].tolist(), cols[order].tolist()):
        if r not in used_rows and c not in used_cols:
            used_rows.add(r)
            used_cols.add(c)
            pairs.append((r, c))
    return sorted(pairs)


class PoseTracker:
    """Online tracker over one sequence of sampled frames (call `step` in increasing frame order).

    A track keeps its last box and pose; a track unmatched for more than `max_gap` consecutive sampled frames is
    closed. See the module docstring for the similarity and the birth ids.
    """

    def __init__(self, sigmas: np.ndarray, min_similarity: float = DEFAULT_MIN_SIMILARITY,
                 max_gap: int = DEFAULT_MAX_GAP, score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        self.sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        if self.sigmas.size == 0:
            raise ValueError("sigmas must not be empty")
        if max_gap < 0:
            raise ValueError(f"max_gap must be >= 0, got {max_gap}")
        self.min_similarity = float(min_similarity)
        self.max_gap = int(max_gap)
        self.score_threshold = float(score_threshold)
        k = self.sigmas.size
        self._ids = np.zeros(0, dtype=np.int64)
        self._boxes = np.zeros((0, 4), dtype=np.float64)
        self._keypoints = np.zeros((0, k, 3), dtype=np.float64)
        self._missed = np.zeros(0, dtype=np.int64)
        self._last_frame: int | None = None

    def live(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The open tracks as they were last seen: ids (T,), boxes (T, 4) xywh, keypoints (T, K, 3), and the sampled
        frames each has gone unseen up to the last frame stepped (T,) int64 (0: seen there); copies."""
        return self._ids.copy(), self._boxes.copy(), self._keypoints.copy(), self._missed.copy()

    @property
    def live_ids(self) -> np.ndarray:
        """Ids of the tracks still open (matched within the last `max_gap` sampled frames)."""
        return self._ids.copy()

    def step(self, frame_index: int, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """Track ids (int64, [N]) of this frame's persons: `boxes` (N, 4) COCO xywh pixels, `keypoints` (N, K, 3)."""
        frame_index = int(frame_index)
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise ValueError(f"frames must come in increasing order: {frame_index} after {self._last_frame}")
        k = self.sigmas.size
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        keypoints = np.asarray(keypoints, dtype=np.float64)
        if keypoints.size == 0:
            keypoints = keypoints.reshape(0, k, 3)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (k, 3) or len(keypoints) != len(boxes):
            raise ValueError(f"expected boxes (N, 4) and keypoints (N, {k}, 3), got {boxes.shape} and "
                             f"{keypoints.shape}")
        self._last_frame = frame_index
        n = len(boxes)

        similarity = pose_similarity(self._boxes, self._keypoints, boxes, keypoints, self.sigmas,
                                     self.score_threshold)
        pairs = assign(similarity, self.min_similarity)
        ids = np.full(n, -1, dtype=np.int64)
        matched = np.zeros(len(self._ids), dtype=bool)
        for track, person in pairs:
            ids[person] = self._ids[track]
            matched[track] = True
            self._boxes[track] = boxes[person]
            self._keypoints[track] = keypoints[person]
        self._missed = np.where(matched, 0, self._missed + 1)

        keep = self._missed <= self.max_gap
        new = np.flatnonzero(ids < 0)
        born = np.array([birth_id(frame_index, r) for r in range(len(new))], dtype=np.int64)
        ids[new] = born
        self._ids = np.concatenate([self._ids[keep], born])
        self._boxes = np.concatenate([self._boxes[keep], boxes[new]])
        self._keypoints = np.concatenate([self._keypoints[keep], keypoints[new]])
        self._missed = np.concatenate([self._missed[keep], np.zeros(len(new), dtype=np.int64)])
        return ids


def boxes_from_poses(keypoints: np.ndarray, width: int, height: int, score_threshold: float = 0.3,
                     padding: float = 1.25, min_keypoints: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Boxes for the next frame from this frame's poses, as top-down pose trackers do between detector frames.

    The rule is mmdeploy's PoseTracker's (open-mmlab/mmdeploy, csrc/mmdeploy/codebase/mmpose/pose_tracker/utils.cpp,
    ``keypoints_to_bbox``, with its ``pose_bbox_scale`` 1.25 default): the tight box around the keypoints whose score
    is >= `score_threshold`, scaled by `padding` about its centre, clipped to the image [0, width] x [0, height];
    a pose with fewer than `min_keypoints` such keypoints gives no box, as does a pose lying wholly outside the
    image or whose confident keypoints all coincide (a box of zero width and height).

    Returns boxes (M, 4) COCO xywh float32 and, for each, the index (int64) of the person it came from.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.size == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    if keypoints.ndim != 3 or keypoints.shape[2] != 3:
        raise ValueError(f"expected keypoints (N, K, 3), got {keypoints.shape}")
    confident = keypoints[..., 2] >= score_threshold
    enough = confident.sum(axis=1) >= max(int(min_keypoints), 1)
    x = np.where(confident, keypoints[..., 0], np.nan)
    y = np.where(confident, keypoints[..., 1], np.nan)
    index = np.flatnonzero(enough)
    if index.size == 0:
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.int64)
    x1, x2 = np.nanmin(x[index], axis=1), np.nanmax(x[index], axis=1)
    y1, y2 = np.nanmin(y[index], axis=1), np.nanmax(y[index], axis=1)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    half_w, half_h = (x2 - x1) * padding / 2, (y2 - y1) * padding / 2
    outside = (cx + half_w < 0) | (cx - half_w > width) | (cy + half_h < 0) | (cy - half_h > height)
    left = np.clip(cx - half_w, 0, width)
    right = np.clip(cx + half_w, 0, width)
    top = np.clip(cy - half_h, 0, height)
    bottom = np.clip(cy + half_h, 0, height)
    boxes = np.stack([left, top, right - left, bottom - top], axis=1)
    keep = ~outside & ((boxes[:, 2] > 0) | (boxes[:, 3] > 0))
    return boxes[keep].astype(np.float32), index[keep].astype(np.int64)
