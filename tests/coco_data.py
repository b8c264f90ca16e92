"""The real COCO images and ground truth of ../shared/data, as arrays the tests can use directly."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tests.shared_data import shared_path

SETS = {
    "coco-val-4": ("data/coco-val-4", "test_coco.json", ""),
    "coco-mini-train": ("data/coco-mini-train", "person_keypoints_train2017.json", "images"),
}


@dataclass
class GroundTruthImage:
    image_id: int
    path: Path
    image: np.ndarray  # HxWx3 uint8 RGB
    boxes: np.ndarray  # (n, 4) xywh, non-crowd persons
    keypoints: np.ndarray  # (n, 17, 3) x, y, visibility


def annotation_file(name: str) -> Path:
    folder, annotations, _ = SETS[name]
    return shared_path(f"{folder}/{annotations}")


def image_folder(name: str) -> Path:
    folder, _, images = SETS[name]
    return shared_path(folder) / images


def load(name: str, with_keypoints_only: bool = False) -> list[GroundTruthImage]:
    """Every image of the set with its non-crowd person boxes and keypoints, in image-id order."""
    coco = json.loads(annotation_file(name).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0) or (with_keypoints_only and not ann.get("num_keypoints", 0)):
            continue
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        anns = by_image.get(info["id"], [])
        path = image_folder(name) / info["file_name"]
        with Image.open(path) as img:
            image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        boxes = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        keypoints = np.array([a["keypoints"] for a in anns], np.float32).reshape(-1, 17, 3)
        out.append(GroundTruthImage(info["id"], path, image, boxes, keypoints))
    return out


def committed(output: Path) -> list[Path]:
    """The files holding an annotate OUTPUT's committed rows so far: live parts and staged chunks."""
    return sorted(Path(output).glob("part-*.parquet")) + sorted(Path(output).glob("_staging/*.staged"))


def with_exif_orientation(data: bytes, orientation: int) -> bytes:
    """A JPEG re-encoded (quality 92) with EXIF orientation tag `orientation` (1-8)."""
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes(), quality=92)
    return out.getvalue()
