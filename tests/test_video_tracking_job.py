"""Track ids through the real video path, against known motion: no ID switches, within segments or across them.

A synthetic video: three persons cut out of COCO photos (their ground-truth boxes in coco-mini-train: large,
unoccluded, 13+ keypoints; the yolox_nano detector finds each one with score ~0.85-0.9 pasted alone) are pasted onto
a plain background and moved frame by frame along straight paths (2.5 to 13 pixels a frame) that pass close to each
other but do not overlap: a patch pasted over another person's legs makes yolox_nano miss that person for frames on
end, and a person unseen at a segment's first frame starts a new id (the known limit in
vitpose_batch.video.track_links), which is not what this test is about. 40 frames at 10 fps, a keyframe every 10
frames (libx264 with B-frames), so segment_s 1.0 cuts 4 segments at keyframes.

The video goes the way `annotate` sends it, in this process (no Ray: the job wires these same pieces, one
`VideoWorker` call per segment row and a `VideoRows` in the driver; Ray would add start-up time and nothing the
tracking depends on): `segments_of` -> `VideoWorker` (real yolox_nano detector, tiny random-weight ViTPose: its
keypoints are noise, so tracks hold by box IoU, the detector's boxes being real) -> `VideoRows`, fed the segments'
tables in time order and again in reverse (the driver joins them in whatever order actors finish).

Each output person is matched to a pasted person by box IoU (Hungarian, IoU >= 0.5). A frame where the detector
misses a person is not counted for that person; the test fails when a pasted person carries two track ids or two
pasted persons share one.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from scipy.optimize import linear_sum_assignment

from tests import video_files
from tests.shared_data import shared_path
from vitpose_batch.video.tracking import box_iou

WIDTH, HEIGHT = 800, 448
FRAMES, FPS, GOP = 40, 10, 10
SEGMENT_S = 1.0
MIN_IOU = 0.5

# COCO annotation id (coco-mini-train), pasted height (pixels), top-left at frame 0 and at the last frame.
PASTED = {
    "A": (204343, 200, (20, 20), (300, 40)),
    "B": (455586, 190, (700, 20), (420, 30)),
    "C": (427109, 210, (100, 236), (600, 230)),
}


def cutouts() -> dict[str, np.ndarray]:
    """Each pasted person's patch: its ground-truth box cut from its photo, resized to the pasted height."""
    folder = shared_path("data/coco-mini-train")
    coco = json.loads((folder / "person_keypoints_train2017.json").read_text())
    annotations = {a["id"]: a for a in coco["annotations"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    out = {}
    for label, (ann_id, height, _, _) in PASTED.items():
        ann = annotations[ann_id]
        x, y, w, h = (round(v) for v in ann["bbox"])
        with Image.open(folder / "images" / files[ann["image_id"]]) as photo:
            patch = photo.convert("RGB").crop((x, y, x + w, y + h))
        out[label] = np.asarray(patch.resize((round(w * height / h), height), Image.BILINEAR))
    return out


def paths(patches: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each pasted person's box (xywh) at every frame: [FRAMES, 4]."""
    t = np.linspace(0.0, 1.0, FRAMES)[:, None]
    out = {}
    for label, (_, height, start, end) in PASTED.items():
        corner = np.round(np.asarray(start, float) + t * (np.asarray(end, float) - np.asarray(start, float)))
        size = np.tile([patches[label].shape[1], height], (FRAMES, 1))
        out[label] = np.concatenate([corner, size], axis=1)
    return out


def render(patches: dict[str, np.ndarray], boxes: dict[str, np.ndarray]) -> list[np.ndarray]:
    rows = np.linspace(170, 215, HEIGHT)[:, None, None]
    background = np.broadcast_to(rows * np.array([1.0, 0.97, 0.9]), (HEIGHT, WIDTH, 3)).astype(np.uint8)
    frames = []
    for f in range(FRAMES):
        image = background.copy()
        for label, patch in patches.items():
            x, y = int(boxes[label][f, 0]), int(boxes[label][f, 1])
            image[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
        frames.append(image)
    return frames


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The synthetic video, its known boxes, its segments and the VideoWorker's table per segment."""
    from tests import checkpoint_factory as factory
    from vitpose_batch.pipeline.video_segments import Sampling, segments_of
    from vitpose_batch.pipeline.video_worker import VideoWorker

    detector = shared_path("models/yolox_nano.onnx")
    folder = tmp_path_factory.mktemp("tracking-job")
    patches = cutouts()
    boxes = paths(patches)
    for a, b in [("A", "B"), ("A", "C"), ("B", "C")]:  # the paths pass near (A and B), touch (B and C), never cross
        assert max(box_iou(boxes[a][f], boxes[b][f])[0, 0] for f in range(FRAMES)) < 0.02, (a, b)
    for label in boxes:  # inside the frame throughout
        assert (boxes[label][:, :2] >= 0).all()
        assert (boxes[label][:, 0] + boxes[label][:, 2] <= WIDTH).all()
        assert (boxes[label][:, 1] + boxes[label][:, 3] <= HEIGHT).all()
    video = video_files.encode(str(folder / "walk.mp4"), render(patches, boxes), fps=FPS, gop=GOP)
    model = folder / "tiny"
    factory.save_hf(factory.hf_model(hidden=32, heads=2, depth=1, seed=7), model)

    segments = segments_of(video, Sampling(segment_s=SEGMENT_S))
    assert segments.column("error").null_count == segments.num_rows
    worker = VideoWorker(str(model), str(detector), "cpu", None, False, None, None, 1)
    tables = [pa.concat_tables(list(worker(segments.slice(i, 1)))) for i in range(segments.num_rows)]
    return {"video": video, "boxes": boxes, "segments": segments.to_pylist(), "tables": tables,
            "sigmas": worker.keypoint_set.sigmas, "worker": worker}


def linked(job, order) -> list[dict]:
    """The rows VideoRows releases when the segments' tables arrive in `order`, by frame."""
    from vitpose_batch.pipeline.video_rows import VideoRows

    rows = VideoRows(np.asarray(job["sigmas"]), lambda uris: {})
    out = []
    for k in order:
        out += list(rows.take(job["tables"][k]))
    out += list(rows.close())
    return sorted(pa.concat_tables(out).to_pylist(), key=lambda r: r["frame_index"])


def ids_of_pasted(job, rows: list[dict]) -> dict[str, dict[int, int]]:
    """{pasted person: {frame: track id}} for the frames where an output person's box matches its known box."""
    labels = list(job["boxes"])
    seen: dict[str, dict[int, int]] = {label: {} for label in labels}
    for row in rows:
        f = row["frame_index"]
        persons = row["persons"]
        if not persons:
            continue
        known = np.stack([job["boxes"][label][f] for label in labels])
        iou = box_iou(known, np.array([p["bbox"] for p in persons]))
        for i, j in zip(*linear_sum_assignment(iou, maximize=True)):
            if iou[i, j] >= MIN_IOU:
                seen[labels[i]][f] = persons[j]["track_id"]
    return seen


def runs(ids: dict[int, int]) -> str:
    """`frames a..b: id` for each run of one id, for the failure message."""
    out, frames = [], sorted(ids)
    start = frames[0] if frames else None
    for prev, f in zip(frames, frames[1:] + [None]):
        if f is None or ids[f] != ids[prev]:
            out.append(f"{start}..{prev}: {ids[prev]}")
            start = f
    return ", ".join(out)


def test_the_video_has_segments_with_keyframe_starts(job):
    segments = job["segments"]
    assert len(segments) >= 3
    assert [s["start"] for s in segments] == list(range(0, FRAMES, GOP))[:len(segments)]
    assert sum(len(s["frames"]) for s in segments) == FRAMES
    assert job["worker"].detector_frames == FRAMES + len(segments) - 1  # each anchor frame labelled twice


@pytest.mark.parametrize("order", ["time", "reverse"])
def test_each_pasted_person_keeps_one_track_id_across_segments(job, order):
    count = len(job["tables"])
    rows = linked(job, range(count) if order == "time" else reversed(range(count)))
    assert [r["frame_index"] for r in rows] == list(range(FRAMES))
    assert all(r["error"] is None for r in rows)
    seen = ids_of_pasted(job, rows)
    cuts = [s["start"] for s in job["segments"]] + [FRAMES]
    for label, ids in seen.items():
        # Not vacuous: each pasted person is found in most frames and in every segment, so every boundary counts.
        assert len(ids) >= FRAMES // 2, f"{label} matched in {len(ids)} of {FRAMES} frames only"
        for start, stop in itertools.pairwise(cuts):
            assert any(start <= f < stop for f in ids), f"{label} is never matched in frames {start}..{stop - 1}"
    switches = {label: runs(ids) for label, ids in seen.items() if len(set(ids.values())) != 1}
    assert not switches, f"ID switches (segments start at frames {cuts[:-1]}): {switches}"
    final = {label: next(iter(ids.values())) for label, ids in seen.items()}
    assert len(set(final.values())) == len(final), f"pasted persons share a track id: {final}"


def test_a_warning_in_the_video_actor_reaches_the_driver_once(job, caplog):
    """The actor's warnings travel with its segment's rows (`_notes`, as PoseWorker's do): Ray drops an actor's
    own log lines, so a warning logged there would never be seen."""
    from vitpose_batch.pipeline.diagnostics import Diagnostics
    from vitpose_batch.pipeline.video_rows import VideoRows

    worker = job["worker"]
    # what PoseWorker's warnings hook does with a warning (pytest swaps the hook out while a test runs)
    worker.pose.note_warning("the detector said something")
    segment = pa.Table.from_pylist(job["segments"][:1])
    (table,) = list(worker(segment))
    assert table.column("_notes")[0].as_py() == ["the detector said something"]
    diagnostics = Diagnostics()
    with caplog.at_level("WARNING", logger="vitpose_batch"):
        written = list(VideoRows(np.asarray(job["sigmas"]), lambda uris: {}).take(diagnostics.take(table)))
    assert "the detector said something" in caplog.text and diagnostics.notes == {"the detector said something": 1}
    assert all("_notes" not in t.column_names and "_link" not in t.column_names for t in written)
