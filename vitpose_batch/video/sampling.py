"""Which frames of a video to label (`sample_frames`) and how to cut them into segments for parallel decoding
(`plan_segments`). Pure functions over a video's frame times (seconds, presentation order) and its keyframes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from vitpose_batch.video.decoding import VideoIndex


def sample_frames(timestamps_s: np.ndarray, frame_rate: float | None = None,
                  every_nth: int | None = None) -> np.ndarray:
    """Frame indices to label, int64 [S], increasing, from the frames' times `timestamps_s` (float [T], seconds,
    increasing).

    Neither given: every frame. every_nth N: frames 0, N, 2N, ... frame_rate F (frames per second): for each time
    t0 + k/F from the first frame's time t0 up to the last frame's, the frame nearest in time (a tie: the earlier
    one), each frame once: F above the video's own rate gives every frame; a variable frame rate video gets the
    frames nearest to an even clock.

    Raises ValueError: both given, F not above 0, N below 1.
    """
    if frame_rate is not None and every_nth is not None:
        raise ValueError("sample_frames: give frame_rate or every_nth, not both")
    timestamps_s = np.asarray(timestamps_s, np.float64)
    count = len(timestamps_s)
    if every_nth is not None:
        if int(every_nth) != every_nth or every_nth < 1:
            raise ValueError(f"sample_frames: every_nth {every_nth} must be a whole number, 1 or more")
        return np.arange(0, count, int(every_nth), dtype=np.int64)
    if frame_rate is None:
        return np.arange(count, dtype=np.int64)
    if not frame_rate > 0 or not np.isfinite(frame_rate):
        raise ValueError(f"sample_frames: frame_rate {frame_rate} must be above 0 frames per second")
    if not count:
        return np.zeros(0, np.int64)
    first, duration = timestamps_s[0], timestamps_s[-1] - timestamps_s[0]
    steps = int(np.floor(duration * frame_rate + 1e-9)) + 1
    targets = first + np.arange(steps, dtype=np.float64) / frame_rate
    return np.unique(_nearest(timestamps_s, targets))


def _nearest(timestamps_s: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target time, the index of the nearest of the increasing `timestamps_s` (a tie: the earlier)."""
    if len(timestamps_s) == 1:
        return np.zeros(len(targets), np.int64)
    after = np.clip(np.searchsorted(timestamps_s, targets, side="left"), 1, len(timestamps_s) - 1)
    before = after - 1
    earlier = (targets - timestamps_s[before]) <= (timestamps_s[after] - targets)
    return np.where(earlier, before, after).astype(np.int64)


@dataclass(frozen=True)
class Segment:
    """Frames [start, stop) of a video (frame indices, presentation order), decoded by one worker. `index`: 0.. in
    time order. `start` is a keyframe whenever one was near; else the decoder starts at the keyframe before it and
    drops the frames before `start`."""

    index: int
    start: int
    stop: int


def plan_segments(index: VideoIndex, sampled: np.ndarray, segment_s: float) -> list[Segment]:
    """Cut the video into consecutive segments of about `segment_s` seconds that hold the `sampled` frames (frame
    indices of `index`).

    The cuts are aimed at t0 + k * segment_s (t0: the first frame's time) and made only at keyframes: at the
    keyframe nearest the aim when one lies within segment_s / 2 of it, else not at all (the segment runs on to the
    next cut). Every segment then starts where its decoder can: no frame is decoded twice, however far apart the
    keyframes (a video with one keyframe is one segment). The segments cover frames
    [0, frame_count) once; those without a sampled frame are dropped and the rest numbered 0.. so every sampled
    frame lies in exactly one segment.

    Raises ValueError: segment_s not above 0, a sampled frame outside the video.
    """
    if not segment_s > 0 or not np.isfinite(segment_s):
        raise ValueError(f"plan_segments: segment_s {segment_s} must be above 0 seconds")
    sampled = np.unique(np.asarray(sampled, np.int64))
    count = index.frame_count
    if len(sampled) and (sampled[0] < 0 or sampled[-1] >= count):
        raise ValueError(f"plan_segments: sampled frames {sampled[0]}..{sampled[-1]} outside the video's "
                         f"{count} frames")
    if not len(sampled):
        return []
    times = np.asarray(index.timestamps_s, np.float64)
    keyframes = np.asarray(index.keyframes, np.int64)
    keyframes = keyframes[(keyframes > 0) & (keyframes < count)]
    aims = times[0] + segment_s * np.arange(1, int(np.floor((times[-1] - times[0]) / segment_s)) + 1)
    cuts = [0]
    for aim in aims if len(keyframes) else []:
        cut = int(keyframes[np.argmin(np.abs(times[keyframes] - aim))])
        if abs(times[cut] - aim) <= segment_s / 2 and cut > cuts[-1]:
            cuts.append(cut)
    cuts.append(count)
    segments = []
    for start, stop in itertools.pairwise(cuts):
        if np.searchsorted(sampled, start) < np.searchsorted(sampled, stop):
            segments.append(Segment(index=len(segments), start=start, stop=stop))
    return segments
