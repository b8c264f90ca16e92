"""Evaluation stage: COCO keypoint AP of predictions against a COCO ground truth, with pycocotools.

Protocols:
  * default, ViTPose's: person score = box score x mean of the keypoint scores above 0.2, then OKS-NMS per image at
    0.9 with the dataset's sigmas (OKS areas from the padded person box, as mmpose computes them), then COCOeval;
  * raw (`--raw`): the predictions exactly as given, scored by COCOeval as pycocotools would run it directly.

PREDICTIONS is an annotate OUTPUT (Parquet, local or object storage) or a COCO keypoint results JSON. Predictions for
images the ground truth does not have are counted, reported and left out; ground-truth images without predictions
count as misses.

Sigmas (NMS and COCOeval) are those of the predictions' keypoint set: an annotate OUTPUT's parts name it
(`vitpose.keypoint_set`); for a results JSON (or parts without it) the ground truth's keypoint names pick the set they
equal, else the keypoint count does (17 COCO, 133 COCO-WholeBody, 16 MPII, 14 AIC).

Both inputs are checked before anything is scored (`vitpose_batch.review.evaluation_inputs`): an unfit file is refused in one line
naming the file, the item and the field; a missing value with a standard stand-in (a ground-truth annotation's `area`,
`iscrowd`, `num_keypoints`, a result's `category_id`) is filled and logged as one warning line per field. COCOeval is
scoped to the ground truth's person category.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import defaultdict

import numpy as np

from vitpose_batch.files.storage import read_json
from vitpose_batch.output.layout import Output
from vitpose_batch.output.parts import iter_part_tables, part_provenances
from vitpose_batch.output.provenance import load_record
from vitpose_batch.review.evaluation_inputs import (
    PERSON,
    CheckedGroundTruth,
    EvaluationInputError,
    check_ground_truth,
    check_results,
    person_items,
)
from vitpose_batch.review.export import check_predictions, part_metadata_of
from vitpose_batch.review.oks import oks_nms, padded_box_areas
from vitpose_batch.schemas.coco import coco_results
from vitpose_core.heatmap_decoding import rescore
from vitpose_core.keypoint_sets import (
    COCO,
    KEYPOINT_SETS,
    KeypointSet,
    get_keypoint_set,
    keypoint_set_for_count,
)

METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")

log = logging.getLogger(__name__)


def vitpose_protocol(results: list[dict], sigmas: np.ndarray) -> list[dict]:
    """Rescore and OKS-NMS the results of each image (see the module docstring); returns the kept results."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for r in results:
        by_image[r["image_id"]].append(r)
    kept = []
    for image_results in by_image.values():
        keypoints = np.array([r["keypoints"] for r in image_results], np.float64).reshape(len(image_results), -1, 3)
        box_scores = np.array([r.get("box_score", r["score"]) for r in image_results], np.float64)
        scores = rescore(box_scores, keypoints[..., 2]).astype(np.float64)
        if all("bbox" in r for r in image_results):
            areas = padded_box_areas(np.array([r["bbox"] for r in image_results], np.float32))
        else:  # a results file without boxes: the keypoints' extent, as pycocotools itself would take it
            extent = keypoints[..., :2].max(1) - keypoints[..., :2].min(1)
            areas = extent[:, 0] * extent[:, 1]
        for i in oks_nms(keypoints, scores, areas, sigmas):
            kept.append(dict(image_results[i], score=float(scores[i])))
    return kept


def is_results_json(predictions: Output) -> bool:
    """Whether PREDICTIONS names a COCO results JSON (read as a file, with `read_json`) rather than parts."""
    return predictions.folder.endswith(".json")


def load_results(predictions: Output) -> tuple[list[dict], dict]:
    """COCO keypoint results from an annotate OUTPUT or a results JSON, plus the job record (`_job.json`) if any."""
    if is_results_json(predictions):
        results = read_json(predictions.uri, "predictions", EvaluationInputError)
        if not isinstance(results, list):  # what each result needs is `check_results`' to say, item by item
            raise EvaluationInputError(f"predictions {predictions.uri!r}: a results JSON must be a list of "
                                       "{image_id, category_id, keypoints, score} objects")
        return results, {}
    check_predictions(predictions)
    results = list(coco_results(iter_part_tables(predictions)))
    job = {}
    if not predictions.folder.endswith(".parquet"):
        job = load_record(predictions) or {}
    return results, job


def detector_of_every_row(predictions: Output, job: dict) -> str | None:
    """The detector that made every row of an annotate OUTPUT, or None: only then is its box AP the detector's.

    The job record names the OUTPUT's detector; each part's own provenance must agree (parts written before parts
    carried provenance, or with ground-truth boxes, do not count as the detector's)."""
    settings = job.get("settings")
    if not settings or not settings.get("detector"):
        return None
    for found in part_provenances(predictions):
        if not found or found.get("detector") != settings["detector"] \
                or found.get("detector_fingerprint") != settings.get("detector_fingerprint"):
            return None
    return settings["detector"]


def run_cocoeval(ground_truth, results: list[dict], iou_type: str, sigmas: np.ndarray | None = None,
                 category_id: int | None = None) -> np.ndarray:
    """COCOeval stats over every ground-truth image (images without predictions count as misses), of `category_id`
    alone when given."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        detections = ground_truth.loadRes(copy.deepcopy(results)) if results else None
        if detections is None:
            return np.zeros(10)
        evaluator = COCOeval(ground_truth, detections, iou_type)
        evaluator.params.imgIds = sorted(ground_truth.getImgIds())
        if category_id is not None:
            evaluator.params.catIds = [category_id]
        if sigmas is not None and iou_type == "keypoints":
            evaluator.params.kpt_oks_sigmas = sigmas
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def read_ground_truth(uri: str) -> CheckedGroundTruth:
    """The COCO keypoints ground truth at `uri`, checked and with its stand-ins (`vitpose_batch.review.evaluation_inputs`); raises
    EvaluationInputError (one line: file, item, field) when it is unreadable or unfit."""
    return check_ground_truth(read_json(uri, "ground truth", EvaluationInputError), uri)


def coco_api(dataset: dict):
    """pycocotools' COCO over a loaded (and checked) ground truth."""
    from pycocotools.coco import COCO

    ground_truth = COCO()
    ground_truth.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth.createIndex()
    return ground_truth


def load_ground_truth(uri: str):
    """pycocotools' COCO of the checked ground truth at `uri` (its stand-ins logged); EvaluationInputError as
    `read_ground_truth`."""
    checked = read_ground_truth(uri)
    for line in checked.warnings:
        log.warning(line)
    return coco_api(checked.dataset)


def checked_results(predictions: Output, results: list, truth: CheckedGroundTruth) -> tuple[list[dict], list[str]]:
    """The results, checked against the ground truth's person category (`vitpose_batch.review.evaluation_inputs.check_results`),
    and their warning lines; EvaluationInputError names the file, the result and the field that are unfit."""
    if is_results_json(predictions):
        return check_results(results, predictions.uri, truth.person)
    for result in results:  # an OUTPUT's persons are the person category's, whatever its id
        result["category_id"] = truth.person.id
    named = part_metadata_of(predictions).get("vitpose.keypoint_set")
    return check_results(results, predictions.uri, truth.person, named, person_items(results))


def predictions_keypoint_set(predictions: Output, ground_truth, results: list[dict]) -> KeypointSet:
    """The keypoint set whose sigmas score `results` (see the module docstring); ValueError when the predictions'
    keypoint count is not the set's."""
    num_keypoints = len(results[0]["keypoints"]) // 3 if results else None
    name = None if is_results_json(predictions) else part_metadata_of(predictions).get("vitpose.keypoint_set")
    if name is None:
        categories = [c for c in ground_truth.loadCats(ground_truth.getCatIds())
                      if str(c.get("name", "")).lower() == PERSON]
        names = tuple(categories[0].get("keypoints") or ()) if categories else ()
        name = next((ks.name for ks in KEYPOINT_SETS.values() if ks.keypoint_names == names), None)
    if name is None:
        return keypoint_set_for_count(num_keypoints) if num_keypoints is not None else COCO
    return get_keypoint_set(name, num_keypoints=num_keypoints)


def evaluate(predictions: Output | str, ground_truth: str, raw: bool = False) -> dict:
    """Keypoint AP / AR (and the detector's box AP when a detector made the boxes) as a dict. `predictions`: an
    annotate OUTPUT or one .parquet part (a local path or fsspec URL, or an opened Output), or a COCO results JSON."""
    truth = read_ground_truth(ground_truth)
    predictions = Output.open(predictions)
    results, job = load_results(predictions)
    results, warnings = checked_results(predictions, results, truth)
    for line in truth.warnings + warnings:  # only once both inputs passed: a refusal stays the one line
        log.warning(line)
    gt = coco_api(truth.dataset)
    known = set(gt.getImgIds())
    unknown = [r for r in results if r.get("image_id") not in known]
    results = [r for r in results if r.get("image_id") in known]
    keypoint_set = predictions_keypoint_set(predictions, gt, results)
    sigmas = np.asarray(keypoint_set.sigmas)
    # raw: the results untouched (a bbox in them sets their area in pycocotools' loadRes). ViTPose's protocol writes
    # {image_id, category_id, keypoints, score} only, so areas come from the keypoints' extent.
    scored = results if raw else [strip(r) for r in vitpose_protocol(results, sigmas)]
    # pycocotools' own default sigmas are COCO's; pass ours only for other keypoint sets
    stats = run_cocoeval(gt, scored, "keypoints", None if keypoint_set is COCO else sigmas, truth.person.id)
    report = {name: float(value) for name, value in zip(METRICS, stats)}
    report.update({
        "protocol": "raw" if raw else "vitpose",
        "predictions": len(results),
        "predictions_kept": len(scored),
        "predictions_for_unknown_images": len(unknown),
        "ground_truth_images": len(known),
        "images_with_predictions": len({r["image_id"] for r in results}),
    })
    detector = detector_of_every_row(predictions, job) if job else None
    if detector and results and all("bbox" in r for r in results):
        boxes = [{"image_id": r["image_id"], "category_id": truth.person.id, "bbox": r["bbox"],
                  "score": float(r.get("box_score", r["score"]))} for r in results]
        box_stats = run_cocoeval(gt, boxes, "bbox", category_id=truth.person.id)
        report["detector"] = detector
        report["detector_box"] = {name: float(v) for name, v in zip(BOX_METRICS, box_stats)}
    return report


def strip(result: dict) -> dict:
    """What COCOeval reads of a keypoint result (it derives bbox and area from the keypoints itself)."""
    return {"image_id": result["image_id"], "category_id": result.get("category_id", 1),
            "keypoints": result["keypoints"], "score": result["score"]}


def format_table(report: dict) -> str:
    header = " ".join(f"{name:>6}" for name in METRICS)
    values = " ".join(f"{report[name]:6.3f}" for name in METRICS)
    lines = [f"keypoints ({report['protocol']} protocol)", header, values]
    if "detector_box" in report:
        lines += [f"person boxes ({report['detector']})",
                  " ".join(f"{n:>6}" for n in BOX_METRICS),
                  " ".join(f"{report['detector_box'][n]:6.3f}" for n in BOX_METRICS)]
    lines.append(f"{report['predictions']} predictions on {report['images_with_predictions']} of "
                 f"{report['ground_truth_images']} ground-truth images; "
                 f"{report['predictions_for_unknown_images']} for images not in the ground truth (left out)")
    return "\n".join(lines)
