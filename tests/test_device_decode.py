"""The GPU actor's device-agnostic parts, on CPU: JPEGs decoded by a batched device decoder (EXIF orientation
applied on the tensor), every other image by PIL, images as torch tensors through the estimator, and an actor
running two batches at once. nvjpeg itself needs a GPU: here a PIL decoder with nvjpeg's contract stands in
(raw pixels as stored, no EXIF), so every line of ours runs."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image, ImageOps

import vitpose_core as vc
from vitpose_batch.pipeline.image_decoding import decode_image, decode_items, read_batch
from vitpose_batch.pipeline.nvjpeg import DeviceJpeg, jpeg_orientation, orient
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.pipeline.sources import ITEM_SCHEMA
from vitpose_batch.schemas.box_files import load_boxes
from tests import coco_data


def stored_pixels(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """nvjpeg's contract on the CPU: (3, H, W) uint8 as stored in the file, EXIF orientation not applied."""
    out = []
    for data in datas:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as image:
            out.append(torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).to(device))
    return out


@pytest.fixture(scope="module")
def photo() -> bytes:
    return coco_data.load("coco-val-4")[0].path.read_bytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_device_jpeg_matches_pil_for_every_exif_orientation(photo, orientation):
    data = coco_data.with_exif_orientation(photo, orientation)
    assert jpeg_orientation(data) == orientation
    items = decode_items(pa.table({"image_uri": ["/x.jpg"], "image_id": [None], "data": [data]},
                                  schema=ITEM_SCHEMA), jpeg=DeviceJpeg("cpu", stored_pixels))
    expected = decode_image(data)
    assert isinstance(items[0].image, torch.Tensor)
    assert (items[0].height, items[0].width) == expected.shape[:2]
    np.testing.assert_array_equal(items[0].image.numpy(), expected)


def test_orient_is_pils_exif_transpose():
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 7  # asymmetric: every move shows
    for orientation in range(1, 9):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = orientation
        expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(_png_with_exif(image, exif)))))
        got = orient(torch.from_numpy(stored).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f"orientation {orientation}")


def _png_with_exif(image: Image.Image, exif) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", exif=exif.tobytes())
    return out.getvalue()


def test_other_images_take_the_cpu_path_with_its_messages(photo, tmp_path):
    png = io.BytesIO()
    Image.open(io.BytesIO(photo)).save(png, format="PNG")
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(photo)).convert("CMYK").save(cmyk, format="JPEG")
    truncated = photo[: len(photo) // 3]
    datas = [photo, png.getvalue(), cmyk.getvalue(), truncated, b"", b"not an image", None]
    uris = [f"/{i}.jpg" for i in range(len(datas) - 1)] + [str(tmp_path / "missing.jpg")]
    batch = pa.table({"image_uri": uris, "image_id": [None] * len(uris), "data": datas}, schema=ITEM_SCHEMA)
    calls = []

    def counting(encoded, device):
        calls.append(len(encoded))
        return stored_pixels(encoded, device)

    on_device = decode_items(batch, jpeg=DeviceJpeg("cpu", counting))
    on_cpu = decode_items(batch)
    # the truncated JPEG fails the batched call; the others are decoded one by one, it goes to the CPU path
    assert calls[0] == 2 and calls[1:] == [1, 1]
    assert [type(i.image) for i in on_device[:3]] == [torch.Tensor, np.ndarray, np.ndarray]
    for a, b in zip(on_device, on_cpu):
        assert (a.error, a.retryable, a.width, a.height) == (b.error, b.retryable, b.width, b.height)
        if a.error is None:
            np.testing.assert_array_equal(np.asarray(a.image), b.image)
    assert on_cpu[3].error.startswith("corrupt or truncated") and on_cpu[4].error == "empty file"
    assert on_cpu[6].error.startswith("cannot read") and on_cpu[6].retryable


def test_read_batch_carries_bytes_and_read_failures(photo, tmp_path):
    present = tmp_path / "a.jpg"
    present.write_bytes(photo)
    batch = pa.table({"image_uri": [str(present), str(tmp_path / "gone.jpg"), "shard.tar#b.jpg"],
                      "image_id": [None, 7, None], "data": [None, None, b"member bytes"]}, schema=ITEM_SCHEMA)
    rows = read_batch(batch).to_pylist()
    assert rows[0]["data"] == photo and rows[0]["error"] is None
    assert rows[1]["error"].startswith("cannot read") and rows[1]["error_retryable"] and rows[1]["image_id"] == 7
    assert rows[2]["data"] == b"member bytes"
    items = decode_items(read_batch(batch))  # the actor's side: read failures stay rows with their error
    assert items[0].error is None and items[1].error == rows[1]["error"] and items[1].retryable


def test_estimator_takes_tensors_as_it_takes_arrays(tiny_vitpose):
    images = coco_data.load("coco-val-4")[:2]
    for backend in ("cv2", "torch"):
        estimator = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose), crop_backend=backend)
        arrays = estimator([g.image for g in images], [g.boxes for g in images])
        tensors = estimator([torch.tensor(g.image) for g in images], [g.boxes for g in images])
        for a, t in zip(arrays, tensors):
            np.testing.assert_array_equal(a["keypoints"], t["keypoints"])
    with pytest.raises(ValueError, match="image 0: expected an HxWx3 uint8"):
        estimator([torch.zeros(3, 10, 10, dtype=torch.uint8)], [np.zeros((0, 4))])


@pytest.fixture(scope="module")
def coco_batches(tmp_path_factory):
    """The coco-val-4 images as two ITEM batches (bytes in the rows), with their ground-truth boxes file."""
    images = coco_data.load("coco-val-4")
    rows = [{"image_uri": str(g.path), "image_id": None, "data": coco_data.with_exif_orientation(g.path.read_bytes(), 6 if i else 1)}
            for i, g in enumerate(images)]
    table = pa.Table.from_pylist(rows, schema=ITEM_SCHEMA)
    boxes = tmp_path_factory.mktemp("boxes") / "boxes.json"
    gt = json.loads(coco_data.annotation_file("coco-val-4").read_text())
    boxes.write_text(json.dumps(gt))
    return [table.slice(0, 2), table.slice(2)], load_boxes(str(boxes))


def test_worker_rows_are_the_same_from_device_jpegs_and_from_two_threads(tiny_vitpose, coco_batches):
    batches, index = coco_batches
    plain = PoseWorker(tiny_vitpose, None, "cpu", None, False, None, None, 2, boxes=index)
    expected = [plain(b).drop_columns(["_notes"]) for b in batches]
    assert sum(len(p) for t in expected for p in t.column("persons").to_pylist()) > 0

    on_device = PoseWorker(tiny_vitpose, None, "cpu", None, False, None, None, 2, boxes=index)
    on_device.jpeg = DeviceJpeg("cpu", stored_pixels)  # nvjpeg's place
    results: dict[int, pa.Table] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, on_device(batches[i])))
               for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, table in enumerate(expected):
        assert results[i].drop_columns(["_notes"]).equals(table)


def test_job_with_two_batches_per_actor_writes_every_image_once(tmp_path, tiny_vitpose, shared_ray):
    """The GPU pipeline's shape on the CPU (read tasks, then actors running two batches at once), through Ray Data:
    one row per image, the in-process estimator's keypoints."""
    from vitpose_batch.pipeline.job import AnnotateOptions, run_annotate
    from vitpose_batch.output.parts import iter_part_tables
    from vitpose_batch.schemas.predictions import person_arrays

    gts = coco_data.load("coco-val-4")
    summary = run_annotate(AnnotateOptions(
        input=str(coco_data.image_folder("coco-val-4")), output=str(tmp_path / "out"), model=tiny_vitpose,
        boxes=str(coco_data.annotation_file("coco-val-4")), batch_size=1, calls_per_actor=2, read_tasks=True))
    rows = {r["image_uri"].rsplit("/", 1)[-1]: r for t in iter_part_tables(str(tmp_path / "out")) for r in t.to_pylist()}
    assert summary.images == len(rows) == len(gts)
    expected = vc.PoseEstimator(vc.load_pose_model(tiny_vitpose))([g.image for g in gts], [g.boxes for g in gts])
    for g, want in zip(gts, expected):
        got = person_arrays(rows[g.path.name]["persons"])
        np.testing.assert_allclose(got["keypoints"][..., :2], want["keypoints"], atol=0.05)


def test_gpu_actors_get_decode_threads_and_leave_cpus_to_the_readers():
    from vitpose_batch.pipeline.actors import plan_actors
    from vitpose_batch.pipeline.job import AnnotateOptions

    opts = AnnotateOptions(input="", output="")
    assert plan_actors({"CPU": 64.0, "GPU": 8.0}, "cuda", opts) == (8, 4.0, 4)  # 8-GPU node: 32 CPUs left to read
    assert plan_actors({"CPU": 8.0, "GPU": 8.0}, "cuda", opts) == (8, 1.0, 1)
    actors, per_actor, _ = plan_actors({"CPU": 12.0, "GPU": 4.0}, "cuda", opts)
    assert actors == 4 and actors * per_actor < 12  # a CPU per GPU stays for the read tasks
