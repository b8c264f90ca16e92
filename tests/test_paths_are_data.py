"""A local path is data, never syntax: file and folder names with fsspec's and glob's special characters are read as
exactly those paths (INPUT, OUTPUT, --boxes, --coco-json, --image-root, --model, the files the listing finds), also
behind file://; a glob is a glob only when nothing exists under that name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vitpose_batch.cli import main as cli
from vitpose_batch.pipeline.image_decoding import read_bytes
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.pipeline.sources import list_input
from tests import coco_data

# Every character the issue named, in file names and in folder names.
NAMES = ["double::colon.jpg", "br[ack]et.jpg", "star*.jpg", "question?.jpg", "hash#tag.jpg", "semi;colon.jpg",
         "per%20cent.jpg", "sp ace.jpg", "ümlaut-日本.jpg", "x.tar#y.jpg", "a.parquet#3.jpg", "[!x].jpg"]
FOLDER = "in [2019] #1 ;%20 ü::*?"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """INPUT with the special names (a subfolder too), each a real COCO photo; a boxes file naming each by its name
    with that photo's ground-truth boxes; paths for OUTPUT, --boxes and --coco-json with special characters too."""
    gts = coco_data.load("coco-val-4")
    root = tmp_path_factory.mktemp("paths")
    corpus = root / FOLDER
    (corpus / "sub [a]*?").mkdir(parents=True)
    files = {name: corpus / name for name in NAMES} | {"in-sub::[1].jpg": corpus / "sub [a]*?" / "in-sub::[1].jpg"}
    images, annotations = [], []
    for i, (name, path) in enumerate(files.items()):
        gt = gts[i % len(gts)]
        shutil.copyfile(gt.path, path)
        images.append({"id": 1000 + i, "file_name": name, "width": gt.image.shape[1], "height": gt.image.shape[0]})
        annotations += [{"id": len(annotations) + 1, "image_id": 1000 + i, "category_id": 1, "bbox": box.tolist(),
                         "area": float(box[2] * box[3]), "iscrowd": 0} for box in gt.boxes]
    boxes = root / "boxes [v2] #a::b.json"
    boxes.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))
    expected = {str(path): sum(a["image_id"] == 1000 + i for a in annotations)
                for i, path in enumerate(files.values())}
    return root, corpus, boxes, expected


def annotate(model: str, corpus: str, output: Path, boxes: str, coco_json: Path) -> None:
    assert cli(["annotate", corpus, str(output), "--model", model, "--boxes", boxes, "--batch-size", "4",
                "--coco-json", str(coco_json)]) == 0


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_every_special_name_is_one_row_with_its_boxes(tree, tiny_vitpose, shared_ray, scheme, tmp_path):
    root, corpus, boxes, expected = tree
    output = tmp_path / "out [x] #1::2"
    model = tmp_path / "model [v1] #::"
    shutil.copytree(tiny_vitpose, model)
    coco_json = output.parent / "results [1]::#.json"
    annotate(scheme + str(model), scheme + str(corpus), output, scheme + str(boxes), coco_json)
    rows = {r["image_uri"]: r for t in iter_part_tables(str(output)) for r in t.to_pylist()}
    assert set(rows) == set(expected)  # every file one row, under its real path
    for uri, row in rows.items():
        assert row["error"] is None, (uri, row["error"])
        assert len(row["persons"]) == expected[uri] > 0, uri  # boxes matched by the file's own name
    results = json.loads(coco_json.read_text())
    assert len(results) == sum(expected.values())
    # a re-run finds everything done
    annotate(scheme + str(model), scheme + str(corpus), output, scheme + str(boxes), coco_json)
    assert sum(t.num_rows for t in iter_part_tables(str(output))) == len(expected)


def test_a_coco_json_input_with_special_image_root(tree, tiny_vitpose, shared_ray, tmp_path):
    root, corpus, boxes, expected = tree
    output = tmp_path / "out"
    assert cli(["annotate", str(boxes), str(output), "--model", tiny_vitpose, "--boxes", str(boxes),
                "--image-root", str(corpus), "--batch-size", "4"]) == 0
    rows = [r for t in iter_part_tables(str(output)) for r in t.to_pylist()]
    top_level = {uri: n for uri, n in expected.items() if os.path.dirname(uri) == str(corpus)}
    assert {r["image_uri"] for r in rows} >= set(top_level)
    assert all(r["error"] is None and r["image_id"] is not None for r in rows if r["image_uri"] in top_level)


def test_an_existing_folder_is_never_a_glob(tmp_path):
    photo = coco_data.load("coco-val-4")[0].path
    shoot = tmp_path / "shoot [2019]"
    shoot.mkdir()
    for i in range(3):
        shutil.copyfile(photo, shoot / f"{i}.jpg")
    (tmp_path / "shoot 2").mkdir()  # what "[2019]" would match as a character class
    shutil.copyfile(photo, tmp_path / "shoot 2" / "decoy.jpg")
    listed = [u for chunk in list_input(str(shoot)).chunks() for u in chunk.column("image_uri").to_pylist()]
    assert listed == [str(shoot / f"{i}.jpg") for i in range(3)]
    # nothing exists under a glob's own name: then it is a glob
    globbed = [u for chunk in list_input(str(tmp_path / "shoot*" / "*.jpg")).chunks()
               for u in chunk.column("image_uri").to_pylist()]
    assert sorted(globbed) == sorted([str(shoot / f"{i}.jpg") for i in range(3)] + [str(tmp_path / "shoot 2" / "decoy.jpg")])


def test_a_file_read_by_its_literal_name(tree):
    _, corpus, _, _ = tree
    for name in NAMES:
        assert read_bytes(str(corpus / name)) == (corpus / name).read_bytes()
        assert read_bytes("file://" + str(corpus / name)) == (corpus / name).read_bytes()
