"""Reading videos with PyAV: an index of the frames from their packets (`scan`), then the wanted frames decoded
(`decode_frames`).

Frames are numbered 0.. in presentation order (sorted pts), the order a viewer shows them. Times are seconds from the
stream's start, from each frame's own pts (variable frame rate videos are right: never index / fps). Images come out
as a viewer shows them: RGB uint8 [H, W, 3], the container's rotation applied.

`file` is a binary file object (e.g. from `fsspec.open(uri, "rb")`: read from its start, left open) or a local path.
A video that cannot be read raises `VideoError`, one line naming the video and what is wrong.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO, Union

import av
import numpy as np

VideoSource = Union[str, "os.PathLike[str]", BinaryIO]

# After a seek lands past the wanted frame (a demuxer whose index holds dts), seek again this far before it (seconds);
# None: the stream's start.
_RESEEK_S = (1.0, 4.0, 16.0, None)


class VideoError(ValueError):
    """A video that cannot be read, or not to its end: one line, `video <name>: <what is wrong>`."""


@dataclass(frozen=True, eq=False)
class VideoIndex:
    """A video stream's frames in presentation order, from its packets.

    width, height: pixels as a viewer shows them (after `rotation`). rotation: degrees clockwise to turn the decoded
    picture to show it (0, 90, 180, 270). codec: FFmpeg's codec name (e.g. "h264"). timestamps_s: float64 [T],
    seconds from the stream's start to each frame. pts: int64 [T], each frame's raw pts (in `time_base` units),
    increasing. keyframes: int64 [K], the indices of the frames that are keyframes (decoding can start there).
    time_base: seconds per pts tick. (eq=False: arrays do not compare as a bool.)
    """

    width: int
    height: int
    rotation: int
    codec: str
    timestamps_s: np.ndarray
    pts: np.ndarray
    keyframes: np.ndarray
    time_base: Fraction
    declared_frames: int = 0  # the frame count the container states (0: none); more than `frame_count`: cut short

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"VideoIndex: rotation {self.rotation} is not 0, 90, 180 or 270")
        if len(self.timestamps_s) != len(self.pts):
            raise ValueError(f"VideoIndex: {len(self.timestamps_s)} timestamps for {len(self.pts)} pts")

    @property
    def frame_count(self) -> int:
        return len(self.pts)


def scan(file: VideoSource, name: str) -> VideoIndex:
    """Index a video from its packets: their pts and keyframe flags, sorted by pts. Packets are read, not decoded,
    except the first frame (its size, and the rotation FFmpeg attaches to decoded frames from the display matrix;
    PyAV reads no stream side data) and, in AVI, the first 16 (their pts must come out in order). Packets without
    pts are placed by their dts; packets with neither, and those the container marks to discard (before an edit
    list's start), are no frames. All the file is read once (through a file object too). A file cut short: the
    packets that are there (a demuxing fault after the first packet ends the index, not the scan).

    Raises VideoError: an empty file, not a container FFmpeg reads, no video stream, a codec this FFmpeg cannot
    decode, no frames, a first frame that does not decode, or (AVI) decoded frames whose pts are out of order.
    """
    with _open(file, name) as container:
        stream = _video_stream(container, name)
        codec_context = stream.codec_context
        codec_context.thread_count = 1
        time_base = stream.time_base
        if time_base is None:
            raise VideoError(f"video {name}: its video stream has no time base")
        stamps: list[int] = []
        keys: list[bool] = []
        # The first frame is decoded: its size, its rotation. AVI keeps no presentation times (B-frames: the pts of
        # the decoder's frames come out of order), so there the first frames are decoded to check their order.
        probe = _Probe(16 if "avi" in container.format.name.split(",") else 1)
        try:
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if stamp is None or packet.size == 0:  # the demuxer's last, empty packet, or no time at all
                    continue
                if not packet.is_discard:
                    stamps.append(stamp)
                    keys.append(packet.is_keyframe)
                probe.decode(stream, packet)
        except av.error.FFmpegError as exc:
            if not stamps:
                raise VideoError(f"video {name}: its packets cannot be read: {_reason(exc)}") from None
            # the packets before the fault are the index; decoding them raises where the rest is missing
        if not stamps:
            raise VideoError(f"video {name}: its video stream has no frames")
        probe.decode(stream, None)
        first_frame = probe.first
        if first_frame is None:
            raise VideoError(f"video {name}: its first frame does not decode: "
                             f"{probe.error or 'the decoder gave no frame'}")
        if probe.out_of_order:
            raise VideoError(f"video {name}: the pts of its decoded frames are out of order "
                             f"({', '.join(map(str, probe.stamps[:6]))}, ...): the container lacks presentation "
                             f"times (B-frames in AVI?); re-encode it")
        rotation = _rotation(first_frame, stream)
        codec = codec_context.codec.canonical_name
        start_time = stream.start_time
        declared = int(stream.frames or 0)

    pts = np.asarray(stamps, np.int64)
    keyframe = np.asarray(keys, bool)
    order = np.argsort(pts, kind="stable")
    pts, keyframe = pts[order], keyframe[order]
    pts, groups = np.unique(pts, return_inverse=True)  # duplicate pts: one frame
    keyframe = np.bincount(groups, weights=keyframe, minlength=len(pts)) > 0
    start = int(pts[0]) if start_time is None else min(int(start_time), int(pts[0]))
    timestamps = (pts - start).astype(np.float64) * time_base.numerator / time_base.denominator
    width, height = first_frame.width, first_frame.height
    if rotation in (90, 270):
        width, height = height, width
    return VideoIndex(width=int(width), height=int(height), rotation=rotation, codec=str(codec),
                      timestamps_s=timestamps, pts=pts, keyframes=np.flatnonzero(keyframe).astype(np.int64),
                      time_base=Fraction(time_base), declared_frames=declared)


def decode_frames(file: VideoSource, name: str, index: VideoIndex, wanted: np.ndarray, start: int, stop: int, *,
                  threads: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decode the frames of `wanted` (frame indices of `index`) that lie in [start, stop), in order:
    (frame index, timestamp s, RGB uint8 [H, W, 3] upright: `index.rotation` applied).

    Seeks to the keyframe at or before the first of them (the demuxer's, by that frame's pts: `index` may hold only a
    part of the video, e.g. from a segment's start on, and need not list keyframes), decodes forward, drops the
    frames before it and those not wanted, and stops at the last wanted frame. A frame is placed by its pts in
    `index.pts`; frames whose pts `index` lacks are dropped. One frame in memory at a time; the container is closed
    when the generator ends or is closed. `threads`: the decoder's threads (FFmpeg's "AUTO": frame or slice).

    Raises ValueError for a range outside the index. Raises VideoError (after yielding the frames decoded before it)
    when the file cannot be opened, when decoding fails (`decoding stopped after frame 37 (3.70 s): <reason>`) or
    when the stream ends, or runs past, before all wanted frames came out (the frames missing).
    """
    if not 0 <= start <= stop <= index.frame_count:
        raise ValueError(f"decode_frames: range [{start}, {stop}) is outside the video's {index.frame_count} frames")
    wanted = np.unique(np.asarray(wanted, np.int64))
    wanted = wanted[(wanted >= start) & (wanted < stop)]
    if not len(wanted):
        return
    first, last = int(wanted[0]), int(wanted[-1])
    target, end = int(index.pts[first]), int(index.pts[last])
    container = _open(file, name)
    try:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = max(1, int(threads))
        k = 0  # the next wanted frame: wanted[k]
        missing: list[int] = []  # wanted frames the decoder passed over
        done: int | None = None  # the last frame of the index decoded
        passed = False  # a frame after the last wanted one came: the stream goes on, the rest is not decoded
        previous: int | None = None  # the last frame's pts: presentation order, increasing
        try:
            for stamp, frame in _from_keyframe(container, stream, target):
                if stamp is not None and stamp > end:
                    passed = True
                    break
                if stamp is not None and previous is not None and stamp < previous:
                    raise VideoError(f"video {name}: decoding stopped {_where(index, done, first)}: the decoder's "
                                     f"frames come with pts out of order ({previous} then {stamp}): the container "
                                     f"lacks presentation times (B-frames in AVI?); re-encode it")
                previous = stamp if stamp is not None else previous
                place = _place(index.pts, stamp, done)
                if place is None:
                    continue
                done = place
                while k < len(wanted) and wanted[k] < place:
                    missing.append(int(wanted[k]))
                    k += 1
                if k < len(wanted) and wanted[k] == place:
                    yield place, float(index.timestamps_s[place]), _rgb(frame, index.rotation)
                    k += 1
                if place >= last:
                    break
        except _Fault as fault:
            raise VideoError(f"video {name}: decoding stopped {_where(index, done, first)}: {fault}") from None
        if k < len(wanted) and not passed:
            rest = missing + [int(w) for w in wanted[k:]]
            raise VideoError(f"video {name}: decoding stopped {_where(index, done, first)}: the stream ended with "
                             f"{len(rest)} wanted frames missing (frames {_span(rest)})")
        missing += [int(w) for w in wanted[k:]]
        if missing:
            raise VideoError(f"video {name}: {len(missing)} wanted frames did not come out of the decoder "
                             f"(frames {_span(missing)}, the first at {index.timestamps_s[missing[0]]:.2f} s)")
    finally:
        container.close()


def _from_keyframe(container, stream, target: int) -> Iterator[tuple[int | None, av.VideoFrame]]:
    """(pts, frame) from the keyframe at or before pts `target` on. Seeks by `target`; when the demuxer lands past
    it (its index holds dts: a keyframe whose dts is before `target` but its pts after, or an open GOP's frames
    before its keyframe), seeks again further back (_RESEEK_S), lastly to the stream's start. A container that
    cannot seek is decoded from its start."""
    time_base = stream.time_base
    floor = stream.start_time
    tried: set[int] = set()
    head = frames = None
    for attempt, back in enumerate((0.0, *_RESEEK_S)):
        if back is None:
            offset = floor if floor is not None else 0
        else:
            offset = target - round(back / time_base)
            offset = offset if floor is None else max(offset, floor)
        if offset in tried:
            continue
        tried.add(offset)
        try:
            container.seek(offset, stream=stream, backward=True, any_frame=False)
        except av.error.FFmpegError:
            if attempt:
                continue  # the last frames are read already: try further back
        if frames is not None:
            frames.close()
        frames = _decoded(container, stream)
        head = next(frames, None)
        if head is None or head[0] is None or head[0] <= target:
            break
    if head is not None:
        yield head
        yield from frames


class _Probe:
    """The first `count` frames a decoder gives (of them: the first frame, the pts), or the error that stopped it."""

    def __init__(self, count: int):
        self.count = count
        self.first: av.VideoFrame | None = None
        self.stamps: list[int | None] = []
        self.error: str | None = None

    def decode(self, stream, packet) -> None:
        """Decode `packet` (None: flush) while frames are wanted and no error came."""
        if len(self.stamps) >= self.count or self.error is not None:
            return
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError as exc:
            self.error = _reason(exc)
            return
        for frame in frames:
            if self.first is None:
                self.first = frame
            self.stamps.append(_stamp(frame))

    @property
    def out_of_order(self) -> bool:
        known = [s for s in self.stamps if s is not None]
        return any(b < a for a, b in itertools.pairwise(known))


class _Fault(Exception):
    """Decoding failed; the message is FFmpeg's reason."""


def _open(file: VideoSource, name: str) -> av.container.InputContainer:
    """An input container from the start of `file`. Raises VideoError: empty, or not a container FFmpeg reads."""
    if isinstance(file, (str, os.PathLike)):
        if os.path.getsize(file) == 0:
            raise VideoError(f"video {name}: empty file (0 bytes)")
    elif getattr(file, "seekable", lambda: False)():
        file.seek(0)
        empty = not file.read(1)
        file.seek(0)
        if empty:
            raise VideoError(f"video {name}: empty file (0 bytes)")
    try:
        return av.open(file, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"video {name}: not a video container FFmpeg can read ({_reason(exc)})") from None


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    """The first video stream that is not a cover picture, with a decoder. Raises VideoError."""
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        kinds = ", ".join(s.type + (" (cover picture)" if s.type == "video" else "") for s in container.streams)
        raise VideoError(f"video {name}: no video stream (its streams: {kinds or 'none'})")
    stream = streams[0]
    if stream.codec_context is None:
        raise VideoError(f"video {name}: this FFmpeg has no decoder for its video codec")
    try:
        av.codec.Codec(stream.codec_context.name, "r")
    except (av.codec.codec.UnknownCodecError, ValueError):
        raise VideoError(f"video {name}: this FFmpeg has no decoder for its video codec "
                         f"{stream.codec_context.name}") from None
    return stream


def _rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Degrees clockwise (0, 90, 180, 270) to show `frame` upright.

    FFmpeg attaches the container's display matrix (mp4/mov tkhd matrix, Matroska projection) to each decoded frame;
    `frame.rotation` is its angle counter-clockwise (a phone's portrait video: -90, shown turned 90 degrees clockwise,
    as ffmpeg's autorotate does). Without one, an old-style `rotate` stream tag (degrees clockwise) is read."""
    counter_clockwise = frame.rotation
    if counter_clockwise:
        clockwise = -counter_clockwise
    else:
        try:
            clockwise = float(stream.metadata.get("rotate", 0))
        except ValueError:
            clockwise = 0.0
    return round(clockwise / 90.0) % 4 * 90


def _decoded(container, stream) -> Iterator[tuple[int | None, av.VideoFrame]]:
    """(pts, frame) as the decoder gives them (presentation order) from the container's position; a frame without
    pts: its dts. A fault (demuxing or decoding): the frames the decoder still holds, then _Fault, FFmpeg's reason."""
    try:
        for packet in container.demux(stream):
            for frame in stream.decode(packet):  # the demuxer's last, empty packet flushes the decoder
                yield _stamp(frame), frame
        return
    except av.error.FFmpegError as exc:
        reason = _reason(exc)
    try:
        for frame in stream.decode(None):
            yield _stamp(frame), frame
    except av.error.FFmpegError:
        pass
    raise _Fault(reason)


def _stamp(frame: av.VideoFrame) -> int | None:
    return frame.pts if frame.pts is not None else frame.dts


def _place(pts: np.ndarray, stamp: int | None, done: int | None) -> int | None:
    """The frame index of a decoded frame: its pts in `pts`, or None (not in the index). A frame without any time
    is the one after the last placed."""
    if stamp is None:
        return None if done is None or done + 1 >= len(pts) else done + 1
    i = int(np.searchsorted(pts, stamp))
    if i < len(pts) and pts[i] == stamp:
        return i
    return None


def _rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    """RGB uint8 [H, W, 3], turned `rotation` degrees clockwise, C-contiguous."""
    color_range = frame.color_range or None  # full-range video (phones) converts as such
    rgb = frame.to_ndarray(format="rgb24", src_color_range=color_range)
    if rotation:
        rgb = np.rot90(rgb, k=-(rotation // 90))  # np.rot90 turns counter-clockwise for k > 0
    return np.ascontiguousarray(rgb)


def _where(index: VideoIndex, done: int | None, first: int) -> str:
    if done is None:
        return f"before frame {first} ({index.timestamps_s[first]:.2f} s)"
    return f"after frame {done} ({index.timestamps_s[done]:.2f} s)"


def _span(frames: list[int]) -> str:
    frames = sorted(frames)
    return str(frames[0]) if len(frames) == 1 else f"{frames[0]}..{frames[-1]}"


def _reason(exc: BaseException) -> str:
    """FFmpeg's reason on one line (e.g. `Invalid data found when processing input (avcodec_send_packet())`)."""
    if isinstance(exc, av.error.FFmpegError):
        text = exc.strerror or str(exc)
        where = exc.filename
        if where and where.endswith("()"):
            text = f"{text} ({where})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(str(text).split())
