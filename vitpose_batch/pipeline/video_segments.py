"""Videos -> segments: the work items of the video pose actors (vitpose_batch.pipeline.video_worker).

One Ray task per video reads the video stream's packets (no decoding: vitpose_batch.video.decoding.scan), picks the
sampled frames (vitpose_batch.video.sampling) and cuts them into time segments at keyframes, so a long video runs on
many actors at once. A segment row carries what its actor needs to decode it without scanning again (the pts of its
frames), which of its frames OUTPUT lacks (`emit`: resume redoes only those), and how its tracks link to the
previous segment's (`anchor`, `lookback`; see vitpose_batch.video.track_links). Only these small rows cross the
object store: the frames are decoded inside the actor that labels them.

A video that cannot be read at all (no video stream, an empty or truncated file, a codec the decoder lacks) becomes
one segment row with an `error`, which the actor turns into one error row keyed by the video's URI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vitpose_batch.files.addresses import frame_uri
from vitpose_batch.output.resume import uri_keys
from vitpose_batch.video.decoding import VideoError, scan
from vitpose_batch.video.sampling import plan_segments, sample_frames
from vitpose_core.filesystems import open_uri

SEGMENT_SCHEMA = pa.schema([
    ("video_uri", pa.string()),
    ("segment", pa.int32()),           # 0.. in time order
    ("start", pa.int64()),             # frame range [start, stop) of the video's presentation order
    ("stop", pa.int64()),
    ("frames", pa.list_(pa.int64())),  # the sampled frames in [start, stop), every one tracked
    ("emit", pa.list_(pa.bool_())),    # per sampled frame: OUTPUT lacks its row, so this run writes it
    ("anchor", pa.int64()),            # the next segment's first sampled frame (tracked, not written); null: last
    ("lookback", pa.int64()),          # a frame whose rows in OUTPUT carry final track ids (resumed runs), or null
    ("pts", pa.list_(pa.int64())),     # pts of frame `start` .. of the last frame decoded (anchor or stop - 1)
    ("timestamps_s", pa.list_(pa.float64())),
    ("time_base", pa.list_(pa.int64(), 2)),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("rotation", pa.int32()),
    ("error", pa.string()),            # the video could not be scanned: one error row, keyed by the video's URI
    ("error_retryable", pa.bool_()),   # ... because its read failed (missing, storage): a re-run may read it
    ("frame_count", pa.int64()),       # frames the video's packets hold
    ("tail_error", pa.string()),       # the file is cut short: one error row after its last frame (last segment)
])


@dataclass(frozen=True)
class Sampling:
    """Which frames of a video are labelled and how they are cut: `frame_rate` (frames nearest to every 1/F s) or
    `every_nth_frame` (frames 0, N, 2N, ...), neither: every frame; `segment_s` seconds per segment (about: cut at
    keyframes); `detect_every` N: the detector runs on every Nth sampled frame, the boxes between come from the
    previous poses. Recorded in the provenance: OUTPUT holds one sampling."""

    frame_rate: float | None = None
    every_nth_frame: int | None = None
    detect_every: int = 1
    segment_s: float = 60.0

    def as_dict(self) -> dict:
        return {"frame_rate": self.frame_rate, "every_nth_frame": self.every_nth_frame,
                "detect_every": self.detect_every, "segment_s": self.segment_s}

    def check(self) -> None:
        """Raises ValueError naming the flag that is out of range."""
        if self.frame_rate is not None and self.every_nth_frame is not None:
            raise ValueError("--frame-rate and --every-nth-frame: give one of them")
        if self.frame_rate is not None and not self.frame_rate > 0:
            raise ValueError(f"--frame-rate {self.frame_rate}: frames per second must be above 0")
        if self.every_nth_frame is not None and self.every_nth_frame < 1:
            raise ValueError(f"--every-nth-frame {self.every_nth_frame}: must be 1 or more")
        if self.detect_every < 1:
            raise ValueError(f"--detect-every {self.detect_every}: must be 1 or more")
        if not self.segment_s > 0:
            raise ValueError(f"--segment-seconds {self.segment_s}: must be above 0")


def video_segments(batch: pa.Table, sampling: Sampling, finished=None) -> pa.Table:
    """Ray task: rows of `video_uri` -> SEGMENT_SCHEMA rows (segments with nothing to write are left out; a video
    that cannot be scanned gives one row with `error`). `finished`: a resume KeySet (or its ObjectRef) of the
    image_uris OUTPUT holds."""
    import ray

    if isinstance(finished, ray.ObjectRef):
        finished = ray.get(finished)
    tables = [segments_of(uri, sampling, finished) for uri in batch.column("video_uri").to_pylist()]
    return pa.concat_tables(tables) if tables else SEGMENT_SCHEMA.empty_table()


def segments_of(video_uri: str, sampling: Sampling, finished=None) -> pa.Table:
    """One video's segments (see `video_segments`)."""
    if in_output(finished, [video_uri])[0]:
        return SEGMENT_SCHEMA.empty_table()  # OUTPUT holds the row saying this video cannot be read
    try:
        with open_uri(video_uri) as file:
            index = scan(file, video_uri)
    except VideoError as exc:  # the bytes are what they are: a re-run would say the same
        return _error_row(video_uri, str(exc), retryable=False)
    except OSError as exc:  # a missing file, a storage fault: may pass, as for images
        return _error_row(video_uri, f"video {video_uri}: cannot be read: {type(exc).__name__}: {exc}",
                          retryable=True)
    sampled = sample_frames(index.timestamps_s, frame_rate=sampling.frame_rate, every_nth=sampling.every_nth_frame)
    done = in_output(finished, [frame_uri(video_uri, int(i)) for i in sampled])
    segments = plan_segments(index, sampled, sampling.segment_s)
    tail_error = cut_short(video_uri, index, finished)
    rows = []
    for k, segment in enumerate(segments):
        inside = (sampled >= segment.start) & (sampled < segment.stop)
        frames = sampled[inside]
        emit = ~done[inside]
        last_segment = k + 1 == len(segments)
        if not emit.any() and not (last_segment and tail_error):
            continue
        anchor = int(sampled[np.searchsorted(sampled, segments[k + 1].start)]) if k + 1 < len(segments) else None
        previous_runs = k > 0 and (~done[(sampled >= segments[k - 1].start) & (sampled < segments[k - 1].stop)]).any()
        lookback = None
        if k > 0 and not previous_runs:  # the previous segment is all in OUTPUT: its ids are read back from there
            lookback = int(frames[0]) if not emit[0] else int(sampled[np.searchsorted(sampled, frames[0]) - 1])
        elif k > 0 and not emit[0]:  # the head frame is in OUTPUT already: its ids are the final ones
            lookback = int(frames[0])
        last = anchor if anchor is not None else int(frames[-1])
        rows.append({
            "video_uri": video_uri, "segment": segment.index, "start": segment.start, "stop": segment.stop,
            "frames": frames.tolist(), "emit": emit.tolist(), "anchor": anchor, "lookback": lookback,
            "pts": index.pts[segment.start:last + 1].tolist(),
            "timestamps_s": index.timestamps_s[segment.start:last + 1].tolist(),
            "time_base": [index.time_base.numerator, index.time_base.denominator],
            "width": index.width, "height": index.height, "rotation": index.rotation, "error": None,
            "frame_count": index.frame_count, "tail_error": tail_error if last_segment else None,
        })
    return pa.Table.from_pylist(rows, schema=SEGMENT_SCHEMA)


def in_output(finished, uris: list[str]) -> np.ndarray:
    """Which of `uris` OUTPUT holds rows of (bool [n]); `finished`: a resume KeySet, or None (nothing)."""
    if finished is None or not len(finished):
        return np.zeros(len(uris), bool)
    return finished.contains(uri_keys(pa.array(uris, pa.string())))


def cut_short(video_uri: str, index, finished=None) -> str | None:
    """The error of a file cut short (the container states more frames than its packets hold), unless OUTPUT holds
    it already: one row, `video#frame=<first missing frame>`, stands for all the frames missing."""
    if index.declared_frames <= index.frame_count:
        return None
    if in_output(finished, [frame_uri(video_uri, index.frame_count)])[0]:
        return None
    last = index.frame_count - 1
    return (f"video {video_uri}: the file ends after frame {last} ({index.timestamps_s[last]:.2f} s): the container "
            f"states {index.declared_frames} frames, {index.declared_frames - index.frame_count} are missing")


def _error_row(video_uri: str, message: str, retryable: bool) -> pa.Table:
    return pa.Table.from_pylist([{"video_uri": video_uri, "segment": 0, "frames": [], "emit": [], "pts": [],
                                  "timestamps_s": [], "error": message, "error_retryable": retryable}],
                                schema=SEGMENT_SCHEMA)
