"""A benchmark corpus from any COCO keypoints folder: its JPEGs repeated under new names, with their ground-truth
person boxes, held as bytes in memory (no copies on disk).

    corpus = load_corpus(Path("coco-mini-train"), images=4000, workdir=Path("/tmp/x"))
    corpus.batches(64)      # ENCODED Arrow batches, exactly as the pose actors receive them from the read tasks

A COCO folder is one holding a COCO keypoints JSON (a dict with `images` and `annotations`) and its images, in
`images/` or beside the JSON (`coco-mini-train` and `coco-val-4` of ../shared are both).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from vitpose_batch.pipeline.image_decoding import ENCODED_SCHEMA


class CorpusError(ValueError):
    """A folder that holds no usable COCO keypoints set; the message names it."""


def find_coco(folder: Path) -> tuple[Path, Path]:
    """(the COCO keypoints JSON, the folder its `file_name`s resolve against) of a COCO folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not a folder")
    for candidate in sorted(folder.glob("*.json")):
        try:
            coco = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(coco, dict) and isinstance(coco.get("images"), list) and "annotations" in coco:
            root = folder / "images" if (folder / "images").is_dir() else folder
            return candidate, root
    raise CorpusError(f"{folder}: no COCO keypoints JSON (a dict with images and annotations) in it")


@dataclass
class Corpus:
    """`names[i]` (unique) holds the bytes `datas[i]`; `boxes_file` gives each name its source image's boxes."""

    names: list[str]
    datas: list[bytes]
    boxes_file: Path
    persons: int  # usable ground-truth person boxes over the whole corpus
    read_s: float  # seconds spent reading the distinct files once
    distinct: int  # how many distinct files

    def batches(self, batch_size: int) -> list[pa.Table]:
        """ENCODED rows in batches of `batch_size` (the last one shorter)."""
        out = []
        for start in range(0, len(self.names), batch_size):
            names = self.names[start:start + batch_size]
            out.append(pa.table({
                "image_uri": [f"/corpus/{name}" for name in names], "image_id": [None] * len(names),
                "data": self.datas[start:start + batch_size], "error": [None] * len(names),
                "error_retryable": [None] * len(names)}, schema=ENCODED_SCHEMA))
        return out


def load_corpus(folder: Path, images: int, workdir: Path) -> Corpus:
    """`images` corpus entries cycling through the folder's images in COCO order; a boxes file in `workdir`."""
    annotations, root = find_coco(folder)
    coco = json.loads(annotations.read_text())
    entries = coco["images"][:images]  # the corpus cycles through these
    if not entries:
        raise CorpusError(f"{annotations}: no images")
    start = time.perf_counter()
    distinct = [(root / info["file_name"]).read_bytes() for info in entries]
    read_s = time.perf_counter() - start
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        w, h = ann["bbox"][2:]
        if ann.get("category_id", 1) == 1 and not ann.get("iscrowd", 0) and w > 0 and h > 0:
            by_image.setdefault(ann["image_id"], []).append(ann)
    names, datas, listed, boxes = [], [], [], []
    for i in range(images):
        info = entries[i % len(entries)]
        name = f"{i:06d}-{Path(info['file_name']).name}"
        names.append(name)
        datas.append(distinct[i % len(entries)])
        listed.append({"id": i + 1, "file_name": name, "width": info["width"], "height": info["height"]})
        boxes += [dict(ann, id=len(boxes) + 1, image_id=i + 1) for ann in by_image.get(info["id"], [])]
    boxes_file = Path(workdir) / "corpus-boxes.json"
    categories = coco.get("categories", [])
    boxes_file.write_text(json.dumps({"images": listed, "annotations": boxes, "categories": categories}))
    return Corpus(names, datas, boxes_file, len(boxes), read_s, len(entries))
