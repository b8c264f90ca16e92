"""The video pose stage: a Ray actor that decodes a segment of a video, labels its sampled frames and tracks the
persons through them.

Input rows are segments (vitpose_batch.pipeline.video_segments.SEGMENT_SCHEMA); output is PREDICTION rows, one per
sampled frame OUTPUT lacks, one table per segment. Frames are decoded and labelled a few at a time, so a long or 8K
segment never sits whole in memory, and never leave the actor. Each segment ends with one link row (`_link` true,
not written) carrying the persons the driver needs to join this segment's tracks to the previous one's
(vitpose_batch.pipeline.video_rows); warnings raised meanwhile travel in `_notes`, as PoseWorker's do.

Detection runs on every `detect_every`-th sampled frame of the segment (its first frame always); between them each
person's box comes from its previous pose (vitpose_batch.video.tracking.boxes_from_poses), as top-down pose trackers
do, so most frames cost no detector call.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pyarrow as pa

from vitpose_batch.files.addresses import frame_uri
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.schemas.predictions import PERSON_TYPE, keypoints_with_scores, make_table, persons_column
from vitpose_batch.video.decoding import VideoError, VideoIndex, decode_frames
from vitpose_batch.video.track_links import FramePersons, SegmentTracker
from vitpose_batch.video.tracking import boxes_from_poses
from vitpose_core.filesystems import open_uri

LINK_COLUMNS = ("_link", "_segment", "_anchor", "_anchor_frame", "_lookback")
FRAMES_PER_CALL = 8  # frames detected and estimated in one call when the detector runs on every frame


class VideoWorker:
    """Callable class for `map_batches(..., compute=ActorPoolStrategy, batch_size=1)`: segment rows -> PREDICTION
    rows (with the driver's `_link` and diagnostics columns). Same model options as PoseWorker, plus `detect_every`.
    """

    def __init__(self, model: str, detector: str, device: str, dtype: str | None, flip_test: bool,
                 dataset_index: int | None, crops_per_forward: int | None, threads: int | None,
                 detect_every: int = 1, compile: bool = False) -> None:
        self.pose = PoseWorker(model, detector, device, dtype, flip_test, dataset_index, crops_per_forward, threads,
                               compile=compile, device_jpeg=False)
        self.detect_every = detect_every
        self.threads = threads or 1
        self.keypoint_set = self.pose.estimator.keypoints_of(dataset_index)
        self.detector_frames = 0  # frames the detector ran on, and frames whose boxes came from poses
        self.followed_frames = 0

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for segment in batch.to_pylist():
            self.pose.maybe_die()
            # One table per segment, its link row last: a segment's rows arrive whole or (actor lost) not at all,
            # never partly and then again from the retry. Rows are keypoints, not pixels: small.
            rows = pa.concat_tables(list(self.segment_rows(segment)))
            with self.pose.lock:  # warnings raised here reach the driver as PoseWorker's do (diagnostics `_notes`)
                notes, self.pose.notes = list(dict.fromkeys(self.pose.notes)), []
            yield rows.append_column("_notes", pa.array([notes] + [[] for _ in range(rows.num_rows - 1)],
                                                        pa.list_(pa.string())))

    def segment_rows(self, segment: dict) -> Iterator[pa.Table]:
        """One segment's rows, a few frames at a time, then its link row."""
        uri = segment["video_uri"]
        if segment["error"] is not None:  # the video could not be read at all: one row says why
            yield with_links(make_table([uri], [None], [0], [0], [[]], [segment["error"]],
                                        [bool(segment["error_retryable"])], video_uri=[uri]), segment)
            return
        frames = np.asarray(segment["frames"], np.int64)
        emit = dict(zip(segment["frames"], segment["emit"]))
        if not any(segment["emit"]):  # only the error of a file cut short is left to write
            frames = frames[:0]
        anchor = segment["anchor"]
        wanted = frames if anchor is None else np.append(frames, anchor)
        tracker = SegmentTracker(self.keypoint_set.sigmas)
        anchored = False
        pending: list[tuple[int, float, dict]] = []  # (frame, timestamp, result) waiting to become rows
        width, height = int(segment["width"]), int(segment["height"])
        decoded = 0
        try:
            with open_uri(uri) as file:
                for chunk in (self.labelled(file, segment, wanted, tracker, width, height) if len(wanted) else ()):
                    for frame, timestamp, result in chunk:
                        decoded += 1
                        if anchor is not None and frame == anchor:
                            anchored = True
                        elif emit.get(frame):
                            pending.append((frame, timestamp, result))
                    if len(pending) >= FRAMES_PER_CALL * 4:
                        yield self.frame_rows(uri, pending, width, height, segment)
                        pending = []
        except (VideoError, OSError) as exc:
            # The frames before the fault are kept; every sampled frame after it gets an error row saying where
            # decoding stopped (a row per frame: a re-run finds each one done and decodes nothing again).
            missing = [int(f) for f in frames[decoded:] if emit.get(int(f))]
            if pending:
                yield self.frame_rows(uri, pending, width, height, segment)
                pending = []
            if missing:
                message = str(exc) if isinstance(exc, VideoError) else f"video {uri}: {type(exc).__name__}: {exc}"
                retryable = not isinstance(exc, VideoError)  # a read that failed may pass; undecodable bytes not
                n = len(missing)
                times = [segment["timestamps_s"][f - segment["start"]] for f in missing]
                yield with_links(make_table([frame_uri(uri, f) for f in missing], [None] * n, [width] * n,
                                            [height] * n, [[]] * n, [message] * n, [retryable] * n,
                                            video_uri=[uri] * n, frame_index=missing, timestamp_s=times), segment)
        if pending:
            yield self.frame_rows(uri, pending, width, height, segment)
        if segment["tail_error"]:
            missing_from = int(segment["frame_count"])  # the first frame the packets lack
            yield with_links(make_table([frame_uri(uri, missing_from)], [None], [width], [height], [[]],
                                        [segment["tail_error"]], [False], video_uri=[uri],
                                        frame_index=[missing_from]), segment)
        yield link_row(segment, tracker.head(), tracker.anchor(anchor) if anchored else None)

    def labelled(self, file, segment: dict, wanted: np.ndarray, tracker: SegmentTracker, width: int,
                 height: int) -> Iterator[list[tuple[int, float, dict]]]:
        """Decode the wanted frames and label them: chunks of (frame index, timestamp s, estimator result with
        track_ids), in frame order."""
        index = segment_index(segment)
        frames = decode_frames(file, segment["video_uri"], index, wanted - segment["start"], 0,
                               int(wanted[-1]) - segment["start"] + 1, threads=self.threads)
        step = 0  # sampled frames seen in this segment
        previous: dict | None = None
        batch: list[tuple[int, float, np.ndarray]] = []
        while True:
            try:
                local, timestamp, image = next(frames)
            except StopIteration:
                break
            except (VideoError, OSError):
                if batch:  # the frames decoded before the fault are labelled, then the fault is reported
                    yield self.detect_and_track(batch, tracker)
                raise
            frame = local + segment["start"]
            if self.detect_every == 1:
                batch.append((frame, timestamp, image))
                if len(batch) == FRAMES_PER_CALL:
                    yield self.detect_and_track(batch, tracker)
                    batch = []
                continue
            if step % self.detect_every == 0 or previous is None or not len(previous["boxes"]):
                out = self.detect_and_track([(frame, timestamp, image)], tracker)
            else:
                out = [(frame, timestamp, self.follow(image, previous, tracker, frame, width, height))]
            previous = out[0][2]
            step += 1
            yield out
        if batch:
            yield self.detect_and_track(batch, tracker)

    def detect_and_track(self, batch: list[tuple[int, float, np.ndarray]], tracker: SegmentTracker):
        self.detector_frames += len(batch)
        results = self.pose.estimator([image for _, _, image in batch], dataset_index=self.pose.dataset_index)
        out = []
        for (frame, timestamp, _), result in zip(batch, results):
            result["track_ids"] = tracker.step(frame, result["boxes"], keypoints_with_scores(result))
            out.append((frame, timestamp, result))
        return out

    def follow(self, image: np.ndarray, previous: dict, tracker: SegmentTracker, frame: int, width: int,
               height: int) -> dict:
        """Pose on boxes taken from the previous frame's poses (no detector call)."""
        self.followed_frames += 1
        boxes, which = boxes_from_poses(keypoints_with_scores(previous), width, height)
        scores = np.asarray(previous["box_scores"], np.float32)[which]
        (result,) = self.pose.estimator([image], boxes=[boxes], box_scores=[scores],
                                        dataset_index=self.pose.dataset_index)
        result["track_ids"] = tracker.step(frame, result["boxes"], keypoints_with_scores(result))
        return result

    def frame_rows(self, uri: str, pending: list[tuple[int, float, dict]], width: int, height: int,
                   segment: dict) -> pa.Table:
        n = len(pending)
        table = make_table([frame_uri(uri, f) for f, _, _ in pending], [None] * n, [width] * n, [height] * n,
                           persons_column([r for _, _, r in pending]), [None] * n, [None] * n,
                           video_uri=[uri] * n, frame_index=[f for f, _, _ in pending],
                           timestamp_s=[t for _, t, _ in pending])
        return with_links(table, segment)


def segment_index(segment: dict) -> VideoIndex:
    """The part of the video's index a segment decodes (frames from `start` on), rebuilt from its row."""
    pts = np.asarray(segment["pts"], np.int64)
    return VideoIndex(width=int(segment["width"]), height=int(segment["height"]), rotation=int(segment["rotation"]),
                      codec="", timestamps_s=np.asarray(segment["timestamps_s"], np.float64), pts=pts,
                      keyframes=np.zeros(0, np.int64), time_base=Fraction(*segment["time_base"]))


def _persons_cell(persons: FramePersons | None) -> list[dict]:
    """FramePersons as a `persons` cell, its `gaps` in `box_score` (the driver matches on boxes and keypoints;
    vitpose_batch.pipeline.video_rows reads it back)."""
    if persons is None:
        return []
    return [{"bbox": box.tolist(), "box_score": float(gap), "score": 0.0, "keypoints": pose.reshape(-1).tolist(),
             "track_id": int(track)}
            for track, box, pose, gap in zip(persons.track_ids, persons.boxes, persons.keypoints, persons.gaps)]


def with_links(table: pa.Table, segment: dict, link: bool = False, anchor: FramePersons | None = None) -> pa.Table:
    """`table` with the link columns: which video segment its rows belong to and, on the segment's link row
    (`link`), the anchor and the lookback frame the driver joins tracks with."""
    n = table.num_rows
    return (table.append_column("_link", pa.array([link] * n, pa.bool_()))
            .append_column("_segment", pa.array([segment["segment"]] * n, pa.int32()))
            .append_column("_anchor", pa.array([_persons_cell(anchor)] * n, pa.list_(PERSON_TYPE)))
            .append_column("_anchor_frame", pa.array([None if anchor is None else anchor.frame_index] * n,
                                                     pa.int64()))
            .append_column("_lookback", pa.array([segment["lookback"] if link else None] * n, pa.int64())))


def link_row(segment: dict, head: FramePersons | None, anchor: FramePersons | None) -> pa.Table:
    """The segment's last row: not written; `persons` holds its head (the tracks born in its first frames, as first
    seen; `frame_index`: the segment's first sampled frame), `_anchor` its tracker's live tracks after the next
    segment's first frame (vitpose_batch.video.track_links.SegmentTracker)."""
    uri = segment["video_uri"]
    table = make_table([uri], [None], [0], [0], [_persons_cell(head)], [None], [None], video_uri=[uri],
                       frame_index=[None if head is None else head.frame_index])
    return with_links(table, segment, link=True, anchor=anchor)
