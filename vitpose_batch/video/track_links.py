"""Driver side of video tracking: link the track ids of a video's segments, which separate actors tracked apart.

Each segment's `PoseTracker` starts fresh at the segment's first sampled frame, so the persons there get birth ids of
that frame. The actor also steps its tracker one sampled frame past the segment's end, onto the next segment's first
frame. `SegmentTracker` keeps what linking needs: the segment's "head" (the tracks born in its first `window`
sampled frames, as first seen: local ids) and its "anchor" (the tracker's live tracks after the next segment's first
frame, as last seen: those seen there and those unseen for at most `max_gap` frames). `match_persons` (the tracker's
own similarity and greedy matching, most similar first) pairs the next segment's head with this segment's anchor, and
the head ids take the anchor's final ids, as one tracker over the whole video would have matched them: a person seen
at the boundary frame, or hidden there and seen again a few frames later. Chains resolve transitively: a person seen
through five segments keeps the id born in the first.

Rules (per video, per segment k):

* segment 0, or a segment added with no head: its local ids are final.
* a segment added with `previous` (persons with FINAL ids at the sampled frame before its first, e.g. read back from
  the output of an earlier run on resume): head ids matched to `previous` take those ids; its mapping is known at
  once, whatever else was added.
* otherwise: head ids matched to segment k-1's anchor take the anchor ids' final ids (segment k-1's anchor relabelled
  by segment k-1's mapping), known once segment k-1's mapping is.
* head persons born after the boundary frame and matched to nobody keep their ids (birth ids of their own frames);
* head persons of the boundary frame matched to nobody are new tracks of that frame: they are numbered as the tracker
  numbers new tracks (``frame * 1000 + r``, r counting them in head order) skipping the birth ids of that frame already taken by
  matched persons (persons the previous segment's tracker saw born exactly at the boundary frame). So a person who
  first appears at a boundary frame gets the id a single tracker over the whole video would give it, and no id is
  given twice.

Known limit: a resumed run links a redone segment to the persons OUTPUT holds at one frame (`previous`), so there a
person hidden at that frame starts a new id.

Memory: per video, per segment a few small dicts and the persons of one or two frames, never rows. Pure
Python / numpy, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vitpose_batch.video.tracking import (
    BIRTH_STRIDE,
    DEFAULT_MAX_GAP,
    DEFAULT_MIN_SIMILARITY,
    DEFAULT_SCORE_THRESHOLD,
    PoseTracker,
    assign,
    pose_similarity,
)

__all__ = ["FramePersons", "SegmentTracker", "TrackLinker", "match_persons", "relabel"]


@dataclass
class FramePersons:
    """The persons of one sampled frame: track ids (N,), boxes (N, 4) COCO xywh pixels, keypoints (N, K, 3), gaps
    (N,) int64 (see the field)."""

    frame_index: int
    track_ids: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray
    # (N,) sampled frames between this frame and where each was seen: an anchor's live tracks, unseen for that many
    # frames (0: seen in this frame); a head's tracks, born that many frames after it (0: in it). None: all 0.
    gaps: np.ndarray | None = None

    def __post_init__(self):
        self.frame_index = int(self.frame_index)
        self.track_ids = np.asarray(self.track_ids, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float64)
        n = len(self.track_ids)
        if self.keypoints.size == 0:
            self.keypoints = self.keypoints.reshape(0, self.keypoints.shape[1] if self.keypoints.ndim == 3 else 0, 3)
        if len(self.boxes) != n or len(self.keypoints) != n or self.keypoints.ndim != 3:
            raise ValueError(f"FramePersons: {n} ids, boxes {self.boxes.shape}, keypoints {self.keypoints.shape}")
        self.gaps = np.zeros(n, np.int64) if self.gaps is None else np.asarray(self.gaps, np.int64).reshape(-1)
        if len(self.gaps) != n:
            raise ValueError(f"FramePersons: {n} ids, {len(self.gaps)} gaps")
        if len(np.unique(self.track_ids)) != n:
            raise ValueError(f"FramePersons: repeated track ids at frame {self.frame_index}: {self.track_ids}")

    def __len__(self) -> int:
        return len(self.track_ids)


class SegmentTracker:
    """A PoseTracker over one segment's sampled frames (its first, ..., then the next segment's first: the anchor
    frame) that keeps the segment's head and anchor for the driver's TrackLinker (see the module docstring).
    window: sampled frames from the segment's start whose new tracks belong to the head (the tracker's max_gap: a
    person hidden at the boundary for up to that many frames is still linked)."""

    def __init__(self, sigmas: np.ndarray, window: int = DEFAULT_MAX_GAP, **tracker_options) -> None:
        self.tracker = PoseTracker(sigmas, **tracker_options)
        self.window = int(window)
        self.first: int | None = None
        self.steps = 0
        self.born: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # head: id -> (box, keypoints, step) at birth

    def step(self, frame_index: int, boxes: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """PoseTracker.step, keeping the head's births."""
        ids = self.tracker.step(frame_index, boxes, keypoints)
        if self.first is None:
            self.first = int(frame_index)
        if self.steps <= self.window:
            boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
            for j, track in enumerate(ids.tolist()):
                if track // BIRTH_STRIDE == frame_index:
                    self.born[track] = (boxes[j], np.asarray(keypoints, np.float64)[j], self.steps)
        self.steps += 1
        return ids

    def head(self) -> FramePersons | None:
        """The tracks born in the first `window` sampled frames, as first seen (None before any frame)."""
        if self.first is None:
            return None
        ids = sorted(self.born)
        k = self.tracker.sigmas.size
        return FramePersons(self.first, np.array(ids, np.int64),
                            np.array([self.born[i][0] for i in ids]).reshape(-1, 4),
                            np.array([self.born[i][1] for i in ids]).reshape(-1, k, 3),
                            np.array([self.born[i][2] for i in ids], np.int64))

    def anchor(self, frame_index: int) -> FramePersons:
        """After stepping the anchor frame: the live tracks as last seen."""
        ids, boxes, keypoints, missed = self.tracker.live()
        return FramePersons(frame_index, ids, boxes, keypoints, missed)


def match_persons(a: FramePersons, b: FramePersons, sigmas: np.ndarray,
                  min_similarity: float = DEFAULT_MIN_SIMILARITY,
                  score_threshold: float = DEFAULT_SCORE_THRESHOLD, max_gap: int = DEFAULT_MAX_GAP) -> dict[int, int]:
    """{b's track id: a's track id} for the persons of `a` and `b` that are the same person, by the tracker's own
    similarity and assignment. `a` and `b` may be one frame seen twice or consecutive sampled frames; `a` may be an
    anchor (live tracks, some unseen for `a.gaps` frames) and `b` a head (some born `b.gaps` frames later). A pair
    is allowed where one tracker over the video could have made it: a person of `b` born after `b`'s frame was new
    to its own tracker there, so it can only be one of `a`'s persons unseen in `a`'s frame, and only while their
    gaps together stay within `max_gap`."""
    if len(a) == 0 or len(b) == 0:
        return {}
    similarity = pose_similarity(a.boxes, a.keypoints, b.boxes, b.keypoints, sigmas, score_threshold)
    later = b.gaps[None, :] > 0
    allowed = ~later | ((a.gaps[:, None] > 0) & (a.gaps[:, None] + b.gaps[None, :] <= max_gap))
    similarity = np.where(allowed, similarity, 0.0)
    return {int(b.track_ids[j]): int(a.track_ids[i]) for i, j in assign(similarity, min_similarity)}


def relabel(ids: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """`ids` (int64) with every id in `mapping` replaced by its value, all at once (a mapping may swap ids)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = ids.copy()
    for old, new in mapping.items():
        out[ids == old] = new
    return out


@dataclass
class _Segment:
    head: FramePersons | None
    anchor: FramePersons | None
    previous: FramePersons | None
    mapping: dict[int, int] | None = None  # None until known
    anchor_final: FramePersons | None = None  # the anchor with final ids, once the mapping is known
    forgotten: bool = False


@dataclass
class _Video:
    segments: dict[int, _Segment] = field(default_factory=dict)
    ready: list[int] = field(default_factory=list)


class TrackLinker:
    """Maps each segment's local track ids to final ones, segments added in any order (see the module docstring)."""

    def __init__(self, sigmas: np.ndarray, min_similarity: float = DEFAULT_MIN_SIMILARITY,
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD):
        self.sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
        self.min_similarity = float(min_similarity)
        self.score_threshold = float(score_threshold)
        self._videos: dict[str, _Video] = {}

    def add(self, video: str, segment: int, head: FramePersons | None, anchor: FramePersons | None,
            previous: FramePersons | None = None) -> None:
        """Record a segment's persons at its first sampled frame (`head`, local ids), its tracker's persons at the
        next segment's first sampled frame (`anchor`, local ids; None for the last segment) and, where known from
        elsewhere, the persons with final ids at the sampled frame before its first (`previous`)."""
        segment = int(segment)
        if segment < 0:
            raise ValueError(f"segment must be >= 0, got {segment}")
        state = self._videos.setdefault(video, _Video())
        if segment in state.segments:
            raise ValueError(f"segment {segment} of {video!r} was already added")
        state.segments[segment] = _Segment(head=head, anchor=anchor, previous=previous)
        # Resolving this segment may resolve the ones after it that were waiting for it.
        k = segment
        while k in state.segments and self._resolve(state, k):
            k += 1

    def mapping(self, video: str, segment: int) -> dict[int, int] | None:
        """{local id: final id} for this segment's ids that change (others stay), or None while not yet known."""
        state = self._videos.get(video)
        entry = state.segments.get(int(segment)) if state is not None else None
        if entry is None:
            return None
        if entry.forgotten:
            raise KeyError(f"segment {segment} of {video!r} was forgotten")
        return entry.mapping

    def ready(self, video: str) -> list[int]:
        """Segments of `video` whose mapping became known since the last call, in increasing order."""
        state = self._videos.get(video)
        if state is None:
            return []
        out, state.ready = sorted(state.ready), []
        return out

    def forget(self, video: str, segment: int) -> None:
        """Free a segment whose rows are written: only its anchor with final ids stays, until the next segment's
        mapping is known."""
        state = self._videos[video]
        segment = int(segment)
        entry = state.segments[segment]
        if entry.mapping is None:
            raise ValueError(f"segment {segment} of {video!r} cannot be forgotten before its mapping is known")
        entry.forgotten = True
        entry.head = entry.anchor = entry.previous = None
        entry.mapping = {}
        following = state.segments.get(segment + 1)
        if following is not None and following.mapping is not None:
            entry.anchor_final = None

    def close(self, video: str) -> None:
        """Drop everything kept for `video` (all its segments are written)."""
        self._videos.pop(video, None)

    # -- internals ---------------------------------------------------------------------------------------------

    def _resolve(self, state: _Video, k: int) -> bool:
        """Work out segment k's mapping if it can be; True when it is known (now or before)."""
        entry = state.segments[k]
        if entry.mapping is not None:
            return True
        reference: FramePersons | None
        if entry.previous is not None:
            reference = entry.previous
        elif k == 0 or entry.head is None or len(entry.head) == 0:
            reference = None
        else:
            before = state.segments.get(k - 1)
            if before is None or before.mapping is None:
                return False
            reference = before.anchor_final
            if before.forgotten:
                before.anchor_final = None  # this segment was the last one to need it
        entry.mapping = self._link(entry.head, reference)
        if entry.anchor is not None:
            entry.anchor_final = FramePersons(entry.anchor.frame_index, relabel(entry.anchor.track_ids, entry.mapping),
                                              entry.anchor.boxes, entry.anchor.keypoints, entry.anchor.gaps)
        entry.previous = None
        state.ready.append(k)
        return True

    def _link(self, head: FramePersons | None, reference: FramePersons | None) -> dict[int, int]:
        if head is None or len(head) == 0:
            return {}
        final = {}
        if reference is not None:
            final = match_persons(reference, head, self.sigmas, self.min_similarity, self.score_threshold)
        taken = set(final.values())
        base = head.frame_index * BIRTH_STRIDE
        rank = 0
        for local in head.track_ids.tolist():
            if local in final or local // BIRTH_STRIDE != head.frame_index:  # matched, or born later: stays
                continue
            while base + rank in taken:
                rank += 1
            if rank >= BIRTH_STRIDE:
                raise ValueError(f"more than {BIRTH_STRIDE} new tracks at frame {head.frame_index}")
            final[local] = base + rank
            taken.add(base + rank)
        return {local: new for local, new in final.items() if local != new}
