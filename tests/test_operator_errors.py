"""Operator mistakes are one-line refusals before any work; bad boxes are dropped one by one; signals, a lost Ray
node and worker warnings end in words of ours; readers exit with their own status."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import vitpose_core as vc
from vitpose_batch.cli import main as cli
from vitpose_batch.pipeline.image_decoding import decode_image
from vitpose_batch.pipeline.sources import ITEM_SCHEMA
from vitpose_batch.pipeline.diagnostics import Diagnostics
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.pipeline.pose_worker import PoseWorker
from vitpose_batch.schemas.box_files import load_boxes
from tests import coco_data
from tests.shared_data import shared_path

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")


@pytest.fixture
def tiny_model(tiny_vitpose) -> str:
    return tiny_vitpose


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    demo = folder / "demo.pth"
    subprocess.run([sys.executable, "-m", "vitpose_batch.demo_checkpoint", str(demo)], cwd=ROOT, check=True,
                   capture_output=True)
    truncated = folder / "truncated.pth"
    truncated.write_bytes(demo.read_bytes()[:100_000])
    gt = json.loads(coco_data.annotation_file("coco-val-4").read_text())
    scores = {}
    for name, score in (("nan", float("nan")), ("negative", -0.5), ("above-one", 1.5)):
        detections = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
                      for a in gt["annotations"]]
        detections[3]["score"] = score
        scores[name] = folder / f"scores-{name}.json"
        scores[name].write_text(json.dumps(detections))
    return {"truncated": truncated, "jpg": next(coco_data.image_folder("coco-val-4").glob("*.jpg")), **scores}


def refused(capsys, *args: str) -> str:
    """Run annotate in this process; it must refuse with one line and start no Ray. Returns the line."""
    import ray

    code = cli(["annotate", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("vitpose-batch annotate: error: "), err
    assert not ray.is_initialized(), "a refusal must come before Ray starts"
    return err[0]


@pytest.mark.parametrize("flag,value,expected", [
    ("--batch-size", "0", "--batch-size: 0 must be >= 1"),
    ("--batch-size", "-3", "--batch-size: -3 must be >= 1"),
    ("--crops-per-forward", "0", "--crops-per-forward: 0 must be >= 1"),
    ("--actors", "0", "--actors: 0 must be >= 1"),
    ("--cpus-per-actor", "0", "--cpus-per-actor: 0 must be > 0"),
    ("--rows-per-file", "0", "--rows-per-file: 0 must be >= 1"),
    ("--commit-interval", "nan", "is not a finite number"),
    ("--dataset-index", "-1", "--dataset-index: -1 must be >= 0"),
    ("--device", "tpu", "invalid choice: 'tpu'"),
])
def test_numbers_out_of_range_are_refused_in_one_line(tmp_path, flag, value, expected):
    output = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "vitpose_batch.cli", "annotate", str(tmp_path), str(output), flag, value],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], result.stderr
    assert not output.exists()


def test_files_named_on_the_command_line_are_opened_before_any_work(tmp_path, tiny_model, bad_files, capsys,
                                                                  own_ray):
    images, gt = coco_data.image_folder("coco-val-4"), coco_data.annotation_file("coco-val-4")
    output = tmp_path / "out"
    cases = [
        (["--model", bad_files["truncated"], "--boxes", gt], f"model '{bad_files['truncated']}': cannot read"),
        (["--model", bad_files["jpg"], "--boxes", gt], f"model '{bad_files['jpg']}'"),
        (["--model", tiny_model, "--detector", bad_files["truncated"]], "cannot be read as an ONNX model"),
        (["--model", tiny_model, "--detector", bad_files["jpg"]], "cannot be read as an ONNX model"),
        (["--model", tiny_model, "--boxes", gt, "--dataset-index", "99"], "is not a ViTPose++ checkpoint"),
        (["--model", tiny_model, "--boxes", bad_files["nan"]], "item 3 has score nan"),
        (["--model", tiny_model, "--boxes", bad_files["negative"]], "item 3 has score -0.5"),
        (["--model", tiny_model, "--boxes", bad_files["above-one"]], "item 3 has score 1.5"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--model", tiny_model, "--boxes", gt, "--device", "cuda"], "device 'cuda'"))
    for args, expected in cases:
        line = refused(capsys, images, output, *args)
        assert expected in line, line
        assert "Traceback" not in line
        assert not output.exists(), f"{args}: OUTPUT was touched"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_readme_snippet_on_a_cpu_only_machine_is_one_line(tiny_model):
    for call in (lambda: vc.load_pose_model(tiny_model, device="cuda", dtype="bf16"),
                 lambda: vc.load_detector(str(shared_path("models/yolox_nano.onnx")), device="cuda"),
                 lambda: vc.PoseEstimator(vc.load_pose_model(tiny_model), device="cuda")):
        with pytest.raises(vc.DeviceError, match=r"^device 'cuda': this torch build has no CUDA|no CUDA GPU") as err:
            call()
        assert "\n" not in str(err.value)


def test_unusable_boxes_are_dropped_one_by_one(tmp_path, tiny_model):
    """A NaN box beside good ones: only it goes (named); a box of 1e30 or 1e-30 pixels is no person either."""
    gt = json.loads(coco_data.annotation_file("coco-val-4").read_text())
    image_id = Counter(a["image_id"] for a in gt["annotations"] if not a.get("iscrowd")).most_common(1)[0][0]
    good = [a for a in gt["annotations"] if a["image_id"] == image_id and not a.get("iscrowd")]
    gt["annotations"].append(dict(good[0], id=999_001, bbox=[float("nan"), 10, 100, 200]))
    gt["annotations"].append(dict(good[0], id=999_002, bbox=[10, 10, 0, 200]))
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(gt))
    index = load_boxes(str(path))
    boxes, _ = index.boxes_for(image_id=image_id)
    assert len(boxes) == len(good)
    assert [(d["reason"], d["where"]) for d in index.dropped] == [
        ("not finite", f"annotations[{len(gt['annotations']) - 2}]"),
        ("no area", f"annotations[{len(gt['annotations']) - 1}]")]

    image = next(g for g in coco_data.load("coco-val-4") if g.image_id == image_id)
    estimator = vc.PoseEstimator(vc.load_pose_model(tiny_model))
    odd = np.array([[10, 10, 1e30, 1e30], [10, 10, 1e-30, 1e-30]], np.float32)
    result = estimator([image.image], [np.concatenate([boxes, odd])])[0]
    np.testing.assert_allclose(result["boxes"], boxes)
    assert np.isfinite(result["keypoints"]).all()


def test_worker_reports_a_retried_batch_once(tiny_model, tmp_path, caplog):
    """A batch that fails whole is retried image by image; the note reaches the driver once, however many times
    the actors send it."""
    image = coco_data.load("coco-val-4")[0]
    gt = tmp_path / "boxes.json"
    gt.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": image.boxes[0].tolist(), "score": 0.9}]))
    data = image.path.read_bytes()
    batch = pa.Table.from_pylist([{"image_uri": "/a.jpg", "image_id": 1, "data": data},
                                  {"image_uri": "/c.jpg", "image_id": 1, "data": data}], schema=ITEM_SCHEMA)
    worker = PoseWorker(tiny_model, None, "cpu", None, False, None, None, 1, boxes=load_boxes(str(gt)))
    estimator = worker.estimator

    def breaks_on_two(images, **kwargs):  # a fault that only a batch of two images meets
        if len(images) > 1:
            raise RuntimeError("device fault")
        return estimator(images, **kwargs)

    worker.estimator = breaks_on_two
    out = worker(batch)
    rows = out.to_pylist()
    assert [r["error"] for r in rows] == [None, None] and [len(r["persons"]) for r in rows] == [1, 1]
    assert rows[0]["_retried"] and "retried image by image" in rows[0]["_notes"][0]
    diagnostics = Diagnostics()
    with caplog.at_level(logging.WARNING, logger="vitpose_batch"):
        for _ in range(3):
            kept = diagnostics.take(out)
    assert [r.message for r in caplog.records].count(f"worker: {rows[0]['_notes'][0]}") == 1
    assert diagnostics.retried_batches == 3 and "_notes" not in kept.column_names


def test_image_too_large_says_so():
    from PIL import Image

    from vitpose_batch.pipeline.image_decoding import ImageError

    data = __import__("io").BytesIO()
    Image.new("L", (20_000, 10_000)).save(data, format="PNG")
    with pytest.raises(ImageError, match=r"image too large \(200,000,000 pixels, limit [\d,]+\)"):
        decode_image(data.getvalue())


def test_readers_exit_with_their_own_status(tmp_path):
    """Every reading path (resume scan, part tables, export, evaluate, render) in a fresh interpreter, eight times:
    pyarrow's thread pool reading from Python file objects used to abort at exit one time in three."""
    from tests.test_coco_schema import gt_rows, table_of

    output = tmp_path / "out"
    output.mkdir()
    rows = gt_rows("coco-val-4")
    for i in range(4):
        pq.write_table(table_of(rows[i:i + 1]), output / f"part-r-{i:06d}.parquet")
    script = (
        "import sys\n"
        "from vitpose_batch.output.layout import Output\n"
        "from vitpose_batch.output.resume import scan_output\n"
        "from vitpose_batch.output.parts import iter_part_tables\n"
        "from vitpose_batch.review.export import export_coco\n"
        "from vitpose_batch.review.evaluate import evaluate\n"
        "from vitpose_batch.review.render import render\n"
        "out, tmp, gt = sys.argv[1:]\n"
        "assert scan_output(Output.open(out)).rows == 4\n"
        "assert sum(t.num_rows for t in iter_part_tables(out)) == 4\n"
        "export_coco(out, tmp + '/r.json')\n"
        "assert evaluate(out, gt)['AP'] > 0.9\n"
        "render(out, tmp + '/render', sample=1)\n"
    )
    for attempt in range(8):
        result = subprocess.run([sys.executable, "-c", script, str(output), str(tmp_path),
                                 str(coco_data.annotation_file("coco-val-4"))],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"attempt {attempt}: rc {result.returncode}\n{result.stderr[-2000:]}"


# ------------------------------------------------------------------------------------------------- whole runs


def start(output: Path, tiny_model: str, *extra: str) -> subprocess.Popen:
    """annotate over the 80 mini-train images, committing after every batch, as the console script runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "vitpose_batch.cli", "annotate", str(coco_data.image_folder("coco-mini-train")), str(output),
         "--model", tiny_model, "--boxes", str(coco_data.annotation_file("coco-mini-train")), "--batch-size", "2",
         "--commit-interval", "0", *extra],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_commits(output: Path, job: subprocess.Popen) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and not coco_data.committed(output) and job.poll() is None:
        time.sleep(0.2)
    assert job.poll() is None, "the job ended before it could be stopped"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_job_with_one_line(tmp_path, tiny_model, signum):
    output = tmp_path / "out"
    job = start(output, tiny_model)
    wait_for_commits(output, job)
    if signum == signal.SIGINT:
        os.killpg(job.pid, signum)  # Ctrl-C in a terminal: every process of the group, the job's too
    else:
        job.send_signal(signum)  # as Kubernetes stops a pod's command: to the command alone
    out, err = job.communicate(timeout=120)
    assert job.returncode == 128 + signum, err[-2000:]
    ours = [line for line in err.splitlines() if line.startswith("vitpose-batch annotate:")]
    assert len(ours) == 1 and f"stopped by {signal.Signals(signum).name}:" in ours[0], err[-2000:]
    assert "Traceback" not in err and "the same command resumes" in ours[0]
    assert "logging.cc" not in err, err[-2000:]  # Ray's native start-up line stays off the user's terminal
    committed = sum(t.num_rows for t in iter_part_tables(str(output)))
    assert f"{committed} images of this run are committed" in ours[0]  # a clean stop folds them into a part
    assert not list((output / "_staging").glob("*.staged"))
    record = json.loads(next((output / "_runs").glob("*.json")).read_text())
    assert record["status"] == "stopped"
    # (that the same command then finishes with one row per image: test_killed_run_then_rerun_gives_one_row_per_image)


@pytest.mark.slow
def test_a_lost_raylet_ends_with_a_line_of_ours(tmp_path, tiny_model):
    """Ray ends a driver whose raylet died without running any Python: the command still says what happened."""
    output = tmp_path / "out"
    job = start(output, tiny_model)
    wait_for_commits(output, job)
    driver = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert len(driver) == 1, "the command runs the job in one child process"
    raylets = [p for p in subprocess.run(["pgrep", "-P", driver[0]], capture_output=True, text=True).stdout.split()
               if "raylet" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert raylets, "the job's own raylet was not found"
    for pid in raylets:
        os.kill(int(pid), signal.SIGKILL)  # this job's raylet only: never another Ray on the machine
    _, err = job.communicate(timeout=180)
    assert job.returncode not in (0, 2)
    ours = [line for line in err.splitlines() if line.startswith("vitpose-batch annotate:")]
    assert len(ours) == 1 and "raylet, GCS or object store died" in ours[0], err[-2000:]


def test_secrets_never_reach_runtime_env(monkeypatch):
    """What travels to a cluster's workers through runtime_env (shown by Ray's job metadata and dashboard)."""
    import ray

    from vitpose_batch.pipeline import ray_session as annotate

    secret = "s3cr3t-" + os.urandom(4).hex()
    env = {"AWS_ACCESS_KEY_ID": secret, "AWS_SECRET_ACCESS_KEY": secret, "AWS_SESSION_TOKEN": secret,
           "HF_TOKEN": secret, "FSSPEC_GCS_TOKEN": secret, "GOOGLE_APPLICATION_CREDENTIALS": secret,
           "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1", "HF_HUB_OFFLINE": "1"}
    assert annotate.worker_env(env) == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1",
                                        "HF_HUB_OFFLINE": "1"}
    seen = {}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs))
    annotate.connect("127.0.0.1:6379")
    assert secret not in json.dumps(seen["runtime_env"]) and seen["runtime_env"]["env_vars"]["AWS_REGION"]


def test_summary_says_when_boxes_match_few_images(tmp_path):
    from vitpose_batch.pipeline.job import Summary, count_unmatched

    gt = coco_data.annotation_file("coco-val-4")
    index = load_boxes(str(gt))
    names = [f"/x/{p.name}" for p in coco_data.image_folder("coco-mini-train").glob("*.jpg")][:10]
    names += [str(p) for p in coco_data.image_folder("coco-val-4").glob("*.jpg")]
    chunk = pa.table({"image_uri": names, "image_id": pa.nulls(len(names), pa.int64())})
    summary = Summary(images=len(names), boxes_file=str(gt))
    assert list(count_unmatched([chunk], index, summary)) == [chunk]
    assert summary.images_without_boxes == 10
    assert f"10 of 14 images (71%) are not in {gt}" in summary.lines()[-1]
    assert "are these the boxes of this INPUT?" in summary.lines()[-1]


def test_compile_reaches_the_actors(tiny_model):
    """`--compile` is a speed setting: it reaches every actor's PoseEstimator and no provenance."""
    from vitpose_batch.pipeline.job import AnnotateOptions, settings_of

    compiled = PoseWorker(tiny_model, None, "cpu", None, False, None, None, 1, compile=True)
    eager = PoseWorker(tiny_model, None, "cpu", None, False, None, None, 1)
    assert compiled.estimator.forward is not compiled.estimator.model  # torch.compile's wrapper
    assert eager.estimator.forward is eager.estimator.model
    options = AnnotateOptions(input="in", output="out", model=tiny_model, boxes=None, detector=None)
    assert settings_of(options, "coco") == settings_of(AnnotateOptions(**{**options.__dict__, "compile": True}),
                                                       "coco")
