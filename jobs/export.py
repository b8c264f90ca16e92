"""`vitpose-batch export-coco`: an annotate OUTPUT -> COCO keypoint results or a COCO keypoints dataset (JSON).

The prediction part files are streamed one at a time (`jobs.output.parts.iter_part_tables`) and the JSON is written
as it is produced (see `schemas.coco` for how each format streams). Local outputs are written to a temporary name
in the destination folder and renamed at the end, so a reader never sees half a file; other filesystems get one
upload that only becomes visible when it completes.
"""

from __future__ import annotations

import posixpath
import uuid
from typing import Any

import fsspec
import fsspec.spec

from jobs.output.parts import PART_SUFFIX, iter_part_tables, list_part_files
from jobs.storage import is_local, open_filesystem
from schemas.coco import ExportStats, coco_results, write_coco_dataset, write_json_stream

FORMATS = ("results", "dataset")


def _abandon(fs: Any, handle: Any, target: str) -> None:
    """Leave nothing behind after a failed write: no half upload becomes visible, no temporary file stays."""
    try:
        if isinstance(handle, fsspec.spec.AbstractBufferedFile):
            handle.discard()  # object stores: abort a multipart upload
            handle.closed = True  # and skip the final flush that would publish what was written so far
        else:
            handle.close()
            if fs.exists(target):
                fs.rm(target)
    except Exception:  # noqa: BLE001 - the original error is the one to report
        pass


def check_predictions(predictions: str) -> None:
    """One-line ValueError unless `predictions` is a .parquet file or a folder/prefix holding committed part files."""
    fs, path = open_filesystem(predictions)
    if path.endswith(PART_SUFFIX) and fs.isfile(path):
        return
    if not fs.exists(path):
        raise ValueError(f"predictions {predictions} do not exist")
    if fs.isfile(path):
        raise ValueError(f"predictions {predictions} is a file but not a .parquet file")
    if not list_part_files(fs, path):
        raise ValueError(f"predictions {predictions} hold no part-*{PART_SUFFIX} files (is it an annotate OUTPUT?)")


def export_coco(
    predictions: str,
    output_json: str,
    fmt: str = "results",
    min_person_score: float = 0.0,
    min_keypoint_score: float = 0.0,
) -> dict[str, Any]:
    """Write the predictions under `predictions` (an annotate OUTPUT folder/prefix or one .parquet file) to
    `output_json` (local path or fsspec URL) as COCO keypoint `results` or a COCO keypoints `dataset`.

    min_person_score drops persons scored below it (both formats); min_keypoint_score only applies to `dataset`
    (keypoints below it become unlabelled 0,0,0; results keep every keypoint with its score).

    Returns `ExportStats.as_dict()` plus `format` and `output`: images, persons (written), rows, skipped_error,
    skipped_no_image_id (results only: such rows cannot be named in a results file), skipped_duplicate_image_id,
    persons_below_score, keypoints_unlabelled and assigned_image_ids (dataset only).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_predictions(predictions)
    stats = ExportStats()
    tables = iter_part_tables(predictions)

    fs, path = open_filesystem(output_json)
    local = is_local(fs)
    if local:
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        target = f"{path}.{uuid.uuid4().hex}.tmp"
    else:
        target = path
    handle = fs.open(target, "wb")
    try:
        if fmt == "results":
            write_json_stream(coco_results(tables, min_person_score=min_person_score, stats=stats), handle)
        else:
            write_coco_dataset(tables, handle, min_person_score=min_person_score,
                               min_keypoint_score=min_keypoint_score, stats=stats)
    except BaseException:
        _abandon(fs, handle, target)
        raise
    handle.close()
    if local:
        fs.mv(target, path)
    return {**stats.as_dict(), "format": fmt, "output": output_json}
