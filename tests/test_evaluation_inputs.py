"""evaluate's inputs checked before scoring: every unfit ground truth or predictions file is refused in one line naming
the file, the item and the field (exit status 2 from the CLI); missing values with a standard stand-in are filled,
warned about once, and score as pycocotools does on a ground truth with the stand-in written out.

Every case starts from the real coco-val-4 ground truth (test_coco.json) and deletes or corrupts one thing."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from vitpose_batch.cli import main as cli
from vitpose_batch.review.evaluate import METRICS, evaluate
from vitpose_batch.review.evaluation_inputs import EvaluationInputError, check_ground_truth
from vitpose_batch.output.parts import part_metadata, with_metadata
from vitpose_batch.schemas.predictions import make_table
from tests import coco_data
from tests.optional import require
from tests.test_evaluate import pycocotools_directly
from vitpose_core.keypoint_sets import AIC, COCO_WHOLEBODY, get_keypoint_set

require("pycocotools")


def real_ground_truth() -> dict:
    """A fresh copy of coco-val-4's test_coco.json (4 images, 14 person annotations, 12 with keypoints)."""
    return json.loads(coco_data.annotation_file("coco-val-4").read_text())


def write(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def results_of(ground_truth: dict) -> list[dict]:
    """The ground truth's labelled persons as COCO keypoint results (score 1, with their boxes)."""
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 1.0,
             "bbox": list(a["bbox"])}
            for a in ground_truth["annotations"] if a["num_keypoints"] > 0]


def noisy(results: list[dict], seed: int = 0) -> list[dict]:
    """The results moved by a few pixels with random scores: AP strictly between 0 and 1, so stand-ins show."""
    rng = np.random.default_rng(seed)
    out = []
    for r in results:
        kp = np.array(r["keypoints"], np.float64).reshape(-1, 3)
        kp[:, :2] += rng.normal(0, 6, kp[:, :2].shape)
        kp[:, 2] = rng.uniform(0.3, 1, len(kp))
        out.append(dict(r, keypoints=kp.reshape(-1).tolist(), score=float(rng.uniform(0.3, 1))))
    return out


def annotation_item(ground_truth: dict, index: int) -> str:
    return f"annotations[{index}] (id {ground_truth['annotations'][index]['id']})"


def assert_refused(capsys, predictions: str, ground_truth: str, expected: str) -> None:
    """evaluate raises `expected` exactly; the CLI exits 2 with that one line on stderr and nothing on stdout."""
    with pytest.raises(EvaluationInputError) as caught:
        evaluate(predictions, ground_truth)
    assert str(caught.value) == expected
    capsys.readouterr()
    assert cli(["evaluate", predictions, "--ground-truth", ground_truth]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"vitpose-batch evaluate: error: {expected}"]
    assert out == ""


def refuse_ground_truth(tmp_path, capsys, ground_truth: dict, where: str, problem: str) -> None:
    """The (unfit) `ground_truth` is refused with `ground truth '<file>': <where>: <problem>`."""
    gt_file = write(tmp_path / "gt.json", ground_truth)
    predictions = write(tmp_path / "r.json", results_of(real_ground_truth()))
    assert_refused(capsys, predictions, gt_file, f"ground truth {gt_file!r}: {where}: {problem}")


# ----------------------------------------------------------------------------------------------------------------
# Ground truth refused
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
@pytest.mark.parametrize("value, kind", [({}, "an object"), ("x", "a string"), (None, "null")])
def test_ground_truth_sections_not_arrays(tmp_path, capsys, key, value, kind):
    data = real_ground_truth()
    data[key] = value
    refuse_ground_truth(tmp_path, capsys, data, key, f"{kind}, not an array")


@pytest.mark.parametrize("field, index", [("bbox", 0), ("bbox", 7), ("keypoints", 2), ("keypoints", 13),
                                          ("image_id", 5), ("category_id", 9), ("id", 4)])
def test_ground_truth_field_absent(tmp_path, capsys, field, index):
    data = real_ground_truth()
    item = f"annotations[{index}]" if field == "id" else annotation_item(data, index)
    del data["annotations"][index][field]
    problem = "absent (no stand-in: the keypoints' extent is not the person's box)" if field == "bbox" else "absent"
    refuse_ground_truth(tmp_path, capsys, data, f"{item} {field}", problem)


@pytest.mark.parametrize("field, index, value, problem", [
    ("area", 0, "big", '"big" is not a number >= 0'),
    ("area", 4, -5.0, "-5.0 is not a number >= 0"),
    ("area", 8, None, "null is not a number >= 0"),
    ("bbox", 1, [1, 2, "w", 4], '[1, 2, "w", 4] is not [x, y, w, h] with w, h >= 0'),
    ("bbox", 2, [1, 2, 3], "[1, 2, 3] is not [x, y, w, h] with w, h >= 0"),
    ("bbox", 5, [1, 2, -3, 4], "[1, 2, -3, 4] is not [x, y, w, h] with w, h >= 0"),
    ("keypoints", 3, "none", "a string, not an array"),
    ("num_keypoints", 9, "14", '"14" is not an integer >= 0'),
    ("num_keypoints", 10, 2.5, "2.5 is not an integer >= 0"),
    ("iscrowd", 11, "no", '"no" is not 0 or 1'),
    ("iscrowd", 12, 2, "2 is not 0 or 1"),
    ("image_id", 5, "785", '"785" is not an integer'),
    ("category_id", 6, None, "null is not an integer"),
])
def test_ground_truth_field_unfit(tmp_path, capsys, field, index, value, problem):
    data = real_ground_truth()
    data["annotations"][index][field] = value
    refuse_ground_truth(tmp_path, capsys, data, f"{annotation_item(data, index)} {field}", problem)


@pytest.mark.parametrize("index, position", [(7, 4), (0, 50), (12, 0)])
def test_ground_truth_keypoint_not_a_number(tmp_path, capsys, index, position):
    data = real_ground_truth()
    data["annotations"][index]["keypoints"][position] = "x"
    refuse_ground_truth(tmp_path, capsys, data, f"{annotation_item(data, index)} keypoints",
                        f'value {position} ("x") is not a finite number')


def test_ground_truth_annotation_id_not_an_integer(tmp_path, capsys):
    data = real_ground_truth()
    data["annotations"][13]["id"] = 1.5
    refuse_ground_truth(tmp_path, capsys, data, "annotations[13] id", "1.5 is not an integer")


@pytest.mark.parametrize("case", ["not 3 per keypoint", "16 of the category's 17", "no names: 16 after 17",
                                  "no names: 17 after 18"])
def test_ground_truth_keypoints_not_3k(tmp_path, capsys, case):
    data = real_ground_truth()
    annotations = data["annotations"]
    if case == "not 3 per keypoint":
        annotations[2]["keypoints"] = annotations[2]["keypoints"][:50]
        index, problem = 2, "50 values, not 3 (x, y, v) per keypoint"
    elif case == "16 of the category's 17":
        annotations[4]["keypoints"] = annotations[4]["keypoints"][:48]
        index, problem = 4, "48 values, not 3 x 17 (the person category's keypoints)"
    elif case == "no names: 16 after 17":
        del data["categories"][0]["keypoints"]
        annotations[6]["keypoints"] = annotations[6]["keypoints"][:48]
        index, problem = 6, f"48 values, not 3 x 17 ({annotation_item(data, 0)}'s keypoints)"
    else:
        del data["categories"][0]["keypoints"]
        annotations[0]["keypoints"] = annotations[0]["keypoints"] + [0, 0, 0]
        index, problem = 1, f"51 values, not 3 x 18 ({annotation_item(data, 0)}'s keypoints)"
    refuse_ground_truth(tmp_path, capsys, data, f"{annotation_item(data, index)} keypoints", problem)


@pytest.mark.parametrize("categories, names", [
    ([{"id": 1, "name": "people"}], '"people"'),
    ([], "none"),
    ([{"id": 1, "name": "dog"}, {"id": 2, "name": "cat"}], '"dog", "cat"'),
])
def test_ground_truth_without_person_category(tmp_path, capsys, categories, names):
    data = real_ground_truth()
    data["categories"] = categories
    refuse_ground_truth(tmp_path, capsys, data, "categories name",
                        f'no person category (none is named "person"; the names are: {names})')


def test_person_category_keypoints_not_names(tmp_path, capsys):
    data = real_ground_truth()
    data["categories"][0]["keypoints"] = "nose"
    refuse_ground_truth(tmp_path, capsys, data, "categories[0] keypoints", '"nose" is not an array of keypoint names')


@pytest.mark.parametrize("case", ["image_id not in images", "category_id not in categories", "repeated id",
                                  "image without id", "image not an object", "annotation not an object",
                                  "category without id"])
def test_ground_truth_references(tmp_path, capsys, case):
    data = real_ground_truth()
    annotations = data["annotations"]
    if case == "image_id not in images":
        annotations[3]["image_id"] = 999
        where, problem = f"{annotation_item(data, 3)} image_id", "999 is not an id in images"
    elif case == "category_id not in categories":
        annotations[8]["category_id"] = 2
        where, problem = f"{annotation_item(data, 8)} category_id", "2 is not an id in categories"
    elif case == "repeated id":
        annotations[5]["id"] = annotations[1]["id"]
        where, problem = f"{annotation_item(data, 5)} id", "repeats annotations[1]'s id"
    elif case == "image without id":
        del data["images"][2]["id"]
        where, problem = "images[2] id", "absent"
    elif case == "image not an object":
        data["images"][1] = "x"
        where, problem = "images[1]", "a string, not an object"
    elif case == "annotation not an object":
        annotations[4] = []
        where, problem = "annotations[4]", "an array, not an object"
    else:
        del data["categories"][0]["id"]
        where, problem = "categories[0] id", "absent"
    refuse_ground_truth(tmp_path, capsys, data, where, problem)


@pytest.mark.parametrize("data, expected", [([], "a COCO file needs images, annotations and categories"),
                                            ({"images": [], "annotations": []},
                                             "a COCO file needs images, annotations and categories")])
def test_ground_truth_not_a_coco_file(tmp_path, capsys, data, expected):
    gt_file = write(tmp_path / "gt.json", data)
    predictions = write(tmp_path / "r.json", results_of(real_ground_truth()))
    assert_refused(capsys, predictions, gt_file, f"ground truth {gt_file!r}: {expected}")


# ----------------------------------------------------------------------------------------------------------------
# Predictions refused: results JSON
# ----------------------------------------------------------------------------------------------------------------


def drop(field):
    return lambda result: result.pop(field)


def assign(field, value):
    return lambda result: result.__setitem__(field, value)


def cut(length):
    return lambda result: result.__setitem__("keypoints", result["keypoints"][:length])


def spoil_keypoint(position):
    return lambda result: result["keypoints"].__setitem__(position, None)


@pytest.mark.parametrize("index, spoil, field, problem", [
    (3, drop("image_id"), "image_id", "absent"),
    (1, assign("image_id", "785"), "image_id", '"785" is not an integer'),
    (5, drop("keypoints"), "keypoints", "absent"),
    (2, cut(50), "keypoints", "50 values, not 3 (x, y, v) per keypoint"),
    (4, cut(48), "keypoints", "48 values, results[0] has 51 (one keypoint set per file)"),
    (6, spoil_keypoint(7), "keypoints", "value 7 (null) is not a finite number"),
    (7, drop("score"), "score", "absent"),
    (8, assign("score", "high"), "score", '"high" is not a finite number'),
    (9, drop("bbox"), "bbox", "absent while results[0] has one (every result has a box or none does)"),
    (2, assign("bbox", [1, 2, 3]), "bbox", "[1, 2, 3] is not [x, y, w, h] with w, h >= 0"),
    (10, assign("category_id", 2), "category_id", "2 is not the ground truth's person category id 1"),
    (11, assign("box_score", "x"), "box_score", '"x" is not a finite number'),
])
def test_results_json_item_unfit(tmp_path, capsys, index, spoil, field, problem):
    results = results_of(real_ground_truth())
    spoil(results[index])
    predictions = write(tmp_path / "r.json", results)
    gt_file = str(coco_data.annotation_file("coco-val-4"))
    assert_refused(capsys, predictions, gt_file, f"predictions {predictions!r}: results[{index}] {field}: {problem}")


def test_results_json_first_item_sets_box_presence(tmp_path, capsys):
    results = results_of(real_ground_truth())
    del results[0]["bbox"]
    predictions = write(tmp_path / "r.json", results)
    assert_refused(capsys, predictions, str(coco_data.annotation_file("coco-val-4")),
                   f"predictions {predictions!r}: results[1] bbox: present while results[0] has none "
                   "(every result has a box or none does)")


@pytest.mark.parametrize("data, problem", [
    ({"annotations": []}, "a results JSON must be a list of {image_id, category_id, keypoints, score} objects"),
    ([5], "results[0]: a number, not an object"),
])
def test_results_json_not_results(tmp_path, capsys, data, problem):
    predictions = write(tmp_path / "r.json", data)
    assert_refused(capsys, predictions, str(coco_data.annotation_file("coco-val-4")),
                   f"predictions {predictions!r}: {problem}")


# ----------------------------------------------------------------------------------------------------------------
# Keypoint count or set differing between predictions and ground truth
# ----------------------------------------------------------------------------------------------------------------


def padded(results: list[dict], num_keypoints: int) -> list[dict]:
    """The results with as many keypoints as `num_keypoints`: cut, or padded with unscored (0, 0, 0) ones."""
    out = []
    for r in results:
        kp = (r["keypoints"] + [0.0] * 3 * num_keypoints)[:3 * num_keypoints]
        out.append(dict(r, keypoints=kp))
    return out


def ground_truth_of_set(num_keypoints: int, names: tuple[str, ...] | None) -> dict:
    """coco-val-4 cut to the first `num_keypoints` keypoints of every annotation, naming `names` (None: no names)."""
    data = real_ground_truth()
    for annotation in data["annotations"]:
        annotation["keypoints"] = annotation["keypoints"][:3 * num_keypoints]
    if names is None:
        del data["categories"][0]["keypoints"]
    else:
        data["categories"][0]["keypoints"] = list(names)
    return data


@pytest.mark.parametrize("predicted, truth_count, truth_names, expected", [
    (133, 17, "coco", "predictions have 133 keypoints (coco_wholebody), the ground truth's person category has 17 "
                      "(coco)"),
    (17, 14, "aic", "predictions have 17 keypoints (coco), the ground truth's person category has 14 (aic)"),
    (17, 14, None, "predictions have 17 keypoints (coco), the ground truth's person category has 14 (aic)"),
    (16, 17, None, "predictions have 16 keypoints (mpii), the ground truth's person category has 17 (coco)"),
    (14, 17, "coco", "predictions have 14 keypoints (aic), the ground truth's person category has 17 (coco)"),
])
def test_results_json_keypoint_count_differs(tmp_path, capsys, predicted, truth_count, truth_names, expected):
    names = None if truth_names is None else get_keypoint_set(truth_names).keypoint_names
    gt_file = write(tmp_path / "gt.json", ground_truth_of_set(truth_count, names))
    predictions = write(tmp_path / "r.json", padded(results_of(real_ground_truth()), predicted))
    assert_refused(capsys, predictions, gt_file, f"predictions {predictions!r}: results[0] keypoints: {expected}")


def write_output(folder: Path, keypoint_set: str) -> tuple[str, int]:
    """An annotate OUTPUT (one part named `keypoint_set` in its metadata) whose persons are coco-val-4's labelled
    ones with that set's keypoint count; returns it and the image id of its first person."""
    kset = get_keypoint_set(keypoint_set)
    data = real_ground_truth()
    rows = []
    for image in sorted(data["images"], key=lambda i: i["id"]):
        persons = [{"bbox": r["bbox"], "box_score": 1.0, "score": 1.0, "keypoints": r["keypoints"]}
                   for r in padded(results_of(data), kset.num_keypoints) if r["image_id"] == image["id"]]
        rows.append({"image_uri": f"/images/{image['file_name']}", "image_id": image["id"], "width": image["width"],
                     "height": image["height"], "persons": persons, "error": None})
    table = make_table(*([r[k] for r in rows] for k in ("image_uri", "image_id", "width", "height", "persons",
                                                        "error")))
    metadata = part_metadata({}, kset.keypoint_names, keypoint_set, "test", "run0")
    folder.mkdir()
    pq.write_table(with_metadata(table, metadata), folder / "part-run0-00000.parquet")
    first = next(r["image_id"] for r in rows if r["persons"])
    return str(folder), first


def test_output_keypoint_count_differs(tmp_path, capsys):
    """ViTPose++ COCO-WholeBody predictions (an annotate OUTPUT) against the 17-keypoint COCO ground truth."""
    output, first = write_output(tmp_path / "out", COCO_WHOLEBODY.name)
    assert_refused(capsys, output, str(coco_data.annotation_file("coco-val-4")),
                   f"predictions {output!r}: image_id {first} person 0 keypoints: predictions have 133 keypoints "
                   "(coco_wholebody), the ground truth's person category has 17 (coco)")


@pytest.mark.parametrize("keypoint_set", ["ap10k", "apt36k"])
def test_output_keypoint_set_differs(tmp_path, capsys, keypoint_set):
    """17 keypoints either way, but the OUTPUT names an animal set and the ground truth names COCO's keypoints."""
    output, _ = write_output(tmp_path / "out", keypoint_set)
    assert_refused(capsys, output, str(coco_data.annotation_file("coco-val-4")),
                   f"predictions {output!r}: vitpose.keypoint_set: predictions have 17 keypoints ({keypoint_set}), "
                   "the ground truth's person category has 17 (coco): the keypoint sets differ")


def test_output_with_the_ground_truths_set_scores(tmp_path):
    output, _ = write_output(tmp_path / "out", "coco")
    assert evaluate(output, str(coco_data.annotation_file("coco-val-4")))["AP"] == pytest.approx(1.0)


def test_aic_ground_truth_with_aic_predictions_scores(tmp_path):
    """The 17-vs-14 refusal is about the mismatch: 14 against 14 (AIC names) is scored."""
    gt_file = write(tmp_path / "gt.json", ground_truth_of_set(14, AIC.keypoint_names))
    predictions = write(tmp_path / "r.json", padded(results_of(real_ground_truth()), 14))
    assert evaluate(predictions, gt_file, raw=True)["AP"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------------
# Stand-ins: filled, warned about once, scored as pycocotools scores them written out
# ----------------------------------------------------------------------------------------------------------------


def box_area(annotation: dict) -> float:
    return annotation["bbox"][2] * annotation["bbox"][3]


def visible_count(annotation: dict) -> int:
    return sum(1 for v in annotation["keypoints"][2::3] if v > 0)


STAND_INS = {  # field -> (the value written out in its place, the words of the warning)
    "area": (box_area, "the box's w x h (above a segmentation's area: OKS is more lenient)"),
    "iscrowd": (lambda annotation: 0, "0 (not a crowd)"),
    "num_keypoints": (visible_count, "the count of keypoints with visibility > 0"),
}


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vitpose_batch.review.evaluate" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("field", sorted(STAND_INS))
@pytest.mark.parametrize("which", ["all", "every other", "one"])
def test_stand_in_scores_as_written_out(tmp_path, caplog, field, which):
    stand_in, words = STAND_INS[field]
    data = real_ground_truth()
    chosen = {"all": range(14), "every other": range(1, 14, 2), "one": [7]}[which]
    written_out = copy.deepcopy(data)
    for i in chosen:
        del data["annotations"][i][field]
        written_out["annotations"][i][field] = stand_in(written_out["annotations"][i])
    gt_file = write(tmp_path / "gt.json", data)
    explicit_file = write(tmp_path / "explicit.json", written_out)
    results_file = write(tmp_path / "r.json", noisy(results_of(real_ground_truth())))

    with caplog.at_level(logging.WARNING, logger="vitpose_batch.review.evaluate"):
        report = evaluate(results_file, gt_file, raw=True)
    direct = pycocotools_directly(explicit_file, results_file)
    assert 0.0 < report["AP"] < 1.0
    np.testing.assert_allclose([report[m] for m in METRICS], direct, rtol=0, atol=1e-12)
    first = annotation_item(data, chosen[0])
    assert warnings_of(caplog) == [f"ground truth {gt_file!r}: {len(chosen)} person annotations without {field} "
                                   f"(first {first}): {words} stands in"]
    assert check_ground_truth(data, gt_file).dataset["annotations"] == written_out["annotations"]
    # ViTPose's protocol reads the same ground truth
    protocol = evaluate(results_file, gt_file)
    assert protocol["AP"] == pytest.approx(evaluate(results_file, explicit_file)["AP"], abs=1e-12)


def test_area_stand_in_changes_the_score(tmp_path):
    """Guard on the stand-in tests: had the area been left as COCO's, AP would differ, so they can fail."""
    data = real_ground_truth()
    for annotation in data["annotations"]:
        annotation["area"] = box_area(annotation)
    results_file = write(tmp_path / "r.json", noisy(results_of(real_ground_truth())))
    boxed = pycocotools_directly(write(tmp_path / "boxed.json", data), results_file)
    coco = pycocotools_directly(str(coco_data.annotation_file("coco-val-4")), results_file)
    assert boxed[0] != pytest.approx(coco[0], abs=1e-6)


@pytest.mark.parametrize("indices", [[0], [1, 4, 9]])
def test_results_category_id_stand_in(tmp_path, caplog, indices):
    results = noisy(results_of(real_ground_truth()))
    for i in indices:
        del results[i]["category_id"]
    results_file = write(tmp_path / "r.json", results)
    explicit_file = write(tmp_path / "explicit.json", [dict(r, category_id=1) for r in results])
    gt_file = str(coco_data.annotation_file("coco-val-4"))
    with caplog.at_level(logging.WARNING, logger="vitpose_batch.review.evaluate"):
        report = evaluate(results_file, gt_file, raw=True)
    np.testing.assert_allclose([report[m] for m in METRICS], pycocotools_directly(gt_file, explicit_file),
                               rtol=0, atol=1e-12)
    assert warnings_of(caplog) == [f"predictions {results_file!r}: {len(indices)} results without category_id "
                                   f"(first results[{indices[0]}]): the ground truth's person category id 1 "
                                   "stands in"]


@pytest.mark.parametrize("indices", [[0], [2, 5, 7]])
def test_zero_area_is_warned_with_its_count(tmp_path, caplog, indices):
    data = real_ground_truth()
    labelled = [i for i, a in enumerate(data["annotations"]) if a["num_keypoints"] > 0]
    for i in (labelled[j] for j in indices):
        data["annotations"][i]["area"] = 0
    gt_file = write(tmp_path / "gt.json", data)
    results_file = write(tmp_path / "r.json", noisy(results_of(real_ground_truth())))
    with caplog.at_level(logging.WARNING, logger="vitpose_batch.review.evaluate"):
        report = evaluate(results_file, gt_file, raw=True)
    np.testing.assert_allclose([report[m] for m in METRICS], pycocotools_directly(gt_file, results_file),
                               rtol=0, atol=1e-12)
    first = annotation_item(data, labelled[indices[0]])
    assert warnings_of(caplog) == [f"ground truth {gt_file!r}: {len(indices)} person annotations with labelled "
                                   f"keypoints have area 0 (first {first}): every OKS with them is 0"]


def test_fit_inputs_warn_nothing(tmp_path, caplog):
    results_file = write(tmp_path / "r.json", results_of(real_ground_truth()))
    with caplog.at_level(logging.WARNING, logger="vitpose_batch.review.evaluate"):
        assert evaluate(results_file, str(coco_data.annotation_file("coco-val-4")))["AP"] == pytest.approx(1.0)
    assert warnings_of(caplog) == []
