"""vitpose_batch.review.export.export_coco and vitpose_batch.review.render.render on annotate OUTPUT folders built from real COCO ground truth."""

from __future__ import annotations

import json
import logging
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vitpose_batch.review.export import export_coco
from vitpose_batch.review.render import render
from vitpose_batch.output.parts import write_parquet_atomic
from tests import coco_data
from tests.test_coco_schema import error_row, gt_rows, keypoint_ap, load_coco, table_of

LOCAL = fsspec.filesystem("file")


def write_output(folder: Path, parts: list[list[dict]]) -> str:
    for i, rows in enumerate(parts):
        write_parquet_atomic(LOCAL, table_of(rows), str(folder / f"part-run0-{i:05d}.parquet"))
    return str(folder)


@pytest.fixture
def annotate_output(tmp_path):
    """Two part files: the 4 coco-val-4 GT images, an error row and a row with no image id (one person)."""
    rows = gt_rows("coco-val-4")
    nameless = {**rows[0], "image_uri": "/photos/holiday.jpg", "image_id": None, "persons": rows[0]["persons"][:1]}
    parts = [rows[:2] + [error_row("/photos/broken.jpg", 12345)], rows[2:] + [nameless]]
    return write_output(tmp_path / "OUTPUT", parts), rows, nameless


# ----------------------------------------------------------------------------------------------------------------
# export_coco
# ----------------------------------------------------------------------------------------------------------------


def test_export_results(annotate_output, tmp_path):
    predictions, rows, _ = annotate_output
    out = tmp_path / "new" / "dir" / "results.json"
    stats = export_coco(predictions, str(out))
    n_persons = sum(len(r["persons"]) for r in rows)
    assert stats["format"] == "results" and stats["output"] == str(out)
    assert stats["rows"] == 6 and stats["images"] == 4 and stats["persons"] == n_persons
    assert stats["skipped_error"] == 1 and stats["skipped_no_image_id"] == 1
    results = json.loads(out.read_text())
    assert len(results) == n_persons and {r["image_id"] for r in results} == {r["image_id"] for r in rows}
    assert keypoint_ap(coco_data.annotation_file("coco-val-4"), results) == pytest.approx(1.0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["results.json"]  # no temporary left behind


def test_export_dataset(annotate_output, tmp_path):
    predictions, rows, nameless = annotate_output
    out = tmp_path / "dataset.json"
    stats = export_coco(predictions, str(out), fmt="dataset", min_keypoint_score=0.5)
    coco = load_coco(out)
    n_persons = sum(len(r["persons"]) for r in rows) + len(nameless["persons"])
    assert stats["images"] == 5 == len(coco.getImgIds()) and stats["assigned_image_ids"] == 1
    assert stats["persons"] == n_persons == len(coco.getAnnIds()) and stats["skipped_error"] == 1
    assert 12345 not in coco.getImgIds()
    holiday = [img for img in coco.loadImgs(coco.getImgIds()) if img["file_name"] == "holiday.jpg"]
    assert len(holiday) == 1 and holiday[0]["id"] > max(r["image_id"] for r in rows)
    assert len(coco.getAnnIds(imgIds=[holiday[0]["id"]])) == 1
    # GT keypoints with v = 0 were scored 0 < 0.5: unlabelled; the others labelled 2
    for ann in coco.loadAnns(coco.getAnnIds()):
        flags = np.reshape(ann["keypoints"], (-1, 3))[:, 2]
        assert set(flags.tolist()) <= {0, 2} and ann["num_keypoints"] == int((flags == 2).sum())
    assert coco.loadCats(1)[0]["skeleton"][0] == [16, 14]


def test_export_single_file_and_fsspec_output(annotate_output):
    predictions, rows, _ = annotate_output
    part = str(sorted(Path(predictions).glob("part-*.parquet"))[0])
    url = "memory://exports/val4.json"
    try:
        stats = export_coco(part, url, min_person_score=0.5)
        with fsspec.open(url, "rb") as handle:
            results = json.load(handle)
    finally:
        fsspec.filesystem("memory").rm("/exports", recursive=True)
    assert stats["rows"] == 3 and stats["images"] == 2 and stats["skipped_error"] == 1
    assert len(results) == sum(len(r["persons"]) for r in rows[:2]) == stats["persons"]


@pytest.mark.parametrize("fmt", ["results", "dataset"])
@pytest.mark.parametrize("where", ["local", "memory"])
def test_export_failure_leaves_no_output(tmp_path, where, fmt):
    person = {"bbox": [0.0, 0.0, 2.0, 2.0], "box_score": 1.0, "score": 1.0}
    rows = [{"image_uri": f"/a/{i}.jpg", "image_id": i, "width": 4, "height": 4, "error": None,
             "persons": [{**person, "keypoints": [1.0, 1.0, 1.0] * 17}]} for i in range(1, 4)]
    rows[2]["persons"][0]["keypoints"] = [1.0] * 50  # a broken row after the first part was converted
    predictions = write_output(tmp_path / "OUTPUT", [rows[:2], rows[2:]])
    target = str(tmp_path / "out" / "coco.json") if where == "local" else "memory://failed/coco.json"
    with pytest.raises(ValueError, match="not a multiple of 3"):
        export_coco(predictions, target, fmt=fmt)
    fs, path = fsspec.core.url_to_fs(target)
    assert not fs.exists(path)
    if where == "local":
        assert list((tmp_path / "out").iterdir()) == []


def test_export_refuses_missing_or_empty_predictions(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    for where, problem in ((tmp_path / "absent", "do not exist"), (tmp_path / "empty", "no part-")):
        with pytest.raises(ValueError, match=problem) as info:
            export_coco(str(where), str(tmp_path / "out.json"))
        assert "\n" not in str(info.value) and str(where) in str(info.value)
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(ValueError, match="format"):
        export_coco(str(tmp_path / "empty"), str(tmp_path / "out.json"), fmt="yaml")


# ----------------------------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------------------------


def original(path: str | Path) -> np.ndarray:
    from PIL import ImageOps

    with Image.open(path) as img:
        return np.asarray(ImageOps.exif_transpose(img).convert("RGB")).astype(np.int16)


def assert_poses_drawn(rendered_path: str, reference: np.ndarray, row: dict) -> None:
    with Image.open(rendered_path) as img:
        assert img.format == "JPEG"
        assert img.size == (row["width"], row["height"]) == (reference.shape[1], reference.shape[0])
        rendered = np.asarray(img.convert("RGB")).astype(np.int16)
    h, w = reference.shape[:2]
    changed, total = 0, 0
    for person in row["persons"]:
        kps = np.reshape(person["keypoints"], (-1, 3))
        for x, y, score in kps:
            if score <= 0.3:
                continue
            xi, yi = int(round(x)), int(round(y))
            if not (0 <= xi < w and 0 <= yi < h):
                continue
            total += 1
            changed += int(np.abs(rendered[yi, xi] - reference[yi, xi]).max() > 30)
    assert total > 0 and changed >= 0.8 * total, (changed, total)
    # away from every person (boxes grown by a margin) the picture is the original, up to JPEG noise
    untouched = np.ones((h, w), bool)
    for person in row["persons"]:
        x, y, bw, bh = person["bbox"]
        untouched[max(0, int(y) - 8):int(y + bh) + 9, max(0, int(x) - 8):int(x + bw) + 9] = False
    assert untouched.sum() > 1000
    assert np.abs(rendered - reference)[untouched].mean() < 4


def test_render_plain_images(tmp_path, caplog):
    rows = [r for r in gt_rows("coco-val-4") if r["persons"]][:3]
    missing = {**rows[0], "image_uri": str(tmp_path / "gone" / "000000000001.jpg"), "image_id": 1}
    predictions = write_output(tmp_path / "OUTPUT", [rows[:2] + [error_row("/x/broken.jpg")], [missing, rows[2]]])
    outdir = tmp_path / "renders" / "nested"
    with caplog.at_level(logging.WARNING, logger="vitpose_batch.review.render"):
        paths = render(predictions, str(outdir), sample=16)
    assert len(paths) == 3 and all(Path(p).parent == outdir for p in paths)
    assert [Path(p).name for p in paths] == [Path(r["image_uri"]).stem + ".jpg" for r in rows]
    for path, row in zip(paths, rows):
        assert_poses_drawn(path, original(row["image_uri"]), row)
    assert any("000000000001.jpg" in rec.getMessage() for rec in caplog.records)
    assert not any("broken.jpg" in rec.getMessage() for rec in caplog.records)  # error rows are never sampled

    few = render(predictions, str(tmp_path / "few"), sample=2, seed=3)
    again = render(predictions, str(tmp_path / "again"), sample=2, seed=3)
    assert 1 <= len(few) <= 2 and [Path(p).name for p in few] == [Path(p).name for p in again]
    assert render(predictions, str(tmp_path / "none"), sample=0) == []


def test_render_sample_is_uniformly_seeded(tmp_path):
    rows = [{"image_uri": f"/nowhere/{i:04d}.jpg", "image_id": i, "width": 4, "height": 4, "persons": [],
             "error": None} for i in range(40)]
    predictions = write_output(tmp_path / "OUTPUT", [rows[:25], rows[25:]])
    from vitpose_batch.review.render import reservoir_sample
    from vitpose_batch.output.parts import iter_part_tables as iter_prediction_tables
    from vitpose_batch.schemas.coco import iter_prediction_rows

    def picks(seed):
        return [r.image_id for r in reservoir_sample(iter_prediction_rows(iter_prediction_tables(predictions)), 5,
                                                     seed)]

    assert picks(0) == picks(0) and len(set(picks(0))) == 5
    assert picks(0) != picks(1)
    assert len({i for seed in range(30) for i in picks(seed)}) > 30  # late rows get picked too


def test_render_tar_parquet_and_exif(tmp_path, caplog):
    rows = {r["image_id"]: r for r in gt_rows("coco-val-4")}
    folder = coco_data.image_folder("coco-val-4")
    files = {i: folder / f"{i:012d}.jpg" for i in rows}

    shard = tmp_path / "shards" / "shard-000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        tar.add(files[196141], arcname="000000196141.jpg")
        tar.add(files[785], arcname="sub/000000000785.txt")  # other members are just passed over
    images = pa.table({"key": ["a", "b"], "jpg": [files[785].read_bytes(), files[40083].read_bytes()]})
    pq.write_table(images, tmp_path / "shards" / "images-000.parquet", row_group_size=1)
    two = images.append_column("png", pa.array([b"x", b"y"], pa.binary()))
    pq.write_table(two, tmp_path / "shards" / "ambiguous-000.parquet")

    # an EXIF-rotated copy: stored rotated with orientation 6, shown (and annotated) upright
    upright = Image.open(files[197388])
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated_path = tmp_path / "shards" / "000000197388.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(rotated_path, quality=98, exif=exif)

    table_rows = [
        {**rows[196141], "image_uri": f"{shard}#000000196141.jpg"},
        {**rows[40083], "image_uri": f"{tmp_path}/shards/images-000.parquet#1"},
        {**rows[785], "image_uri": f"{tmp_path}/shards/ambiguous-000.parquet#0"},
        {**rows[197388], "image_uri": str(rotated_path)},
    ]
    predictions = write_output(tmp_path / "OUTPUT", [table_rows])
    with caplog.at_level(logging.WARNING, logger="vitpose_batch.review.render"):
        paths = render(predictions, str(tmp_path / "renders"))
    assert [Path(p).name for p in paths] == ["000000196141.jpg", "images-000-1.jpg", "000000197388.jpg"]
    assert any("ambiguous-000.parquet" in rec.getMessage() and "exactly one binary" in rec.getMessage()
               for rec in caplog.records)
    for path, row, image_id in zip(paths, [table_rows[0], table_rows[1], table_rows[3]], [196141, 40083, 197388]):
        assert_poses_drawn(path, original(files[image_id]), row)


# ----------------------------------------------------------------------------------------------------------------
# Object storage end to end (local SeaweedFS S3 server)
# ----------------------------------------------------------------------------------------------------------------


def test_export_and_render_on_s3(s3_env, tmp_path):
    import uuid

    from vitpose_batch.schemas.box_files import load_boxes

    bucket = s3_env.make_bucket(f"export-{uuid.uuid4().hex[:10]}")
    fs = fsspec.filesystem("s3")
    rows = gt_rows("coco-val-4")
    folder = coco_data.image_folder("coco-val-4")
    # images: one plain object, one tar member
    fs.pipe_file(f"{bucket}/images/000000000785.jpg", (folder / "000000000785.jpg").read_bytes())
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        tar.add(folder / "000000040083.jpg", arcname="000000040083.jpg")
    fs.put_file(str(shard), f"{bucket}/shards/shard-000.tar")
    s3_rows = [{**rows[0], "image_uri": f"s3://{bucket}/images/000000000785.jpg", "image_id": None},
               {**rows[1], "image_uri": f"s3://{bucket}/shards/shard-000.tar#000000040083.jpg", "image_id": None}]
    for i, part in enumerate([s3_rows[:1], s3_rows[1:]]):
        write_parquet_atomic(fs, table_of(part), f"{bucket}/OUTPUT/part-run0-{i:05d}.parquet")

    stats = export_coco(f"s3://{bucket}/OUTPUT", f"s3://{bucket}/exports/results.json")
    assert stats["images"] == 2 and stats["skipped_no_image_id"] == 0  # ids from the names, tar member included
    with fsspec.open(f"s3://{bucket}/exports/results.json", "rb") as handle:
        results = json.load(handle)
    assert {r["image_id"] for r in results} == {785, 40083}
    assert len(results) == len(rows[0]["persons"]) + len(rows[1]["persons"])

    paths = render(f"s3://{bucket}/OUTPUT", f"s3://{bucket}/renders")
    assert paths == [f"s3://{bucket}/renders/000000000785.jpg", f"s3://{bucket}/renders/000000040083.jpg"]
    for path, row in zip(paths, rows[:2]):
        local = tmp_path / Path(path).name
        local.write_bytes(fs.cat_file(path.removeprefix("s3://")))
        assert_poses_drawn(str(local), original(row["image_uri"]), row)

    fs.put_file(str(coco_data.annotation_file("coco-val-4")), f"{bucket}/gt.json")
    index = load_boxes(f"s3://{bucket}/gt.json")
    assert index.boxes_for(file_name="000000000785.jpg")[0].shape == (1, 4)


def test_render_picks_by_score(tmp_path):
    """lowest / median / highest: the images holding the lowest-, typical- and highest-scored persons, from a
    stream, in score order."""
    def row(i: int, scores: list[float]) -> dict:
        person = {"bbox": [0.0, 0.0, 2.0, 2.0], "box_score": 1.0, "keypoints": [1.0, 1.0, 0.9] * 17}
        return {"image_uri": f"/nowhere/{i:04d}.jpg", "image_id": i, "width": 4, "height": 4,
                "persons": [dict(person, score=s) for s in scores], "error": None}

    rng = np.random.default_rng(0)
    scores = [rng.random(rng.integers(1, 5)).round(4).tolist() for _ in range(99)]
    rows = [row(i, s) for i, s in enumerate(scores)]
    rows.append({**rows[0], "image_uri": "/nowhere/none.jpg", "persons": []})  # no person: never picked
    predictions = write_output(tmp_path / "OUTPUT", [rows[:40], rows[40:]])
    from vitpose_batch.output.parts import iter_part_tables
    from vitpose_batch.review.render import scored_sample
    from vitpose_batch.schemas.coco import iter_prediction_rows

    def picked(pick: str) -> list[int]:
        return [r.image_id for r in scored_sample(iter_prediction_rows(iter_part_tables(predictions)), 3, pick)]

    lowest, highest = np.array([min(s) for s in scores]), np.array([max(s) for s in scores])
    typical = np.array([np.median(s) for s in scores])
    assert picked("lowest") == np.argsort(lowest, kind="stable")[:3].tolist()
    assert picked("highest") == np.argsort(highest, kind="stable")[-3:].tolist()
    nearest = np.argsort(np.abs(typical - np.median(typical)), kind="stable")[:3]
    assert picked("median") == sorted(nearest.tolist(), key=lambda i: typical[i])
    with pytest.raises(ValueError, match="pick must be one of"):
        scored_sample(iter([]), 3, "worst")


def test_render_draws_on_the_pixels_annotate_saw(tmp_path):
    """A transparent PNG: annotate composites it on white; render draws on that, not on PIL's black RGB."""
    from vitpose_batch.pipeline.image_decoding import decode_image
    from vitpose_batch.review.render import read_image

    rgba = np.zeros((64, 48, 4), np.uint8)
    rgba[16:48, 12:36] = (200, 30, 30, 255)  # an opaque red figure on a transparent page
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    seen = read_image(str(path))
    np.testing.assert_array_equal(seen, decode_image(path.read_bytes()))
    assert tuple(seen[0, 0]) == (255, 255, 255) and tuple(seen[30, 20]) == (200, 30, 30)
    grey16 = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(grey16)
    assert read_image(str(grey16))[0, 0, 0] == 40000 * 255 // 65535  # scaled to 8 bits, not the low byte (64)
