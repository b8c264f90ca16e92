"""vitpose_batch.video.decoding and .sampling on real videos (shared/data/videos) and videos made here with PyAV
(tests/video_files.py): frame indexes, seeking, rotation, variable frame rate, broken files, sampling, segments."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
from fractions import Fraction

import av
import fsspec
import numpy as np
import pytest

from tests import video_files as vf
from tests.shared_data import shared_path
from vitpose_batch.files.addresses import is_video
from vitpose_batch.video.decoding import VideoError, VideoIndex, decode_frames, scan
from vitpose_batch.video.sampling import Segment, plan_segments, sample_frames

SHARED_VIDEOS = {  # name: (frames, width, height)
    "walkers_vtest_5s.mp4": (50, 768, 576),
    "tai_chi.mp4": (300, 340, 256),
    "two_people_1080p.mp4": (72, 1920, 1080),
}


def video(name: str) -> str:
    return str(shared_path(f"data/videos/{name}"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def gop10(folder):
    """tai_chi's first 60 frames re-encoded with a keyframe every 10 frames (libx264 with B-frames): the path and
    its frames decoded straight from the start."""
    path = vf.encode(str(folder / "gop10.mp4"), vf.decode_all(video("tai_chi.mp4"))[:60], fps=30000 / 1001, gop=10)
    return path, vf.decode_all(path)


@pytest.fixture(scope="module")
def tai_chi_frames():
    return vf.decode_all(video("tai_chi.mp4"))


def one_line_naming(exc: pytest.ExceptionInfo, name: str) -> str:
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"video {name}: "), message
    return message


# --- scan ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SHARED_VIDEOS))
def test_scan_shared_videos(name):
    frames, width, height = SHARED_VIDEOS[name]
    index = scan(video(name), name)
    assert (index.frame_count, index.width, index.height, index.rotation, index.codec) == (
        frames, width, height, 0, "h264")
    assert index.timestamps_s.dtype == np.float64 and index.pts.dtype == np.int64 and index.keyframes.dtype == np.int64
    assert index.timestamps_s[0] == 0 and (np.diff(index.timestamps_s) > 0).all() and (np.diff(index.pts) > 0).all()
    assert index.keyframes[0] == 0
    np.testing.assert_allclose(index.timestamps_s, (index.pts - index.pts[0]) * float(index.time_base))
    intervals = np.diff(index.timestamps_s)
    if name == "two_people_1080p.mp4":  # irregular: a variable frame rate, seen from the pts
        assert intervals.max() - intervals.min() > 0.05
    elif name == "tai_chi.mp4":
        np.testing.assert_allclose(intervals, 1001 / 30000, atol=1e-9)
    else:
        np.testing.assert_allclose(intervals, 0.1, atol=1e-9)


def test_scan_reads_a_file_object_from_its_start_and_leaves_it_open():
    path = video("tai_chi.mp4")
    with fsspec.open(path, "rb") as file:
        file.seek(1000)
        index = scan(file, "tai_chi")
        assert not file.closed
        again = list(decode_frames(file, "tai_chi", index, [0, 299], 0, 300))
    assert [i for i, _, _ in again] == [0, 299]
    np.testing.assert_array_equal(index.pts, scan(path, "tai_chi").pts)


def test_is_video():
    assert is_video("s3://bucket/clips/A.MP4") and is_video("x.webm") and is_video("/a/b.mkv")
    assert not is_video("x.jpg") and not is_video("mp4") and not is_video("x.mp4.json")


# --- decode_frames --------------------------------------------------------------------------------------------------


def test_decode_every_frame_equals_a_straight_decode():
    path = video("walkers_vtest_5s.mp4")
    index = scan(path, "walkers")
    got = list(decode_frames(path, "walkers", index, np.arange(50), 0, 50))
    reference = vf.decode_all(path)
    assert [i for i, _, _ in got] == list(range(50)) and len(reference) == 50
    assert [t for _, t, _ in got] == index.timestamps_s.tolist()
    for (_, _, image), expected in zip(got, reference):
        assert image.dtype == np.uint8 and image.flags.c_contiguous
        np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize("start, stop, step", [(20, 40, 1), (25, 45, 3), (0, 13, 4), (57, 60, 1), (9, 11, 1)])
def test_decode_a_segment_seeks_to_its_keyframe(gop10, start, stop, step):
    """From a keyframe (20), from the middle of a GOP (25: decoded from 20, 20-24 dropped), the last frames."""
    path, reference = gop10
    index = scan(path, "gop10")
    np.testing.assert_array_equal(index.keyframes, np.arange(0, 60, 10))
    wanted = np.arange(start, 60, step)  # beyond `stop` too: those are left out
    got = list(decode_frames(path, "gop10", index, wanted, start, stop))
    assert [i for i, _, _ in got] == [int(w) for w in wanted if w < stop]
    for i, t, image in got:
        assert t == index.timestamps_s[i]
        np.testing.assert_array_equal(image, reference[i])


def test_decode_open_gops_in_avi_from_every_frame(folder, tai_chi_frames):
    """mpeg4 B-frames in AVI: the index is of dts, and the B-frames shown before a keyframe need the GOP before it. A
    seek by pts lands on that keyframe, past the frames wanted; decode_frames seeks again further back."""
    path = vf.encode(str(folder / "mpeg4_bframes.avi"), tai_chi_frames[:40], fps=30, codec="mpeg4", gop=10)
    index = scan(path, "avi")
    reference = vf.decode_all(path)
    assert index.frame_count == len(reference) == 40 and index.keyframes[1] not in (10, 20)  # B-frames before it
    for start in range(40):
        got = list(decode_frames(path, "avi", index, np.arange(40), start, min(start + 2, 40)))
        assert [i for i, _, _ in got] == list(range(start, min(start + 2, 40)))
        for i, _, image in got:
            np.testing.assert_array_equal(image, reference[i])


def test_h264_b_frames_in_avi_are_refused(folder, tai_chi_frames):
    """AVI keeps no presentation times: the pts of H.264's reordered frames are decode positions. scan says so."""
    path = vf.encode(str(folder / "h264.avi"), tai_chi_frames[:20], fps=30)
    with pytest.raises(VideoError) as exc:
        scan(path, "h264.avi")
    assert "out of order" in one_line_naming(exc, "h264.avi")


def test_decode_with_threads_gives_the_same_frames(gop10):
    path, reference = gop10
    index = scan(path, "gop10")
    got = list(decode_frames(path, "gop10", index, np.arange(60), 15, 60, threads=3))
    assert [i for i, _, _ in got] == list(range(15, 60))
    for i, _, image in got:
        np.testing.assert_array_equal(image, reference[i])


def test_decode_with_an_index_from_a_segment_start(gop10):
    """A worker rebuilds the index of frames [start, ...) only (its segment's pts, no keyframes) and counts frames
    from there: frames decoded before its first pts (from the keyframe before) are not in it and dropped."""
    path, reference = gop10
    full = scan(path, "gop10")
    start = 25
    part = VideoIndex(width=full.width, height=full.height, rotation=0, codec="", time_base=full.time_base,
                      timestamps_s=full.timestamps_s[start:], pts=full.pts[start:], keyframes=np.zeros(0, np.int64))
    got = list(decode_frames(path, "gop10", part, np.array([0, 3, 4, 12]), 0, 13))
    assert [(i, t) for i, t, _ in got] == [(i, full.timestamps_s[start + i]) for i in (0, 3, 4, 12)]
    for i, _, image in got:
        np.testing.assert_array_equal(image, reference[start + i])


def test_decode_stops_after_the_last_wanted_frame(folder):
    """Frames [0, 3) of a 72-frame file read its first bytes only (the index at the front: faststart)."""
    path = vf.remux(video("two_people_1080p.mp4"), str(folder / "two_people_faststart.mp4"), faststart=True)
    index = scan(path, "two_people")
    reached = []

    class Tracked(io.FileIO):
        def read(self, size=-1):  # what PyAV calls
            data = super().read(size)
            reached.append(self.tell())
            return data

    with Tracked(path, "rb") as file:
        got = [i for i, _, _ in decode_frames(file, "two_people", index, np.arange(72), 0, 3)]
    assert got == [0, 1, 2]
    assert max(reached) < 0.3 * os.path.getsize(path)


def test_decode_holds_one_frame_at_a_time():
    path = video("walkers_vtest_5s.mp4")
    index = scan(path, "walkers")
    frame_bytes = 576 * 768 * 3
    tracemalloc.start()
    try:
        count = 0
        for _, _, image in decode_frames(path, "walkers", index, np.arange(50), 0, 50):
            count += image.shape[0] > 0
            del image
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50 and peak < 3 * frame_bytes


def test_decode_range_checks():
    index = scan(video("tai_chi.mp4"), "tai_chi")
    with pytest.raises(ValueError):
        next(decode_frames(video("tai_chi.mp4"), "tai_chi", index, [0], 0, 301))
    # nothing wanted in the range: the file is not even opened
    assert list(decode_frames("/nonexistent/x.mp4", "x", index, [5, 250], 10, 20)) == []


# --- rotation ------------------------------------------------------------------------------------------------------


def tkhd_matrix(path: str) -> tuple[int, ...]:
    """The mp4 track header's 3x3 display matrix (a, b, u, c, d, v, x, y, w; 16.16 / 2.30 fixed point), version 0."""
    with open(path, "rb") as f:
        data = f.read()
    at = data.index(b"tkhd") + 4
    assert data[at] == 0  # version 0: 32-bit times
    return struct.unpack(">9i", data[at + 40: at + 76])


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_from_the_display_matrix(folder, tai_chi_frames, degrees):
    path = vf.remux_with_rotation(video("tai_chi.mp4"), str(folder / f"rotated_{degrees}.mp4"), degrees)
    index = scan(path, "rotated")
    assert index.rotation == degrees
    assert (index.width, index.height) == ((256, 340) if degrees in (90, 270) else (340, 256))
    got = list(decode_frames(path, "rotated", index, [0, 150, 299], 0, 300))
    for i, _, image in got:
        assert image.shape == (index.height, index.width, 3)
        np.testing.assert_array_equal(image, np.rot90(tai_chi_frames[i], k=-degrees // 90))
    if degrees == 90:
        # what a phone writes for a portrait video (ffmpeg's `rotate` 90): tkhd matrix {0, 1, 0; -1, 0, 0; 0, 0, 1}
        one = 1 << 16
        assert tkhd_matrix(path) == (0, one, 0, -one, 0, 0, 0, 0, 1 << 30)


@pytest.mark.parametrize("degrees, transpose", [(90, "clock"), (270, "cclock")])
def test_rotation_matches_ffmpeg_autorotate(folder, degrees, transpose):
    """ffmpeg's autorotate turns a frame whose display matrix angle is -90 (rotate 90) with transpose=clock: the
    same picture as decode_frames gives."""
    path = vf.remux_with_rotation(video("tai_chi.mp4"), str(folder / f"autorotate_{degrees}.mp4"), degrees)
    index = scan(path, "rotated")
    (_, _, image), = decode_frames(path, "rotated", index, [7], 0, 300)
    with av.open(path) as container:
        stream = container.streams.video[0]
        frames = container.decode(stream)
        for _ in range(8):
            frame = next(frames)
        assert frame.rotation == (-degrees if degrees <= 180 else 360 - degrees)
        graph = av.filter.Graph()
        source, turn = graph.add_buffer(template=stream), graph.add("transpose", transpose)
        sink = graph.add("buffersink")
        source.link_to(turn)
        turn.link_to(sink)
        graph.configure()
        graph.push(frame)
        shown = graph.pull().to_ndarray(format="rgb24")
    np.testing.assert_array_equal(image, shown)


# --- variable frame rate -----------------------------------------------------------------------------------------


def test_variable_frame_rate_times_come_from_the_pts(folder):
    rng = np.random.default_rng(7)
    times = np.concatenate([[0.0], np.cumsum(rng.uniform(0.01, 0.25, 299))])
    path = vf.retime(video("tai_chi.mp4"), str(folder / "vfr.mp4"), times)
    index = scan(path, "vfr")
    assert index.frame_count == 300
    assert np.abs(index.timestamps_s - times).max() <= float(index.time_base)
    sampled = sample_frames(index.timestamps_s, frame_rate=5)
    targets = np.arange(0, times[-1] + 1e-9, 0.2)
    nearest = np.unique([np.argmin(np.abs(index.timestamps_s - t)) for t in targets])
    np.testing.assert_array_equal(sampled, nearest)
    got = [(i, t) for i, t, _ in decode_frames(path, "vfr", index, sampled, 0, 300)]
    assert got == [(int(i), index.timestamps_s[i]) for i in sampled]


# --- broken and odd files ----------------------------------------------------------------------------------------


def test_bad_files_raise_one_line_naming_the_video(folder):
    cases = {
        "empty.mp4": (vf.empty(str(folder / "empty.mp4")), "empty file"),
        "text.mp4": (vf.not_a_video(str(folder / "text.mp4")), "not a video container"),
        "audio.mp4": (vf.audio_only(str(folder / "audio.mp4")), "no video stream (its streams: audio)"),
        "evc.mp4": (vf.without_decoder(video("tai_chi.mp4"), str(folder / "evc.mp4")), "no decoder"),
        "cut.mp4": (vf.truncate(video("walkers_vtest_5s.mp4"), str(folder / "cut.mp4"), 0.9), "not a video container"),
    }
    for name, (path, what) in cases.items():
        with pytest.raises(VideoError) as exc:
            scan(path, name)
        assert what in one_line_naming(exc, name)
        with fsspec.open(path, "rb") as file, pytest.raises(VideoError) as exc:
            scan(file, name)
        assert what in one_line_naming(exc, name)


def test_truncated_video_yields_the_frames_before_the_fault(folder):
    whole = vf.remux(video("walkers_vtest_5s.mp4"), str(folder / "walkers_faststart.mp4"), faststart=True)
    path = vf.truncate(whole, str(folder / "walkers_cut.mp4"), 0.9)
    index = scan(path, "cut")  # the packets that are there (the last one cut short)
    assert 30 < index.frame_count < 50
    reference = vf.decode_all(whole)
    got = []
    with pytest.raises(VideoError) as exc:
        for i, _, image in decode_frames(path, "cut", index, np.arange(index.frame_count), 0, index.frame_count):
            got.append(i)
            np.testing.assert_array_equal(image, reference[i])
    message = one_line_naming(exc, "cut")
    assert got == list(range(len(got))) and len(got) >= 30
    assert f"decoding stopped after frame {got[-1]} ({index.timestamps_s[got[-1]]:.2f} s): " in message
    # the whole file's index on the cut file: the stream ends early, frames missing
    with pytest.raises(VideoError) as exc:
        list(decode_frames(path, "cut", scan(whole, "whole"), [45, 49], 40, 50))
    assert "decoding stopped" in one_line_naming(exc, "cut")


def test_one_pixel_video(folder):
    path = vf.encode(str(folder / "one_pixel.mp4"), [np.full((1, 1, 3), (200, 30, 30), np.uint8)] * 3, fps=10)
    index = scan(path, "one_pixel")
    assert (index.width, index.height, index.frame_count) == (1, 1, 3)
    for i, t, image in decode_frames(path, "one_pixel", index, [0, 2], 0, 3):
        assert image.shape == (1, 1, 3) and np.abs(image[0, 0].astype(int) - (200, 30, 30)).max() <= 3


def test_8k_video_decodes_one_frame_at_a_time(folder):
    height, width = 4320, 7680
    image = np.zeros((height, width, 3), np.uint8)
    image[:64, :64] = 255
    path = vf.encode(str(folder / "8k.mp4"), [image, image[::-1]], fps=10)
    index = scan(path, "8k")
    assert (index.width, index.height, index.frame_count) == (width, height, 2)
    frames = decode_frames(path, "8k", index, [0, 1], 0, 2)
    i, _, first = next(frames)
    assert i == 0 and first.shape == (height, width, 3) and first[:64, :64].min() > 240 and first[-64:].max() < 16
    i, _, second = next(frames)
    assert i == 1 and second[-64:, :64].min() > 240
    assert next(frames, None) is None


# --- sampling ------------------------------------------------------------------------------------------------------


def test_sample_frames():
    times = np.arange(10) * 0.1
    np.testing.assert_array_equal(sample_frames(times), np.arange(10))
    np.testing.assert_array_equal(sample_frames(times, every_nth=4), [0, 4, 8])
    np.testing.assert_array_equal(sample_frames(times, frame_rate=2.5), [0, 4, 8])
    np.testing.assert_array_equal(sample_frames(times, frame_rate=100), np.arange(10))  # above the video's 10 fps
    # a tie (0.15 s between 0.1 and 0.2): the earlier frame
    np.testing.assert_array_equal(sample_frames(np.array([0.0, 0.1, 0.2, 0.3]), frame_rate=1 / 0.15), [0, 1, 3])
    assert sample_frames(np.zeros(0), frame_rate=3).dtype == np.int64
    for bad in ({"frame_rate": 2, "every_nth": 2}, {"frame_rate": 0}, {"frame_rate": -1}, {"every_nth": 0}):
        with pytest.raises(ValueError):
            sample_frames(times, **bad)


def synthetic_index(times: np.ndarray, keyframes) -> VideoIndex:
    return VideoIndex(width=2, height=2, rotation=0, codec="h264", timestamps_s=times,
                      pts=np.round(times * 1000).astype(np.int64), keyframes=np.asarray(keyframes, np.int64),
                      time_base=Fraction(1, 1000))


def test_plan_segments_cut_at_near_keyframes():
    times = np.arange(100) * 0.1  # 10 s at 10 fps
    index = synthetic_index(times, [0, 18, 43, 60, 95])
    segments = plan_segments(index, np.arange(100), 2.0)
    # aims 2, 4, 6, 8 s (frames 20, 40, 60, 80): keyframes 18, 43, 60 within 1 s; none near 8 s (95: 1.5 s), so
    # no cut there: a segment starts only where decoding can
    assert segments == [Segment(0, 0, 18), Segment(1, 18, 43), Segment(2, 43, 60), Segment(3, 60, 100)]
    # a segment without sampled frames is dropped, the rest renumbered; every sampled frame in exactly one
    sampled = np.array([1, 5, 50, 51, 99])
    segments = plan_segments(index, sampled, 2.0)
    assert [(s.index, s.start, s.stop) for s in segments] == [(0, 0, 18), (1, 43, 60), (2, 60, 100)]
    owners = [[s.index for s in segments if s.start <= f < s.stop] for f in sampled]
    assert all(len(o) == 1 for o in owners)
    assert plan_segments(index, np.zeros(0, np.int64), 2.0) == []
    assert plan_segments(index, sampled, 60.0) == [Segment(0, 0, 100)]
    with pytest.raises(ValueError):
        plan_segments(index, sampled, 0)


def test_plan_segments_on_a_real_index(gop10):
    path, _ = gop10
    index = scan(path, "gop10")
    sampled = sample_frames(index.timestamps_s, every_nth=2)
    segments = plan_segments(index, sampled, 0.5)
    assert all(s.start in index.keyframes for s in segments)
    covered = np.concatenate([sampled[(sampled >= s.start) & (sampled < s.stop)] for s in segments])
    np.testing.assert_array_equal(covered, sampled)
    assert [s.index for s in segments] == list(range(len(segments))) and len(segments) > 2
    # every segment decodes to its sampled frames on its own
    for s in segments:
        wanted = sampled[(sampled >= s.start) & (sampled < s.stop)]
        assert [i for i, _, _ in decode_frames(path, "gop10", index, wanted, s.start, s.stop)] == wanted.tolist()
