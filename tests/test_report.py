"""`vitpose-batch report`: the streaming statistics and sample picking, then a real OUTPUT's report, checked as HTML
and as a page a real headless Chromium draws."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vitpose_batch.review import report as rp
from vitpose_batch.cli import build_parser, main as cli
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.output.layout import Output
from vitpose_batch.output.provenance import load_record
from tests import coco_data
from tests.conftest import ensure_shared_ray

SECTIONS = ("provenance", "runs", "counts", "errors", "distributions", "low-confidence", "samples", "accuracy")
DATA_IMG = re.compile(r'<img [^>]*src="(data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+))"')


# ----------------------------------------------------------------------------------------------------------------
# Pure parts: no Ray, no files
# ----------------------------------------------------------------------------------------------------------------


def test_error_kinds_group_messages():
    assert rp.error_kind("corrupt or truncated image: broken data stream when reading") == "corrupt or truncated image"
    assert rp.error_kind("image too large (40,000,000 pixels, limit 1,000)") == rp.error_kind(
        "image too large (9 pixels, limit 1)") == "image too large (N pixels, limit N)"
    assert rp.error_kind("") == "(empty message)"


def scores_table(scores_per_row: list[list[float]], errors: list[str | None]) -> pa.Table:
    person = {"bbox": [0.0, 0.0, 4.0, 8.0], "box_score": 1.0}
    return pa.table({
        "image_uri": [f"/img/{i}.jpg" for i in range(len(errors))],
        "width": pa.array([10] * len(errors), pa.int32()), "height": pa.array([10] * len(errors), pa.int32()),
        "persons": [[{**person, "score": s, "keypoints": [1.0, 1.0, s] * 17} for s in row] for row in scores_per_row],
        "error": errors,
    })


def test_streamed_stats_and_picks_equal_the_whole_in_one_go():
    rng = np.random.default_rng(3)
    parts, everything = [], []
    for _ in range(7):  # 7 parts of uneven sizes, some rows without persons, some errors
        rows = [list(rng.random(rng.integers(0, 5))) for _ in range(rng.integers(1, 40))]
        errors = [("cannot read: FileNotFoundError" if rng.random() < 0.1 else None) for _ in rows]
        rows = [[] if e else r for r, e in zip(rows, errors)]
        parts.append(scores_table(rows, errors))
        everything += [s for r in rows for s in r]
    picker = rp.SamplePicker(9, reservoir=50)
    stats = rp.Stats()
    for index, table in enumerate(parts):
        rp.add_errors(stats, table)
        counts, flat = rp.flat_persons(table)
        picker.add(index, rp.add_persons(stats, counts, table.column("error").is_null().to_numpy(), flat))
    everything = np.array(everything)
    assert stats.persons == len(everything) == stats.person_scores.sum() == stats.keypoint_scores[0].sum()
    assert stats.below[0.5] == (everything < 0.5).sum()
    assert stats.errors == sum(len(t) - t.column("error").null_count for t in parts) > 0
    assert set(stats.error_kinds) == {"cannot read"} and len(stats.error_kinds["cannot read"].examples) == 3
    # the extremes are exact; the pools never exceed their bounds
    assert sorted(picker.low["score"]) == sorted(np.sort(everything)[:3])
    assert sorted(picker.high["score"]) == sorted(np.sort(everything)[-3:])
    assert len(picker.uniform) == 50 and len(picker.low) == len(picker.high) == 3
    chosen = picker.chosen()
    assert len(chosen) == 9 and [g for g, _ in chosen].count("median") == 3
    assert len({(int(p["part"]), int(p["index"])) for _, p in chosen}) == 9
    medians = [float(p["score"]) for g, p in chosen if g == "median"]
    rank = [(everything < m).mean() for m in medians]
    assert all(0.25 < r < 0.75 for r in rank)  # a 50-person uniform sample: its middle is near the median


def test_small_outputs_show_every_person():
    picker = rp.SamplePicker(12)
    picker.add(0, np.array([0.5, 0.5, 0.5]))
    picker.add(1, np.array([0.9, np.nan]))
    chosen = picker.chosen()
    assert [float(p["score"]) for _, p in chosen] == [0.5, 0.5, 0.5, 0.9]  # NaN has no rank: never picked


def test_overlay_is_the_person_region_scaled_with_its_keypoints_on_it():
    image = np.full((400, 600, 3), 255, np.uint8)
    keypoints = np.zeros((17, 3), np.float32)
    keypoints[:] = (330.0, 220.0, 1.0)  # every keypoint on the box centre
    sample = rp.Sample("median", 0.5, "/img.jpg", 600, 400, np.array([300, 180, 60, 80], np.float32), keypoints)
    drawn = rp.draw_overlay(image, sample, "coco", longest=240)
    # the box grown by a quarter on each side: 90 x 120 source pixels -> 180 x 240
    assert drawn.shape == (240, 180, 3)
    centre = drawn[120:122, 90:92].astype(int)  # (330, 220) -> ((330 - 285 + 0.5) * 2 - 0.5, ...) = (90.5, 120.5)
    assert (np.abs(centre - 255).sum(-1) > 100).all()  # the keypoints' dot
    assert (np.abs(drawn[110:131, 80:101].astype(int) - 255).sum(-1) > 100).sum() < 60  # scaled once, not twice
    assert (drawn[:5, :5] == 255).all()  # the padding is the image, left as it was


# ----------------------------------------------------------------------------------------------------------------
# A real OUTPUT: annotate in-process (tiny model, ground-truth boxes), one corrupt image
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Made:
    output: Path
    html: Path
    page: str
    ground_truth: str


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_vitpose) -> Made:
    """An annotate OUTPUT made in-process (tiny model, ground-truth boxes) from coco-val-4 plus one corrupt image,
    and its report with the AP table and 6 overlays."""
    tmp = tmp_path_factory.mktemp("report")
    images = tmp / "images"
    images.mkdir()
    for path in coco_data.image_folder("coco-val-4").glob("*.jpg"):
        shutil.copy(path, images / path.name)
    (images / "broken.jpg").write_bytes(b"this is not a JPEG")
    output, html_path = tmp / "OUTPUT", tmp / "report" / "report.html"
    ground_truth = str(coco_data.annotation_file("coco-val-4"))
    ensure_shared_ray()
    assert cli(["annotate", str(images), str(output), "--model", tiny_vitpose,
                "--boxes", str(coco_data.annotation_file("coco-val-4"))]) == 0
    assert cli(["report", str(output), str(html_path), "--ground-truth", ground_truth, "--sample", "6"]) == 0
    return Made(output, html_path, html_path.read_text(), ground_truth)


def embedded_images(page: str) -> list[tuple[str, Image.Image]]:
    found = []
    for _, kind, data in DATA_IMG.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        found.append((kind, image))
    return found


@pytest.mark.slow  # the module's OUTPUT is made by a Ray job
def test_report_sections_and_counts(made):
    page = made.page
    rows = [row for table in iter_part_tables(str(made.output)) for row in table.to_pylist()]
    errors = [row for row in rows if row["error"]]
    persons = sum(len(row["persons"]) for row in rows)
    assert len(rows) == 5 and len(errors) == 1 and persons > 6
    for section in SECTIONS:
        assert f'id="{section}"' in page, section
    assert f"<b>{len(rows)}</b>images (rows)" in page and f"<b>{persons}</b>persons" in page
    assert f"<b>{len(errors)}</b>error rows" in page
    assert rp.error_kind(errors[0]["error"]) in page and errors[0]["image_uri"] in page  # kind with its example

    settings = load_record(Output.open(str(made.output)))["settings"]
    assert settings["model_fingerprint"] in page and settings["boxes"] in page
    run = next((made.output / "_runs").glob("*.json")).stem
    assert run in page and "images/s" in page

    from vitpose_batch.review.evaluate import evaluate

    metrics = evaluate(str(made.output), made.ground_truth)
    assert "<th>AP</th>" in page and f"<td class=n>{metrics['AP']:.3f}</td>" in page
    assert "detector_box" not in metrics and "Person boxes (" not in page  # ground-truth boxes: no detector AP


@pytest.mark.slow  # the module's OUTPUT is made by a Ray job
def test_report_is_self_contained(made):
    page = made.page
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    resources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page)
    assert resources and all(r.startswith("data:") for r in resources) and "url(" not in page
    images = embedded_images(page)  # every one decodes
    assert len(images) == page.count("<img ")
    assert [kind for kind, _ in images].count("png") == 3  # person scores, persons per image, keypoints per joint
    assert [kind for kind, _ in images].count("jpeg") == 6 == page.count("<figure ")
    for group in ("lowest", "median", "highest"):
        assert page.count(f"<b>{group}</b>") == 2


@pytest.mark.slow  # the module's OUTPUT is made by a Ray job
def test_report_of_an_object_store_output(made):
    rows = [row for table in iter_part_tables(str(made.output)) for row in table.to_pylist()]
    persons = sum(len(row["persons"]) for row in rows)
    memory = fsspec.filesystem("memory")
    try:
        memory.put(str(made.output), "/report-test/OUTPUT", recursive=True)
        done = rp.report("memory://report-test/OUTPUT", "memory://report-test/report.html", sample=6)
        assert (done["images"], done["persons"], done["errors"], done["overlays"]) == (5, persons, 1, 6)
        page = memory.cat_file("/report-test/report.html").decode()
        assert page.count("<figure ") == 6 and 'id="runs"' in page and "No run records" not in page
    finally:
        memory.rm("/report-test", recursive=True)


@pytest.mark.slow  # the module's OUTPUT is made by a Ray job
def test_report_in_a_real_browser(made, tmp_path):
    check_in_chromium(made.html, tmp_path)


def test_help_describes_every_argument():
    report = build_parser()._subparsers._group_actions[0].choices["report"]
    text = report.format_help()
    assert "PREDICTIONS" in text and "REPORT_HTML" in text and "--ground-truth COCO_JSON" in text
    assert f"(default {rp.DEFAULT_SAMPLE})" in text
    assert all(action.help for action in report._actions)


# ----------------------------------------------------------------------------------------------------------------
# The page in a real browser
# ----------------------------------------------------------------------------------------------------------------


def chromium() -> str:
    """The chromium binary; skipped when absent on a developer's machine, a failure in CI (it installs it)."""
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    message = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(message)
    pytest.skip(message)


def screenshot(browser: str, page: Path, out: Path) -> np.ndarray:
    """RGB pixels of `page` as headless Chromium draws it at 1200x3000 (a profile of its own per call)."""
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={out.parent / 'profile'}",
                    f"--screenshot={out}", "--window-size=1200,3000", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(out) as image:
        return np.asarray(image.convert("RGB"))


def colours(pixels: np.ndarray) -> int:
    """Distinct RGB colours (packed into one integer each: np.unique over rows is 30x slower)."""
    packed = pixels.astype(np.uint32)
    return len(np.unique((packed[..., 0] << 16) | (packed[..., 1] << 8) | packed[..., 2]))


def check_in_chromium(report_html: Path, tmp_path: Path) -> None:
    browser = chromium()
    shots = tmp_path / "shots"
    shots.mkdir()
    empty = shots / "empty.html"
    empty.write_text("<!DOCTYPE html><html><body></body></html>")
    # the same report without its pictures: what text and tables alone look like
    text_only = shots / "text-only.html"
    text_only.write_text(re.sub(r"<img [^>]*>", "", report_html.read_text()))
    blank = screenshot(browser, empty, shots / "empty.png")
    bare = screenshot(browser, text_only, shots / "text-only.png")
    full = screenshot(browser, report_html, shots / "report.png")
    assert full.shape == (3000, 1200, 3)
    assert colours(blank) <= 2 and blank.std() < 1  # the baseline: a blank page is one colour
    assert full.std() > blank.std() + 20 and colours(full) > 100 * colours(blank)
    # the embedded PNGs and JPEGs decoded and drawn: photos bring thousands of colours text cannot
    assert colours(full) > colours(bare) + 2000



def test_an_image_that_cannot_be_read_is_said_once(tmp_path, caplog):
    """Several picked persons of one vanished image: each overlay says why, the log says it once."""
    import logging

    from vitpose_batch.review.report.samples import make_overlay

    keypoints = np.zeros((17, 3), np.float32)
    gone = str(tmp_path / "gone.jpg")
    samples = [rp.Sample(group, 0.5, gone, 600, 400, np.array([300, 180, 60, 80], np.float32), keypoints)
               for group in ("lowest", "median", "highest")]
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING):
        overlays = [make_overlay(s, "coco", None, warned) for s in samples]
    assert all(o.data_uri is None and "cannot read" in o.problem for o in overlays)
    assert [r.getMessage() for r in caplog.records].count(f"report: cannot draw {gone} ({overlays[0].problem})") == 1
