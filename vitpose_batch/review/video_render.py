"""Draw one video's predictions back onto its frames as an MP4 that plays at the video's own speed.

    render_video(rows_of_one_video, read_frame, "out/clip.mp4", COCO.keypoint_names, COCO.skeleton)

Each row (a sampled frame) becomes one output frame: `read_frame(frame_index)` gives the frame (HxWx3 uint8 RGB, as
shown: after rotation, the pixels the predictions were made on), the skeletons are drawn with
`vitpose_core.drawing.draw_poses` (the keypoint set's left / right / centre colours; keypoints scored above
`score_threshold`), then each person's box and its track id, in a colour of its own per track id (`track_color`).
Error frames are written as read, with the error's first line in the top-left corner.

Timing: the output stream's time base is 1/1000 s and each frame's pts is `round(timestamp_s * 1000)` (absolute,
so frame times read back equal the rows' `timestamp_s` to the millisecond, and a video sampled every Nth frame or at
a lower rate still plays at real speed: each frame is shown until the next sampled one). `fps` is only the
stream's nominal rate (a hint for players and the encoder's rate control; default: estimated from the timestamps)
and the fallback for rows without `timestamp_s` (their time is frame_index / fps).

Encoding (PyAV): H.264 (`libx264`, CRF 20, preset `veryfast`) when this PyAV build has it, else MPEG-4 Part 2
(`mpeg4`) at a bit rate scaled to the frame size; yuv420p, which needs even sizes, so an odd width / height gets one
black column / row of padding on the right / bottom (the drawing is not moved). The file is written to a temporary
name first and moved into place (uploaded for an fsspec URL), so a failed render leaves no partial `dst`.
"""

from __future__ import annotations

import colorsys
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

from vitpose_batch.defaults import KEYPOINT_THRESHOLD
from vitpose_batch.files.storage import is_local, open_filesystem
from vitpose_batch.review.posetrack import person_arrays_of, rows_by_video, skeleton_indices
from vitpose_core.drawing import DEFAULT_BOX_COLOR, default_thickness, draw_poses
from vitpose_core.keypoint_set import KeypointSet, make_keypoint_set

__all__ = ["TIME_BASE", "keypoint_set_of", "pick_codec", "render_video", "track_color"]

logger = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)  # output pts unit: milliseconds
H264_OPTIONS = {"crf": "20", "preset": "veryfast"}
ERROR_COLOR = (255, 48, 48)

RGB = tuple[int, int, int]


def track_color(track_id: int | None) -> RGB:
    """A bright RGB colour for a track id, the same on every call; None (no track) -> the default box colour.

    The hue comes from a 64-bit mix of the id (splitmix64's finaliser), so ids that differ by a multiple of 1000
    (ours are `birth frame * 1000 + n`) still get far-apart hues."""
    if track_id is None:
        return DEFAULT_BOX_COLOR
    z = (int(track_id) + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    hue = (z % 3600) / 3600.0
    value = 1.0 if (z >> 12) & 1 else 0.85
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, value)
    return round(r * 255), round(g * 255), round(b * 255)


def keypoint_set_of(keypoint_names: Sequence[str], skeleton: Iterable[Sequence[Any]]) -> KeypointSet:
    """A KeypointSet for drawing: the given names and skeleton (0-based index pairs or name pairs), colours by body
    side as every built-in set (`vitpose_core.keypoint_set.make_keypoint_set`). ValueError for a bad edge."""
    names = tuple(str(n) for n in keypoint_names)
    edges = tuple((names[a], names[b]) for a, b in skeleton_indices(names, skeleton))
    return make_keypoint_set("video_render", names, (), edges, (0.0,) * len(names))


def pick_codec(preferred: str | None = None) -> str:
    """The encoder to use: `preferred` when given (ValueError if PyAV lacks it), else `libx264` when available, else
    `mpeg4`."""
    import av

    available = av.codecs_available
    if preferred is not None:
        if preferred not in available:
            raise ValueError(f"PyAV has no encoder {preferred!r}")
        return preferred
    return "libx264" if "libx264" in available else "mpeg4"


def _check_frame(frame: Any, frame_index: int) -> np.ndarray:
    image = np.asarray(frame)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise ValueError(f"read_frame({frame_index}) must return an HxWx3 uint8 RGB array, got shape "
                         f"{image.shape} dtype {image.dtype}")
    return image


def _label(canvas: np.ndarray, text: str, x: float, y_top: float, y_bottom: float, color: RGB) -> None:
    """`text` just above (x, y_top), or just below y_top inside the box when there is no room above; outlined in
    black so it reads on any background."""
    height, width = canvas.shape[:2]
    scale = max(0.4, min(height, width) / 720.0)
    thickness = max(1, round(scale * 1.5))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    left = int(min(max(x, 0), max(width - tw - 1, 0)))
    baseline = int(y_top) - 4
    if baseline - th < 0:
        baseline = int(min(max(y_top, 0) + th + 4, max(y_bottom, th + 4), height - base - 1))
    for colour, weight in (((0, 0, 0), thickness + 2), (color, thickness)):
        cv2.putText(canvas, text, (left, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, weight, cv2.LINE_AA)


def _draw(image: np.ndarray, persons: list[tuple[np.ndarray, np.ndarray, int | None]], kset: KeypointSet,
          score_threshold: float) -> np.ndarray:
    if not persons:
        return image.copy()
    keypoints = np.stack([kp for kp, _, _ in persons]).astype(np.float32)
    canvas = draw_poses(image, keypoints[..., :2], keypoints[..., 2], keypoint_set=kset,
                        score_threshold=score_threshold, draw_boxes=False)
    thickness = default_thickness(*image.shape[:2])
    for _, box, track_id in persons:
        if not np.isfinite(box).all():
            continue
        color = track_color(track_id)
        x, y, w, h = (float(v) for v in box)
        x1, x2 = sorted((x, x + w))
        y1, y2 = sorted((y, y + h))
        cv2.rectangle(canvas, (round(x1), round(y1)), (round(x2), round(y2)), color, thickness,
                      cv2.LINE_AA)
        _label(canvas, "?" if track_id is None else f"id {track_id}", x1, y1, y2, color)
    return canvas


def _timestamps(video: pa.Table, fps: float | None) -> np.ndarray:
    frames = np.asarray(video.column("frame_index").to_numpy(), np.int64)
    if "timestamp_s" in video.column_names:
        stamps = np.asarray(video.column("timestamp_s").to_numpy(zero_copy_only=False), np.float64)
    else:
        stamps = np.full(len(frames), np.nan)
    missing = ~np.isfinite(stamps)
    if missing.any():
        if fps is None:
            raise ValueError(f"{int(missing.sum())} row(s) have no timestamp_s (first: frame_index "
                             f"{int(frames[missing][0])}); pass fps to time them as frame_index / fps")
        stamps[missing] = frames[missing] / float(fps)
    return stamps


def _nominal_rate(stamps: np.ndarray, fps: float | None) -> Fraction:
    if fps is None:
        steps = np.diff(stamps)
        steps = steps[steps > 0]
        fps = 1.0 / float(np.median(steps)) if len(steps) else 25.0
    return Fraction(float(fps)).limit_denominator(1001)


def _encode(frames: Iterable[tuple[np.ndarray, int]], size: tuple[int, int], rate: Fraction, codec: str,
            path: str) -> None:
    """Encode (RGB canvas, pts in ms) pairs, canvases of `size` (w, h), into an MP4 at local `path`."""
    import av

    width, height = size
    with av.open(path, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        if codec == "libx264":
            stream.options = dict(H264_OPTIONS)
        else:  # mpeg4's default 200 kb/s smears thin skeleton lines: ~0.2 bit per pixel per frame
            stream.bit_rate = int(max(1_000_000, min(50_000_000, width * height * float(rate) * 0.2)))
        for canvas, t in frames:
            frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
            frame.pts = t
            frame.time_base = TIME_BASE
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def render_video(
    rows_of_one_video: pa.Table,
    read_frame: Callable[[int], np.ndarray],
    dst: str,
    keypoint_names: Sequence[str],
    skeleton: Iterable[Sequence[Any]],
    fps: float | None = None,
    *,
    score_threshold: float = KEYPOINT_THRESHOLD,
    min_person_score: float = 0.0,
    codec: str | None = None,
) -> str:
    """Write the rows' frames with their poses drawn as an MP4 at `dst` (local path or fsspec URL); returns `dst`.

    rows_of_one_video: the prediction rows (pyarrow Table) of ONE video: video_uri, frame_index, timestamp_s, width,
        height, error, persons; any order (frames are written in frame_index order).
    read_frame: frame_index -> that frame as HxWx3 uint8 RGB (after rotation, as the rows' width x height).
    keypoint_names / skeleton: the keypoint set (skeleton as 0-based index pairs or name pairs).
    fps: the stream's nominal rate, and the time of rows without timestamp_s (frame_index / fps); None estimates
        the rate from the timestamps (see the module docstring for timing).
    score_threshold: keypoints scored above it are drawn (an edge when both ends are).
    min_person_score: persons scored below it are not drawn.
    codec: an encoder name to force; None picks `libx264`, else `mpeg4` (`pick_codec`).

    Output: W x H = the first frame's size rounded up to even, one frame per row, pts in ms = round(timestamp_s *
    1000). Raises ValueError when the rows are not of exactly one video, a frame_index repeats, timestamps are
    missing without fps or not strictly increasing to the millisecond, a frame is not HxWx3 uint8 or differs in size
    from the row's width x height or from the first frame, or a person's keypoints are not 3K values; whatever
    `read_frame` raises for an error-free row (an error row whose frame cannot be read is left out, with a warning).
    """
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps)
                            or fps <= 0):
        raise ValueError(f"fps must be a positive number or None, got {fps!r}")
    if "video_uri" in rows_of_one_video.column_names and rows_of_one_video.column("video_uri").null_count:
        raise ValueError("rows_of_one_video has image rows (video_uri null); pass the rows of one video")
    videos = rows_by_video(rows_of_one_video, ["video_uri", "frame_index", "width", "height", "error", "persons"])
    if len(videos) != 1:
        raise ValueError(f"rows_of_one_video must hold the rows of exactly one video, got {len(videos)} videos")
    (uri, video), = videos.items()
    kset = keypoint_set_of(keypoint_names, skeleton)
    codec = pick_codec(codec)
    frame_indices = video.column("frame_index").to_pylist()
    stamps = _timestamps(video, fps)
    pts = [round(t * 1000) for t in stamps.tolist()]
    for a, b, fa, fb in zip(pts, pts[1:], frame_indices, frame_indices[1:]):
        if b <= a:
            raise ValueError(f"video {uri!r}: frames {fa} and {fb} have timestamps {a} ms and {b} ms; output frame "
                             "times must increase by at least 1 ms")
    rate = _nominal_rate(stamps, fps)
    persons = person_arrays_of(video, len(kset.keypoint_names))
    by_row: list[list[tuple[np.ndarray, np.ndarray, int | None]]] = [[] for _ in range(video.num_rows)]
    for p, row in enumerate(persons.row.tolist()):
        score = float(persons.score[p])
        if math.isfinite(score) and score < min_person_score:
            continue
        track = int(persons.track_id[p]) if persons.has_track[p] else None
        by_row[row].append((persons.keypoints[p], persons.bbox[p], track))
    widths, heights = video.column("width").to_pylist(), video.column("height").to_pylist()
    errors = video.column("error").to_pylist()

    size: list[int] = []  # (width, height) of the first frame, once read

    def canvases():
        for row, frame_index in enumerate(frame_indices):
            error = errors[row]
            try:
                image = _check_frame(read_frame(frame_index), frame_index)
            except Exception as exc:  # only an error row's unreadable frame is skipped
                if error is None:
                    raise
                logger.warning("render_video: %s frame %d (an error row) left out: %s", uri, frame_index, exc)
                continue
            h, w = image.shape[:2]
            if error is None and (widths[row], heights[row]) != (w, h) and widths[row] and heights[row]:
                raise ValueError(f"video {uri!r} frame {frame_index}: read_frame gave {w}x{h}, the row says "
                                 f"{widths[row]}x{heights[row]}; the keypoints would be misplaced")
            if not size:
                size.extend((w, h))
            elif (w, h) != tuple(size):
                raise ValueError(f"video {uri!r} frame {frame_index}: {w}x{h}, the first frame was "
                                 f"{size[0]}x{size[1]}; one video needs one frame size")
            if error is None:
                canvas = _draw(image, by_row[row], kset, score_threshold)
            else:
                canvas = image.copy()
                first_line = str(error).splitlines()[0] if str(error) else "error"
                _label(canvas, f"error: {first_line[:60]}", 4, 0, h, ERROR_COLOR)
            pad_h, pad_w = h % 2, w % 2
            if pad_h or pad_w:
                canvas = np.pad(canvas, ((0, pad_h), (0, pad_w), (0, 0)))
            yield canvas, pts[row]

    frames = canvases()
    try:
        first = next(frames)
    except StopIteration:
        raise ValueError(f"video {uri!r}: no frame could be read") from None
    out_size = (first[0].shape[1], first[0].shape[0])

    def all_frames():
        yield first
        yield from frames

    fs, target = open_filesystem(dst)
    local = is_local(fs)
    folder = os.path.dirname(target) if local else None
    if local and folder:
        os.makedirs(folder, exist_ok=True)
    # next to the target when local (os.replace stays on one file system), else in the system's temporary folder
    handle, temporary = tempfile.mkstemp(suffix=".mp4", prefix=".render-", dir=(folder or ".") if local else None)
    os.close(handle)
    try:
        _encode(all_frames(), out_size, rate, codec, temporary)
        if local:
            umask = os.umask(0)  # mkstemp makes the file 0600: give it the mode any new file would have
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, target)
        else:
            fs.put_file(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return dst
