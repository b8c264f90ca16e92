"""`vitpose-batch report`: one self-contained HTML page that tells, in a minute, what an annotate OUTPUT holds.

Sections: what made the rows (`_job.json`) and the runs that wrote them (`_runs/*.json`, with their throughput);
counts and a table of error kinds; distributions of person scores, keypoint scores per joint and persons per image;
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
* the AP table is `vitpose_batch.review.evaluate.evaluate`, which holds every prediction as COCO results, as `evaluate` does: it is
  computed only with `--ground-truth`.

Overlays decode each image exactly as annotate does (`vitpose_batch.review.render.read_image`: annotate's reader and `decode_image`,
EXIF orientation, 16-bit and alpha handling; at full size, the frame the rows' coordinates are in even where annotate
decoded a large JPEG reduced), so a keypoint lands where the model put it; an image that cannot be read any more is
shown as a caption with the reason, never a crash.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vitpose_batch.defaults import KEYPOINT_THRESHOLD  # keypoints drawn on overlays: as `render` draws them
from vitpose_batch.files.image_addresses import ImageSource, image_source_of
from vitpose_batch.output.parts import predictions_files, read_parquet

log = logging.getLogger("vitpose_batch")

COLUMNS = ("image_uri", "width", "height", "persons", "error")  # all the report reads of a part
DEFAULT_SAMPLE = 12
SCORE_BINS = 50  # person-score histogram bins over [0, 1]
KEYPOINT_BINS = 20  # keypoint-score bins over [0, 1], per joint
MAX_PERSONS_BIN = 20  # persons per image: 0 .. 19 counted exactly, 20 or more together
MAX_ERROR_KINDS = 50
ERROR_EXAMPLES = 3
RESERVOIR = 4096
LOW_THRESHOLDS = (0.3, 0.5, 0.7)
MAX_RUNS_SHOWN = 50  # the run table shows the latest; totals cover them all
OVERLAY_SIZE = 240  # longest side of an overlay, pixels (small persons are scaled up)
CROP_PADDING = 0.25  # context around the person box on each side, as a share of the box

# one picked person: its score, where it is (part index, person index within the part's flattened persons) and
# the key it is kept by (a random key for the uniform sample)
PICK = np.dtype([("score", "f8"), ("part", "i8"), ("index", "i8"), ("key", "f8")])


# ----------------------------------------------------------------------------------------------------------------
# Streaming statistics
# ----------------------------------------------------------------------------------------------------------------


def error_kind(message: str) -> str:
    """A normalised kind for an error message: the text before the first ':', numbers as N (so "image too large
    (40,000,000 pixels ...)" of two images is one kind), at most 80 characters."""
    head = message.split(":", 1)[0]
    head = re.sub(r"\d[\d,._]*", "N", head)
    head = " ".join(head.split())
    return head[:80] or "(empty message)"


@dataclass
class ErrorKind:
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Stats:
    """What one streaming pass over the parts collects; every field is fixed-size or capped."""

    parts: int = 0
    images: int = 0
    persons: int = 0
    errors: int = 0
    empty_images: int = 0  # processed without error, no person found
    error_kinds: dict[str, ErrorKind] = field(default_factory=dict)
    other_errors: int = 0  # rows whose kind came after MAX_ERROR_KINDS kinds
    person_scores: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_BINS, np.int64))
    scores_outside: int = 0  # person scores outside [0, 1] (counted in the end bins) or not finite (left out)
    keypoint_scores: np.ndarray | None = None  # (K, KEYPOINT_BINS) once a person was seen
    keypoints_skipped: int = 0  # persons whose keypoint count differs from the first person's
    persons_per_image: np.ndarray = field(default_factory=lambda: np.zeros(MAX_PERSONS_BIN + 1, np.int64))
    below: dict[float, int] = field(default_factory=lambda: {t: 0 for t in LOW_THRESHOLDS})
    keypoint_names: list[str] = field(default_factory=list)
    keypoint_set: str | None = None
    part_provenance: dict | None = None  # the first part's, for an OUTPUT without _job.json (one .parquet file)


def binned(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin indices of `values` in [0, 1] split into `bins` equal bins; values outside go to the end bins."""
    return np.minimum((np.clip(values, 0.0, 1.0) * bins).astype(np.int64), bins - 1)  # clip first: no overflow


def flat_persons(table: pa.Table) -> tuple[np.ndarray, pa.Array]:
    """(persons per row, the persons of all rows as one struct array) of a prediction table."""
    persons = table.column("persons").combine_chunks()
    counts = pc.fill_null(pc.list_value_length(persons), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return counts, pc.list_flatten(persons)


def person_scores_of(flat: pa.Array) -> np.ndarray:
    return pc.struct_field(flat, "score").to_numpy(zero_copy_only=False).astype(np.float64)


def keypoints_of(flat: pa.Array, num_keypoints: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(keypoints (P', K, 3) of the persons with K keypoints, their mask over all P persons). K defaults to the
    first person's; a person with another count (only possible in hand-written rows) is left out."""
    column = pc.struct_field(flat, "keypoints")
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32)
    if not len(lengths):
        return np.zeros((0, num_keypoints or 0, 3), np.float32), np.zeros(0, bool)
    k = num_keypoints or int(lengths[0]) // 3
    keep = lengths == 3 * k
    if k == 0:  # persons without keypoints: nothing to histogram
        return np.zeros((0, 0, 3), np.float32), np.zeros(len(lengths), bool)
    if keep.all():
        return values.reshape(-1, k, 3), keep
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = [values[s:s + 3 * k] for s in starts[keep]]
    return (np.stack(rows).reshape(-1, k, 3) if rows else np.zeros((0, k, 3), np.float32)), keep


def add_errors(stats: Stats, table: pa.Table) -> None:
    """Count the part's error rows by kind; take example URIs until each kind has ERROR_EXAMPLES."""
    errors = table.column("error")
    stats.errors += len(errors) - errors.null_count
    if errors.null_count == len(errors):
        return
    counted = pc.value_counts(pc.drop_null(errors))
    for message, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
        kind = error_kind(message)
        if kind not in stats.error_kinds and len(stats.error_kinds) >= MAX_ERROR_KINDS:
            stats.other_errors += count
            continue
        entry = stats.error_kinds.setdefault(kind, ErrorKind())
        entry.count += count
        if len(entry.examples) < ERROR_EXAMPLES:  # at most ERROR_EXAMPLES filters per kind over the whole run
            uris = pc.filter(table.column("image_uri"), pc.equal(errors, message))
            entry.examples += uris.slice(0, ERROR_EXAMPLES - len(entry.examples)).to_pylist()


def add_persons(stats: Stats, counts: np.ndarray, valid_rows: np.ndarray, flat: pa.Array) -> np.ndarray:
    """Fold the part's persons into the histograms and counters; returns their scores (for the samples)."""
    stats.persons += int(counts.sum())
    shown = counts[valid_rows]
    stats.empty_images += int((shown == 0).sum())
    stats.persons_per_image += np.bincount(np.minimum(shown, MAX_PERSONS_BIN), minlength=MAX_PERSONS_BIN + 1)
    scores = person_scores_of(flat)
    finite = np.isfinite(scores)
    stats.scores_outside += int((~finite | (scores < 0) | (scores > 1)).sum())
    stats.person_scores += np.bincount(binned(scores[finite], SCORE_BINS), minlength=SCORE_BINS)
    for threshold in stats.below:
        stats.below[threshold] += int((scores[finite] < threshold).sum())
    num_keypoints = None if stats.keypoint_scores is None else stats.keypoint_scores.shape[0]
    keypoints, keep = keypoints_of(flat, num_keypoints)
    stats.keypoints_skipped += int((~keep).sum())
    if len(keypoints):
        k = keypoints.shape[1]
        if stats.keypoint_scores is None:
            stats.keypoint_scores = np.zeros((k, KEYPOINT_BINS), np.int64)
        kp_scores = keypoints[..., 2]
        joint = np.broadcast_to(np.arange(k), kp_scores.shape)
        ok = np.isfinite(kp_scores)
        cells = joint[ok] * KEYPOINT_BINS + binned(kp_scores[ok], KEYPOINT_BINS)
        stats.keypoint_scores += np.bincount(cells, minlength=k * KEYPOINT_BINS).reshape(k, KEYPOINT_BINS)
    return scores


def read_part_metadata(stats: Stats, table: pa.Table) -> None:
    """Keypoint names, set and provenance from a part's Parquet schema metadata (the first part that has them)."""
    metadata = table.schema.metadata or {}
    if not stats.keypoint_names and b"vitpose.keypoint_names" in metadata:
        stats.keypoint_names = json.loads(metadata[b"vitpose.keypoint_names"])
    if stats.keypoint_set is None and b"vitpose.keypoint_set" in metadata:
        stats.keypoint_set = metadata[b"vitpose.keypoint_set"].decode()
    if stats.part_provenance is None and b"vitpose.provenance" in metadata:
        stats.part_provenance = json.loads(metadata[b"vitpose.provenance"])


# ----------------------------------------------------------------------------------------------------------------
# Picking the sample persons
# ----------------------------------------------------------------------------------------------------------------


def keep_extreme(pool: np.ndarray, new: np.ndarray, k: int, by: str, largest: bool = False) -> np.ndarray:
    """The k picks of `pool` + `new` smallest (or largest) in field `by`. Ties go to the earlier person for the
    smallest and the later one for the largest, so equal scores (ground-truth boxes, say) still give two distinct
    ends. A top-k merge per part: what a heap of size k keeps, vectorised."""
    if k <= 0:
        return pool[:0]
    sign = -1.0 if largest else 1.0
    if len(new) > k:  # a part may hold many persons: preselect its k candidates in linear time
        new = new[np.argpartition(sign * new[by], k - 1)[:k]]
    both = np.concatenate([pool, new])
    order = np.lexsort((sign * both["index"], sign * both["part"], sign * both[by]))
    return both[order[:k]]


class SamplePicker:
    """Keeps, with memory bounded by the sample size and RESERVOIR, the persons the overlays will show: the
    `low` lowest- and `high` highest-scored ones, and a uniform sample from which the median ones are taken."""

    def __init__(self, sample: int, seed: int = 0, reservoir: int = RESERVOIR) -> None:
        self.sample = sample
        self.low_k = self.high_k = round(sample / 3)  # 12: 4 + 4 + 4; 2: one of each end; 1: the median
        self.reservoir_k = max(reservoir, sample) if sample else 0
        self.rng = np.random.default_rng(seed)
        self.low = self.high = self.uniform = np.zeros(0, PICK)

    def add(self, part: int, scores: np.ndarray) -> None:
        finite = np.flatnonzero(np.isfinite(scores))  # a NaN score has no rank
        picks = np.zeros(len(finite), PICK)
        picks["score"], picks["part"], picks["index"] = scores[finite], part, finite
        picks["key"] = self.rng.random(len(finite))
        self.low = keep_extreme(self.low, picks, self.low_k, "score")
        self.high = keep_extreme(self.high, picks, self.high_k, "score", largest=True)
        self.uniform = keep_extreme(self.uniform, picks, self.reservoir_k, "key")  # bottom-k keys: uniform

    def chosen(self) -> list[tuple[str, np.void]]:
        """(group, pick) for up to `sample` distinct persons, lowest score first. The median group is the middle
        of the uniform sample, widened until the sample is full (so small outputs show every person)."""
        taken: set[tuple[int, int]] = set()
        out: list[tuple[str, np.void]] = []

        def take(group: str, picks) -> None:
            for pick in picks:
                where = (int(pick["part"]), int(pick["index"]))
                if len(out) < self.sample and where not in taken:
                    taken.add(where)
                    out.append((group, pick))

        take("lowest", self.low)
        take("highest", self.high)
        uniform = np.sort(self.uniform, order=["score", "part", "index"])
        middle = (len(uniform) - 1) / 2
        take("median", uniform[np.argsort(np.abs(np.arange(len(uniform)) - middle), kind="stable")])
        return sorted(out, key=lambda item: (float(item[1]["score"]), int(item[1]["part"]), int(item[1]["index"])))


# ----------------------------------------------------------------------------------------------------------------
# One pass over the parts
# ----------------------------------------------------------------------------------------------------------------


def collect(fs, files: Sequence[str], picker: SamplePicker) -> Stats:
    """Stream the parts once, one at a time and only COLUMNS, into Stats and the picker."""
    from vitpose_batch.pipeline.progress import reading

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
        del table, flat  # the next part replaces this one: at most one part in memory
    return stats


@dataclass
class Sample:
    """One person to overlay, read back from its part."""

    group: str
    score: float
    image_uri: str
    width: int
    height: int
    bbox: np.ndarray  # (4,) xywh
    keypoints: np.ndarray  # (K, 3)


def read_samples(fs, files: Sequence[str], chosen: list[tuple[str, np.void]]) -> list[Sample]:
    """The rows of the chosen persons: only the parts that hold one are read again. A person whose part changed
    since the first pass (a concurrent re-run rewrote or removed it) is left out rather than shown wrongly."""
    by_part: dict[int, list[int]] = {}
    for n, (_, pick) in enumerate(chosen):
        by_part.setdefault(int(pick["part"]), []).append(n)
    samples: list[Sample | None] = [None] * len(chosen)
    for part, which in by_part.items():
        try:
            table = read_parquet(fs, files[part], COLUMNS)
        except FileNotFoundError:
            log.warning("report: %s went away while the report was made; its samples are left out", files[part])
            continue
        counts, flat = flat_persons(table)
        first = np.concatenate([[0], np.cumsum(counts)])
        for n in which:
            group, pick = chosen[n]
            person = int(pick["index"])
            record = flat[person].as_py() if person < len(flat) else None
            if record is None or not np.isclose(record["score"], pick["score"]):
                log.warning("report: %s changed while the report was made; a sample is left out", files[part])
                continue
            row = int(np.searchsorted(first, person, side="right")) - 1
            samples[n] = Sample(group, float(pick["score"]), table.column("image_uri")[row].as_py(),
                                int(table.column("width")[row].as_py() or 0),
                                int(table.column("height")[row].as_py() or 0),
                                np.asarray(record["bbox"], np.float32),
                                np.asarray(record["keypoints"], np.float32).reshape(-1, 3))
    return [s for s in samples if s is not None]


# ----------------------------------------------------------------------------------------------------------------
# Overlays
# ----------------------------------------------------------------------------------------------------------------


def crop_box(bbox: np.ndarray, width: int, height: int, padding: float = CROP_PADDING) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the person box grown by `padding` of its size on each side, within the image; the whole
    image when the box is degenerate."""
    x, y, w, h = (float(v) for v in bbox)
    if not np.isfinite([x, y, w, h]).all() or w <= 0 or h <= 0:
        return 0, 0, width, height
    x0, y0 = int(max(0, np.floor(x - padding * w))), int(max(0, np.floor(y - padding * h)))
    x1, y1 = int(min(width, np.ceil(x + w + padding * w))), int(min(height, np.ceil(y + h + padding * h)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else (0, 0, width, height)


def draw_overlay(image: np.ndarray, sample: Sample, keypoint_set: str | None,
                 longest: int = OVERLAY_SIZE) -> np.ndarray:
    """The region around the sample's person, scaled so its longest side is `longest` pixels, with the person
    (skeleton, keypoints scored > KEYPOINT_THRESHOLD, box) drawn on it. Drawn after scaling, so a small person's
    skeleton is as legible as a large one's; coordinates keep the pixel-centre convention of `draw_poses`."""
    from PIL import Image

    from vitpose_core.drawing import draw_poses

    x0, y0, x1, y1 = crop_box(sample.bbox, image.shape[1], image.shape[0])
    scale = longest / max(x1 - x0, y1 - y0)
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    crop = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize(size, Image.Resampling.LANCZOS))
    origin = np.array([x0, y0], np.float32)
    points = ((sample.keypoints[:, :2] - origin + 0.5) * scale - 0.5)[None]
    box = np.concatenate([(sample.bbox[:2] - origin + 0.5) * scale - 0.5, sample.bbox[2:] * scale])[None]
    scores = sample.keypoints[None, :, 2]
    try:
        return draw_poses(crop, points, scores, box, keypoint_set=keypoint_set, score_threshold=KEYPOINT_THRESHOLD)
    except ValueError:  # a keypoint set that does not match K: let drawing choose by K
        return draw_poses(crop, points, scores, box, score_threshold=KEYPOINT_THRESHOLD)


def jpeg_data_uri(pixels: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Overlay:
    sample: Sample
    data_uri: str | None  # None: the image could not be drawn (`problem` says why)
    problem: str | None = None


def make_overlay(sample: Sample, keypoint_set: str | None, source: ImageSource | None = None) -> Overlay:
    """Read and decode the sample's image as annotate did (shard rows through the image column the runs recorded:
    `source`), draw its person, crop; a failure becomes the caption."""
    from vitpose_batch.review.render import read_image

    try:
        image = read_image(sample.image_uri, source)
        problem = None
        if (sample.width, sample.height) not in ((0, 0), (image.shape[1], image.shape[0])):
            problem = (f"image is now {image.shape[1]}x{image.shape[0]}, the row says {sample.width}x{sample.height}: "
                       "it changed since it was annotated")
        return Overlay(sample, jpeg_data_uri(draw_overlay(image, sample, keypoint_set)), problem)
    except Exception as exc:  # noqa: BLE001 - a vanished or changed image must not end the report
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        log.warning("report: cannot draw %s (%s)", sample.image_uri, text)
        return Overlay(sample, None, text)


# ----------------------------------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------------------------------


def plot_data_uri(draw: Callable, size: tuple[float, float]) -> str:
    """A matplotlib figure drawn by `draw(figure)` as a PNG data URI. A bare Figure renders with Agg and touches no
    pyplot state, so reports can be made from threads and servers without a display."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100, layout="constrained")
    draw(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_person_scores(counts: np.ndarray) -> str:
    def draw(figure) -> None:
        axes = figure.subplots()
        edges = np.linspace(0, 1, len(counts) + 1)
        axes.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4477aa")
        for threshold in LOW_THRESHOLDS:
            axes.axvline(threshold, color="#cc3311", linestyle="--", linewidth=1)
        axes.set(xlabel="person score", ylabel="persons", xlim=(0, 1), title="Person scores")
        axes.yaxis.get_major_locator().set_params(integer=True)  # counts: no 0.5 persons

    return plot_data_uri(draw, (5.5, 3.2))


def plot_persons_per_image(counts: np.ndarray) -> str:
    def draw(figure) -> None:
        axes = figure.subplots()
        axes.bar(np.arange(len(counts)), counts, color="#228833")
        ticks = list(range(0, len(counts), 2))
        axes.set_xticks(ticks, [f"{t}+" if t == MAX_PERSONS_BIN else str(t) for t in ticks])
        axes.set(xlabel="persons in the image", ylabel="images", title="Persons per image (images without error)")
        axes.yaxis.get_major_locator().set_params(integer=True)

    return plot_data_uri(draw, (5.5, 3.2))


def plot_keypoint_scores(counts: np.ndarray, names: Sequence[str]) -> str:
    """One heat map: a row per joint, its keypoint-score distribution (each row normalised to its own total, so a
    joint's shape reads the same whatever its count), the joint's mean score written beside it."""
    k = counts.shape[0]
    names = list(names) if len(names) == k else [f"keypoint {i}" for i in range(k)]
    totals = counts.sum(axis=1, keepdims=True)
    shares = counts / np.maximum(totals, 1)
    centres = (np.arange(KEYPOINT_BINS) + 0.5) / KEYPOINT_BINS
    means = (counts * centres).sum(axis=1) / np.maximum(totals[:, 0], 1)

    def draw(figure) -> None:
        axes = figure.subplots()
        shown = axes.imshow(shares, aspect="auto", cmap="viridis", extent=(0, 1, k - 0.5, -0.5),
                            interpolation="nearest")
        step = max(1, int(np.ceil(k / 40)))  # 133 whole-body joints: label every 4th
        axes.set_yticks(range(0, k, step), [names[i] for i in range(0, k, step)], fontsize=7)
        axes.set(xlabel="keypoint score", title="Keypoint scores per joint (share of the joint's keypoints)")
        twin = axes.secondary_yaxis("right")
        twin.set_yticks(range(0, k, step), [f"{means[i]:.2f}" for i in range(0, k, step)], fontsize=7)
        twin.set_ylabel("mean (from the bins)", fontsize=8)
        figure.colorbar(shown, ax=axes, location="bottom", shrink=0.6, label="share")

    return plot_data_uri(draw, (7.5, max(3.5, 0.2 * min(k, 40) + 2.0)))


# ----------------------------------------------------------------------------------------------------------------
# Job and run records
# ----------------------------------------------------------------------------------------------------------------


def load_runs(fs, folder: str | None) -> list[dict]:
    """Every readable `_runs/<run>.json`, oldest first."""
    from vitpose_batch.output.provenance import read_run_records

    if folder is None:
        return []
    runs = []
    for path, record in read_run_records(fs, folder):
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
    rows.append(("created by", f"vitpose-batch {(job or {}).get('created_by', 'unknown')}"
                 if job else "no _job.json (provenance from the part's metadata)"))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1160px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee;
text-align: left; vertical-align: top; } th { background: #f4f4f4; } td.n { text-align: right;
font-variant-numeric: tabular-nums; } .muted { color: #777; font-size: 12px; } .uri { font-family: monospace;
font-size: 11px; word-break: break-all; } .cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }
.card b { display: block; font-size: 20px; } .plots img { max-width: 100%; margin: 6px 8px 6px 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }
figure img { display: block; max-width: 100%; max-height: 260px; margin: 0 auto; }
.lowest { border-top: 4px solid #cc3311; } .median { border-top: 4px solid #ddaa33; }
.highest { border-top: 4px solid #228833; } .missing { height: 120px; display: flex; align-items: center;
justify-content: center; color: #a33; font-size: 12px; text-align: center; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table_html(header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = ()) -> str:
    """A table; `numeric` columns right-aligned. Cells are escaped text unless wrapped in `Markup`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{' class=n' if i in numeric else ''}>{cell if isinstance(cell, Markup) else esc(cell)}</td>"
        for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Markup(str):
    """HTML that is already safe (built here from escaped parts)."""


def when(timestamp) -> str:
    if not isinstance(timestamp, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if not seconds:
        return "-"
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h {minutes:02d}m {secs:04.1f}s" if hours else f"{minutes}m {secs:04.1f}s" if minutes \
        else f"{secs:.1f}s"


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def section_provenance(job: dict | None, stats: Stats) -> str:
    return f'<h2 id="provenance">Provenance</h2>{table_html(["setting", "value"], provenance_rows(job, stats))}'


def section_runs(runs: Sequence[dict], speed: dict) -> str:
    if not runs:
        return '<h2 id="runs">Runs and throughput</h2><p class="muted">No run records (_runs/) found.</p>'
    shown = runs[-MAX_RUNS_SHOWN:]
    rows = [(r.get("run_id", "?"), r.get("status", "?"), r.get("version", "?"), when(r.get("started")),
             duration(run_seconds(r)), f"{int(r.get('images') or 0):,}", f"{int(r.get('persons') or 0):,}",
             f"{int(r.get('errors') or 0):,}",
             rate((r.get("images") or 0) / s) if (s := run_seconds(r)) else "-") for r in shown]
    note = f"<p class=muted>The latest {len(shown)} of {len(runs)} runs.</p>" if len(shown) < len(runs) else ""
    return (f'<h2 id="runs">Runs and throughput</h2>'
            f'<div class="cards"><div class="card"><b>{rate(speed["images_per_s"])}</b>images/s</div>'
            f'<div class="card"><b>{rate(speed["persons_per_s"])}</b>persons/s</div>'
            f'<div class="card"><b>{duration(speed["seconds"])}</b>run time</div>'
            f'<div class="card"><b>{speed["runs"]}</b>runs</div></div>'
            f'<p class="muted">Throughput: images and persons the {speed["timed_runs"]} finished runs wrote, over '
            f'the sum of their run times (runs killed or still running have no end time).</p>'
            + table_html(["run", "status", "version", "started", "time", "images", "persons", "errors", "images/s"],
                         rows, numeric=(5, 6, 7, 8)) + note)


def section_counts(stats: Stats) -> str:
    cards = [(f"{stats.images:,}", "images (rows)"), (f"{stats.persons:,}", "persons"),
             (f"{stats.errors:,}", f"error rows ({share(stats.errors, stats.images)})"),
             (f"{stats.empty_images:,}", "images without a person"), (f"{stats.parts:,}", "part files")]
    html_cards = "".join(f'<div class="card"><b>{esc(v)}</b>{esc(label)}</div>' for v, label in cards)
    kinds = sorted(stats.error_kinds.items(), key=lambda item: (-item[1].count, item[0]))
    rows = [(kind, f"{entry.count:,}", Markup("<br>".join(f'<span class="uri">{esc(u)}</span>'
                                                          for u in entry.examples))) for kind, entry in kinds]
    if stats.other_errors:
        rows.append((f"(other kinds, beyond the first {MAX_ERROR_KINDS})", f"{stats.other_errors:,}", ""))
    errors = (table_html(["error kind", "rows", "examples"], rows, numeric=(1,)) if rows
              else "<p>No error rows.</p>")
    return (f'<h2 id="counts">Counts</h2><div class="cards">{html_cards}</div>'
            f'<h3 id="errors">Error kinds</h3><p class="muted">Error messages grouped by the text before their '
            f'first ":", numbers as N.</p>{errors}')


def section_distributions(stats: Stats) -> str:
    plots = [plot_person_scores(stats.person_scores), plot_persons_per_image(stats.persons_per_image)]
    if stats.keypoint_scores is not None:
        plots.append(plot_keypoint_scores(stats.keypoint_scores, stats.keypoint_names))
    notes = []
    if stats.scores_outside:
        notes.append(f"{stats.scores_outside:,} person scores outside [0, 1] are counted in the end bins "
                     "(non-finite ones are left out).")
    if stats.keypoints_skipped:
        notes.append(f"{stats.keypoints_skipped:,} persons with another keypoint count are left out of the "
                     "keypoint plot.")
    images = "".join(f'<img alt="plot" src="{uri}">' for uri in plots)
    note = "".join(f'<p class="muted">{esc(n)}</p>' for n in notes)
    return f'<h2 id="distributions">Distributions</h2><div class="plots">{images}</div>{note}'


def section_low_confidence(stats: Stats) -> str:
    rows = [(f"score < {t:g}", f"{n:,}", share(n, stats.persons)) for t, n in stats.below.items()]
    return ('<h2 id="low-confidence">Low-confidence persons</h2>'
            + table_html(["persons", "count", f"share of {stats.persons:,}"], rows, numeric=(1, 2)))


def section_samples(overlays: Sequence[Overlay]) -> str:
    if not overlays:
        return '<h2 id="samples">Samples</h2><p>No persons to show.</p>'
    cells = []
    for overlay in overlays:
        s = overlay.sample
        picture = (f'<img alt="{esc(s.group)} person" src="{overlay.data_uri}">' if overlay.data_uri
                   else f'<div class="missing">cannot draw: {esc(overlay.problem)}</div>')
        problem = f'<br><span class="muted">{esc(overlay.problem)}</span>' if overlay.data_uri and overlay.problem \
            else ""
        cells.append(f'<figure class="{esc(s.group)}">{picture}<figcaption><b>{esc(s.group)}</b> · score '
                     f'{s.score:.3f}<br><span class="uri">{esc(s.image_uri)}</span>{problem}</figcaption></figure>')
    return (f'<h2 id="samples">Samples</h2><p class="muted">The lowest-, median- and highest-scored persons, '
            f'lowest first, each on its image decoded as annotate decoded it; keypoints scored above '
            f'{KEYPOINT_THRESHOLD:g} are drawn.</p><div class="grid">{"".join(cells)}</div>')


def section_accuracy(metrics: dict | None, ground_truth: str | None) -> str:
    if metrics is None:
        return ('<h2 id="accuracy">Accuracy</h2><p class="muted">No ground truth given '
                '(--ground-truth COCO_JSON adds the AP table).</p>')
    from vitpose_batch.review.evaluate import BOX_METRICS, METRICS

    parts = [f'<h2 id="accuracy">Accuracy</h2><p>Against <span class="uri">{esc(ground_truth)}</span>, '
             f'{esc(metrics["protocol"])} protocol.</p>',
             "<h3>Keypoints</h3>" + table_html(METRICS, [[f"{metrics[m]:.3f}" for m in METRICS]],
                                               numeric=range(len(METRICS)))]
    if "detector_box" in metrics:
        parts.append(f"<h3>Person boxes ({esc(metrics['detector'])})</h3>"
                     + table_html(BOX_METRICS, [[f"{metrics['detector_box'][m]:.3f}" for m in BOX_METRICS]],
                                  numeric=range(len(BOX_METRICS))))
    parts.append(f'<p class="muted">{metrics["predictions"]:,} predictions on {metrics["images_with_predictions"]:,} '
                 f'of {metrics["ground_truth_images"]:,} ground-truth images; '
                 f'{metrics["predictions_for_unknown_images"]:,} for images not in the ground truth (left out).</p>')
    return "".join(parts)


def page(predictions: str, sections: Sequence[str]) -> str:
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>vitpose-batch report: {esc(posixpath.basename(predictions.rstrip('/')) or predictions)}</title>"
            f"<style>{CSS}</style></head><body><h1>vitpose-batch report</h1>"
            f'<p class="muted"><span class="uri">{esc(predictions)}</span> · made {made}</p>'
            + "".join(sections) + "</body></html>\n")


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def report(predictions: str, report_html: str, ground_truth: str | None = None, sample: int = DEFAULT_SAMPLE,
           seed: int = 0) -> dict:
    """Write the HTML report of `predictions` (an annotate OUTPUT or one .parquet part) to `report_html`.

    Returns what it counted: images, persons, errors, parts, overlays drawn, and the AP dict when `ground_truth`."""
    from vitpose_batch.review.export import check_predictions, write_atomically
    from vitpose_batch.output.provenance import load_record

    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    check_predictions(predictions)
    fs, folder, files = predictions_files(predictions)
    picker = SamplePicker(sample, seed)
    stats = collect(fs, files, picker)
    samples = read_samples(fs, files, picker.chosen())
    source = image_source_of(predictions)
    overlays = [make_overlay(s, stats.keypoint_set, source) for s in samples]
    job = load_record(predictions) if folder is not None else None
    runs = load_runs(fs, folder)
    metrics = None
    if ground_truth:
        from vitpose_batch.review.evaluate import evaluate

        metrics = evaluate(predictions, ground_truth)
    sections = [section_provenance(job, stats), section_runs(runs, throughput(runs)), section_counts(stats),
                section_distributions(stats), section_low_confidence(stats), section_samples(overlays),
                section_accuracy(metrics, ground_truth)]
    html_bytes = page(predictions, sections).encode("utf-8")
    write_atomically(report_html, lambda handle: handle.write(html_bytes))
    return {"report": report_html, "images": stats.images, "persons": stats.persons, "errors": stats.errors,
            "parts": stats.parts, "overlays": sum(o.data_uri is not None for o in overlays), "metrics": metrics}
