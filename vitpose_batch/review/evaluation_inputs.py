"""Checks of `evaluate`'s two inputs before anything is scored: a COCO keypoints ground truth and COCO keypoint results.

Pure functions over the loaded JSON (the inputs are never changed). A refusal is an `EvaluationInputError`, a
ValueError the CLI prints as one line (exit status 2), naming the file, the item and the field:

    ground truth 'gt.json': annotations[12] (id 345) area: "big" is not a number >= 0
    predictions 'r.json': results[0] keypoints: predictions have 133 keypoints (coco_wholebody), the ground
    truth's person category has 17 (coco)

Where a missing value has a standard stand-in, the checked copy carries it and ONE warning line per field says how
many items got it (the caller logs the lines once every check has passed, so a refusal stays the only line).

Ground truth (`check_ground_truth`): `images`, `annotations`, `categories` are arrays; every image has an integer
`id`; one category is named "person" (COCOeval is scoped to it); every annotation has a unique integer `id`, an
`image_id` of an image in `images` and a `category_id` of a category in `categories`. Person annotations also need
`keypoints` (3 numbers per keypoint of the person category: its `keypoints` names, else the first annotation's count)
and `bbox` (4 numbers, w and h >= 0; refused when absent: the keypoints' extent is not the person's box). Stand-ins:
absent `area` -> the box's w x h; absent `iscrowd` -> 0; absent `num_keypoints` -> the count of keypoints with
visibility > 0. Person annotations with labelled keypoints whose `area` is 0 are warned about (every OKS with them
is 0).

Predictions (`check_results`): every result has an integer `image_id`, `keypoints` (finite numbers, 3 per keypoint,
the same count in every result, and the ground truth person category's count and keypoint set) and a finite
`score`; `bbox` (4 numbers) in every result or in none; `box_score` a number where present. `category_id` must be
the person category's id; absent, that id stands in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from vitpose_core.keypoint_sets import KEYPOINT_SETS

GROUND_TRUTH = "ground truth"
PREDICTIONS = "predictions"
PERSON = "person"


class EvaluationInputError(ValueError):
    """A predictions or ground-truth file unfit for scoring; the message is one line naming file, item and field."""


@dataclass(frozen=True)
class PersonCategory:
    """The ground truth's person category: its id and keypoint layout.

    keypoint_names: the category's `keypoints` (() when it names none); num_keypoints: their count, else the count
    of the person annotations' keypoints, None when neither tells."""

    id: int
    keypoint_names: tuple[str, ...]
    num_keypoints: int | None


class CheckedGroundTruth(NamedTuple):
    dataset: dict  # the ground truth with the stand-ins written (changed annotations are copies)
    person: PersonCategory
    warnings: list[str]  # one line per stand-in field, plus the zero-area count


class CheckedResults(NamedTuple):
    results: list[dict]  # the results with the stand-ins written (changed results are copies)
    warnings: list[str]


# ----------------------------------------------------------------------------------------------------------------
# Values and messages
# ----------------------------------------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    """A JSON number with no fractional part (785 or 785.0)."""
    return is_number(value) and float(value).is_integer()


def json_type(value: Any) -> str:
    """How JSON names the type of `value`: an object, an array, a string, a number, a boolean, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    for kind, name in ((dict, "an object"), (list, "an array"), (str, "a string"), ((int, float), "a number")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def shown(value: Any, limit: int = 40) -> str:
    """`value` as the message quotes it: as JSON writes it, cut to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refusal(what: str, source: str, item: str, field: str, problem: str) -> EvaluationInputError:
    """`<what> '<source>': <item> <field>: <problem>` as an EvaluationInputError (item or field may be empty)."""
    where = " ".join(part for part in (item, field) if part)
    return EvaluationInputError(f"{what} {source!r}: {where}: {problem}")


def set_label(num_keypoints: int | None, names: Sequence[str] = ()) -> str:
    """The keypoint set a layout is: the known set with these names, else the first known set with this count."""
    if names:
        found = next((ks.name for ks in KEYPOINT_SETS.values() if ks.keypoint_names == tuple(names)), None)
        return found or "its own keypoint names"
    found = next((ks.name for ks in KEYPOINT_SETS.values() if ks.num_keypoints == num_keypoints), None)
    return found or "no known keypoint set"


class StandIns:
    """Counts, per field, the items given a stand-in, and words them as one warning line each."""

    def __init__(self, what: str, source: str) -> None:
        self.what, self.source = what, source
        self.fields: dict[str, tuple[int, str, str]] = {}  # field -> (count, first item, what stood in)

    def add(self, field: str, item: str, stand_in: str) -> None:
        count, first, _ = self.fields.get(field, (0, item, stand_in))
        self.fields[field] = (count + 1, first, stand_in)

    def lines(self, noun: str) -> list[str]:
        return [f"{self.what} {self.source!r}: {count} {noun} without {field} (first {first}): {stand_in} stands in"
                for field, (count, first, stand_in) in self.fields.items()]


# ----------------------------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------------------------


def check_ground_truth(data: Any, source: str) -> CheckedGroundTruth:
    """Check a loaded COCO keypoints ground truth (see the module docstring) and write its stand-ins.

    Raises EvaluationInputError naming `source`, the item and the field: a file that is not an object with
    `images`, `annotations` and `categories`; any of them not an array; an image without an integer `id`; no
    person category; an annotation without a unique integer `id`, with an `image_id` not in images or a
    `category_id` not in categories; a person annotation whose `keypoints`, `bbox`, `area`, `num_keypoints` or
    `iscrowd` is present but unfit, whose `keypoints` or `bbox` is absent, or whose keypoint count is not the
    person category's."""
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= data.keys():
        raise EvaluationInputError(f"{GROUND_TRUTH} {source!r}: a COCO file needs images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise refusal(GROUND_TRUTH, source, "", key, f"{json_type(data[key])}, not an array")
    image_ids = checked_image_ids(data["images"], source)
    category_ids, person_id, names = checked_categories(data["categories"], source)
    stand_ins = StandIns(GROUND_TRUTH, source)
    annotations, num_keypoints, zero_area = checked_annotations(
        data["annotations"], source, image_ids, category_ids, person_id, names, stand_ins)
    warnings = stand_ins.lines("person annotations")
    if zero_area:
        warnings.append(f"{GROUND_TRUTH} {source!r}: {len(zero_area)} person annotations with labelled keypoints "
                        f"have area 0 (first {zero_area[0]}): every OKS with them is 0")
    person = PersonCategory(person_id, names, num_keypoints)
    return CheckedGroundTruth({**data, "annotations": annotations}, person, warnings)


def checked_image_ids(images: list, source: str) -> set:
    """The ids of `images`; EvaluationInputError for an image that is not an object or has no integer `id`."""
    ids = set()
    for i, image in enumerate(images):
        item = f"images[{i}]"
        if not isinstance(image, dict):
            raise refusal(GROUND_TRUTH, source, item, "", f"{json_type(image)}, not an object")
        ids.add(required_integer(image, "id", item, GROUND_TRUTH, source))
    return ids


def checked_categories(categories: list, source: str) -> tuple[set, int, tuple[str, ...]]:
    """(category ids, the person category's id, its keypoint names); EvaluationInputError for a category without an
    integer `id`, a person category whose `keypoints` is not an array of strings, or no category named "person"."""
    ids, person = set(), None
    for i, category in enumerate(categories):
        item = f"categories[{i}]"
        if not isinstance(category, dict):
            raise refusal(GROUND_TRUTH, source, item, "", f"{json_type(category)}, not an object")
        ids.add(required_integer(category, "id", item, GROUND_TRUTH, source))
        if person is None and str(category.get("name", "")).lower() == PERSON:
            person = (i, category)
    if person is None:
        names = ", ".join(shown(c.get("name")) for c in categories) or "none"
        raise refusal(GROUND_TRUTH, source, "categories", "name",
                      f"no person category (none is named \"person\"; the names are: {names})")
    i, category = person
    names = category.get("keypoints") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise refusal(GROUND_TRUTH, source, f"categories[{i}]", "keypoints",
                      f"{shown(names)} is not an array of keypoint names")
    return ids, category["id"], tuple(names)


def required_integer(obj: dict, field: str, item: str, what: str, source: str) -> Any:
    """`obj[field]`; EvaluationInputError when it is absent or not an integer."""
    if field not in obj:
        raise refusal(what, source, item, field, "absent")
    value = obj[field]
    if not is_integer(value):
        raise refusal(what, source, item, field, f"{shown(value)} is not an integer")
    return value


def annotation_item(index: int, annotation: dict) -> str:
    """`annotations[12] (id 345)`, or `annotations[12]` when the id is not an integer."""
    ann_id = annotation.get("id")
    return f"annotations[{index}] (id {ann_id})" if is_integer(ann_id) else f"annotations[{index}]"


def checked_annotations(annotations: list, source: str, image_ids: set, category_ids: set, person_id: Any,
                        names: tuple[str, ...], stand_ins: StandIns) -> tuple[list[dict], int | None, list[str]]:
    """(annotations with stand-ins, the person keypoint count, items of labelled persons with area 0); see
    `check_ground_truth` for the EvaluationInputError raised."""
    checked, seen_ids, zero_area = [], {}, []
    num_keypoints = len(names) or None
    counted_from = "the person category's keypoints" if names else None
    for i, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            raise refusal(GROUND_TRUTH, source, f"annotations[{i}]", "", f"{json_type(annotation)}, not an object")
        item = annotation_item(i, annotation)
        check_references(annotation, item, source, image_ids, category_ids, seen_ids, i)
        if annotation["category_id"] != person_id:
            checked.append(annotation)
            continue
        if num_keypoints is None and isinstance(annotation.get("keypoints"), list):
            num_keypoints, counted_from = len(annotation["keypoints"]) // 3, f"{item}'s keypoints"
        annotation = checked_person(annotation, item, source, num_keypoints, counted_from, stand_ins)
        if annotation["area"] == 0 and annotation["num_keypoints"] > 0 and not annotation["iscrowd"]:
            zero_area.append(item)
        checked.append(annotation)
    return checked, num_keypoints, zero_area


def check_references(annotation: dict, item: str, source: str, image_ids: set, category_ids: set, seen_ids: dict,
                     index: int) -> None:
    """EvaluationInputError unless the annotation's `id` is a new integer, `image_id` an id of images and
    `category_id` an id of categories; records the id in `seen_ids`."""
    ann_id = required_integer(annotation, "id", item, GROUND_TRUTH, source)
    if ann_id in seen_ids:
        raise refusal(GROUND_TRUTH, source, item, "id", f"repeats annotations[{seen_ids[ann_id]}]'s id")
    seen_ids[ann_id] = index
    if required_integer(annotation, "image_id", item, GROUND_TRUTH, source) not in image_ids:
        raise refusal(GROUND_TRUTH, source, item, "image_id", f"{annotation['image_id']} is not an id in images")
    if required_integer(annotation, "category_id", item, GROUND_TRUTH, source) not in category_ids:
        raise refusal(GROUND_TRUTH, source, item, "category_id",
                      f"{annotation['category_id']} is not an id in categories")


def checked_person(annotation: dict, item: str, source: str, num_keypoints: int | None, counted_from: str | None,
                   stand_ins: StandIns) -> dict:
    """The person annotation, a copy with its stand-ins where it lacks `area`, `iscrowd` or `num_keypoints`;
    EvaluationInputError for unfit `keypoints`, `bbox`, `area`, `num_keypoints` or `iscrowd`."""
    keypoints = checked_keypoints(annotation, item, GROUND_TRUTH, source)
    if num_keypoints is not None and len(keypoints) != 3 * num_keypoints:
        raise refusal(GROUND_TRUTH, source, item, "keypoints",
                      f"{len(keypoints)} values, not 3 x {num_keypoints} ({counted_from})")
    box = checked_box(annotation, item, GROUND_TRUTH, source)
    filled = {}
    if "area" not in annotation:
        filled["area"] = box[2] * box[3]
        stand_ins.add("area", item, "the box's w x h (above a segmentation's area: OKS is more lenient)")
    elif not is_number(annotation["area"]) or annotation["area"] < 0:
        raise refusal(GROUND_TRUTH, source, item, "area", f"{shown(annotation['area'])} is not a number >= 0")
    if "iscrowd" not in annotation:
        filled["iscrowd"] = 0
        stand_ins.add("iscrowd", item, "0 (not a crowd)")
    elif not (is_integer(annotation["iscrowd"]) and annotation["iscrowd"] in (0, 1)):
        raise refusal(GROUND_TRUTH, source, item, "iscrowd", f"{shown(annotation['iscrowd'])} is not 0 or 1")
    if "num_keypoints" not in annotation:
        filled["num_keypoints"] = sum(1 for v in keypoints[2::3] if v > 0)
        stand_ins.add("num_keypoints", item, "the count of keypoints with visibility > 0")
    elif not is_integer(annotation["num_keypoints"]) or annotation["num_keypoints"] < 0:
        raise refusal(GROUND_TRUTH, source, item, "num_keypoints",
                      f"{shown(annotation['num_keypoints'])} is not an integer >= 0")
    return {**annotation, **filled} if filled else annotation


def checked_keypoints(value: dict, item: str, what: str, source: str) -> list:
    """`value["keypoints"]`; EvaluationInputError unless it is an array of finite numbers, 3 per keypoint."""
    if "keypoints" not in value:
        raise refusal(what, source, item, "keypoints", "absent")
    keypoints = value["keypoints"]
    if not isinstance(keypoints, list):
        raise refusal(what, source, item, "keypoints", f"{json_type(keypoints)}, not an array")
    if not all(map(is_number, keypoints)):
        bad = next(i for i, v in enumerate(keypoints) if not is_number(v))
        raise refusal(what, source, item, "keypoints", f"value {bad} ({shown(keypoints[bad])}) is not a finite number")
    if len(keypoints) % 3:
        raise refusal(what, source, item, "keypoints", f"{len(keypoints)} values, not 3 (x, y, v) per keypoint")
    return keypoints


def checked_box(value: dict, item: str, what: str, source: str) -> list:
    """`value["bbox"]`; EvaluationInputError unless it is [x, y, w, h] of finite numbers with w, h >= 0."""
    if "bbox" not in value:
        no_stand_in = " (no stand-in: the keypoints' extent is not the person's box)" if what == GROUND_TRUTH else ""
        raise refusal(what, source, item, "bbox", f"absent{no_stand_in}")
    box = value["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box) and min(box[2:]) >= 0):
        raise refusal(what, source, item, "bbox", f"{shown(box)} is not [x, y, w, h] with w, h >= 0")
    return box


# ----------------------------------------------------------------------------------------------------------------
# Predictions
# ----------------------------------------------------------------------------------------------------------------


def result_items(index: int) -> str:
    """How a results JSON names its items: `results[12]`."""
    return f"results[{index}]"


def person_items(results: Sequence[dict]) -> Callable[[int], str]:
    """How an annotate OUTPUT's results are named: `image_id 785 person 2` (the image's third person)."""
    ordinals, seen = [], {}
    for r in results:
        ordinals.append(seen.get(r.get("image_id"), 0))
        seen[r.get("image_id")] = ordinals[-1] + 1
    return lambda index: f"image_id {results[index].get('image_id')} person {ordinals[index]}"


def check_results(results: Any, source: str, person: PersonCategory, predicted_set: str | None = None,
                  items: Callable[[int], str] = result_items) -> CheckedResults:
    """Check COCO keypoint results against the ground truth's person category (see the module docstring) and write
    the `category_id` stand-in.

    predicted_set: the keypoint set the predictions name (an annotate OUTPUT's `vitpose.keypoint_set`), None when
    they name none; items: how the message names result i.
    Raises EvaluationInputError naming `source`, the item and the field: results not an array; a result that is not
    an object, without an integer `image_id`, with a `category_id` other than the person category's, without
    `keypoints` of finite numbers (3 per keypoint, as many as the first result's), without a finite `score`, with
    a `bbox` not [x, y, w, h] or absent while the first result has one (or the reverse), or a non-number
    `box_score`; keypoints whose count or set is not the person category's."""
    if not isinstance(results, list):
        raise refusal(PREDICTIONS, source, "", "", f"{json_type(results)}, not an array of results")
    stand_ins = StandIns(PREDICTIONS, source)
    checked = [checked_result(r, i, items, source, person.id, results[0], stand_ins) for i, r in enumerate(results)]
    if checked:
        check_keypoint_sets(len(checked[0]["keypoints"]) // 3, predicted_set, person, items(0), source)
    return CheckedResults(checked, stand_ins.lines("results"))


def checked_result(result: Any, index: int, items: Callable[[int], str], source: str, person_id: Any, first: Any,
                   stand_ins: StandIns) -> dict:
    """One result, a copy with the person category's id when it has no `category_id`; see `check_results`."""
    item = items(index)
    if not isinstance(result, dict):
        raise refusal(PREDICTIONS, source, item, "", f"{json_type(result)}, not an object")
    required_integer(result, "image_id", item, PREDICTIONS, source)
    keypoints = checked_keypoints(result, item, PREDICTIONS, source)
    first_count = len(first["keypoints"])  # checked first: results[0] is checked before any other
    if len(keypoints) != first_count:
        raise refusal(PREDICTIONS, source, item, "keypoints",
                      f"{len(keypoints)} values, {items(0)} has {first_count} (one keypoint set per file)")
    if not is_number(result.get("score")):
        problem = "absent" if "score" not in result else f"{shown(result['score'])} is not a finite number"
        raise refusal(PREDICTIONS, source, item, "score", problem)
    if ("bbox" in result) != ("bbox" in first):
        raise refusal(PREDICTIONS, source, item, "bbox",
                      f"{'present' if 'bbox' in result else 'absent'} while {items(0)} "
                      f"{'has none' if 'bbox' in result else 'has one'} (every result has a box or none does)")
    if "bbox" in result:
        checked_box(result, item, PREDICTIONS, source)
    if "box_score" in result and not is_number(result["box_score"]):
        raise refusal(PREDICTIONS, source, item, "box_score", f"{shown(result['box_score'])} is not a finite number")
    if "category_id" not in result:
        stand_ins.add("category_id", item, f"the ground truth's person category id {person_id}")
        return {**result, "category_id": person_id}
    if result["category_id"] != person_id or isinstance(result["category_id"], bool):
        raise refusal(PREDICTIONS, source, item, "category_id",
                      f"{shown(result['category_id'])} is not the ground truth's person category id {person_id}")
    return result


def check_keypoint_sets(num_keypoints: int, predicted_set: str | None, person: PersonCategory, item: str,
                        source: str) -> None:
    """EvaluationInputError when the predictions' keypoint count or named set is not the person category's."""
    named = KEYPOINT_SETS.get(predicted_set or "")
    if named is not None and named.num_keypoints != num_keypoints:
        named = None  # the parts' metadata disagrees with their keypoints: the count is what gets scored
    predicted = named.name if named is not None else set_label(num_keypoints)
    truth = f"the ground truth's person category has {person.num_keypoints} " \
            f"({set_label(person.num_keypoints, person.keypoint_names)})"
    if person.num_keypoints is not None and num_keypoints != person.num_keypoints:
        raise refusal(PREDICTIONS, source, item, "keypoints",
                      f"predictions have {num_keypoints} keypoints ({predicted}), {truth}")
    if named is not None and person.keypoint_names and named.keypoint_names != person.keypoint_names:
        raise refusal(PREDICTIONS, source, "", "vitpose.keypoint_set",
                      f"predictions have {num_keypoints} keypoints ({predicted}), {truth}: the keypoint sets differ")
