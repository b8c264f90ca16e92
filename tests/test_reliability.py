"""Labeling jobs run for hours over data nobody has looked at: bad files, odd formats, dying workers, blinking storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitpose_core as vc
from vitpose_batch.cli import main as cli
from vitpose_batch.pipeline.image_decoding import decode_image
from vitpose_batch.output.parts import iter_part_tables as iter_prediction_tables
from tests.coco_data import committed
from vitpose_batch.schemas.predictions import person_arrays
from tests import checkpoint_factory as factory
from tests import coco_data
from tests.ray_cluster import local_cluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# EXIF orientation -> the PIL transpose that turns stored pixels into the upright image (as exif_transpose does)
UPRIGHT_FROM_STORED = {
    1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
INVERSE = {Image.Transpose.ROTATE_270: Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_90: Image.Transpose.ROTATE_270}


def stored_for(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera would store so that EXIF `orientation` displays them as `upright`."""
    transform = UPRIGHT_FROM_STORED[orientation]
    return upright if transform is None else upright.transpose(INVERSE.get(transform, transform))


def save_with_orientation(image: Image.Image, path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    factory.save_hf(factory.hf_model(hidden=128, heads=2, seed=95), folder)
    return str(folder)


def test_exif_orientations_decode_upright(tmp_path):
    upright = Image.open(coco_data.load("coco-val-4")[0].path).convert("RGB")
    expected = np.asarray(upright)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        save_with_orientation(stored_for(upright, orientation), path, orientation)
        np.testing.assert_array_equal(decode_image(path.read_bytes()), expected, err_msg=f"orientation {orientation}")


def test_messy_corpus_one_row_per_file(tmp_path, tiny_model, monkeypatch, capsys, shared_ray):
    """Corrupt, truncated, empty and fake files, odd colour modes, all EXIF orientations, huge and tiny images, bad
    boxes: one row per file, a specific error on each bad one, persons on the good ones, exit status 0."""
    person = coco_data.load("coco-val-4")[0]  # one person, ground-truth box
    upright = Image.open(person.path).convert("RGB")
    box = person.boxes[0].tolist()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    detections, expected = [], {}  # expected: file name -> ("persons", n) or ("error", text)

    def add(name_id: int, suffix: str, write, boxes, outcome):
        name = f"{name_id:012d}{suffix}"
        write(corpus / name)
        detections.extend({"image_id": name_id, "category_id": 1, "bbox": b, "score": 0.9} for b in boxes)
        expected[name] = outcome

    for orientation in range(1, 9):
        add(orientation, ".png",
            lambda p, o=orientation: save_with_orientation(stored_for(upright, o), p, o), [box], ("persons", 1))
    add(11, ".jpg", lambda p: upright.convert("CMYK").save(p, quality=95), [box], ("persons", 1))
    grey16 = (np.asarray(upright.convert("L"), np.uint16) * 257)
    add(12, ".png", lambda p: Image.fromarray(grey16).save(p), [box], ("persons", 1))
    add(13, ".png", lambda p: upright.convert("RGBA").save(p), [box], ("persons", 1))
    add(14, ".png", lambda p: upright.convert("P").save(p), [box], ("persons", 1))
    add(15, ".jpg", lambda p: upright.convert("L").save(p), [box], ("persons", 1))
    big_box = [3000.0, 2000.0, 2000.0, 5000.0]
    add(16, ".jpg", lambda p: upright.resize((12000, 9000)).save(p, quality=80), [big_box], ("persons", 1))
    add(17, ".png", lambda p: Image.new("RGB", (1, 1), (200, 10, 10)).save(p), [[0.0, 0.0, 1.0, 1.0]], ("persons", 1))
    bad_boxes = [box, [5000.0, 5000.0, 50.0, 80.0], [100.0, 100.0, 0.0, 50.0], [100.0, 100.0, -30.0, 60.0]]
    add(18, ".png", lambda p: upright.save(p), bad_boxes, ("persons", 1))  # only the good box is estimable
    add(19, ".jpg", lambda p: p.write_bytes(b""), [box], ("error", "empty file"))
    add(20, ".jpg", lambda p: p.write_text("these are my notes, not a photo\n"), [box],
        ("error", "not an image"))
    jpeg = person.path.read_bytes()
    add(21, ".jpg", lambda p: p.write_bytes(jpeg[: len(jpeg) // 3]), [box], ("error", "corrupt or truncated"))
    rng = np.random.default_rng(0)
    add(22, ".jpg", lambda p: p.write_bytes(jpeg[:2000] + rng.integers(0, 255, 4000, dtype=np.uint8).tobytes()),
        [box], ("error", "corrupt or truncated"))
    box_file = tmp_path / "boxes.json"
    box_file.write_text(json.dumps(detections))

    output = tmp_path / "out"
    secret = "s3cr3t-" + os.urandom(4).hex()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)  # never written anywhere
    assert cli(["annotate", str(corpus), str(output), "--model", tiny_model, "--boxes", str(box_file),
                "--batch-size", "4"]) == 0
    printed = capsys.readouterr()
    # two boxes without area dropped when the file was read, one outside its image dropped by the actor
    assert "unusable boxes left out: 3" in printed.out, printed.out
    assert all(secret.encode() not in p.read_bytes() for p in output.rglob("*") if p.is_file())
    assert secret not in printed.out + printed.err
    rows = {r["image_uri"].rsplit("/", 1)[1]: r for t in iter_prediction_tables(str(output)) for r in t.to_pylist()}
    assert sorted(rows) == sorted(expected)
    for name, (kind, value) in expected.items():
        row = rows[name]
        if kind == "error":
            assert row["error"] is not None and value in row["error"], (name, row["error"])
            assert row["persons"] == [] and (row["width"], row["height"]) == (0, 0)
        else:
            assert row["error"] is None, (name, row["error"])
            assert len(row["persons"]) == value, name
    assert (rows["000000000016.jpg"]["width"], rows["000000000016.jpg"]["height"]) == (12000, 9000)

    # every orientation puts the keypoints on the same body parts as the upright image
    reference = person_arrays(rows["000000000001.png"]["persons"])["keypoints"]
    for orientation in range(2, 9):
        got = person_arrays(rows[f"{orientation:012d}.png"]["persons"])["keypoints"]
        np.testing.assert_allclose(got, reference, atol=1e-3, err_msg=f"orientation {orientation}")


def test_actor_killed_mid_run_is_restarted(tmp_path, tiny_model, monkeypatch, own_ray):
    """A pose actor dies after two batches (test-only fault hook): Ray restarts it; output complete, no duplicates."""
    marker = tmp_path / "actor-died"
    monkeypatch.setenv("VITPOSE_TEST_KILL_AFTER", "2")
    monkeypatch.setenv("VITPOSE_TEST_KILL_MARKER", str(marker))
    output = tmp_path / "out"
    assert cli(["annotate", str(coco_data.image_folder("coco-mini-train")), str(output), "--model", tiny_model,
                "--boxes", str(coco_data.annotation_file("coco-mini-train")), "--batch-size", "4"]) == 0
    assert marker.exists(), "the fault hook never fired"
    counts = Counter(r["image_uri"] for t in iter_prediction_tables(str(output)) for r in t.to_pylist())
    assert len(counts) == 80 and set(counts.values()) == {1}


def test_object_storage_blinks_mid_run(tmp_path, tiny_model, s3_server):
    """SeaweedFS stops for a few seconds while the job reads from it: reads are retried, the job completes."""
    bucket = s3_server.make_bucket("blinking")
    fs = s3_server.filesystem()
    images = coco_data.load("coco-mini-train")
    for g in images:
        fs.put(str(g.path), f"{bucket}/images/{g.path.name}")
    output = tmp_path / "out"
    env = dict(os.environ, **s3_server.env(), RAY_USAGE_STATS_ENABLED="0")
    job = subprocess.Popen(
        [sys.executable, "-m", "vitpose_batch.cli", "annotate", f"s3://{bucket}/images", str(output), "--model", tiny_model,
         "--boxes", str(coco_data.annotation_file("coco-mini-train")), "--batch-size", "2",
         "--commit-interval", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not committed(output) and job.poll() is None:
        time.sleep(0.2)
    assert job.poll() is None, "the job finished before the outage could be staged"
    s3_server.stop()
    time.sleep(4)
    s3_server.start()
    out, _ = job.communicate(timeout=400)
    assert job.returncode == 0, out[-2000:]
    rows = [r for t in iter_prediction_tables(str(output)) for r in t.to_pylist()]
    assert len(rows) == 80 and len({r["image_uri"] for r in rows}) == 80
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]][:3]


def test_worker_node_killed_mid_run(tmp_path, tiny_model):
    """`ray start --head` plus a second node with its own CPUs on this machine; the job joins via --ray-address.
    A cluster without GPUs refuses --device cuda before any work (not a hang). Then the worker node is lost mid-run:
    Ray moves the work to the head; the job completes, every image once, the rows those of the in-process
    estimator."""
    output = tmp_path / "out"
    folder, boxes = coco_data.image_folder("coco-mini-train"), coco_data.annotation_file("coco-mini-train")
    with local_cluster(head_cpus=2, worker_cpus=[2]) as cluster:
        refused = subprocess.run(
            [sys.executable, "-m", "vitpose_batch.cli", "annotate", str(folder), str(tmp_path / "gpu-out"),
             "--model", tiny_model, "--boxes", str(boxes), "--ray-address", cluster.address, "--device", "cuda"],
            env=cluster.env, timeout=120, cwd=ROOT, capture_output=True, text=True)
        assert refused.returncode == 2 and f"the Ray cluster at {cluster.address} has no GPUs" in refused.stderr
        assert not (tmp_path / "gpu-out").exists()
        job = subprocess.Popen(
            [sys.executable, "-m", "vitpose_batch.cli", "annotate", str(coco_data.image_folder("coco-mini-train")),
             str(output), "--model", tiny_model, "--boxes", str(coco_data.annotation_file("coco-mini-train")),
             "--batch-size", "2", "--actors", "2", "--cpus-per-actor", "1", "--ray-address", cluster.address,
             "--commit-interval", "0"],
            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.time() + 240
        while time.time() < deadline and len(committed(output)) < 2 and job.poll() is None:
            time.sleep(0.2)
        assert job.poll() is None, "the job finished before the node could be killed"
        assert cluster.kill_worker_node() >= 1
        out, _ = job.communicate(timeout=500)
    assert job.returncode == 0, out[-3000:]
    rows = [r for t in iter_prediction_tables(str(output)) for r in t.to_pylist()]
    counts = Counter(r["image_uri"] for r in rows)
    assert len(counts) == 80 and set(counts.values()) == {1}
    by_file = {Path(r["image_uri"]).name: r for r in rows}
    gts = coco_data.load("coco-mini-train")[:4]
    estimator = vc.PoseEstimator(vc.load_pose_model(tiny_model))
    for g, result in zip(gts, estimator([g.image for g in gts], [g.boxes for g in gts])):
        got = person_arrays(by_file[g.path.name]["persons"])
        np.testing.assert_allclose(got["boxes"], result["boxes"], atol=1e-3)
        if len(result["boxes"]):
            np.testing.assert_allclose(got["keypoints"][..., :2], result["keypoints"], atol=0.05)
    assert sum(len(by_file[g.path.name]["persons"]) for g in gts) > 0


def test_driver_memory_stays_flat(tmp_path):
    """2,000 images through the job: the driver's peak memory is that of a 200-image run (rows never reach it)."""
    model = str(tmp_path / "model")
    factory.save_hf(factory.hf_model(hidden=64, heads=2, depth=1, seed=96), Path(model))
    rng = np.random.default_rng(0)

    def corpus(n: int) -> tuple[Path, Path]:
        folder = tmp_path / f"corpus-{n}"
        folder.mkdir()
        detections = []
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:012d}.png")
            detections.append({"image_id": i, "category_id": 1, "bbox": [8.0, 4.0, 30.0, 40.0], "score": 0.9})
        boxes = tmp_path / f"boxes-{n}.json"
        boxes.write_text(json.dumps(detections))
        return folder, boxes

    def peak_rss_mb(n: int) -> float:
        folder, boxes = corpus(n)
        probe = (
            "import sys, threading, time\n"
            "from vitpose_batch.cli import main\n"
            "peak = [0]\n"
            "def sample():\n"
            "    while True:\n"
            "        rss = int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1])\n"
            "        peak[0] = max(peak[0], rss)\n"
            "        time.sleep(0.05)\n"
            "threading.Thread(target=sample, daemon=True).start()\n"
            "code = main(sys.argv[1:])\n"
            "print('PEAK_KB', peak[0])\n"
            "sys.exit(code)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe, "annotate", str(folder), str(tmp_path / f"out-{n}"), "--model", model,
             "--boxes", str(boxes), "--batch-size", "32"],
            cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
        )
        assert result.returncode == 0, result.stderr[-2000:]
        rows = sum(t.num_rows for t in iter_prediction_tables(str(tmp_path / f"out-{n}"), columns=["image_uri"]))
        assert rows == n
        return int(result.stdout.split("PEAK_KB")[1].split()[0]) / 1024

    small, large = peak_rss_mb(200), peak_rss_mb(2000)
    # 10x the rows (each with 17 keypoints) would cost the driver far more than this if it held them
    assert large - small < 60, f"driver peak grew from {small:.0f} MB to {large:.0f} MB"
