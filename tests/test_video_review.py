"""export (posetrack, mmaction), render, report and the image reader on a real annotate OUTPUT of a video beside an
image: the walkers video (5 s, 25 fps) sampled at 2 fps in 2 s segments, plus one COCO photo; one OUTPUT per module."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import ensure_shared_ray
from tests.shared_data import shared_path
from vitpose_batch.cli import main as cli
from vitpose_batch.files.addresses import frame_uri
from vitpose_batch.files.image_reader import read_image, read_video_frame
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.review import render as render_module
from vitpose_batch.review.export import export
from vitpose_batch.review.render import FrameReader
from vitpose_batch.review.report import report
from vitpose_batch.video.decoding import VideoError, VideoIndex, decode_frames, scan

pytestmark = pytest.mark.slow  # the module's OUTPUT is made by a Ray job
pytest.importorskip("transformers")

VIDEO_NAME = "walkers_vtest_5s"


@dataclass
class Made:
    output: Path
    video: str  # the video_uri of the rows (the link in INPUT)
    rows: pa.Table
    tmp: Path

    @property
    def frames(self) -> pa.Table:
        return self.rows.filter(pc.is_valid(self.rows.column("video_uri")))

    @property
    def track_ids(self) -> set[int]:
        return {p["track_id"] for persons in self.frames.column("persons").to_pylist() for p in persons}


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_vitpose) -> Made:
    tmp = tmp_path_factory.mktemp("video_review")
    corpus = tmp / "in"
    corpus.mkdir()
    os.symlink(shared_path(f"data/videos/{VIDEO_NAME}.mp4"), corpus / f"{VIDEO_NAME}.mp4")  # no copy of the video
    shutil.copy(shared_path("data/coco-val-4/000000000785.jpg"), corpus / "photo.jpg")
    output = tmp / "OUTPUT"
    ensure_shared_ray()
    assert cli(["annotate", str(corpus), str(output), "--model", tiny_vitpose,
                "--detector", str(shared_path("models/yolox_nano.onnx")),
                "--frame-rate", "2", "--segment-seconds", "2"]) == 0
    rows = pa.concat_tables(list(iter_part_tables(str(output))))
    made = Made(output, str(corpus / f"{VIDEO_NAME}.mp4"), rows, tmp)
    assert made.frames.num_rows == 10 and rows.num_rows == 11  # 0, 0.5, ... 4.5 s, and the photo
    assert made.track_ids and None not in made.track_ids
    return made


@pytest.fixture(scope="module")
def images_only(made) -> Path:
    """The OUTPUT's image row alone, as one .parquet file (its keypoint-set metadata kept)."""
    (part,) = sorted(made.output.glob("part-*.parquet"))
    table = pq.read_table(part)
    path = made.tmp / "images-only.parquet"
    pq.write_table(table.filter(pc.is_null(table.column("video_uri"))), path)
    return path


def printed_stats(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------


def test_posetrack_export_is_one_poseval_readable_file_per_video(made, tmp_path, capsys):
    folder = tmp_path / "posetrack"
    assert cli(["export", str(made.output), str(folder), "--format", "posetrack"]) == 0
    stats = printed_stats(capsys)
    assert (stats["videos"], stats["frames"], stats["tracks"]) == (1, 10, len(made.track_ids))
    assert stats["image_rows"] == 1 and stats["files"] == 1
    assert sorted(p.name for p in folder.iterdir()) == [f"{VIDEO_NAME}.json"]
    with open(folder / f"{VIDEO_NAME}.json") as handle:  # as poseval's eval_helpers.load_data_dir reads it
        document = json.load(handle)
    assert {"images", "annotations", "categories"} <= set(document)
    images, annotations = document["images"], document["annotations"]
    frames = sorted(made.frames.column("frame_index").to_pylist())
    assert [image["frame_index"] for image in images] == frames
    assert all(image["file_name"] == f"{VIDEO_NAME}/{image['frame_index']:06d}.jpg" for image in images)
    assert {a["image_id"] for a in annotations} <= {image["id"] for image in images}
    assert len(annotations) == sum(len(p) for p in made.frames.column("persons").to_pylist())
    assert {a["track_id"] for a in annotations} == made.track_ids
    assert all(len(a["keypoints"]) == 3 * 17 for a in annotations)
    (category,) = document["categories"]
    assert len(category["keypoints"]) == 17 and category["skeleton"]

    assert cli(["export", str(made.output), str(tmp_path / "dense"), "--format", "posetrack",
                "--track-ids", "dense"]) == 0
    dense = json.loads((tmp_path / "dense" / f"{VIDEO_NAME}.json").read_text())
    assert {a["track_id"] for a in dense["annotations"]} == set(range(len(made.track_ids)))


def test_mmaction_export_is_a_pickle_of_m_t_v_2_skeletons(made, tmp_path, capsys):
    path = tmp_path / "skeletons.pkl"
    assert cli(["export", str(made.output), str(path), "--format", "mmaction"]) == 0
    stats = printed_stats(capsys)
    assert (stats["videos"], stats["frames"], stats["tracks"]) == (1, 10, len(made.track_ids))
    with open(path, "rb") as handle:
        annotations = pickle.load(handle)
    (video,) = annotations
    m, t = len(made.track_ids), 10
    assert video["frame_dir"] == VIDEO_NAME and video["total_frames"] == t
    assert video["keypoint"].shape == (m, t, 17, 2) and video["keypoint"].dtype == np.float32
    assert video["keypoint_score"].shape == (m, t, 17)
    assert video["img_shape"] == (576, 768)
    assert set(video["track_ids"].tolist()) == made.track_ids

    assert cli(["export", str(made.output), str(tmp_path / "skeletons.pickle"), "--format", "mmaction"]) == 2
    assert ".pkl" in capsys.readouterr().err


def test_video_formats_refuse_an_output_without_videos(images_only, tmp_path, capsys):
    for fmt, target in (("posetrack", tmp_path / "pt"), ("mmaction", tmp_path / "x.pkl")):
        with pytest.raises(ValueError, match="holds? no video frames"):
            export(str(images_only), str(target), fmt)
        assert cli(["export", str(images_only), str(target), "--format", fmt]) == 2
        error = capsys.readouterr().err
        assert "no video frames" in error and len(error.strip().splitlines()) == 1
        assert not target.exists()


# ----------------------------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------------------------


def test_render_writes_one_mp4_per_video_and_jpegs_for_images(made, tmp_path, capsys):
    outdir = tmp_path / "render"
    assert cli(["render", str(made.output), str(outdir), "--sample", "16"]) == 0
    assert "1 images and 1 videos" in capsys.readouterr().out
    assert sorted(p.name for p in outdir.iterdir()) == ["photo.jpg", f"{VIDEO_NAME}.mp4"]  # no frame as a JPEG
    with av.open(str(outdir / f"{VIDEO_NAME}.mp4")) as container:
        decoded = list(container.decode(video=0))
    assert len(decoded) == made.frames.num_rows
    assert (decoded[0].width, decoded[0].height) == (768, 576)
    stamps = sorted(made.frames.column("timestamp_s").to_pylist())
    np.testing.assert_allclose([frame.time for frame in decoded], stamps, atol=1e-3)

    none = tmp_path / "none"
    assert cli(["render", str(made.output), str(none), "--sample", "0"]) == 0
    assert not none.exists()


def test_frame_reader_decodes_once_in_order(made):
    index = scan(made.video, made.video)
    wanted = [3, 7, 20]
    direct = {f: rgb for f, _, rgb in decode_frames(made.video, made.video, index, np.array(wanted), 0, index.frame_count)}
    with open(made.video, "rb") as file:
        reader = FrameReader(file, made.video, index, wanted)
        for frame in wanted:
            np.testing.assert_array_equal(reader(frame), direct[frame])
        with pytest.raises(ValueError, match="increasing order"):
            reader(5)
        reader.close()


def test_frame_reader_starts_again_after_a_decoding_fault(monkeypatch):
    calls = []

    def decode(file, name, index, wanted, start, stop):  # the first decode fails at frame 4
        calls.append((wanted.tolist(), start))
        for frame in wanted.tolist():
            if len(calls) == 1 and frame == 4:
                raise VideoError(f"video {name}: decoding stopped after frame 2: broken")
            yield frame, frame / 10, np.full((2, 2, 3), frame, np.uint8)

    monkeypatch.setattr(render_module, "decode_frames", decode)
    index = VideoIndex(width=2, height=2, rotation=0, codec="h264", timestamps_s=np.arange(10) / 10,
                       pts=np.arange(10), keyframes=np.array([0]), time_base=Fraction(1, 10))
    reader = FrameReader(None, "v.mp4", index, [2, 4, 6, 8])
    assert reader(2)[0, 0, 0] == 2
    with pytest.raises(VideoError, match="broken"):
        reader(4)
    assert reader(6)[0, 0, 0] == 6 and reader(8)[0, 0, 0] == 8
    assert calls == [([2, 4, 6, 8], 2), ([6, 8], 6)]  # one decode, then one more from the frame after the fault
    with pytest.raises(VideoError, match="no frame 10"):
        reader(10)


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------


def test_report_counts_videos_frames_and_tracks(made, images_only, tmp_path):
    html_path = tmp_path / "report.html"
    done = report(str(made.output), str(html_path), sample=3)
    tracks = len(made.track_ids)
    assert (done["videos"], done["frames"], done["tracks"]) == (1, made.frames.num_rows, tracks)
    assert done["overlays"] == 3  # frames decoded from the video, the photo read as before
    page = html_path.read_text()
    assert 'id="videos"' in page
    for value, label in ((1, "videos"), (made.frames.num_rows, "frames (rows)"), (tracks, "tracks")):
        assert f"<b>{value:,}</b>{label}<" in page

    plain = report(str(images_only), str(tmp_path / "images.html"), sample=0)
    assert (plain["videos"], plain["frames"], plain["tracks"]) == (0, 0, 0)
    assert 'id="videos"' not in (tmp_path / "images.html").read_text()


# ----------------------------------------------------------------------------------------------------------------
# image reader
# ----------------------------------------------------------------------------------------------------------------


def test_image_reader_reads_a_frame_as_a_direct_decode(made, tmp_path):
    index = scan(made.video, made.video)
    ((_, _, direct),) = list(decode_frames(made.video, made.video, index, np.array([15]), 15, 16))
    image = read_image(frame_uri(made.video, 15))
    assert image.dtype == np.uint8 and image.shape == (576, 768, 3)
    np.testing.assert_array_equal(image, direct)

    with pytest.raises(VideoError, match=f"no frame {index.frame_count}"):
        read_video_frame(made.video, index.frame_count)
    missing = str(tmp_path / "gone.mp4")
    with pytest.raises(VideoError, match="gone.mp4: cannot be read"):
        read_image(frame_uri(missing, 0))
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="junk.mp4"):
        read_image(frame_uri(str(tmp_path / "junk.mp4"), 0))
