"""The persons the report's overlays show: picked while the parts stream (`SamplePicker`, memory bounded by the
sample size and `RESERVOIR`), their rows read back afterwards (`read_samples`), and drawn on their images
(`make_overlay`)."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitpose_batch.defaults import KEYPOINT_THRESHOLD  # keypoints drawn on overlays: as `render` draws them
from vitpose_batch.files.image_reader import ImageSource, read_image
from vitpose_batch.output.parts import read_parquet
from vitpose_batch.review.report.stats import COLUMNS, flat_persons
from vitpose_core.drawing import draw_poses

log = logging.getLogger("vitpose_batch")

RESERVOIR = 4096
OVERLAY_SIZE = 240  # longest side of an overlay, pixels (small persons are scaled up)
CROP_PADDING = 0.25  # context around the person box on each side, as a share of the box

# one picked person: its score, where it is (part index, person index within the part's flattened persons) and
# the key it is kept by (a random key for the uniform sample)
PICK = np.dtype([("score", "f8"), ("part", "i8"), ("index", "i8"), ("key", "f8")])


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
# Reading the chosen rows back
# ----------------------------------------------------------------------------------------------------------------


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


def make_overlay(sample: Sample, keypoint_set: str | None, source: ImageSource | None = None,
                 warned: set[str] | None = None) -> Overlay:
    """Read and decode the sample's image as annotate did (shard rows through the image column the runs recorded:
    `source`; a video frame decoded from its video), draw its person, crop; a failure becomes the caption, and one warning per image (`warned`: the images
    already warned about, when several samples share one)."""
    try:
        image = read_image(sample.image_uri, source)
        problem = None
        if (sample.width, sample.height) not in ((0, 0), (image.shape[1], image.shape[0])):
            problem = (f"image is now {image.shape[1]}x{image.shape[0]}, the row says {sample.width}x{sample.height}: "
                       "it changed since it was annotated")
        return Overlay(sample, jpeg_data_uri(draw_overlay(image, sample, keypoint_set)), problem)
    except Exception as exc:  # noqa: BLE001 - a vanished or changed image must not end the report
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        if warned is None or sample.image_uri not in warned:
            log.warning("report: cannot draw %s (%s)", sample.image_uri, text)
        if warned is not None:
            warned.add(sample.image_uri)
        return Overlay(sample, None, text)
