"""What made the rows, for the report: the run records (`_runs/*.json`) and their throughput, and the provenance
rows from `_job.json` (else the first part's metadata)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from vitpose_batch.output.layout import Output
from vitpose_batch.output.provenance import read_run_records
from vitpose_batch.review.report.stats import Stats

log = logging.getLogger("vitpose_batch")


def load_runs(output: Output) -> list[dict]:
    """Every readable `_runs/<run>.json` of OUTPUT, oldest first."""
    runs = []
    for path, record in read_run_records(output):
        if record is None:
            log.warning("report: run record %s is unreadable; left out", path)
        else:
            runs.append(record)
    return sorted(runs, key=lambda r: (r.get("started") or 0, str(r.get("run_id"))))


def run_seconds(run: dict) -> float | None:
    started, ended = run.get("started"), run.get("ended")
    if isinstance(started, (int, float)) and isinstance(ended, (int, float)) and ended > started:
        return float(ended - started)
    return None


def throughput(runs: Sequence[dict]) -> dict:
    """Images and persons per second over the runs that ended (killed or still running ones have no end time)."""
    timed = [(run, run_seconds(run)) for run in runs]
    timed = [(run, seconds) for run, seconds in timed if seconds]
    seconds = sum(s for _, s in timed)
    images = sum(int(run.get("images") or 0) for run, _ in timed)
    persons = sum(int(run.get("persons") or 0) for run, _ in timed)
    return {"runs": len(runs), "timed_runs": len(timed), "seconds": seconds, "images": images, "persons": persons,
            "images_per_s": images / seconds if seconds else None,
            "persons_per_s": persons / seconds if seconds else None}


def provenance_rows(job: dict | None, stats: Stats) -> list[tuple[str, str]]:
    """(label, value) rows of what made the rows: `_job.json`'s settings, else the first part's metadata."""
    settings = (job or {}).get("settings") or (job or {}) or stats.part_provenance or {}

    def fingerprinted(ref: str, fingerprint) -> str:
        return f"{ref}  ({fingerprint})" if fingerprint else ref

    rows = [("model", fingerprinted(str(settings.get("model") or "unknown"), settings.get("model_fingerprint")))]
    if settings.get("detector"):
        rows.append(("person boxes", "detector " + fingerprinted(settings["detector"],
                                                                 settings.get("detector_fingerprint"))))
    elif settings.get("boxes"):
        boxes = fingerprinted(settings["boxes"], settings.get("boxes_fingerprint"))
        rows.append(("person boxes", f"boxes file {boxes}"))
    else:
        rows.append(("person boxes", "unknown"))
    rows += [("flip test", "yes" if settings.get("flip_test") else "no"),
             ("dtype", str(settings.get("dtype") or "fp32")),
             ("keypoint set", f"{settings.get('keypoint_set') or stats.keypoint_set or 'unknown'}"
                              f" ({len(stats.keypoint_names) or '?'} keypoints)")]
    if settings.get("dataset_index") is not None:
        rows.append(("dataset index", str(settings["dataset_index"])))
    if settings.get("decode"):
        rows.append(("heatmap decoding", json.dumps(settings["decode"], sort_keys=True)))
    video = settings.get("video")
    if video and stats.video.videos:  # the sampling of an OUTPUT that holds video frames
        sampled = (f"frames nearest every 1/{video['frame_rate']:g} s" if video.get("frame_rate")
                   else f"every {video['every_nth_frame']}th frame" if video.get("every_nth_frame") else "every frame")
        rows.append(("video sampling", f"{sampled}; detector every {video.get('detect_every', 1)} sampled frame(s); "
                                       f"segments of ~{video.get('segment_s', 60):g} s"))
    rows.append(("created by", f"vitpose-batch {(job or {}).get('created_by', 'unknown')}"
                 if job else "no _job.json (provenance from the part's metadata)"))
    return rows
