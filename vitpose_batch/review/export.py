"""`vitpose-batch export` / `export-coco`: an annotate OUTPUT -> COCO keypoint results, a COCO keypoints dataset or
Label Studio import tasks.

The prediction part files are streamed one at a time (`vitpose_batch.output.parts.iter_part_tables`) and the JSON is written
as it is produced (see `vitpose_batch.schemas.coco` for how each format streams), whole or not at all
(`vitpose_batch.files.storage.write_atomically`).

Pseudo-labels (`coco-dataset`, `label-studio`) are OKS-NMS'd per image first, as ViTPose's evaluation does
(`vitpose_batch.review.oks.oks_nms`: best person score first, OKS with the sigmas of the OUTPUT's keypoint set and the padded
person box areas, threshold 0.9 by default), so a person found twice becomes one label to review. `coco-results`
stays as predicted: it is what `evaluate` reads, and evaluate applies that NMS itself.

Videos (`posetrack`, `mmaction`): only the frame rows of videos are exported (image rows are left out, and so is the
one error row of a video that could not be read at all, which has no frame_index). Each video needs all its rows at
once (its tracks span part files), so the frame rows are gathered into one table of the columns those formats read
(`VIDEO_ROW_COLUMNS`): memory grows with the videos' frame rows, not with the image rows. `posetrack` writes one
JSON document per video into a folder (`vitpose_batch.review.posetrack`), `mmaction` one pickle
(`vitpose_batch.review.mmaction`); each file is written whole or not at all
(`vitpose_batch.files.storage.write_atomically`).
"""

from __future__ import annotations

import json
import logging
import posixpath
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vitpose_batch.files.storage import write_atomically
from vitpose_batch.output.layout import PART_SUFFIX, Output
from vitpose_batch.output.parts import (
    is_part_file,
    iter_part_tables,
    list_part_files,
    predictions_files,
)
from vitpose_batch.output.provenance import load_record
from vitpose_batch.review.label_studio import (
    KEYPOINT_THRESHOLD,
    label_config,
    label_studio_tasks,
)
from vitpose_batch.review.mmaction import check_pickle_path, write_mmaction
from vitpose_batch.review.oks import OKS_THRESHOLD, oks_nms, padded_box_areas
from vitpose_batch.review.posetrack import write_posetrack
from vitpose_batch.review.video_tally import video_counts
from vitpose_batch.schemas.coco import (
    ExportStats,
    coco_results,
    iter_prediction_rows,
    write_coco_dataset,
    write_json_stream,
)
from vitpose_batch.schemas.predictions import PREDICTION_SCHEMA
from vitpose_core.keypoint_sets import (
    COCO,
    KeypointSet,
    get_keypoint_set,
    keypoint_set_for_count,
)

log = logging.getLogger("vitpose_batch")

FORMATS = ("results", "dataset")
VIDEO_FORMATS = ("posetrack", "mmaction")
EXPORT_FORMATS = ("coco-results", "coco-dataset", "label-studio", *VIDEO_FORMATS)
# what the video formats read of a frame row
VIDEO_ROW_COLUMNS = ("image_uri", "width", "height", "persons", "error", "video_uri", "frame_index", "timestamp_s")


def check_predictions(predictions: Output) -> None:
    """One-line ValueError unless `predictions` is a .parquet file or a folder/prefix holding committed part files."""
    fs, path = predictions.fs, predictions.folder
    if is_part_file(predictions):
        return
    if not fs.exists(path):
        raise ValueError(f"predictions {predictions} do not exist")
    if fs.isfile(path):
        raise ValueError(f"predictions {predictions} is a file but not a .parquet file")
    if not list_part_files(predictions):
        raise ValueError(f"predictions {predictions} hold no part-*{PART_SUFFIX} files (is it an annotate OUTPUT?)")


# ----------------------------------------------------------------------------------------------------------------
# What made the rows: keypoint set and model
# ----------------------------------------------------------------------------------------------------------------


def part_metadata_of(predictions: Output) -> dict[str, str]:
    """The `vitpose.*` Parquet schema metadata of the first part file of `predictions` ({} when it has none)."""
    _, files = predictions_files(predictions)
    if not files:
        return {}
    with predictions.fs.open(files[0], "rb") as handle:
        raw = pq.ParquetFile(handle).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items() if k.startswith(b"vitpose.")}


def output_keypoint_set(predictions: Output) -> KeypointSet:
    """The keypoint set of an annotate OUTPUT (or one .parquet file): its parts' `vitpose.keypoint_set` metadata;
    for parts written without it, the set of the first person's keypoint count; COCO when there are no persons."""
    name = part_metadata_of(predictions).get("vitpose.keypoint_set")
    if name:
        return get_keypoint_set(name)
    for table in iter_part_tables(predictions, columns=["persons"]):
        persons = pc.list_flatten(table.column("persons"))
        if len(persons):
            values = pc.list_value_length(pc.struct_field(persons, "keypoints"))[0].as_py()
            if values % 3:
                raise ValueError(f"predictions {predictions}: a person has {values} keypoint values, not a "
                                 "multiple of 3")
            return keypoint_set_for_count(values // 3)  # parts older than their keypoint-set metadata
    return COCO


def model_version(predictions: Output) -> str:
    """`<model ref> (vitpose-batch <version>)`: the model and package that made the rows, from the parts' metadata,
    else OUTPUT's `_job.json`."""
    metadata = part_metadata_of(predictions)
    model = json.loads(metadata.get("vitpose.provenance") or "{}").get("model")
    version = metadata.get("vitpose.version")
    if not (model and version) and not predictions.uri.endswith(PART_SUFFIX):
        record = load_record(predictions) or {}
        model = model or (record.get("settings") or {}).get("model") or record.get("model")
        version = version or record.get("created_by")
    return f"{model or 'unknown model'} (vitpose-batch {version or 'unknown'})"


# ----------------------------------------------------------------------------------------------------------------
# OKS-NMS of the persons of each row
# ----------------------------------------------------------------------------------------------------------------


def kept_persons(keypoints: Sequence[np.ndarray], scores: np.ndarray, boxes: np.ndarray, sigmas: np.ndarray,
                 threshold: float) -> np.ndarray:
    """Boolean mask of the persons of one image that ViTPose's OKS-NMS keeps (see the module docstring)."""
    keep = np.ones(len(scores), bool)
    if len(scores) < 2:
        return keep
    poses = np.stack(keypoints).astype(np.float64)  # (n, K, 3); K was checked against the set by the caller
    kept = oks_nms(poses, np.asarray(scores, np.float64), padded_box_areas(np.asarray(boxes, np.float32)),
                   sigmas, threshold)
    keep[:] = False
    keep[kept] = True
    return keep


def _filter_persons(table: pa.Table, keep: np.ndarray) -> pa.Table:
    """`table` with only the persons whose entry in `keep` (one per person, in row order) is true."""
    persons = table.column("persons").combine_chunks()
    counts = pc.list_value_length(persons).to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(counts)), counts)
    kept_counts = np.bincount(rows[keep], minlength=len(counts))
    offsets = pa.array(np.concatenate([[0], np.cumsum(kept_counts)]).astype(np.int32))
    filtered = pa.ListArray.from_arrays(offsets, persons.flatten().filter(pa.array(keep)), type=persons.type)
    index = table.schema.get_field_index("persons")
    return table.set_column(index, table.schema.field(index), filtered)


def oks_nms_tables(tables: Iterable[pa.Table], keypoint_set: KeypointSet, threshold: float,
                   counts: dict[str, int] | None = None) -> Iterator[pa.Table]:
    """The tables with the persons of each row OKS-NMS'd (`keypoint_set`'s sigmas); `counts["persons_suppressed"]`
    adds up the persons dropped."""
    sigmas = np.asarray(keypoint_set.sigmas, np.float64)
    counts = counts if counts is not None else {}
    counts.setdefault("persons_suppressed", 0)
    for table in tables:
        masks = []
        for row in iter_prediction_rows([table]):
            for keypoints in row.keypoints:
                if len(keypoints) != keypoint_set.num_keypoints:
                    raise ValueError(f"{row.image_uri}: a person has {len(keypoints)} keypoints, the output's "
                                     f"keypoint set {keypoint_set.name} has {keypoint_set.num_keypoints}")
            masks.append(kept_persons(row.keypoints, row.scores, row.boxes, sigmas, threshold))
        keep = np.concatenate(masks) if masks else np.zeros(0, bool)
        counts["persons_suppressed"] += int((~keep).sum())
        yield table if keep.all() else _filter_persons(table, keep)


# ----------------------------------------------------------------------------------------------------------------
# Video frame rows
# ----------------------------------------------------------------------------------------------------------------


def read_video_rows(predictions: Output, video_uris: Collection[str] | None = None,
                    counts: dict[str, int] | None = None) -> pa.Table:
    """The frame rows of the videos of `predictions` (every video, or only those in `video_uris`) as one table of
    `VIDEO_ROW_COLUMNS`, in part order; part files are streamed one at a time, only those columns read.

    Left out: image rows (video_uri null: `counts["image_rows"]`) and rows of a video without a frame_index (the one
    error row of a video that could not be read at all: `counts["rows_without_frame"]`). Parts written before videos
    (no video_uri column) hold image rows only."""
    counts = counts if counts is not None else {}
    counts.setdefault("image_rows", 0)
    counts.setdefault("rows_without_frame", 0)
    schema = PREDICTION_SCHEMA
    target = pa.schema([schema.field(c).with_nullable(True) for c in VIDEO_ROW_COLUMNS])
    wanted = None if video_uris is None else pa.array(sorted(set(video_uris)), pa.string())
    kept = []
    for table in iter_part_tables(predictions, columns=list(VIDEO_ROW_COLUMNS)):
        if "video_uri" not in table.column_names or "frame_index" not in table.column_names:
            counts["image_rows"] += table.num_rows
            continue
        is_video = pc.is_valid(table.column("video_uri"))
        framed = pc.and_(is_video, pc.is_valid(table.column("frame_index")))
        videos, frames = (int(np.count_nonzero(a.to_numpy(zero_copy_only=False))) for a in (is_video, framed))
        counts["image_rows"] += table.num_rows - videos
        counts["rows_without_frame"] += videos - frames
        if wanted is not None:
            framed = pc.and_(framed, pc.is_in(table.column("video_uri"), value_set=wanted))
        table = table.filter(framed)
        if table.num_rows:
            missing = [c for c in VIDEO_ROW_COLUMNS if c not in table.column_names]  # timestamp_s: always written
            for name in missing:
                table = table.append_column(target.field(name), pa.nulls(table.num_rows, target.field(name).type))
            kept.append(table.select(list(VIDEO_ROW_COLUMNS)).replace_schema_metadata(None))
    if not kept:
        return target.empty_table()
    return pa.concat_tables(kept, promote_options="permissive")


def _persons_scored_at_least(rows: pa.Table, min_person_score: float) -> tuple[pa.Table, int]:
    """`rows` without the persons scored below `min_person_score` (a NaN score is kept), and how many went."""
    if min_person_score <= 0 or rows.num_rows == 0:
        return rows, 0
    rows = rows.combine_chunks()
    scores = pc.struct_field(pc.list_flatten(rows.column("persons")), "score").to_numpy(zero_copy_only=False)
    keep = ~(np.asarray(scores, np.float64) < min_person_score)
    return (rows if keep.all() else _filter_persons(rows, keep)), int((~keep).sum())


def _export_video(predictions: Output, output: str, fmt: str, min_person_score: float,
                  track_ids: str) -> dict[str, Any]:
    if fmt == "mmaction":
        check_pickle_path(output)  # before any row is read
    counts: dict[str, int] = {}
    rows = read_video_rows(predictions, counts=counts)
    if rows.num_rows == 0:
        raise ValueError(f"predictions {predictions} hold no video frames ({fmt} exports the frame rows of videos; "
                         "coco-results / coco-dataset / label-studio export images)")
    rows, counts["persons_below_score"] = _persons_scored_at_least(rows, min_person_score)
    keypoint_set = output_keypoint_set(predictions)
    stats = {"format": fmt, "output": output, **video_counts(rows), **counts}
    if fmt == "posetrack":
        stats["files"] = len(write_posetrack(rows, output, keypoint_set.keypoint_names, keypoint_set.skeleton,
                                             track_ids=track_ids))
    else:
        write_mmaction(rows, output, keypoint_set.num_keypoints)
        stats["files"] = 1
    return stats


# ----------------------------------------------------------------------------------------------------------------
# Exports
# ----------------------------------------------------------------------------------------------------------------


def export_coco(
    predictions: Output | str,
    output_json: str,
    fmt: str = "results",
    min_person_score: float = 0.0,
    min_keypoint_score: float = 0.0,
) -> dict[str, Any]:
    """Write the predictions under `predictions` (an annotate OUTPUT folder/prefix or one .parquet file: a local
    path or fsspec URL, or an opened Output) to `output_json` (local path or fsspec URL) as COCO keypoint `results`
    or a COCO keypoints `dataset`.

    min_person_score drops persons scored below it (both formats); min_keypoint_score only applies to `dataset`
    (keypoints below it become unlabelled 0,0,0; results keep every keypoint with its score).

    Returns `ExportStats.as_dict()` plus `format` and `output`: images, persons (written), rows, skipped_error,
    skipped_no_image_id (results only: such rows cannot be named in a results file), skipped_duplicate_image_id,
    persons_below_score, keypoints_unlabelled and assigned_image_ids (dataset only).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    predictions = Output.open(predictions)
    check_predictions(predictions)
    return _export_coco(predictions, output_json, fmt, min_person_score, min_keypoint_score, oks_nms=None)


def _export_coco(predictions: Output, output_json: str, fmt: str, min_person_score: float, min_keypoint_score: float,
                 oks_nms: float | None) -> dict[str, Any]:
    stats = ExportStats()
    counts: dict[str, int] = {}
    tables = iter_part_tables(predictions)
    if fmt == "results":
        write_atomically(output_json, lambda handle: write_json_stream(
            coco_results(tables, min_person_score=min_person_score, stats=stats), handle))
    else:
        keypoint_set = output_keypoint_set(predictions)
        if oks_nms is not None:
            tables = oks_nms_tables(tables, keypoint_set, oks_nms, counts)
        write_atomically(output_json, lambda handle: write_coco_dataset(
            tables, handle, min_person_score=min_person_score, min_keypoint_score=min_keypoint_score,
            keypoint_set=keypoint_set, stats=stats))
    if fmt == "results" and stats.skipped_no_image_id:
        log.warning("%d rows left out of %s: COCO results name an image by its COCO id, which video frames and "
                    "images outside a COCO file lack (--format coco-dataset gives them ids; posetrack and mmaction "
                    "export videos)", stats.skipped_no_image_id, output_json)
    return {**stats.as_dict(), **counts, "format": fmt, "output": output_json}


def label_config_path(output: str) -> str:
    """Where the labeling config of a Label Studio export goes: `<OUTPUT without extension>.label_config.xml`."""
    stem, _ = posixpath.splitext(output)
    return f"{stem}.label_config.xml"


def export(
    predictions: Output | str,
    output: str,
    fmt: str,
    min_person_score: float = 0.0,
    keypoint_threshold: float = KEYPOINT_THRESHOLD,
    oks_nms: float | None = OKS_THRESHOLD,
    image_prefixes: Sequence[tuple[str, str]] = (),
    skip_errors: bool = False,
    track_ids: str = "preserve",
) -> dict[str, Any]:
    """Write an annotate OUTPUT (or one .parquet file; a local path or fsspec URL, or an opened Output) to `output`
    as `coco-results`, `coco-dataset` or `label-studio` (see `vitpose_batch.review.label_studio`; its labeling
    config goes to `label_config_path(output)`), or its videos as `posetrack` (`output`: a folder receiving
    `<video name>.json` per video, names as `vitpose_batch.review.posetrack.video_names` makes them) or `mmaction`
    (`output`: one `.pkl` file, a list of one dict per video with keypoint float32 [M, T, V, 2] and keypoint_score
    [M, T, V]; see `vitpose_batch.review.mmaction`).

    min_person_score: persons scored below are left out (every format). keypoint_threshold: keypoints scored below
    are left out (label-studio) or written unlabelled as (0, 0, 0) (coco-dataset); coco-results, posetrack and
    mmaction keep every keypoint with its score. oks_nms: the OKS threshold of the per-image NMS of coco-dataset and
    label-studio, None for none. A coco-dataset annotation's `area` is its person box's w*h (what a detector gave;
    the keypoints' extent would shrink with every unlabelled keypoint). image_prefixes, skip_errors: label-studio
    only (see `vitpose_batch.review.label_studio.label_studio_tasks`). track_ids: posetrack only, "preserve" (the
    rows' ids) or "dense" (0, 1, ... per video, as poseval needs).

    Returns the export's counts plus `format` and `output` (and `label_config` for label-studio); posetrack and
    mmaction: videos, frames, tracks (distinct (video, track id)) written, files, image_rows and rows_without_frame
    (left out), persons_below_score. Raises ValueError for an unknown format, predictions that are not an annotate
    OUTPUT, posetrack / mmaction of an OUTPUT that holds no video frames, an mmaction `output` not ending in .pkl,
    and rows the formats refuse (see their modules).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    predictions = Output.open(predictions)
    check_predictions(predictions)
    if fmt in VIDEO_FORMATS:
        return _export_video(predictions, output, fmt, min_person_score, track_ids)
    if fmt != "label-studio":
        return _export_coco(predictions, output, fmt.removeprefix("coco-"), min_person_score, keypoint_threshold,
                            oks_nms if fmt == "coco-dataset" else None)
    keypoint_set = output_keypoint_set(predictions)
    counts: dict[str, int] = {}
    tables = iter_part_tables(predictions)
    if oks_nms is not None:
        tables = oks_nms_tables(tables, keypoint_set, oks_nms, counts)
    # animals (AP-10K, APT-36K) get an "animal" box; the human sets a "person" one
    box_label = "animal" if keypoint_set.name in ("ap10k", "apt36k") else "person"
    tasks = label_studio_tasks(iter_prediction_rows(tables), keypoint_set.keypoint_names, model_version(predictions),
                               keypoint_threshold=keypoint_threshold, min_person_score=min_person_score,
                               image_prefixes=image_prefixes, skip_errors=skip_errors, box_label=box_label,
                               counts=counts)
    write_atomically(output, lambda handle: write_json_stream(tasks, handle))
    config = label_config_path(output)
    xml = label_config(keypoint_set.keypoint_names, box_label)
    write_atomically(config, lambda handle: handle.write(xml.encode("utf-8")))
    return {**counts, "format": fmt, "output": output, "label_config": config}
