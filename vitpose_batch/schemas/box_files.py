"""Person boxes from COCO files: a COCO annotation file (ground truth; crowd boxes skipped, score 1) or a COCO
detection-results list, indexed by image id and file name (`load_boxes` -> `BoxIndex`)."""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vitpose_batch.files.addresses import image_name, integer_stem
from vitpose_batch.schemas.coco import PERSON_CATEGORY_ID
from vitpose_core.filesystems import open_uri

_EMPTY_BOXES = np.zeros((0, 4), np.float32)
_EMPTY_SCORES = np.zeros(0, np.float32)


class BoxIndex:
    """Person boxes per image, looked up by image id or by file name.

    File names resolve through the `images` list of the file (or the one given to `load_boxes`): first the name as
    given (a COCO `file_name` may hold folders), then its basename. A basename that two images share is ambiguous
    and refused. Without any image list (a bare detection-results file), a name whose basename stem is an integer
    means that image id (COCO's `000000000785.jpg` <-> 785).
    """

    def __init__(
        self,
        boxes: dict[int, np.ndarray],
        scores: dict[int, np.ndarray],
        names: dict[str, int] | None,
        ambiguous: set[str] | None = None,
        source: str = "",
    ) -> None:
        self._boxes = boxes
        self._scores = scores
        self._names = names  # None: no image list, integer stems name images
        self._ambiguous = ambiguous or set()
        self._known_ids = set((names or {}).values())
        self.source = source
        # unusable boxes left out when the file was read: {"reason", "image", "bbox", "where"} (the item) each
        self.dropped: list[dict] = []

    def __len__(self) -> int:
        """Number of images with at least one box."""
        return len(self._boxes)

    @property
    def num_boxes(self) -> int:
        return int(sum(len(b) for b in self._boxes.values()))

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images that have boxes, sorted."""
        return sorted(self._boxes)

    def image_id_for(self, file_name: str) -> int | None:
        """The image id `file_name` (a name, relative path, path or URI) stands for, or None."""
        if self._names is None:
            return integer_stem(file_name)
        normalised = file_name.replace("\\", "/")
        if normalised in self._names:
            return self._names[normalised]
        base = posixpath.basename(normalised)
        if base in self._ambiguous:
            raise ValueError(
                f"{self.source}: several images are named {base!r}; give the path as the file's file_name has it"
            )
        return self._names.get(base)

    def knows(self, file_name: str | None = None, image_id: int | None = None) -> bool:
        """Whether the file speaks of this image at all: listed in its images[] (boxes or none), or given boxes."""
        if image_id is None and file_name is not None:
            image_id = self.image_id_for(file_name)
        if image_id is None:
            return False
        return int(image_id) in self._boxes or (self._names is not None and int(image_id) in self._known_ids)

    def name_for(self, uri: str) -> str:
        """The file name this index knows the image at `uri` by: `image_name(uri)`, except for a plain file whose
        own name merely contains a shard suffix and '#' (`a.tar#b.jpg`): its whole basename, when the index knows
        that and not the member reading."""
        name = image_name(uri)
        if "#" in uri:
            literal = posixpath.basename(uri.replace("\\", "/").rstrip("/"))
            if literal != name and not self.knows(file_name=name) and self.knows(file_name=literal):
                return literal
        return name

    def boxes_for(
        self, file_name: str | None = None, image_id: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(boxes (n, 4) float32 COCO xywh, scores (n,) float32) of one image; `image_id` wins when both are given.
        Empty (0, 4) / (0,) arrays for an image without boxes or one the index cannot name."""
        if image_id is None and file_name is not None:
            image_id = self.image_id_for(file_name)
        if image_id is None or int(image_id) not in self._boxes:
            return _EMPTY_BOXES.copy(), _EMPTY_SCORES.copy()
        key = int(image_id)
        return self._boxes[key].copy(), self._scores[key].copy()


def _bad(uri: str, problem: str) -> ValueError:
    return ValueError(f"boxes file {uri}: {problem}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_box(uri: str, where: str, item: Mapping, need_score: bool) -> str | None:
    """Refuse an item that is not a box at all (one line naming the file and item); return why a well-formed box is
    unusable ("not finite", "no area"), for it to be dropped on its own, or None."""
    bbox = item.get("bbox")
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        raise _bad(uri, f"{where} has no bbox of 4 numbers (got {str(bbox)[:60]})")
    if not _number(item.get("image_id")):
        raise _bad(uri, f"{where} has no numeric image_id")
    if need_score:
        score = item.get("score")
        if not _number(score) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise _bad(uri, f"{where} has score {score!r}; scores must be finite numbers in [0, 1]")
    if not all(math.isfinite(v) for v in bbox):
        return "not finite"
    if bbox[2] <= 0 or bbox[3] <= 0:
        return "no area"
    return None


def _name_map(uri: str, images: Sequence[Mapping]) -> tuple[dict[str, int], set[str]]:
    names: dict[str, int] = {}
    by_base: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, info in enumerate(images):
        if not isinstance(info, Mapping) or "file_name" not in info or "id" not in info:
            raise _bad(uri, f"images[{i}] lacks file_name or id")
        name = str(info["file_name"]).replace("\\", "/")
        image_id = int(info["id"])
        names[name] = image_id
        base = posixpath.basename(name)
        if by_base.get(base, image_id) != image_id:
            ambiguous.add(base)
        by_base[base] = image_id
    for base, image_id in by_base.items():
        if base not in ambiguous:
            names.setdefault(base, image_id)
    return names, ambiguous


def load_boxes(uri: str, images: Sequence[Mapping] | None = None) -> BoxIndex:
    """Person boxes from a COCO file read through fsspec (local path or any URL).

    * a COCO annotation file (a dict with `images` and `annotations`): the boxes of category 1, crowd boxes
      skipped, each with score 1.0; its `images` name the files (`images` given here is used instead when passed);
    * a COCO detection-results file (a JSON list of `{image_id, category_id, bbox, score}`): category 1 only;
      file names come from `images` (COCO image dicts, e.g. of a COCO JSON input) or, failing that, integer stems.

    Boxes are kept as written (xywh, float32), in file order; a box that is not finite or has no area is dropped on
    its own (listed in `index.dropped`), the image's other boxes kept. Scores must be finite and in [0, 1]. Anything
    else raises a one-line ValueError naming the file and the problem.
    """

    try:
        with open_uri(uri, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise _bad(uri, "not found") from None
    except (OSError, ValueError) as exc:
        raise _bad(uri, f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _bad(uri, f"is not JSON ({str(exc).splitlines()[0]})") from None

    box_lists: dict[int, list] = {}
    score_lists: dict[int, list] = {}
    dropped: list[str] = []
    if isinstance(data, dict):
        missing = [k for k in ("images", "annotations") if not isinstance(data.get(k), list)]
        if missing:
            raise _bad(uri, "neither a COCO annotation file (a dict needs 'images' and 'annotations' lists; "
                            f"missing {', '.join(missing)}) nor a detection-results list")
        file_images = data["images"] if images is None else images
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, Mapping):
                raise _bad(uri, f"annotations[{i}] is not an object")
            if ann.get("category_id") != PERSON_CATEGORY_ID or ann.get("iscrowd", 0):
                continue
            if problem := _check_box(uri, f"annotations[{i}]", ann, need_score=False):
                dropped.append({"reason": problem, "image": ann["image_id"], "bbox": ann["bbox"],
                                "where": f"annotations[{i}]"})
                continue
            box_lists.setdefault(int(ann["image_id"]), []).append(ann["bbox"])
            score_lists.setdefault(int(ann["image_id"]), []).append(1.0)
    elif isinstance(data, list):
        file_images = images
        for i, det in enumerate(data):
            if not isinstance(det, Mapping):
                raise _bad(uri, f"item {i} is not an object; expected COCO detection results "
                                "[{image_id, category_id, bbox, score}]")
            if "category_id" not in det:
                raise _bad(uri, f"item {i} has no category_id")
            if det["category_id"] != PERSON_CATEGORY_ID:
                continue
            if problem := _check_box(uri, f"item {i}", det, need_score=True):
                dropped.append({"reason": problem, "image": det["image_id"], "bbox": det["bbox"], "where": f"item {i}"})
                continue
            box_lists.setdefault(int(det["image_id"]), []).append(det["bbox"])
            score_lists.setdefault(int(det["image_id"]), []).append(det["score"])
    else:
        raise _bad(uri, f"neither a COCO annotation file nor a detection-results list (top level is "
                        f"{type(data).__name__})")

    names, ambiguous = (None, set()) if file_images is None else _name_map(uri, file_images)
    boxes = {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in box_lists.items()}
    scores = {k: np.asarray(v, np.float32).reshape(-1) for k, v in score_lists.items()}
    index = BoxIndex(boxes, scores, names, ambiguous, source=uri)
    file_names = {int(info["id"]): str(info["file_name"]) for info in file_images or ()}
    for box in dropped:  # named as people know the image: its file name when the file lists one
        box["image"] = file_names.get(int(box["image"]), f"image id {box['image']}")
    index.dropped = dropped
    return index
