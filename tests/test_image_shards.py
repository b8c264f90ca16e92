"""Image shards in the shapes people store them: Parquet image columns of type binary, large_binary or the
`datasets` library's struct<bytes, path> beside other columns; a wrong column refused before any work; render and
report read a shard row through the column annotate read; WebDataset members keyed .jpeg, .png, .webp."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vitpose_batch.cli import main as cli
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.review.render import render
from vitpose_batch.review.report import report
from tests import coco_data
from tests.shared_data import shared_path


@pytest.fixture(scope="module")
def photos():
    return coco_data.load("coco-val-4")


def thumbnail(data: bytes) -> bytes:
    out = io.BytesIO()
    image = Image.open(io.BytesIO(data))
    image.thumbnail((64, 64))
    image.save(out, format="JPEG")
    return out.getvalue()


def boxes_for_rows(path: Path, shard: Path, photos, rows: list[int]) -> Path:
    """A COCO boxes file naming Parquet row r of `shard` as annotate does (`<stem>-<r>`) with photos[i]'s boxes."""
    images = [{"id": i + 1, "file_name": f"{shard.stem}-{r}"} for i, r in enumerate(rows)]
    annotations = [{"id": 100 * i + j + 1, "image_id": i + 1, "category_id": 1, "bbox": box.tolist(), "iscrowd": 0}
                   for i, photo in enumerate(photos) for j, box in enumerate(photo.boxes)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    return path


def rows_of(output: Path) -> dict[str, dict]:
    return {r["image_uri"]: r for t in iter_part_tables(str(output)) for r in t.to_pylist()}


def test_datasets_style_struct_column_with_a_path_and_other_columns(tmp_path, photos, tiny_vitpose, shared_ray):
    """image: struct<bytes, path> (bytes; or null bytes and a path beside the shard; or neither), a caption and a
    second binary column: every row is one row, labelled from the column named, the empty one an error row."""
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "loose").mkdir()
    (folder / "loose" / "by-path.jpg").write_bytes(photos[3].path.read_bytes())
    images = [{"bytes": p.path.read_bytes(), "path": p.path.name} for p in photos[:3]]
    images += [{"bytes": None, "path": "loose/by-path.jpg"}, {"bytes": None, "path": None}]
    shard = folder / "train-00000.parquet"
    pq.write_table(pa.table({
        "image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": [f"people {i}" for i in range(5)],
        "thumb": [thumbnail(p.path.read_bytes()) for p in photos] + [None]}), shard)
    boxes = boxes_for_rows(tmp_path / "boxes.json", shard, photos, [0, 1, 2, 3])
    output = tmp_path / "out"
    assert cli(["annotate", str(folder), str(output), "--model", tiny_vitpose, "--boxes", str(boxes),
                "--image-column", "image"]) == 0
    rows = rows_of(output)
    assert sorted(rows) == [f"{shard}#{i}" for i in range(5)]
    for i, photo in enumerate(photos):
        row = rows[f"{shard}#{i}"]
        assert row["error"] is None and (row["width"], row["height"]) == photo.image.shape[1::-1]
        assert len(row["persons"]) == len(photo.boxes) > 0
    assert rows[f"{shard}#4"]["error"] == "no image in this row (null bytes and no path)"
    assert rows[f"{shard}#4"]["error_retryable"] is False
    # render and report read the rows through the recorded column, not a rule of their own
    drawn = render(str(output), str(tmp_path / "drawn"), sample=10)
    assert len(drawn) == 4
    counted = report(str(output), str(tmp_path / "report.html"), sample=4)
    assert counted["overlays"] >= 3


@pytest.mark.parametrize("column", ["nosuch", "caption"])
def test_a_missing_or_non_image_column_is_refused_before_any_work(tmp_path, photos, tiny_vitpose, column, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    pq.write_table(pa.table({"jpg": [p.path.read_bytes() for p in photos], "caption": ["x"] * len(photos)}),
                   folder / "a.parquet")
    bad = folder / "b.parquet"
    pq.write_table(pa.table({"caption": ["y"]}), bad)
    output = tmp_path / "out"
    code = cli(["annotate", str(folder), str(output), "--model", tiny_vitpose, "--detector",
                str(shared_path("models/yolox_nano.onnx")), "--image-column", column])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "parquet shard" in err and repr(column) in err and "caption (string)" in err
    if column == "caption":
        assert "not image bytes" in err
    assert not output.exists()  # refused before OUTPUT was touched


def test_parquet_shards_without_an_image_column_say_so(tmp_path, photos):
    from vitpose_batch.pipeline.sources import InputError, list_input

    pq.write_table(pa.table({"jpg": [photos[0].path.read_bytes()]}), tmp_path / "a.parquet")
    with pytest.raises(InputError, match=r"it holds Parquet shards .*a\.parquet.*: name their image column with "
                                         r"--image-column"):
        list_input(str(tmp_path))


@pytest.mark.parametrize("large", [False, True])
def test_two_binary_columns_render_and_report_read_the_one_annotate_read(tmp_path, photos, tiny_vitpose, large,
                                                                        shared_ray):
    folder = tmp_path / "shards"
    folder.mkdir()
    binary = pa.large_binary() if large else pa.binary()
    shard = folder / "photos.parquet"
    pq.write_table(pa.table({"thumb": pa.array([thumbnail(p.path.read_bytes()) for p in photos], binary),
                             "jpg": pa.array([p.path.read_bytes() for p in photos], binary)}), shard)
    boxes = boxes_for_rows(tmp_path / "boxes.json", shard, photos, list(range(len(photos))))
    output = tmp_path / "out"
    assert cli(["annotate", str(folder), str(output), "--model", tiny_vitpose, "--boxes", str(boxes),
                "--image-column", "jpg"]) == 0
    rows = rows_of(output)
    assert all(r["error"] is None and len(r["persons"]) for r in rows.values()) and len(rows) == len(photos)
    drawn = render(str(output), str(tmp_path / "drawn"), sample=10)
    assert len(drawn) == len(photos)
    with Image.open(drawn[0]) as image:  # drawn on the full photo, not on the 64 px thumbnail
        assert max(image.size) > 64
    assert report(str(output), str(tmp_path / "report.html"), sample=4)["overlays"] >= 3


def test_webdataset_members_keyed_jpeg_png_webp(tmp_path, photos, tiny_vitpose, shared_ray):
    folder = tmp_path / "tars"
    folder.mkdir()
    members = {}
    with tarfile.open(folder / "shard-0000.tar", "w") as tar:
        for i, (photo, fmt, ext) in enumerate(zip(photos, ["JPEG", "PNG", "WEBP"], ["jpeg", "png", "webp"])):
            out = io.BytesIO()
            Image.fromarray(photo.image).save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
            name = f"sample{i:03d}.{ext}"
            info = tarfile.TarInfo(name)
            info.size = len(out.getvalue())
            tar.addfile(info, io.BytesIO(out.getvalue()))
            members[name] = photo
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": name} for i, name in enumerate(members)],
        "annotations": [{"id": 10 * i + j + 1, "image_id": i + 1, "category_id": 1, "bbox": b.tolist(), "iscrowd": 0}
                        for i, photo in enumerate(members.values()) for j, b in enumerate(photo.boxes)],
        "categories": [{"id": 1}]}))
    output = tmp_path / "out"
    assert cli(["annotate", str(folder), str(output), "--model", tiny_vitpose, "--boxes", str(boxes)]) == 0
    rows = {uri.rsplit("#", 1)[1]: r for uri, r in rows_of(output).items()}
    assert sorted(rows) == sorted(members)
    for name, photo in members.items():
        assert rows[name]["error"] is None and len(rows[name]["persons"]) == len(photo.boxes) > 0
    assert len(render(str(output), str(tmp_path / "drawn"), sample=10)) == len(members)
