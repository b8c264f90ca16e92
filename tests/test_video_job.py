"""annotate on videos, end to end through Ray: frame rows, tracks, resume, rotation, variable frame rate, bad files."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests import video_files
from tests.shared_data import shared_path
from vitpose_batch.cli import main as cli
from vitpose_batch.files.addresses import frame_uri
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.pipeline.video_segments import Sampling, segments_of
from vitpose_batch.pipeline.video_worker import segment_index
from vitpose_batch.video.decoding import decode_frames, scan
from vitpose_core.filesystems import open_uri
from vitpose_batch.video.sampling import sample_frames

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

VIDEOS = ("walkers_vtest_5s.mp4", "tai_chi.mp4", "two_people_1080p.mp4")


def rows_of(output: Path) -> list[dict]:
    return [row for table in iter_part_tables(str(output)) for row in table.to_pylist()]


def annotate(input_: Path, output: Path, model: str, *flags: str) -> None:
    detector = str(shared_path("models/yolox_nano.onnx"))
    assert cli(["annotate", str(input_), str(output), "--model", model, "--detector", detector, *flags]) == 0


def expected_frames(path: Path, **sampling) -> tuple[np.ndarray, np.ndarray]:
    index = scan(str(path), str(path))
    frames = sample_frames(index.timestamps_s, **sampling)
    return frames, index.timestamps_s[frames]


def test_videos_beside_an_image_give_a_row_per_sampled_frame_with_tracks(tmp_path, tiny_vitpose, shared_ray,
                                                                          capsys):
    corpus = tmp_path / "in"
    corpus.mkdir()
    for name in VIDEOS:
        os.symlink(shared_path(f"data/videos/{name}"), corpus / name)
    shutil.copy(shared_path("data/coco-val-4/000000000785.jpg"), corpus / "photo.jpg")
    output = tmp_path / "out"
    annotate(corpus, output, tiny_vitpose, "--frame-rate", "3", "--segment-seconds", "1")
    rows = rows_of(output)
    counts = Counter(row["image_uri"] for row in rows)
    assert set(counts.values()) == {1}
    image = [row for row in rows if row["video_uri"] is None]
    assert len(image) == 1 and image[0]["frame_index"] is None and image[0]["timestamp_s"] is None
    assert all(p["track_id"] is None for p in image[0]["persons"])
    for name in VIDEOS:
        uri = str(corpus / name)
        frames, times = expected_frames(corpus / name, frame_rate=3)
        got = sorted((row for row in rows if row["video_uri"] == uri), key=lambda row: row["frame_index"])
        assert [row["frame_index"] for row in got] == frames.tolist(), name
        assert [row["image_uri"] for row in got] == [frame_uri(uri, f) for f in frames]
        np.testing.assert_allclose([row["timestamp_s"] for row in got], times, atol=1e-9)
        assert all(row["error"] is None for row in got)
        ids = [p["track_id"] for row in got for p in row["persons"]]
        assert ids and None not in ids
        for row in got:  # one track appears once per frame
            frame_ids = [p["track_id"] for p in row["persons"]]
            assert len(set(frame_ids)) == len(frame_ids)
    walkers = [row for row in rows if row["video_uri"] == str(corpus / "walkers_vtest_5s.mp4")]
    lives = Counter(p["track_id"] for row in walkers for p in row["persons"])
    assert max(lives.values()) > 5, "some walker should be followed from frame to frame"
    capsys.readouterr()
    annotate(corpus, output, tiny_vitpose, "--frame-rate", "3", "--segment-seconds", "1")  # a re-run does nothing
    printed = capsys.readouterr().out
    assert f"images and video frames: 0 ({len(rows)} already done before this run)" in printed, printed
    assert len(rows_of(output)) == len(rows)
    detector = str(shared_path("models/yolox_nano.onnx"))
    other = cli(["annotate", str(corpus), str(output), "--model", tiny_vitpose, "--detector", detector,
                 "--frame-rate", "2", "--segment-seconds", "1"])
    refusal = capsys.readouterr().err
    assert other == 2 and "made with --frame-rate 3.0 and this run asks for 2.0" in refusal, refusal
    assert len(rows_of(output)) == len(rows)


def test_videos_with_boxes_instead_of_a_detector(tmp_path, tiny_vitpose, shared_ray, capsys):
    """--boxes names images' persons: a video INPUT is refused before OUTPUT exists; a folder's videos are left
    out, said in the summary, and its images labelled."""
    video = shared_path("data/videos/tai_chi.mp4")
    boxes = str(shared_path("data/coco-val-4/test_coco.json"))
    refused = cli(["annotate", str(video), str(tmp_path / "out1"), "--model", tiny_vitpose, "--boxes", boxes])
    assert refused == 2 and "is a video: its frames need a --detector" in capsys.readouterr().err
    assert not (tmp_path / "out1").exists()
    corpus = tmp_path / "in"
    corpus.mkdir()
    os.symlink(video, corpus / "tai_chi.mp4")
    shutil.copy(shared_path("data/coco-val-4/000000000785.jpg"), corpus / "000000000785.jpg")
    assert cli(["annotate", str(corpus), str(tmp_path / "out2"), "--model", tiny_vitpose, "--boxes", boxes]) == 0
    assert "videos: 1 left out: their frames need a --detector" in capsys.readouterr().out
    rows = rows_of(tmp_path / "out2")
    assert [Path(row["image_uri"]).name for row in rows] == ["000000000785.jpg"] and rows[0]["persons"]


def drop_frames(output: Path, video: str, frames: set[int]) -> None:
    """What a killed run leaves: OUTPUT without the rows of `frames` (each part rewritten in place, metadata kept)."""
    uris = pa.array([frame_uri(video, f) for f in sorted(frames)])
    for part in output.glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.filter(pc.invert(pc.is_in(table.column("image_uri"), value_set=uris))), part)


def test_resume_redoes_only_missing_frames_with_the_same_tracks(tmp_path, tiny_vitpose, shared_ray):
    corpus = tmp_path / "in"
    corpus.mkdir()
    frames = video_files.decode_all(str(shared_path("data/videos/tai_chi.mp4")))
    video = str(corpus / "gop15.mp4")
    video_files.encode(video, frames, fps=30, gop=15)  # a keyframe every 0.5 s: 20 segments of 5 sampled frames
    flags = ("--every-nth-frame", "3", "--segment-seconds", "0.5")
    clean = tmp_path / "clean"
    annotate(corpus, clean, tiny_vitpose, *flags)
    want = {row["image_uri"]: row for row in rows_of(clean)}
    assert len(want) == 100
    output = tmp_path / "out"
    shutil.copytree(clean, output)
    # a segment's tail (its first frame kept), a whole segment after a kept one, two whole segments in a row
    missing = {69, 72} | set(range(120, 135, 3)) | set(range(180, 210, 3))
    drop_frames(output, video, missing)
    assert len(rows_of(output)) == 100 - len(missing)
    annotate(corpus, output, tiny_vitpose, *flags)
    got = {row["image_uri"]: row for row in rows_of(output)}
    assert len(rows_of(output)) == len(got) == 100  # each frame once: only the missing ones were redone
    for uri, row in want.items():  # the same rows, track ids included, as the run that lost nothing
        assert [p["track_id"] for p in got[uri]["persons"]] == [p["track_id"] for p in row["persons"]], uri
        np.testing.assert_allclose([p["bbox"] for p in got[uri]["persons"]], [p["bbox"] for p in row["persons"]],
                                   atol=1e-3)
    assert len({p["track_id"] for row in got.values() for p in row["persons"]}) < 10  # one dancer, few ids


def test_rotation_and_variable_frame_rate(tmp_path, tiny_vitpose, shared_ray):
    corpus = tmp_path / "in"
    corpus.mkdir()
    video_files.remux_with_rotation(str(shared_path("data/videos/tai_chi.mp4")), str(corpus / "portrait.mp4"), 90)
    rng = np.random.default_rng(3)
    source = shared_path("data/videos/walkers_vtest_5s.mp4")
    stamps = np.cumsum(rng.uniform(0.03, 0.25, 50))  # irregular gaps: index / fps would be wrong
    video_files.retime(str(source), str(corpus / "vfr.mp4"), stamps)
    output = tmp_path / "out"
    annotate(corpus, output, tiny_vitpose, "--frame-rate", "2")
    rows = rows_of(output)
    portrait = [row for row in rows if row["video_uri"].endswith("portrait.mp4")]
    assert portrait and {(row["width"], row["height"]) for row in portrait} == {(256, 340)}  # 340x256 turned
    for row in portrait:
        for person in row["persons"]:
            x, y, w, h = person["bbox"]
            assert -1 <= x and x + w <= 257 and -1 <= y and y + h <= 341
    vfr = sorted((row for row in rows if row["video_uri"].endswith("vfr.mp4")), key=lambda row: row["frame_index"])
    frames, times = expected_frames(corpus / "vfr.mp4", frame_rate=2)
    assert [row["frame_index"] for row in vfr] == frames.tolist()
    np.testing.assert_allclose([row["timestamp_s"] for row in vfr], stamps[frames] - stamps[0], atol=2e-3)
    # the frames nearest every 0.5 s of the video's own clock: not every 5th frame as a constant 10 fps would say
    assert frames.tolist() != list(range(0, 50, 5))


def test_bad_videos_are_rows_and_the_job_goes_on(tmp_path, tiny_vitpose, shared_ray):
    corpus = tmp_path / "in"
    corpus.mkdir()
    walkers = str(shared_path("data/videos/walkers_vtest_5s.mp4"))
    video_files.empty(str(corpus / "empty.mp4"))
    video_files.not_a_video(str(corpus / "text.mkv"))
    video_files.audio_only(str(corpus / "audio.mp4"))
    video_files.without_decoder(walkers, str(corpus / "evc.mp4"))
    video_files.remux(walkers, str(tmp_path / "fast.mp4"), faststart=True)
    video_files.truncate(str(tmp_path / "fast.mp4"), str(corpus / "cut.mp4"), 0.5)
    video_files.encode(str(corpus / "tiny.mp4"), [np.full((1, 1, 3), 128, np.uint8)] * 3, fps=10, pix_fmt="yuv444p")
    os.symlink(tmp_path / "not-there.mp4", corpus / "gone.mp4")  # listed, then missing: a read that may pass
    output = tmp_path / "out"
    annotate(corpus, output, tiny_vitpose)
    rows = rows_of(output)
    by_video: dict[str, list[dict]] = {}
    for row in rows:
        by_video.setdefault(Path(row["video_uri"]).name, []).append(row)
    for name in ("empty.mp4", "text.mkv", "audio.mp4", "evc.mp4"):  # one error row, keyed by the video itself
        (row,) = by_video[name]
        assert row["image_uri"] == str(corpus / name) and row["error"] and name in row["error"], row
        assert "\n" not in row["error"]
    assert "no video stream" in by_video["audio.mp4"][0]["error"]
    assert [row["error_retryable"] for name in ("empty.mp4", "text.mkv", "audio.mp4", "evc.mp4")
            for row in by_video[name]] == [False] * 4
    (gone,) = by_video["gone.mp4"]  # a file that could not be read: retryable, as an image's read failure is
    assert gone["image_uri"] == str(corpus / "gone.mp4") and "cannot be read" in gone["error"]
    assert gone["error_retryable"] is True
    cut = sorted(by_video["cut.mp4"], key=lambda row: row["frame_index"])
    good = [row for row in cut if row["error"] is None]
    bad = [row for row in cut if row["error"] is not None]
    # the frames before the fault are kept; each later frame the file still indexes says where decoding stopped;
    # the frames the cut file lacks are one row after them
    assert len(good) >= 3 and bad and bad[0]["frame_index"] == good[-1]["frame_index"] + 1, \
        [(r["frame_index"], r["error"]) for r in cut]
    indexed = scan(str(corpus / "cut.mp4"), "cut").frame_count
    assert [row["frame_index"] for row in cut] == list(range(indexed + 1))
    assert all("decoding stopped after frame" in row["error"] for row in bad[:-1])
    assert f"ends after frame {indexed - 1}" in bad[-1]["error"] and f"{50 - indexed} are missing" in bad[-1]["error"]
    assert [row["error"] for row in by_video["tiny.mp4"]] == [None] * 3
    before = len(rows)
    annotate(corpus, output, tiny_vitpose)  # only the retryable row is redone, in place: nothing is written twice
    again = rows_of(output)
    assert len(again) == before and Counter(row["image_uri"] for row in again) == Counter(r["image_uri"] for r in rows)


def test_a_video_on_object_storage_is_scanned_and_decoded_where_it_lies(tmp_path, s3_server, s3_env):
    """The path a video actor takes on S3 (a real SeaweedFS server): the scan task's segments, then the frames read
    through fsspec's file object (ranged reads), equal to the same frames of the local file."""
    local = shared_path("data/videos/walkers_vtest_5s.mp4")
    bucket = s3_server.make_bucket("videos")
    s3_server.filesystem().put(str(local), f"{bucket}/clips/walkers.mp4")
    uri = f"s3://{bucket}/clips/walkers.mp4"
    (segment,) = segments_of(uri, Sampling(every_nth_frame=7)).to_pylist()
    assert segment["error"] is None and segment["frames"] == list(range(0, 50, 7))
    wanted = np.asarray(segment["frames"])
    with open_uri(uri) as remote:
        got = list(decode_frames(remote, uri, segment_index(segment), wanted, 0, 50))
    index = scan(str(local), "local")
    want = list(decode_frames(str(local), "local", index, wanted, 0, 50))
    assert [f for f, _, _ in got] == [f for f, _, _ in want] == wanted.tolist()
    for (_, t1, a), (_, t2, b) in zip(got, want):
        assert t1 == t2 and np.array_equal(a, b)


def test_a_long_video_is_spread_segment_by_segment(tmp_path, shared_ray):
    """Each segment is its own block: the actor pool takes a long video's segments apart (a video's scan yields them
    all at once, which a map task would otherwise hand to one actor call, rows only at its end)."""
    from vitpose_batch.pipeline.job import segments_dataset

    frames = video_files.decode_all(str(shared_path("data/videos/tai_chi.mp4")))[:150]
    video = video_files.encode(str(tmp_path / "gop15.mp4"), frames, fps=30, gop=15)
    blocks = [block for block in segments_dataset([video], Sampling(segment_s=0.5), None, 0.5)
              .iter_batches(batch_size=None, batch_format="pyarrow")]
    assert len(blocks) == 10 and all(block.num_rows == 1 for block in blocks)
    assert sorted(block.column("segment")[0].as_py() for block in blocks) == list(range(10))
