"""Label Studio import tasks from prediction rows: one task per image, its persons as predictions to review.

A task (the file is a JSON list of them, Label Studio's import format):

    {"data": {"image": URL, "image_uri": as annotated, "image_id": (when known), "error": (error rows only)},
     "predictions": [{"model_version": ..., "score": mean person score, "result": [region, ...]}]}

Per person, `result` holds a `rectanglelabels` region (control "person", id `p<i>`) and one `keypointlabels` region
per keypoint (control "keypoints", labelled with the keypoint's name, `parentID` = its person's rectangle, so Label
Studio groups the points under their person). Coordinates are Label Studio's: percentages (0..100) of
`original_width` / `original_height`, which every region carries. Region `score`s are the person's and the keypoint's
scores, the prediction's `score` (Label Studio sorts tasks by it) is the mean person score, absent for an image
without persons; scores are clamped to [0, 1].

Left out: persons scored under `min_person_score` or whose box lies outside the image (boxes are clipped to it);
keypoints scored under `keypoint_threshold` (default 0.3, ViTPose's drawing threshold) and keypoints outside the
image (a reviewer could neither see nor move them).

Error rows become tasks without predictions, their `data.error` saying what failed (so reviewers see them);
`skip_errors` leaves them out instead.

`data.image` is the row's `image_uri` as annotated: a local path, or an `s3://` / `gs://` URI, which Label Studio
resolves through a cloud storage connected to the project. `image_prefixes` rewrites it: the longest OLD prefix that
starts the URI is replaced by NEW (e.g. `/data/photos/` -> `/data/local-files/?d=photos/` for Label Studio's local
files, or `s3://bucket/` -> `https://cdn.example.com/`). Shard members (`shard.tar#member`, `shard.parquet#row`) have
no URL of their own; they are written as annotated.

`label_config(names)` is the labeling config these tasks are made for (control names and labels match).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from xml.sax.saxutils import quoteattr

from vitpose_batch.defaults import KEYPOINT_THRESHOLD
from vitpose_batch.schemas.coco import PredictionRow

IMAGE, PERSON, KEYPOINTS = "image", "person", "keypoints"  # the config's object and control names
POINT_SIZE_PX = 3  # drawn size of a keypoint (Label Studio's `width` of a point, in % of the image width)
DECIMALS = 5  # of a percentage: 1/1000 pixel up to 20,000-pixel images


def label_config(keypoint_names: Sequence[str], box_label: str = "person") -> str:
    """The Label Studio labeling config XML: the image, a rectangle label `box_label`, one keypoint label per name."""
    labels = "".join(f"    <Label value={quoteattr(name)}/>\n" for name in keypoint_names)
    return (f'<View>\n  <Image name="{IMAGE}" value="$image" zoom="true"/>\n'
            f'  <RectangleLabels name="{PERSON}" toName="{IMAGE}">\n    <Label value={quoteattr(box_label)}/>\n'
            f'  </RectangleLabels>\n  <KeyPointLabels name="{KEYPOINTS}" toName="{IMAGE}">\n{labels}'
            '  </KeyPointLabels>\n</View>\n')


def parse_image_prefix(text: str) -> tuple[str, str]:
    """`OLD=NEW` -> (OLD, NEW), split at the first `=` (NEW may hold more, as in `/data/local-files/?d=`)."""
    old, sep, new = text.partition("=")
    if not sep or not old:
        raise ValueError(f"image prefix {text!r} is not OLD=NEW")
    return old, new


def rewrite_uri(uri: str, prefixes: Sequence[tuple[str, str]] = ()) -> str:
    """`uri` with the longest matching OLD prefix replaced by its NEW; unchanged when none matches."""
    matching = [(old, new) for old, new in prefixes if uri.startswith(old)]
    if not matching:
        return uri
    old, new = max(matching, key=lambda pair: len(pair[0]))
    return new + uri[len(old):]


def _percent(value: float, size: int) -> float:
    return round(100.0 * value / size, DECIMALS)


def _score(value: float) -> float:
    return round(min(max(float(value), 0.0), 1.0), 6)


def percent_box(bbox: Sequence[float], width: int, height: int) -> dict | None:
    """A COCO xywh pixel box clipped to the image, as Label Studio's percent x, y, width, height; None when
    nothing of it is inside the image (or it is not finite)."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return {"x": _percent(x0, width), "y": _percent(y0, height), "width": _percent(x1 - x0, width),
            "height": _percent(y1 - y0, height)}


def percent_point(x: float, y: float, width: int, height: int) -> tuple[float, float] | None:
    """A pixel point as Label Studio's percent (x, y); None when it is outside the image (or not finite)."""
    if not (math.isfinite(x) and math.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
        return None
    return _percent(x, width), _percent(y, height)


def person_regions(index: int, bbox: Sequence[float], score: float, keypoints: Sequence[Sequence[float]],
                   keypoint_names: Sequence[str], width: int, height: int, keypoint_threshold: float,
                   box_label: str = "person") -> list[dict]:
    """The regions of one person: its rectangle (id `p<index>`), then its keypoints above the threshold;
    [] when its box is outside the image."""
    box = percent_box(bbox, width, height)
    if box is None:
        return []
    size = {"original_width": width, "original_height": height, "image_rotation": 0}
    parent = f"p{index}"
    regions = [{"id": parent, "from_name": PERSON, "to_name": IMAGE, "type": "rectanglelabels", **size,
                "value": {**box, "rotation": 0, "rectanglelabels": [box_label]}, "score": _score(score)}]
    for k, (x, y, s) in enumerate(keypoints):
        point = percent_point(x, y, width, height)
        if point is None or not s >= keypoint_threshold:  # `not >=`: a NaN score is left out too
            continue
        regions.append({"id": f"{parent}-{k}", "parentID": parent, "from_name": KEYPOINTS, "to_name": IMAGE,
                        "type": "keypointlabels", **size,
                        "value": {"x": point[0], "y": point[1], "width": _percent(POINT_SIZE_PX, width),
                                  "keypointlabels": [keypoint_names[k]]},
                        "score": _score(s)})
    return regions


def task_for_row(row: PredictionRow, keypoint_names: Sequence[str], model_version: str,
                 keypoint_threshold: float = KEYPOINT_THRESHOLD, min_person_score: float = 0.0,
                 image_prefixes: Sequence[tuple[str, str]] = (), box_label: str = "person") -> dict:
    """The Label Studio task of one prediction row (see the module docstring)."""
    data = {"image": rewrite_uri(row.image_uri, image_prefixes), "image_uri": row.image_uri}
    if row.image_id is not None:
        data["image_id"] = int(row.image_id)
    if row.error is not None:
        return {"data": {**data, "error": row.error}}
    result, scores = [], []
    for p, keypoints in enumerate(row.keypoints):
        if len(keypoints) != len(keypoint_names):
            raise ValueError(f"{row.image_uri}: a person has {len(keypoints)} keypoints, the keypoint set has "
                             f"{len(keypoint_names)}")
        score = float(row.scores[p])
        if not score >= min_person_score or row.width <= 0 or row.height <= 0:
            continue
        regions = person_regions(p, row.boxes[p].tolist(), score, keypoints.tolist(), keypoint_names, row.width,
                                 row.height, keypoint_threshold, box_label)
        if regions:
            result += regions
            scores.append(score)
    prediction: dict = {"model_version": model_version, "result": result}
    if scores:
        prediction["score"] = _score(sum(scores) / len(scores))
    return {"data": data, "predictions": [prediction]}


def label_studio_tasks(rows: Iterable[PredictionRow], keypoint_names: Sequence[str], model_version: str,
                       keypoint_threshold: float = KEYPOINT_THRESHOLD, min_person_score: float = 0.0,
                       image_prefixes: Sequence[tuple[str, str]] = (), skip_errors: bool = False,
                       box_label: str = "person", counts: dict[str, int] | None = None) -> Iterator[dict]:
    """One task per row (error rows: see the module docstring). `counts` (filled while the generator runs): rows,
    tasks, error_tasks, skipped_error, persons, keypoints (regions written)."""
    counts = counts if counts is not None else {}
    for key in ("rows", "tasks", "error_tasks", "skipped_error", "persons", "keypoints"):
        counts.setdefault(key, 0)
    for row in rows:
        counts["rows"] += 1
        if row.error is not None and skip_errors:
            counts["skipped_error"] += 1
            continue
        task = task_for_row(row, keypoint_names, model_version, keypoint_threshold, min_person_score,
                            image_prefixes, box_label)
        counts["tasks"] += 1
        counts["error_tasks"] += row.error is not None
        for prediction in task.get("predictions", []):
            types = [region["type"] for region in prediction["result"]]
            counts["persons"] += types.count("rectanglelabels")
            counts["keypoints"] += types.count("keypointlabels")
        yield task
