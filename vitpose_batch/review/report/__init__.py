"""`vitpose-batch report`: one self-contained HTML page that tells, in a minute, what an annotate OUTPUT holds.

Sections: what made the rows (`_job.json`) and the runs that wrote them (`_runs/*.json`, with their throughput);
counts and a table of error kinds; for videos, their frames and tracks (distinct (video_uri, track_id)); distributions of person scores, keypoint scores per joint and persons per image;
the share of low-confidence persons; overlays of the lowest-, median- and highest-scored persons on their images;
and, with a ground truth, the AP table (`vitpose_batch.review.evaluate.evaluate`, the detector's box AP included when a detector
made the boxes). Plots are PNGs from matplotlib's Agg renderer, overlays JPEGs, all embedded as `data:` URIs with
inline CSS and no script, so the file opens offline and can be mailed as is.

How memory stays bounded whatever the number of rows (a 100 M-row OUTPUT is never loaded whole):

* part files are read one at a time, only the columns the report uses (`COLUMNS`);
* histograms have fixed bins (person scores, keypoint scores per joint, persons per image capped at
  `MAX_PERSONS_BIN`+); low-confidence shares are exact counters; error kinds are a dict capped at
  `MAX_ERROR_KINDS` (later kinds are counted together), each with at most `ERROR_EXAMPLES` example URIs;
* samples: the k lowest and k highest persons are kept as top-k pools of size k (merged part by part, as a heap
  would); the median persons come from a uniform sample of at most `RESERVOIR` persons (bottom-k of random keys,
  so it is vectorised per part and seeded): the middle of that sample is the median of all persons to within about
  1/sqrt(RESERVOIR) in rank (about +-1.6 % at 4096), close enough for "a typical person" and exact for outputs of
  fewer persons. The pools hold a score and a locator (part file, person index) only; the chosen persons' rows are
  read back from at most `--sample` part files afterwards (a second pass over those parts only).
* videos: the distinct video URIs and (video, track id) keys are kept (`VideoTally`: memory grows with the videos
  and tracks, 16 bytes a track, not with the rows);
* the AP table is `vitpose_batch.review.evaluate.evaluate`, which holds every prediction as COCO results, as `evaluate` does: it is
  computed only with `--ground-truth`.

Overlays decode each image exactly as annotate does (`vitpose_batch.files.image_reader.read_image`: annotate's reader and
`decode_image`, EXIF orientation, 16-bit and alpha handling; a video frame decoded from its video; at full size, the frame the rows' coordinates are in even where annotate
decoded a large JPEG reduced), so a keypoint lands where the model put it; an image that cannot be read any more is
shown as a caption with the reason, never a crash.

Modules, by job: `stats` (the streamed statistics and error kinds), `samples` (picking the persons, reading their
rows back, overlays), `plots` (matplotlib figures as data URIs), `records` (run records, throughput, provenance
rows), `html` (the page and its sections); this package holds the one pass over the parts and the command, and
re-exports their names (`from vitpose_batch.review.report import ...` works as it did for the single module).
"""

from __future__ import annotations

from collections.abc import Sequence

from vitpose_batch.files.image_reader import image_source_of
from vitpose_batch.files.storage import write_atomically
from vitpose_batch.output.layout import Output
from vitpose_batch.output.parts import predictions_files, read_parquet
from vitpose_batch.output.provenance import load_record
from vitpose_batch.progress import reading
from vitpose_batch.review.evaluate import evaluate
from vitpose_batch.review.export import check_predictions
from vitpose_batch.review.report.html import (page, section_accuracy, section_counts, section_distributions,
                                              section_low_confidence, section_provenance, section_runs,
                                              section_samples, section_videos)
from vitpose_batch.review.report.records import load_runs, throughput
from vitpose_batch.review.report.samples import Sample, SamplePicker, draw_overlay, make_overlay, read_samples
from vitpose_batch.review.report.stats import (COLUMNS, Stats, VideoTally, add_errors, add_persons, error_kind,
                                               flat_persons, read_part_metadata)

__all__ = ["DEFAULT_SAMPLE", "Sample", "SamplePicker", "Stats", "VideoTally", "add_errors", "add_persons", "collect",
           "draw_overlay", "error_kind", "flat_persons", "report"]

DEFAULT_SAMPLE = 12


def collect(fs, files: Sequence[str], picker: SamplePicker) -> Stats:
    """Stream the parts once, one at a time and only COLUMNS, into Stats and the picker."""
    stats = Stats()
    tables = reading((read_parquet(fs, file, COLUMNS) for file in files), len(files))  # progress on long reads
    for index, table in enumerate(tables):
        read_part_metadata(stats, table)
        stats.parts += 1
        stats.images += table.num_rows
        add_errors(stats, table)
        counts, flat = flat_persons(table)
        valid = table.column("error").is_null().to_numpy(zero_copy_only=False)
        picker.add(index, add_persons(stats, counts, valid, flat))
        stats.video.add(table, counts, flat)
        del table, flat  # the next part replaces this one: at most one part in memory
    return stats


def report(predictions: Output | str, report_html: str, ground_truth: str | None = None,
           sample: int = DEFAULT_SAMPLE, seed: int = 0) -> dict:
    """Write the HTML report of `predictions` (an annotate OUTPUT or one .parquet part: a local path or fsspec URL,
    or an opened Output) to `report_html`.

    Returns what it counted: images (rows, video frames included), persons, errors, parts, videos, frames (rows of
    videos with a frame_index), tracks (distinct (video_uri, track_id); all three 0 for an OUTPUT of images only),
    overlays drawn, and the AP dict when `ground_truth` (else None). Raises ValueError for a negative `sample` or
    predictions that are not an annotate OUTPUT."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    predictions = Output.open(predictions)
    check_predictions(predictions)
    folder, files = predictions_files(predictions)
    fs = predictions.fs
    picker = SamplePicker(sample, seed)
    stats = collect(fs, files, picker)
    samples = read_samples(fs, files, picker.chosen())
    source = image_source_of(predictions)
    warned: set[str] = set()  # an image that cannot be read is said once, however many of its persons were picked
    overlays = [make_overlay(s, stats.keypoint_set, source, warned) for s in samples]
    job = load_record(predictions) if folder is not None else None
    runs = load_runs(predictions) if folder is not None else []
    metrics = None
    if ground_truth:
        metrics = evaluate(predictions, ground_truth)
    sections = [section_provenance(job, stats), section_runs(runs, throughput(runs)), section_counts(stats),
                section_videos(stats), section_distributions(stats), section_low_confidence(stats), section_samples(overlays),
                section_accuracy(metrics, ground_truth)]
    html_bytes = page(predictions.uri, sections).encode("utf-8")
    write_atomically(report_html, lambda handle: handle.write(html_bytes))
    return {"report": report_html, "images": stats.images, "persons": stats.persons, "errors": stats.errors,
            "parts": stats.parts, "videos": stats.video.videos, "frames": stats.video.frames,
            "tracks": stats.video.tracks, "overlays": sum(o.data_uri is not None for o in overlays), "metrics": metrics}
