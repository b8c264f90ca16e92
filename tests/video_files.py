"""Small test videos made with PyAV (no ffmpeg CLI): re-encoded, remuxed with rotation or new timestamps, broken.

Each function writes one file and returns its path. The container follows `dst`'s suffix (.mp4, .mkv, ...).
Encoders of this PyAV wheel (FFmpeg 8): libx264 (H.264; the wheel's H.264 decoder is FFmpeg's own), mpeg4, libvpx,
libvpx-vp9, libx265, libsvtav1, mjpeg, ffv1, png, aac. `VIDEO_CODEC` is libx264 when the wheel has it, else mpeg4.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from fractions import Fraction

import av
import numpy as np

VIDEO_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"

# Fine enough for any frame rate a test asks for (the mp4 muxer keeps the stream's time base as the track's timescale).
TIME_BASE = Fraction(1, 90000)


def remux(src: str, dst: str, *, faststart: bool = False, rotation: int | None = None,
          timestamps_s: np.ndarray | None = None) -> str:
    """Copy `src`'s video packets (no re-encoding) into `dst`. faststart: the mp4 index (moov) before the data, so a
    cut file still opens. rotation: a display matrix, degrees clockwise as a viewer turns the picture (what phones
    write, ffmpeg's `rotate` tag). timestamps_s: [T] new presentation times (seconds, for the frames in presentation
    order): a variable frame rate video."""
    with av.open(src) as source:
        stream = source.streams.video[0]
        packets = [p for p in source.demux(stream) if p.size and p.dts is not None]
        with av.open(dst, "w", options={"movflags": "faststart"} if faststart else {}) as out:
            copy = out.add_stream_from_template(stream)
            if rotation is not None:
                copy.set_display_rotation(-rotation)  # PyAV takes degrees counter-clockwise (as frame.rotation)
            if timestamps_s is not None:
                copy.time_base = TIME_BASE
                _retime(packets, np.asarray(timestamps_s, np.float64), stream.time_base)
            for packet in packets:
                packet.stream = copy
                out.mux(packet)
    return dst


def remux_with_rotation(src: str, dst: str, degrees: int) -> str:
    """`src` with a display matrix turning it `degrees` clockwise for display (a phone's portrait video: 90)."""
    return remux(src, dst, rotation=degrees)


def retime(src: str, dst: str, timestamps_s: np.ndarray) -> str:
    """`src` with its frames (presentation order) shown at `timestamps_s` (seconds, [T], increasing)."""
    return remux(src, dst, timestamps_s=timestamps_s)


def _retime(packets: list, timestamps_s: np.ndarray, time_base: Fraction) -> None:
    """New pts/dts (in TIME_BASE ticks) for packets in decode order: the k-th frame in presentation order gets
    timestamps_s[k]; dts increase and stay at or before each packet's pts (B-frames: shifted back)."""
    order = np.argsort([p.pts for p in packets], kind="stable")
    if len(timestamps_s) != len(packets):
        raise ValueError(f"{len(timestamps_s)} timestamps for {len(packets)} frames")
    ticks = np.round(timestamps_s / float(TIME_BASE)).astype(np.int64)
    pts = np.empty(len(packets), np.int64)
    pts[order] = ticks
    shift = int(np.max(ticks - pts, initial=0))  # decode order k gets dts ticks[k] - shift <= its pts
    for k, packet in enumerate(packets):
        packet.pts, packet.dts = int(pts[k]), int(ticks[k]) - shift
        packet.duration = 0
        packet.time_base = TIME_BASE


def encode(dst: str, frames: Iterable[np.ndarray], *, fps: float | None = None,
           timestamps_s: Iterable[float] | None = None, codec: str = VIDEO_CODEC, gop: int | None = None,
           pix_fmt: str | None = None, faststart: bool = False, bframes: bool = True) -> str:
    """Encode RGB uint8 frames [H, W, 3] at `fps` or at `timestamps_s` (seconds). gop: a keyframe every `gop` frames
    (libx264: exactly, no scene-cut keyframes). pix_fmt: default yuv420p (odd sizes: yuv444p). bframes: libx264, mpeg4
    and mpeg2video reorder frames (B-frames; mpeg4's GOPs are then open: B-frames before a keyframe refer to the GOP
    before) unless False."""
    if (fps is None) == (timestamps_s is None):
        raise ValueError("encode: give fps or timestamps_s")
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    times = None if timestamps_s is None else iter(timestamps_s)
    with av.open(dst, "w", options={"movflags": "faststart"} if faststart else {}) as out:
        options = {}
        if codec == "libx264":
            params = ["scenecut=0"] + ([f"keyint={gop}", f"min-keyint={gop}"] if gop else [])
            params += [] if bframes else ["bframes=0"]
            preset = "ultrafast" if width * height > 4_000_000 else "medium"
            options = {"preset": preset, "x264-params": ":".join(params)}
        rate = Fraction(fps).limit_denominator(100000) if fps else Fraction(30)
        stream = out.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or ("yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p")
        if gop:
            stream.codec_context.gop_size = gop
        if codec != "libx264" and bframes and codec in ("mpeg4", "mpeg2video", "mpeg1video"):
            stream.codec_context.max_b_frames = 2
        time_base = TIME_BASE if times is not None else 1 / rate
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        for k, image in enumerate(_chain(first, frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image, np.uint8), format="rgb24")
            frame.pts = k if times is None else round(next(times) / float(TIME_BASE))
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dst


def _chain(first, rest):
    yield first
    yield from rest


def decode_all(path: str) -> list[np.ndarray]:
    """Every frame of `path`'s video stream, straight from the start: RGB uint8 [H, W, 3], as decoded (no rotation)."""
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def truncate(src: str, dst: str, fraction: float) -> str:
    """The first `fraction` of `src`'s bytes (a cut download). A plain mp4 keeps its index at the end: cut, it does
    not open; remux(faststart=True) first for a cut file that opens and breaks partway."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return dst


def audio_only(dst: str, seconds: float = 0.5) -> str:
    """An AAC sine tone in `dst` (e.g. .mp4), no video stream."""
    rate = 44100
    with av.open(dst, "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(rate * seconds)) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        for k in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, k:k + 1024]), format="fltp",
                                               layout="mono")
            frame.sample_rate, frame.pts = rate, k
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dst


def empty(dst: str) -> str:
    """A file of 0 bytes."""
    open(dst, "wb").close()
    return dst


def not_a_video(dst: str) -> str:
    """Text in a file named like a video."""
    with open(dst, "w") as f:
        f.write("this is not a video, only text in a file named .mp4\n" * 20)
    return dst


def without_decoder(src: str, dst: str) -> str:
    """`src` (an H.264 mp4) relabelled as MPEG-5 EVC ('avc1' -> 'evc1' in its sample description): a codec FFmpeg
    knows but this wheel has no decoder for."""
    with open(src, "rb") as f:
        data = f.read()
    if b"avc1" not in data:
        raise ValueError(f"{src}: no 'avc1' sample entry to relabel")
    with open(dst, "wb") as f:
        f.write(data.replace(b"avc1", b"evc1"))
    return dst


def path_in(folder: str | os.PathLike, name: str) -> str:
    return os.path.join(os.fspath(folder), name)
