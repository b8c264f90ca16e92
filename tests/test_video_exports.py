"""PoseTrack JSON, mmaction2 pickle and rendered MP4 from video prediction rows (vitpose_batch.review.posetrack,
.mmaction, .video_render), on a hand-built table: 2 videos sharing the file stem `clip` + 1 image row; frames
sampled every 3rd (0, 3, 6, 9, 12); track 0 from the start, track 6000 from frame 6; frame 9 an error."""

from __future__ import annotations

import json
import os.path as osp
import pickle

import numpy as np
import pyarrow as pa
import pytest

from vitpose_batch.review.mmaction import mmaction_annotations, write_mmaction
from vitpose_batch.review.posetrack import (
    FRAME_ID_STRIDE,
    posetrack_videos,
    video_names,
    write_posetrack,
)
from vitpose_batch.review.video_render import render_video, track_color
from vitpose_core.keypoint_sets import COCO

K = 17
NAMES = list(COCO.keypoint_names)
SKELETON = COCO.skeleton
FPS = 30.0
VIDEO_A = "s3://bucket/a/clip.mp4"  # 65 x 47 (odd: the MP4 pads), 5 sampled frames, two tracks, an error frame
VIDEO_B = "/data/b/clip.mp4"  # same stem, another folder
IMAGE = "/data/img.jpg"
A_W, A_H = 65, 47
BACKGROUND = 60

PERSON = pa.struct([
    ("bbox", pa.list_(pa.float32(), 4)),
    ("box_score", pa.float32()),
    ("score", pa.float32()),
    ("keypoints", pa.list_(pa.float32())),
    ("track_id", pa.int64()),
])
SCHEMA = pa.schema([
    ("image_uri", pa.string()), ("image_id", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
    ("persons", pa.list_(PERSON)), ("error", pa.string()), ("error_retryable", pa.bool_()),
    ("video_uri", pa.string()), ("frame_index", pa.int64()), ("timestamp_s", pa.float64()), ("label", pa.int64()),
])

# poseval py/convert.py writes COCO's person skeleton as the PoseTrack 2018 category's skeleton (1-based)
POSETRACK_SKELETON = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
                      [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def keypoints_of(track: int, frame: int) -> np.ndarray:
    """(K, 3) x, y, score: distinct per (track, frame), inside video A's 65 x 47 frame."""
    k = np.arange(K, dtype=np.float32)
    base_x = 8.0 if track == 0 else 40.0
    x = base_x + (k % 6) * 2 + frame * 0.25
    y = 6.0 + k * 2.0
    score = np.full(K, 0.9, np.float32) - k * 0.01
    return np.stack([x, y, score], axis=1).astype(np.float32)


def person(track: int | None, frame: int) -> dict:
    t = 0 if track is None else track
    box = [5.0, 4.0, 28.0, 38.0] if t == 0 else [37.0, 4.0, 22.0, 38.0]
    return {"bbox": box, "box_score": 0.95, "score": 0.8 if t == 0 else 0.7,
            "keypoints": keypoints_of(t, frame).reshape(-1).tolist(), "track_id": track}


A_PERSONS = {0: [0], 3: [0], 6: [6000, 0], 9: None, 12: [0, 6000]}  # None: an error frame


def rows_table() -> pa.Table:
    rows = []
    for frame, tracks in A_PERSONS.items():
        rows.append({"image_uri": f"{VIDEO_A}#frame={frame}", "image_id": None, "width": A_W, "height": A_H,
                     "persons": [person(t, frame) for t in tracks or []],
                     "error": "pose stage failed" if tracks is None else None,
                     "error_retryable": True if tracks is None else None,
                     "video_uri": VIDEO_A, "frame_index": frame, "timestamp_s": frame / FPS, "label": 5})
    for frame in (3, 0):  # out of order on purpose
        rows.append({"image_uri": f"{VIDEO_B}#frame={frame}", "image_id": None, "width": 80, "height": 60,
                     "persons": [person(0, frame)], "error": None, "error_retryable": None,
                     "video_uri": VIDEO_B, "frame_index": frame, "timestamp_s": frame / FPS, "label": 7})
    rows.insert(2, {"image_uri": IMAGE, "image_id": 1, "width": 50, "height": 40, "persons": [person(None, 0)],
                    "error": None, "error_retryable": None, "video_uri": None, "frame_index": None,
                    "timestamp_s": None, "label": None})
    return pa.Table.from_pylist(rows, schema=SCHEMA)


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    return rows_table()


# ----------------------------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------------------------


def test_video_names_are_unique_and_deterministic():
    names = video_names([VIDEO_A, VIDEO_B, "/x/other.MOV", "gs://b/q/Other.mp4?x=1", "https://h/p/solo.mp4?sig=2"])
    assert names["https://h/p/solo.mp4?sig=2"] == "solo"
    assert names[VIDEO_A] != names[VIDEO_B] and names[VIDEO_A].startswith("clip-")
    assert names["/x/other.MOV"].lower() != names["gs://b/q/Other.mp4?x=1"].lower()  # case-insensitive clash
    assert video_names([VIDEO_B, VIDEO_A]) == {VIDEO_A: names[VIDEO_A], VIDEO_B: names[VIDEO_B]}


# ----------------------------------------------------------------------------------------------------------------
# PoseTrack
# ----------------------------------------------------------------------------------------------------------------


def test_posetrack_files_round_trip_with_the_fields_poseval_reads(rows, tmp_path):
    paths = write_posetrack(rows, str(tmp_path / "pt"), NAMES, SKELETON)
    assert len(paths) == 2 and len(set(paths)) == 2  # same stem `clip`, two files
    documents = posetrack_videos(rows, NAMES, SKELETON)
    assert list(documents) == sorted([VIDEO_A, VIDEO_B])  # the image row is ignored
    names = video_names([VIDEO_A, VIDEO_B])
    for uri, document in documents.items():
        path = tmp_path / "pt" / f"{names[uri]}.json"
        with open(path) as handle:
            loaded = json.load(handle)
        assert loaded == document
        # poseval convert.py Video.from_new: one category, named person, 15 or 17 keypoint names
        (category,) = loaded["categories"]
        assert category["name"] == "person" and category["id"] == 1 and category["keypoints"] == NAMES
        assert category["skeleton"] == POSETRACK_SKELETON
        image_ids = set()
        for image in loaded["images"]:
            assert {"id", "file_name", "frame_id", "vid_id", "nframes", "is_labeled"} <= set(image)
            # Image.from_new: the directory is the sequence, the stem the frame number
            assert osp.basename(osp.dirname(image["file_name"])) == names[uri]
            assert int(osp.basename(image["file_name"]).split(".")[0]) == image["frame_index"]
            assert image["frame_id"] == image["id"] and image["id"] % FRAME_ID_STRIDE == image["frame_index"]
            assert image["nframes"] == len(loaded["images"])
            image_ids.add(image["id"])
        for annotation in loaded["annotations"]:
            # Person.from_new: track_id, bbox, score, scores, keypoints reshaped to (K, 3)
            assert annotation["image_id"] in image_ids and annotation["category_id"] == 1
            assert len(annotation["keypoints"]) == 3 * K and len(annotation["scores"]) == K
            assert len(annotation["bbox"]) == 4 and isinstance(annotation["track_id"], int)
            assert np.asarray(annotation["keypoints"]).reshape(K, 3).shape == (K, 3)
        ids = [a["id"] for a in loaded["annotations"]]
        assert len(set(ids)) == len(ids)


def test_posetrack_frames_tracks_and_error_frame(rows):
    document = posetrack_videos(rows, NAMES, SKELETON)[VIDEO_A]
    frames = [image["frame_index"] for image in document["images"]]
    assert frames == [0, 3, 6, 9, 12]
    number = 2  # "/data/b/..." sorts before "s3://..."
    assert [image["id"] for image in document["images"]] == [number * FRAME_ID_STRIDE + f for f in frames]
    assert [image["timestamp_s"] for image in document["images"]] == pytest.approx([f / FPS for f in frames])
    by_image = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"] % FRAME_ID_STRIDE, []).append(annotation)
    assert {f: [a["track_id"] for a in by_image.get(f, [])] for f in frames} == A_PERSONS | {9: []}
    error_image = document["images"][3]
    assert error_image["is_labeled"] is False and error_image["error"] == "pose stage failed"
    assert all(image["is_labeled"] for i, image in enumerate(document["images"]) if i != 3)
    late = by_image[6][0]
    assert late["track_id"] == 6000
    np.testing.assert_allclose(np.reshape(late["keypoints"], (K, 3)), keypoints_of(6000, 6), atol=1e-3)
    np.testing.assert_allclose(late["scores"], keypoints_of(6000, 6)[:, 2], atol=1e-6)
    assert late["bbox"] == [37.0, 4.0, 22.0, 38.0] and late["score"] == pytest.approx(0.7)


def test_posetrack_dense_track_ids_and_posetrack_names(rows):
    names18 = ["nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
               "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
               "right_knee", "left_ankle", "right_ankle"]
    document = posetrack_videos(rows, names18, [tuple(e) for e in np.asarray(POSETRACK_SKELETON) - 1],
                                track_ids="dense")[VIDEO_A]
    assert sorted({a["track_id"] for a in document["annotations"]}) == [0, 1]  # 0 -> 0, 6000 -> 1 (poseval: < 10000)
    assert document["categories"][0]["skeleton"] == POSETRACK_SKELETON
    with pytest.raises(ValueError, match="track_ids"):
        posetrack_videos(rows, NAMES, SKELETON, track_ids="sparse")


def test_posetrack_refusals(rows):
    doubled = pa.concat_tables([rows, rows.slice(0, 1)])
    with pytest.raises(ValueError, match="frame_index 0 appears in more than one row"):
        posetrack_videos(doubled, NAMES, SKELETON)
    with pytest.raises(ValueError, match="keypoint"):
        posetrack_videos(rows, NAMES, [(0, 17)])
    twin = rows_table().to_pylist()
    twin[0]["persons"] = [person(0, 0), person(0, 0)]
    with pytest.raises(ValueError, match="track_id 0 is given to two persons"):
        posetrack_videos(pa.Table.from_pylist(twin, schema=SCHEMA), NAMES, SKELETON)
    assert posetrack_videos(rows.filter(pa.compute.is_null(rows.column("video_uri"))), NAMES, SKELETON) == {}


# ----------------------------------------------------------------------------------------------------------------
# mmaction2
# ----------------------------------------------------------------------------------------------------------------


def uniform_sample_test_inds(num_frames: int, clip_len: int, num_clips: int = 1, seed: int = 255) -> np.ndarray:
    """mmaction2 UniformSampleFrames(test_mode=True) index logic (pose_loading.py), restated for the test."""
    rng = np.random.RandomState(seed)
    if num_frames < clip_len:
        starts = list(range(num_clips)) if num_frames < num_clips else [i * num_frames // num_clips
                                                                        for i in range(num_clips)]
        inds = np.concatenate([np.arange(s, s + clip_len) for s in starts])
    elif num_frames < 2 * clip_len:
        clips = []
        for _ in range(num_clips):
            offset = np.zeros(clip_len + 1, np.int64)
            offset[rng.choice(clip_len + 1, num_frames - clip_len, replace=False)] = 1
            clips.append(np.arange(clip_len) + np.cumsum(offset)[:-1])
        inds = np.concatenate(clips)
    else:
        bids = np.array([i * num_frames // clip_len for i in range(clip_len + 1)])
        inds = np.concatenate([bids[:clip_len] + rng.randint(np.diff(bids)) for _ in range(num_clips)])
    return np.mod(inds, num_frames)


def test_mmaction_pickle_shapes_slots_and_pipeline(rows, tmp_path):
    path = write_mmaction(rows, str(tmp_path / "skeletons.pkl"), K, label_column="label")
    with open(path, "rb") as handle:
        annotations = pickle.load(handle)
    assert isinstance(annotations, list) and len(annotations) == 2
    names = video_names([VIDEO_A, VIDEO_B])
    by_uri = {a["video_uri"]: a for a in annotations}
    assert {a["frame_dir"] for a in annotations} == {names[VIDEO_A], names[VIDEO_B]}
    a = by_uri[VIDEO_A]
    assert a["total_frames"] == 5 and a["img_shape"] == (A_H, A_W) == a["original_shape"] and a["label"] == 5
    assert a["keypoint"].dtype == np.float32 and a["keypoint"].shape == (2, 5, K, 2)
    assert a["keypoint_score"].dtype == np.float32 and a["keypoint_score"].shape == (2, 5, K)
    assert a["track_ids"].tolist() == [0, 6000]  # 4 frames before 2
    assert a["frame_indices"].tolist() == [0, 3, 6, 9, 12]
    np.testing.assert_allclose(a["timestamps_s"], np.array([0, 3, 6, 9, 12]) / FPS)
    for m, track in enumerate([0, 6000]):
        for t, frame in enumerate([0, 3, 6, 9, 12]):
            present = track in (A_PERSONS[frame] or [])
            expected = keypoints_of(track, frame) if present else np.zeros((K, 3), np.float32)
            np.testing.assert_array_equal(a["keypoint"][m, t], expected[:, :2])
            np.testing.assert_array_equal(a["keypoint_score"][m, t], expected[:, 2])
    assert not a["keypoint"][:, 3].any() and not a["keypoint_score"][:, 3].any()  # the error frame
    b = by_uri[VIDEO_B]
    assert b["total_frames"] == 2 and b["keypoint"].shape == (1, 2, K, 2) and b["label"] == 7
    assert b["img_shape"] == (60, 80) and b["frame_indices"].tolist() == [0, 3]
    np.testing.assert_array_equal(b["keypoint"][0, 1], keypoints_of(0, 3)[:, :2])

    # mmaction2's pipeline: UniformSampleFrames draws in range(total_frames), PoseDecode takes keypoint[:, inds]
    for clip_len in (3, 4, 8):
        inds = uniform_sample_test_inds(a["total_frames"], clip_len)
        assert inds.min() >= 0 and inds.max() < a["total_frames"]
        decoded = a["keypoint"][:, inds].astype(np.float32)
        assert decoded.shape == (2, clip_len, K, 2) and a["keypoint_score"][:, inds].shape == (2, clip_len, K)
        for j, t in enumerate(inds):  # every sampled slot is its frame's pose
            np.testing.assert_array_equal(decoded[0, j], a["keypoint"][0, t])
            if a["frame_indices"][t] in (0, 3, 6, 12):
                np.testing.assert_array_equal(decoded[0, j], keypoints_of(0, int(a["frame_indices"][t]))[:, :2])


def test_mmaction_max_persons_split_and_refusals(rows, tmp_path):
    (a,) = [x for x in mmaction_annotations(rows, K, max_persons=1) if x["video_uri"] == VIDEO_A]
    assert a["keypoint"].shape == (1, 5, K, 2) and a["track_ids"].tolist() == [0] and "label" not in a
    name_a = video_names([VIDEO_A, VIDEO_B])[VIDEO_A]
    path = write_mmaction(rows, str(tmp_path / "split.pkl"), K, split={"xsub_val": [name_a]})
    with open(path, "rb") as handle:
        data = pickle.load(handle)
    # PoseDataset.load_data_list with split: identifier frame_dir (no 'filename'), annotations filtered by it
    assert "filename" not in data["annotations"][0]
    chosen = [x for x in data["annotations"] if x["frame_dir"] in set(data["split"]["xsub_val"])]
    assert [x["video_uri"] for x in chosen] == [VIDEO_A]
    with pytest.raises(ValueError, match="not among the videos"):
        write_mmaction(rows, str(tmp_path / "bad.pkl"), K, split={"val": ["nope"]})
    with pytest.raises(ValueError, match=".pkl"):
        write_mmaction(rows, str(tmp_path / "x.json"), K)
    with pytest.raises(ValueError, match="keypoint values"):
        mmaction_annotations(rows, 16)
    mixed = rows_table().to_pylist()
    mixed[7]["label"] = 8  # video B now has labels 7 and 8
    with pytest.raises(ValueError, match="distinct non-null values"):
        mmaction_annotations(pa.Table.from_pylist(mixed, schema=SCHEMA), K, label_column="label")


def test_a_video_of_error_frames_only():
    only_error = pa.Table.from_pylist([{
        "image_uri": "/v/broken.mp4#frame=0", "image_id": None, "width": 0, "height": 0, "persons": [],
        "error": "could not decode", "error_retryable": False, "video_uri": "/v/broken.mp4", "frame_index": 0,
        "timestamp_s": 0.0, "label": None}], schema=SCHEMA)
    (a,) = mmaction_annotations(only_error, K)
    assert a["total_frames"] == 1 and a["keypoint"].shape == (0, 1, K, 2) and a["keypoint_score"].shape == (0, 1, K)
    assert a["img_shape"] == (0, 0) and a["frame_dir"] == "broken"
    document = posetrack_videos(only_error, NAMES, SKELETON)["/v/broken.mp4"]
    assert document["annotations"] == [] and document["images"][0]["is_labeled"] is False


# ----------------------------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------------------------


def codecs() -> list[str]:
    import av

    return [c for c in ("libx264", "mpeg4") if c in av.codecs_available]


def read_frame(frame_index: int) -> np.ndarray:
    return np.full((A_H, A_W, 3), BACKGROUND, np.uint8)


@pytest.mark.parametrize("codec", codecs())
def test_render_video_frames_size_timestamps_and_drawing(rows, tmp_path, codec):
    import av

    video_rows = rows.filter(pa.compute.equal(rows.column("video_uri"), VIDEO_A))
    reads = []
    dst = render_video(video_rows, lambda i: (reads.append(i), read_frame(i))[1], str(tmp_path / "a" / "clip.mp4"),
                       NAMES, SKELETON, codec=codec)
    assert reads == [0, 3, 6, 9, 12]
    with av.open(dst) as container:
        stream = container.streams.video[0]
        decoded = [(float(frame.time), frame.to_ndarray(format="rgb24")) for frame in container.decode(stream)]
    assert len(decoded) == 5
    assert all(image.shape == (A_H + 1, A_W + 1, 3) for _, image in decoded)  # 65 x 47 padded to even
    np.testing.assert_allclose([t for t, _ in decoded], [f / FPS for f in A_PERSONS], atol=1e-3)
    image = decoded[0][1].astype(int)
    x, y = keypoints_of(0, 0)[11, :2]  # left hip of track 0 (score 0.79), clear of the box label: a dot is there
    assert np.abs(image[round(float(y)), round(float(x))] - BACKGROUND).max() > 40
    assert np.abs(image[44, 62] - BACKGROUND).max() < 15  # far from every pose, box and label
    error_frame = decoded[3][1].astype(int)
    assert np.abs(error_frame[30:44, 20:40] - BACKGROUND).max() < 15  # nothing drawn on the error frame's body


def test_render_video_real_speed_when_sampled_and_refusals(rows, tmp_path):
    video_rows = rows.filter(pa.compute.equal(rows.column("video_uri"), VIDEO_B))
    stamps = {0: 1.25, 3: 1.3751}  # an absolute start and uneven steps are kept (to the ms)
    video_rows = video_rows.set_column(
        video_rows.schema.get_field_index("timestamp_s"), "timestamp_s",
        pa.array([stamps[f] for f in video_rows.column("frame_index").to_pylist()], pa.float64()))
    import av

    dst = render_video(video_rows, lambda i: np.full((60, 80, 3), 30, np.uint8), str(tmp_path / "b.mp4"),
                       NAMES, SKELETON, fps=10)
    with av.open(dst) as container:
        times = [float(f.time) for f in container.decode(video=0)]
    np.testing.assert_allclose(times, [1.25, 1.375], atol=1e-3)
    with pytest.raises(ValueError, match="exactly one video"):
        render_video(rows.filter(pa.compute.is_valid(rows.column("video_uri"))), read_frame,
                     str(tmp_path / "x.mp4"), NAMES, SKELETON)
    with pytest.raises(ValueError, match="the row says"):
        render_video(video_rows, read_frame, str(tmp_path / "y.mp4"), NAMES, SKELETON)
    assert not (tmp_path / "y.mp4").exists() and not list(tmp_path.glob(".render-*"))
    assert track_color(0) != track_color(1000) and track_color(6000) == track_color(6000)
