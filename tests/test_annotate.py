"""The annotate job on Ray Data, end to end on real images: local, S3, shards, detector, cluster, resume."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vitpose_core as vc
from vitpose_batch.cli import main as cli
from vitpose_batch.output.parts import iter_part_tables as iter_prediction_tables
from vitpose_batch.schemas.predictions import person_arrays
from tests import checkpoint_factory as factory
from tests import coco_data
from tests.shared_data import shared_path
from vitpose_core.crops import boxes_to_center_scale

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("model") / "tiny-vitpose"
    factory.save_hf(factory.hf_model(hidden=128, heads=2, seed=90), folder)
    return str(folder)


@pytest.fixture(scope="module")
def mini():
    return coco_data.load("coco-mini-train")


def read_rows(output: str) -> list[dict]:
    return [row for table in iter_prediction_tables(output) for row in table.to_pylist()]


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["image_uri"].rsplit("#", 1)[-1].rsplit("/", 1)[-1]: row for row in rows}


def run(*args: str) -> None:
    assert cli(["annotate", *map(str, args)]) == 0


def in_process(model_ref: str, images: list[np.ndarray], boxes=None, detector=None) -> list[dict]:
    estimator = vc.PoseEstimator(vc.load_pose_model(model_ref), detector=detector)
    return estimator(images, boxes)


def assert_rows_match(rows: dict[str, dict], gts, expected: list[dict]) -> None:
    """Rows equal the in-process PoseEstimator's results image for image."""
    for g, result in zip(gts, expected):
        row = rows[g.path.name]
        assert row["error"] is None and (row["height"], row["width"]) == g.image.shape[:2]
        got = person_arrays(row["persons"])
        np.testing.assert_allclose(got["boxes"], result["boxes"], atol=1e-3)
        if len(result["boxes"]):
            np.testing.assert_allclose(got["keypoints"][..., :2], result["keypoints"], atol=0.05)
            np.testing.assert_allclose(got["keypoints"][..., 2], result["keypoint_scores"], atol=1e-3)
            np.testing.assert_allclose(got["scores"], result["scores"], atol=1e-3)


def test_local_folder_with_ground_truth_boxes(tmp_path, tiny_model, mini, shared_ray):
    output = tmp_path / "out"
    run(coco_data.image_folder("coco-mini-train"), output, "--model", tiny_model,
        "--boxes", coco_data.annotation_file("coco-mini-train"), "--batch-size", "8",
        "--coco-json", tmp_path / "results.json")
    rows = by_name(read_rows(str(output)))
    assert len(rows) == len(mini) == 80
    for g in mini:
        row = rows[g.path.name]
        assert len(row["persons"]) == len(g.boxes)  # every non-crowd GT box, crowd boxes skipped
        assert row["image_id"] == g.image_id
        arrays = person_arrays(row["persons"])
        if len(g.boxes):
            np.testing.assert_allclose(arrays["boxes"], g.boxes, atol=1e-3)
            center, size = boxes_to_center_scale(g.boxes, aspect_ratio=192 / 256)
            offset = np.abs(arrays["keypoints"][..., :2] - center[:, None])
            step = size[:, None] / np.array([47.0, 63.0])  # one heatmap pixel: DARK may step that far past the edge
            assert (offset <= size[:, None] / 2 + 1.01 * step).all()  # every keypoint inside its padded crop
    assert_rows_match(rows, mini, in_process(tiny_model, [g.image for g in mini], [g.boxes for g in mini]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == sum(len(g.boxes) for g in mini)


def test_s3_input_and_output(tmp_path, tiny_model, s3_server, s3_env, own_ray):
    gts = coco_data.load("coco-val-4")
    bucket = s3_server.make_bucket("corpus-val4")
    fs = s3_server.filesystem()
    for g in gts:
        fs.put(str(g.path), f"{bucket}/images/nested/{g.path.name}")
    fs.put(str(coco_data.annotation_file("coco-val-4")), f"{bucket}/gt.json")
    run(f"s3://{bucket}/images", f"s3://{bucket}/predictions", "--model", tiny_model,
        "--boxes", f"s3://{bucket}/gt.json")
    rows = read_rows(f"s3://{bucket}/predictions")
    assert all(r["image_uri"].startswith(f"s3://{bucket}/images/nested/") for r in rows)
    assert_rows_match(by_name(rows), gts, in_process(tiny_model, [g.image for g in gts], [g.boxes for g in gts]))


def make_tar_shards(folder: Path, gts, per_shard: int) -> list[Path]:
    shards = []
    for start in range(0, len(gts), per_shard):
        path = folder / f"shard-{start // per_shard:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for g in gts[start:start + per_shard]:
                tar.add(g.path, arcname=g.path.name)
                label = json.dumps({"image_id": g.image_id}).encode()
                info = tarfile.TarInfo(g.path.stem + ".json")
                info.size = len(label)
                tar.addfile(info, io.BytesIO(label))
        shards.append(path)
    return shards


def assert_same_persons(got: dict, want: dict, where: str) -> None:
    a, b = person_arrays(got["persons"]), person_arrays(want["persons"])
    assert a["boxes"].shape == b["boxes"].shape, where
    np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-3, err_msg=where)
    np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=0.05, err_msg=where)


def test_tar_and_parquet_shards_give_the_same_rows(tmp_path, tiny_model, shared_ray):
    """The same images as files, as WebDataset tar shards and as Parquet shards: the same rows (real detector)."""
    gts = coco_data.load("coco-val-4") + coco_data.load("coco-mini-train")[:8]
    yolox = str(shared_path("models/yolox_nano.onnx"))
    folder = tmp_path / "images"
    folder.mkdir()
    for g in gts:
        shutil.copy(g.path, folder / g.path.name)
    run(folder, tmp_path / "out-files", "--model", tiny_model, "--detector", yolox)
    expected = by_name(read_rows(str(tmp_path / "out-files")))
    assert len(expected) == len(gts) and sum(len(r["persons"]) for r in expected.values()) > 0
    detector = vc.load_detector(yolox)
    assert_rows_match(expected, gts, in_process(tiny_model, [g.image for g in gts], detector=detector))

    (tmp_path / "tars").mkdir()
    make_tar_shards(tmp_path / "tars", gts, per_shard=5)
    run(tmp_path / "tars", tmp_path / "out-tar", "--model", tiny_model, "--detector", yolox)
    tar_rows = read_rows(str(tmp_path / "out-tar"))
    assert len(tar_rows) == len(gts)  # the .json label members are not images
    for row in tar_rows:
        assert ".tar#" in row["image_uri"]
        assert_same_persons(row, expected[row["image_uri"].rsplit("#", 1)[1]], row["image_uri"])

    (tmp_path / "parquet").mkdir()
    names = {}
    for i in range(0, len(gts), 6):
        part = gts[i:i + 6]
        shard = tmp_path / "parquet" / f"images-{i:03d}.parquet"
        pq.write_table(pa.table({"name": [g.path.name for g in part], "jpeg": [g.path.read_bytes() for g in part]}),
                       shard)
        names.update({f"{shard}#{j}": g.path.name for j, g in enumerate(part)})
    run(tmp_path / "parquet", tmp_path / "out-parquet", "--model", tiny_model, "--detector", yolox,
        "--image-column", "jpeg")
    parquet_rows = read_rows(str(tmp_path / "out-parquet"))
    assert sorted(r["image_uri"] for r in parquet_rows) == sorted(names)
    for row in parquet_rows:
        assert_same_persons(row, expected[names[row["image_uri"]]], row["image_uri"])


def write_detection_results(path: Path, gts) -> None:
    results = [{"image_id": g.image_id, "category_id": 1, "bbox": b.tolist(), "score": 0.9}
               for g in gts for b in g.boxes]
    path.write_text(json.dumps(results))


def test_mixed_folder_reads_loose_images_and_tar_shards(tmp_path, tiny_model, shared_ray):
    """Loose images and .tar shards in one folder are all read; a member named with extra dots keeps its name, and
    a sample with two image members is two rows."""
    gts = coco_data.load("coco-val-4")
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(gts[0].path, folder / gts[0].path.name)
    with tarfile.open(folder / "shard.tar", "w") as tar:
        tar.add(gts[1].path, arcname="sample.v2.jpg")  # key "sample", member suffix "v2.jpg"
        tar.add(gts[2].path, arcname="pair.jpg")
        tar.add(gts[3].path, arcname="pair.png")  # the same key with a second image member
    run(folder, tmp_path / "out", "--model", tiny_model, "--boxes", str(coco_data.annotation_file("coco-val-4")))
    uris = sorted(r["image_uri"] for r in read_rows(str(tmp_path / "out")))
    shard = str(folder / "shard.tar")
    assert uris == sorted([str(folder / gts[0].path.name), f"{shard}#pair.jpg", f"{shard}#pair.png",
                           f"{shard}#sample.v2.jpg"])


def test_two_core_run_cannot_starve_its_readers(tmp_path, tiny_model):
    """On 2 CPUs with actors asking for whole CPUs, the pool leaves room for read/decode tasks and finishes."""
    from vitpose_batch.pipeline.actors import plan_actors
    from vitpose_batch.pipeline.job import AnnotateOptions

    actors, per_actor, _ = plan_actors({"CPU": 2.0}, "cpu", AnnotateOptions(input="", output=""))
    assert actors * per_actor <= 1.0  # one CPU always left for reading and decoding
    output = tmp_path / "out"
    # A subprocess with a hard timeout: a starved pipeline hangs silently, and the timeout turns that into a failure.
    subprocess.run([sys.executable, "-m", "vitpose_batch.cli", "annotate", str(coco_data.image_folder("coco-mini-train")),
                    str(output), "--model", tiny_model, "--boxes", str(coco_data.annotation_file("coco-mini-train")),
                    "--batch-size", "4", "--cpus-per-actor", "1"],
                   check=True, timeout=400, cwd=Path(__file__).resolve().parents[1],
                   env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"))
    assert len(read_rows(str(output))) == 80


def test_killed_run_then_rerun_gives_one_row_per_image(tmp_path, tiny_model):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "vitpose_batch.cli", "annotate", str(coco_data.image_folder("coco-mini-train")),
               str(output), "--model", tiny_model, "--boxes", str(coco_data.annotation_file("coco-mini-train")),
               "--batch-size", "2", "--commit-interval", "0"]
    cwd = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(command, cwd=cwd, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(coco_data.committed(output)) < 2:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-run
    first.wait(timeout=60)
    partial = sum(pq.read_metadata(f).num_rows for f in coco_data.committed(output))
    assert 0 < partial < 80, "the kill should land mid-run"
    # the dead run's lease passes on at once; its committed rows are recovered, the rest is done
    rerun = subprocess.run(command, cwd=cwd, timeout=400, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    # what a user sees: our summary, not Ray's chatter (constructor-argument errors, INFO lines, tracebacks)
    assert "constructor arguments" not in rerun.stderr and "Traceback" not in rerun.stderr
    assert not [line for line in rerun.stderr.splitlines() if " INFO " in line], rerun.stderr[-2000:]
    assert f"{partial} rows of a killed run recovered" in rerun.stdout
    counts = Counter(r["image_uri"] for r in read_rows(str(output)))
    assert len(counts) == 80 and set(counts.values()) == {1}
    assert not list((output / "_staging").glob("*"))
