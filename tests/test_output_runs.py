"""The OUTPUT protocol end to end, on real COCO images with a tiny random ViTPose and ground-truth boxes:
racing runs, refused settings changes, exports completed by re-runs, errors redone, right-sized files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from vitpose_batch.cli import main as cli
from vitpose_batch.output.parts import iter_part_tables
from tests import checkpoint_factory as factory
from tests import coco_data
from tests.shared_data import shared_path

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]
ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")


@pytest.fixture
def tiny_model(tiny_vitpose) -> str:
    return tiny_vitpose


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str  # one-line refusals and the job's log lines


def annotate(*args: str) -> Ran:
    """The annotate command in this process (joining the session's Ray), with what it printed and logged."""
    out, err = io.StringIO(), io.StringIO()
    logger = logging.getLogger("vitpose_batch")
    handler, level = logging.StreamHandler(err), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(["annotate", *map(str, args)])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return Ran(code, out.getvalue(), err.getvalue())


def tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def uri_counts(output: Path) -> Counter:
    return Counter(u for t in iter_part_tables(str(output), ["image_uri"]) for u in t.column("image_uri").to_pylist())


def test_racing_runs_then_changed_settings(tmp_path, tiny_model, capsys):
    """Two identical runs started together: one writes, the other is refused naming it. Then every settings change
    is refused with OUTPUT byte-identical."""
    images, boxes = coco_data.image_folder("coco-mini-train"), coco_data.annotation_file("coco-mini-train")
    output = tmp_path / "out"
    command = [sys.executable, "-m", "vitpose_batch.cli", "annotate", str(images), str(output), "--model", tiny_model,
               "--boxes", str(boxes), "--batch-size", "8"]
    runs = [subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    results = [(run.wait(timeout=500), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, _, err in results]
    refused = next(err for code, _, err in results if code == 2).strip().splitlines()
    assert len(refused) == 1 and "is being written by run" in refused[0], refused
    counts = uri_counts(output)
    assert len(counts) == 80 and set(counts.values()) == {1}

    before = tree(output)
    other_model = tmp_path / "other"
    factory.save_hf(factory.hf_model(hidden=32, heads=2, depth=1, seed=8), other_model)
    capsys.readouterr()
    changes = {
        "--flip-test": ["--model", tiny_model, "--boxes", boxes, "--flip-test"],
        "--model": ["--model", other_model, "--boxes", boxes],
        "--detector": ["--model", tiny_model, "--detector", shared_path("models/yolox_nano.onnx")],
        "--dtype": ["--model", tiny_model, "--boxes", boxes, "--dtype", "bf16"],
    }
    for flag, args in changes.items():
        assert cli(["annotate", str(images), str(output), *map(str, args)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"was made with {flag}" in lines[0], lines
        assert tree(output) == before, f"{flag}: a refused run changed OUTPUT"


def test_exports_and_records_complete_on_every_rerun(tmp_path, tiny_model):
    images, boxes = coco_data.image_folder("coco-val-4"), coco_data.annotation_file("coco-val-4")
    output, results = tmp_path / "out", tmp_path / "results.json"
    first = annotate(images, output, "--model", tiny_model, "--boxes", boxes, "--coco-json", results)
    assert first.returncode == 0, first.stderr[-2000:]
    written = json.loads(results.read_text())
    assert len(written) == 14
    results.unlink()  # the export failed or was lost after the rows were committed
    record = json.loads((output / "_job.json").read_text())
    (output / "_job.json").write_text(json.dumps(dict(record, created_by="0.0.1")))  # made by an older release
    # INPUT spelled another way is the same images: nothing to redo, and the export is written again
    again = annotate(f"{images}//../{images.name}/", output, "--model", tiny_model, "--boxes", boxes,
                     "--coco-json", results)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "nothing to do" in again.stderr + again.stdout
    assert "created by vitpose-batch 0.0.1" in again.stderr  # a new version is a warning, not a refusal
    assert json.loads(results.read_text()) == written
    assert set(uri_counts(output).values()) == {1} and len(uri_counts(output)) == 4
    runs = sorted((output / "_runs").glob("*.json"))
    assert [json.loads(r.read_text())["status"] for r in runs] == ["complete", "complete"]
    # an export inside OUTPUT must not look like data
    inside = annotate(images, output, "--model", tiny_model, "--boxes", boxes, "--coco-json", output / "r.json")
    assert inside.returncode == 2 and f"{output}/_r.json" in inside.stderr
    # pyarrow reads OUTPUT as one dataset: nothing there but the parts looks like data
    assert pads.dataset(str(output), format="parquet").count_rows() == 4


def test_a_file_that_appears_later_is_redone(tmp_path, tiny_model):
    """A dangling symlink is an error row that may pass; once its target exists a re-run redoes it, one row."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    sources = sorted(coco_data.image_folder("coco-val-4").glob("*.jpg"))
    for image in sources[:3]:
        os.link(image, corpus / image.name)
    target = tmp_path / "arrives-later.jpg"
    link = corpus / sources[3].name
    link.symlink_to(target)
    boxes = coco_data.annotation_file("coco-val-4")
    output = tmp_path / "out"
    assert annotate(corpus, output, "--model", tiny_model, "--boxes", boxes).returncode == 0
    rows = {r["image_uri"]: r for t in iter_part_tables(str(output)) for r in t.to_pylist()}
    assert rows[str(link)]["error"].startswith("cannot read") and rows[str(link)]["error_retryable"]
    shutil.copy(sources[3], target)
    rerun = annotate(corpus, output, "--model", tiny_model, "--boxes", boxes)
    assert rerun.returncode == 0 and "1 error rows redone" in rerun.stdout, rerun.stdout + rerun.stderr[-1500:]
    rows = [r for t in iter_part_tables(str(output)) for r in t.to_pylist()]
    assert len(rows) == 4 and len({r["image_uri"] for r in rows}) == 4
    assert all(r["error"] is None for r in rows)
    assert len(next(r for r in rows if r["image_uri"] == str(link))["persons"]) > 0
    # a permanent error (bytes that are no image) stays; --retry-errors redoes it all the same
    (corpus / "broken.jpg").write_bytes(b"not a jpeg")
    assert annotate(corpus, output, "--model", tiny_model, "--boxes", boxes).returncode == 0
    forced = annotate(corpus, output, "--model", tiny_model, "--boxes", boxes, "--retry-errors")
    assert "1 error rows redone" in forced.stdout
    assert set(uri_counts(output).values()) == {1} and len(uri_counts(output)) == 5


def test_four_thousand_images_make_a_handful_of_files(tmp_path, tiny_model):
    """4,000 images (hard links of the COCO images) give one or two Parquet files that pyarrow and DuckDB read as
    exactly the rows."""
    duckdb = pytest.importorskip("duckdb")
    sources = sorted(coco_data.image_folder("coco-val-4").glob("*.jpg"))
    gt = json.loads(coco_data.annotation_file("coco-val-4").read_text())
    by_name = {img["file_name"]: img["id"] for img in gt["images"]}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    images, annotations = [], []
    for i in range(4000):
        source = sources[i % len(sources)]
        name = f"{i:05d}-{source.name}"
        os.link(source, corpus / name)
        images.append({"id": i + 1, "file_name": name, "width": 1, "height": 1})
        first = next(a for a in gt["annotations"] if a["image_id"] == by_name[source.name] and not a.get("iscrowd"))
        annotations.append(dict(first, id=i + 1, image_id=i + 1))  # one person each: the test is about files
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"images": images, "annotations": annotations, "categories": gt["categories"]}))
    output = tmp_path / "out"
    result = annotate(corpus, output, "--model", tiny_model, "--boxes", boxes, "--batch-size", "32")
    assert result.returncode == 0, result.stderr[-2000:]
    files = sorted(output.glob("**/*.parquet"))
    assert 1 <= len(files) <= 3, files
    assert not list(output.glob("_staging/*"))
    assert pads.dataset(str(output), format="parquet").count_rows() == 4000
    rows, distinct, persons = duckdb.sql(
        f"SELECT count(*), count(DISTINCT image_uri), sum(len(persons)) "
        f"FROM read_parquet('{output}/**/*.parquet')").fetchall()[0]
    assert (rows, distinct) == (4000, 4000) and persons == len(annotations)
    # the README's query: every person with its named keypoints
    readme = (ROOT / "README.md").read_text()
    query = readme.split("```sql\n", 1)[1].split("```", 1)[0].replace("'out/", f"'{output}/")
    named = duckdb.sql(query).fetchall()
    assert len(named) == len(annotations) and len(named[0][2]) == 17 and named[0][2][0]["name"] == "nose"
    # the schema metadata says how to read the keypoints without the job record
    metadata = pads.dataset(str(output), format="parquet").schema.metadata
    assert json.loads(metadata[b"vitpose.keypoint_names"])[:3] == ["nose", "left_eye", "right_eye"]
    assert json.loads(metadata[b"vitpose.provenance"])["boxes"] == str(boxes)


def test_evaluate_reports_detector_ap_only_for_the_detectors_rows(tmp_path, tiny_model):
    """Rows made from ground-truth boxes never get a detector's box AP, whatever the job record was edited to say."""
    images, gt = coco_data.image_folder("coco-val-4"), coco_data.annotation_file("coco-val-4")
    output = tmp_path / "out"
    assert annotate(images, output, "--model", tiny_model, "--boxes", gt).returncode == 0
    record = json.loads((output / "_job.json").read_text())
    record["detector"] = record["settings"]["detector"] = "yolox_nano.onnx"  # as an older version's rewrite left it
    (output / "_job.json").write_text(json.dumps(record))
    assert cli(["evaluate", str(output), "--ground-truth", str(gt), "--output", str(tmp_path / "m.json")]) == 0
    assert "detector_box" not in json.loads((tmp_path / "m.json").read_text())
