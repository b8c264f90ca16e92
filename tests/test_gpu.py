"""The GPU path against the CPU path as oracle, on real COCO photos: `pytest -m gpu` on a bare GPU box.

Skipped without CUDA. `VITPOSE_TEST_DEVICE` names the device under test (default cuda; benchmarks.gpu_check's CPU
smoke run sets cpu, so every line runs in CI too, against itself). `VITPOSE_TEST_COCO` names a COCO keypoints
folder (default ../shared's coco-mini-train). With `VITPOSE_GPU_FIGURES` set, each test appends the deviations it
measured to that file as JSON lines (benchmarks.gpu_check puts them in its report).

Needs only torch, numpy, pillow, opencv, pyarrow, fsspec and pytest: no Ray, pycocotools, transformers or object
store clients. torchvision is needed for the nvJPEG tests alone (skipped without it).
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

import vitpose_core as vc
from vitpose_batch.pipeline.image_decoding import ENCODED_SCHEMA, batch_items, decode_batch, decode_image
from vitpose_batch.pipeline.nvjpeg import DeviceJpeg
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.schemas.box_files import load_boxes
from tests import coco_data
from tests.checkpoint_factory import randomize_
from tests.shared_data import shared_path
from vitpose_core.heatmap_decoding import decode_heatmaps, refine_peaks, render_gaussians
from vitpose_core.model import ViTPose, ViTPoseConfig

pytestmark = pytest.mark.gpu

NVJPEG_MEAN_BOUND = 2.0  # mean |nvJPEG - libjpeg| per pixel value: torchvision's own test_decode_jpeg_cuda bound
PHOTOS = 12


# ----------------------------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def device() -> torch.device:
    device = torch.device(os.environ.get("VITPOSE_TEST_DEVICE", "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU: torch sees none")
    return device


@pytest.fixture
def record(request):
    """record(**figures): what the test measured, printed and appended to $VITPOSE_GPU_FIGURES."""
    def put(**figures) -> None:
        line = {"test": request.node.name, **figures}
        print(json.dumps(line))
        if os.environ.get("VITPOSE_GPU_FIGURES"):
            with open(os.environ["VITPOSE_GPU_FIGURES"], "a") as out:
                out.write(json.dumps(line) + "\n")
    return put


@pytest.fixture
def ieee_fp32():
    """fp32 means fp32 on CUDA: TF32 off for matmuls and convolutions while the test runs."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def coco_folder() -> Path:
    given = os.environ.get("VITPOSE_TEST_COCO")
    return Path(given) if given else shared_path("data/coco-mini-train")


@pytest.fixture(scope="module")
def photos() -> list[dict]:
    """The first PHOTOS photos with persons: name, JPEG bytes, PIL's decode, ground-truth boxes (xywh)."""
    from benchmarks.corpus import find_coco

    annotations, root = find_coco(coco_folder())
    coco = json.loads(annotations.read_text())
    boxes: dict[int, list] = {}
    for ann in coco["annotations"]:
        if not ann.get("iscrowd", 0) and ann["bbox"][2] > 1 and ann["bbox"][3] > 1:
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    out = []
    for info in coco["images"]:
        if info["id"] in boxes and len(out) < PHOTOS:
            data = (root / info["file_name"]).read_bytes()
            out.append({"name": info["file_name"], "data": data, "image": decode_image(data),
                        "boxes": np.array(boxes[info["id"]], np.float32)})
    assert out, f"{annotations}: no photo with a person box"
    return out


def random_vitpose(device: torch.device) -> ViTPose:
    """ViTPose-S on CUDA, a 2-layer 96-wide one on the CPU (fp32 there is slow), wide random weights (peaked,
    varied heatmaps: tests.checkpoint_factory)."""
    config = ViTPoseConfig.from_size("S") if device.type == "cuda" else \
        ViTPoseConfig(hidden_size=96, num_layers=2, num_heads=2)
    model = ViTPose(config).eval()
    randomize_(model, seed=11)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, device) -> Path:
    path = tmp_path_factory.mktemp("gpu-model") / "vitpose-random.pth"
    torch.save({"state_dict": random_vitpose(device).state_dict()}, path)
    return path


def load(checkpoint: Path, device, dtype: str | None = None) -> ViTPose:
    return vc.load_pose_model(str(checkpoint), device=device, dtype=dtype)


@pytest.fixture(scope="module")
def crops(photos, checkpoint) -> torch.Tensor:
    """Every person crop of the photos as the model sees it (CPU, fp32)."""
    estimator = vc.PoseEstimator(load(checkpoint, "cpu"))
    return estimator.preprocess([p["image"] for p in photos], [p["boxes"] for p in photos])


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def heatmaps_of(model: ViTPose, crops: torch.Tensor, device, batch: int = 32) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    with torch.inference_mode():
        return torch.cat([model(chunk.to(device, dtype)).float().cpu() for chunk in crops.split(batch)])


def encoded_batch(photos: list[dict], prefix: str = "/photos/") -> pa.Table:
    return pa.table({"image_uri": [prefix + p["name"] for p in photos], "image_id": [None] * len(photos),
                     "data": [p["data"] for p in photos], "error": [None] * len(photos),
                     "error_retryable": [None] * len(photos)}, schema=ENCODED_SCHEMA)


def device_jpeg(device) -> DeviceJpeg:
    jpeg = DeviceJpeg.for_device(device)
    if jpeg is None:
        pytest.skip("nvJPEG needs a CUDA device and torchvision's image ops")
    return jpeg


def pixel_gap(a, b) -> np.ndarray:
    return np.abs(np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a, np.float32)
                  - np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b, np.float32))


# ----------------------------------------------------------------------------------------------------------------
# decoding JPEGs on the device
# ----------------------------------------------------------------------------------------------------------------


def test_nvjpeg_decode_equals_pil(device, photos, record):
    items = batch_items(encoded_batch(photos))
    decode_batch(items, [p["data"] for p in photos], jpeg=device_jpeg(device))
    means, maxima = [], []
    for item, photo in zip(items, photos):
        assert isinstance(item.image, torch.Tensor) and item.image.device.type == device.type, item.image_uri
        assert tuple(item.image.shape) == photo["image"].shape and (item.height, item.width) == photo["image"].shape[:2]
        gap = pixel_gap(item.image, photo["image"])
        means.append(float(gap.mean()))
        maxima.append(float(gap.max()))
    record(images=len(items), mean_abs_max=max(means), mean_abs_median=float(np.median(means)),
           max_abs=max(maxima), bound=NVJPEG_MEAN_BOUND)
    assert max(means) < NVJPEG_MEAN_BOUND


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_the_device_equals_pil(device, photos, orientation, record):
    data = coco_data.with_exif_orientation(photos[0]["data"], orientation)
    items = batch_items(encoded_batch([dict(photos[0], data=data)]))
    decode_batch(items, [data], jpeg=device_jpeg(device))
    expected = decode_image(data)  # PIL, exif_transpose
    assert isinstance(items[0].image, torch.Tensor)
    assert tuple(items[0].image.shape) == expected.shape
    gap = pixel_gap(items[0].image, expected)
    record(orientation=orientation, mean_abs=float(gap.mean()))
    assert gap.mean() < NVJPEG_MEAN_BOUND  # a wrong orientation differs by tens of levels


def test_non_jpeg_cmyk_and_broken_files_fall_back_to_the_cpu_path(device, photos):
    jpeg = device_jpeg(device)
    image = Image.open(io.BytesIO(photos[0]["data"]))
    png, cmyk, grey = io.BytesIO(), io.BytesIO(), io.BytesIO()
    image.save(png, format="PNG")
    image.convert("CMYK").save(cmyk, format="JPEG")
    image.convert("L").save(grey, format="JPEG")
    datas = [png.getvalue(), cmyk.getvalue(), grey.getvalue(), photos[0]["data"][:5000], b"no image"]
    batch = encoded_batch([dict(photos[0], name=f"{i}.jpg", data=d) for i, d in enumerate(datas)])
    on_device, on_cpu = batch_items(batch), batch_items(batch)
    decode_batch(on_device, datas, jpeg=jpeg)
    decode_batch(on_cpu, datas)
    assert [type(i.image) for i in on_device[:3]] == [np.ndarray, np.ndarray, torch.Tensor]
    for a, b in zip(on_device, on_cpu):
        assert (a.error, a.retryable, a.width, a.height) == (b.error, b.retryable, b.width, b.height)
        if a.error is None:
            assert pixel_gap(a.image, b.image).mean() < NVJPEG_MEAN_BOUND
    assert on_cpu[3].error.startswith("corrupt or truncated") and on_cpu[4].error.startswith("not an image")


# ----------------------------------------------------------------------------------------------------------------
# crops, model and heatmap decoding on the device
# ----------------------------------------------------------------------------------------------------------------


def test_crops_on_the_device_equal_cpu_crops(device, photos, checkpoint, record):
    model = load(checkpoint, "cpu")
    images, boxes = [p["image"] for p in photos], [p["boxes"] for p in photos]
    cpu_torch = vc.PoseEstimator(model, crop_backend="torch").preprocess(images, boxes)
    cpu_cv2 = vc.PoseEstimator(model, crop_backend="cv2").preprocess(images, boxes)
    on_device = vc.PoseEstimator(load(checkpoint, device), device=device, crop_backend="torch")
    from_arrays = on_device.preprocess(images, boxes)
    from_tensors = on_device.preprocess([torch.from_numpy(i).to(device) for i in images], boxes)
    assert from_arrays.device.type == device.type
    same_backend = float((from_arrays.cpu() - cpu_torch).abs().max())
    across = float((from_arrays.cpu() - cpu_cv2).abs().mean())
    record(crops=len(cpu_torch), max_abs_vs_cpu_torch=same_backend, mean_abs_vs_cpu_cv2=across)
    assert same_backend <= 1e-3  # normalised units: a 255th of a level is 0.017
    assert across <= 0.02  # the two warps' own agreement (tests/test_estimator.py)
    assert torch.equal(from_arrays, from_tensors)


def test_fp32_heatmaps_on_the_device_equal_cpu(device, checkpoint, crops, ieee_fp32, record):
    expected = heatmaps_of(load(checkpoint, "cpu"), crops, "cpu")
    got = heatmaps_of(load(checkpoint, device), crops, device)
    gap = relative(got, expected)
    record(crops=len(crops), relative_max=gap)
    assert gap <= 1e-4


def clear_peaks(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(N, K) mask of peaks a small perturbation cannot move: the reference's maximum beats every other heatmap
    pixel by more than twice the largest difference between the two maps (so the argmax is the same in both), and
    its DARK step is at most half a heatmap pixel (a well-posed fit, as on trained models' Gaussian-like maps; a
    step near the 1-pixel limit flips between taken and refused on any noise)."""
    n, k, h, w = reference.shape
    flat = reference.flatten(2)
    peak, index = flat.max(-1)
    runner_up = flat.scatter(2, index[..., None], float("-inf")).max(-1).values
    noise = (other - reference).abs().flatten(2).max(-1).values
    argmax = torch.stack([index % w, index // w], dim=-1).float()
    step = (argmax - refine_peaks(reference)[0]).abs().max(-1).values
    return (peak - runner_up > 2 * noise) & (peak > 0.05) & (step <= 0.5)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_heatmaps_and_keypoints_against_fp32(device, checkpoint, crops, photos, dtype, record):
    if device.type == "cpu" and dtype == "fp16":
        pytest.skip("fp16 matmuls on a CPU are not what a GPU runs")
    reference = heatmaps_of(load(checkpoint, device), crops, device)
    half = heatmaps_of(load(checkpoint, device, dtype), crops, device)
    boxes = np.concatenate([p["boxes"] for p in photos])
    ref_kp, _ = decode_heatmaps(reference.numpy(), boxes)
    half_kp, half_scores = decode_heatmaps(half.numpy(), boxes)
    gap = np.linalg.norm(half_kp - ref_kp, axis=-1)  # image pixels
    clear = clear_peaks(reference, half).numpy()
    record(dtype=dtype, heatmap_relative_max=relative(half, reference),
           heatmap_abs_max=float((half - reference).abs().max()), keypoints=int(gap.size),
           clear_peaks=int(clear.sum()), px_gap_clear_max=float(gap[clear].max()) if clear.any() else None,
           px_gap_median=float(np.median(gap)), px_gap_p90=float(np.percentile(gap, 90)))
    assert clear.sum() >= 20, "too few clear peaks to judge: the test model's heatmaps are flat"
    assert gap[clear].max() <= 1.0


def test_dark_decoding_on_the_device_equals_cpu(device, checkpoint, crops, photos, record):
    boxes = np.concatenate([p["boxes"] for p in photos])
    heatmaps = heatmaps_of(load(checkpoint, "cpu"), crops, "cpu")
    # plus rendered peaks at every border and corner, where DARK's blur reflects
    points = np.array([[[0, 0], [47, 0], [0, 63], [47, 63], [23.4, 0.3], [0.2, 31.7], [46.8, 40.1]]], np.float32)
    rendered = torch.from_numpy(render_gaussians(np.repeat(points, 4, 0), (64, 48)))
    for maps, where in ((heatmaps, boxes), (rendered, boxes[:4])):
        for blur in ("original", "transformers", "none"):
            cpu_kp, cpu_sc = decode_heatmaps(maps, where, blur=blur)
            dev_kp, dev_sc = decode_heatmaps(maps.to(device), where, blur=blur)
            assert dev_kp.device.type == device.type
            assert float((dev_kp.cpu() - cpu_kp).abs().max()) <= 1e-3, blur
            assert float((dev_sc.cpu() - cpu_sc).abs().max()) <= 1e-6, blur
    record(crops=len(heatmaps), rendered=len(rendered))


# ----------------------------------------------------------------------------------------------------------------
# the actor, threads, torch.compile
# ----------------------------------------------------------------------------------------------------------------


def rows_of(table: pa.Table) -> list[dict]:
    return table.drop_columns(["_notes"]).to_pylist()


def assert_rows_close(got: list[dict], expected: list[dict], px: float, score: float) -> float:
    """Same images, sizes, errors, persons and boxes; keypoints within `px` image pixels for 99 % of them (a near
    tie between two heatmap maxima may flip), scores within `score`. Returns the largest keypoint gap."""
    gaps = []
    assert [r["image_uri"] for r in got] == [r["image_uri"] for r in expected]
    for a, b in zip(got, expected):
        assert (a["width"], a["height"], a["error"]) == (b["width"], b["height"], b["error"])
        assert len(a["persons"]) == len(b["persons"]), a["image_uri"]
        for p, q in zip(a["persons"], b["persons"]):
            np.testing.assert_allclose(p["bbox"], q["bbox"], atol=1e-3)
            kp, kq = np.array(p["keypoints"]).reshape(-1, 3), np.array(q["keypoints"]).reshape(-1, 3)
            np.testing.assert_allclose(kp[:, 2], kq[:, 2], atol=score)
            gaps.append(np.linalg.norm(kp[:, :2] - kq[:, :2], axis=-1))
    gaps = np.concatenate(gaps)
    assert (gaps <= px).mean() >= 0.99, f"{(gaps > px).sum()} of {gaps.size} keypoints moved more than {px} px"
    return float(gaps.max())


def test_worker_two_threads_on_the_device_equals_the_serial_cpu_rows(device, photos, checkpoint, ieee_fp32, record,
                                                                     tmp_path):
    index_file = tmp_path / "boxes.json"
    index_file.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": p["name"]} for i, p in enumerate(photos)],
        "annotations": [{"id": 100 * i + j + 1, "image_id": i + 1, "category_id": 1, "bbox": b.tolist()}
                        for i, p in enumerate(photos) for j, b in enumerate(p["boxes"])],
        "categories": [{"id": 1, "name": "person"}]}))
    index = load_boxes(str(index_file))
    half = len(photos) // 2
    batches = [encoded_batch(photos[:half]), encoded_batch(photos[half:])]
    serial_cpu = PoseWorker(str(checkpoint), None, "cpu", None, False, None, None, 2, boxes=index)
    expected = [rows_of(serial_cpu(b)) for b in batches]

    def two_threads(worker: PoseWorker) -> list[list[dict]]:
        out: dict[int, list[dict]] = {}
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, rows_of(worker(batches[i]))))
                   for i in range(len(batches))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [out[i] for i in range(len(batches))]

    # host decoding (PIL), pinned uploads: the CPU's rows
    host = PoseWorker(str(checkpoint), None, str(device), None, False, None, None, 2, boxes=index, device_jpeg=False)
    worst = max(assert_rows_close(g, e, px=0.05, score=1e-3) for g, e in zip(two_threads(host), expected))
    figures = {"max_px_vs_cpu": worst}
    # nvJPEG where it is: two threads equal the same worker's serial rows
    on_device = PoseWorker(str(checkpoint), None, str(device), None, False, None, None, 2, boxes=index)
    if on_device.jpeg is not None:
        serial = [rows_of(on_device(b)) for b in batches]
        figures["max_px_nvjpeg_threads_vs_serial"] = max(
            assert_rows_close(g, e, px=1e-3, score=1e-5) for g, e in zip(two_threads(on_device), serial))
    record(**figures)


def test_compile_equals_eager(device, checkpoint, crops, ieee_fp32, record):
    eager = vc.PoseEstimator(load(checkpoint, device), device=device)
    compiled = vc.PoseEstimator(load(checkpoint, device), device=device, compile=True)
    sample = crops[:8]
    expected = eager.heatmaps(sample.to(device)).cpu()
    got = compiled.heatmaps(sample.to(device)).cpu()
    gap = relative(got, expected)
    record(relative_max=gap)
    assert gap <= 1e-3
