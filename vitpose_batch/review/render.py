"""Look at predictions: draw a sample of annotated images with their poses, as JPEGs (random, or by score).

The rows are streamed one part file at a time and a reservoir sample (Algorithm R, seeded) of the rows without an
error is kept, so any number of rows costs the memory of `sample` rows. Each sampled image is read again from its
`image_uri`:

* a plain image file or URL: read through fsspec;
* `<shard>.tar#<member>` (WebDataset): the member read with `tarfile` over an fsspec file handle;
* `<shard>.parquet#<row>`: that row of the shard's single binary column (a shard with none or several binary columns
  cannot be read, and says so).

An image that cannot be read or drawn is skipped with a warning (logger `vitpose_batch.review.render`), never a crash.
"""

from __future__ import annotations

import heapq
import io
import logging
import posixpath
import random
from collections.abc import Iterable

import numpy as np
from PIL import Image

from vitpose_batch.defaults import KEYPOINT_THRESHOLD
from vitpose_batch.files.addresses import image_name
from vitpose_batch.files.image_reader import ImageSource, image_source_of, read_image_bytes
from vitpose_batch.files.storage import open_filesystem
from vitpose_batch.output.layout import Output
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.pipeline.image_decoding import decode_image
from vitpose_batch.review.export import check_predictions
from vitpose_batch.schemas.coco import PredictionRow, iter_prediction_rows
from vitpose_core.drawing import draw_poses

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90


# ----------------------------------------------------------------------------------------------------------------
# Reading images back
# ----------------------------------------------------------------------------------------------------------------


def read_image(image_uri: str, source: ImageSource | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB exactly as annotate saw it (vitpose_batch.pipeline.image_decoding: EXIF orientation, transparency composited on white,
    16-bit grey scaled, not truncated): the frame and the pixels the predictions were made on."""
    return decode_image(read_image_bytes(image_uri, source))


# ----------------------------------------------------------------------------------------------------------------
# Sampling and drawing
# ----------------------------------------------------------------------------------------------------------------


def reservoir_sample(rows: Iterable[PredictionRow], sample: int, seed: int = 0) -> list[PredictionRow]:
    """A uniform sample of `sample` rows without an error (all of them when fewer), in stream order."""
    rng = random.Random(seed)
    kept: list[tuple[int, PredictionRow]] = []
    seen = 0
    for row in rows:
        if row.error is not None:
            continue
        if len(kept) < sample:
            kept.append((seen, row))
        else:
            j = rng.randrange(seen + 1)
            if j < sample:
                kept[j] = (seen, row)
        seen += 1
    return [row for _, row in sorted(kept, key=lambda item: item[0])]


PICKS = ("random", "lowest", "median", "highest")


def scored_sample(rows: Iterable[PredictionRow], sample: int, pick: str) -> list[PredictionRow]:
    """The `sample` error-free images holding the lowest-scored persons ("lowest": by each image's lowest person
    score), the highest-scored ("highest": by its highest) or the most typical ("median": by its median person
    score, nearest the median over images); ordered by that score.

    Memory stays bounded: "lowest" / "highest" keep a heap of `sample` rows; "median" keeps a uniform reservoir of
    max(1,000, 50 x sample) rows and takes the ones nearest its median (one pass: a second would double the reading
    of a 100 M-row OUTPUT)."""
    if pick not in PICKS[1:]:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
    score = {"lowest": np.min, "median": np.median, "highest": np.max}[pick]
    with_persons = (r for r in rows if r.error is None and len(r.scores))
    if pick == "median":
        pool = reservoir_sample(with_persons, max(1000, 50 * sample))
        middle = float(np.median([score(r.scores) for r in pool])) if pool else 0.0
        chosen = sorted(pool, key=lambda r: abs(float(score(r.scores)) - middle))[:sample]
    else:
        sign = -1.0 if pick == "lowest" else 1.0
        heap: list[tuple[float, int, PredictionRow]] = []
        for seen, row in enumerate(with_persons):
            item = (sign * float(score(row.scores)), -seen, row)  # ties: the earlier row stays
            if len(heap) < sample:
                heapq.heappush(heap, item)
            elif sample and item[:2] > heap[0][:2]:
                heapq.heapreplace(heap, item)
        chosen = [row for _, _, row in heap]
    return sorted(chosen, key=lambda r: float(score(r.scores)))


def draw_row(image: np.ndarray, row: PredictionRow, min_person_score: float, keypoint_threshold: float) -> np.ndarray:
    """The row's persons scored >= min_person_score drawn on `image` (keypoint set chosen by K)."""
    keep = [p for p in range(len(row.scores)) if row.scores[p] >= min_person_score]
    if not keep:
        return image.copy()
    keypoints = np.stack([row.keypoints[p] for p in keep]).astype(np.float32)
    return draw_poses(
        image, keypoints[..., :2], keypoints[..., 2], row.boxes[keep], score_threshold=keypoint_threshold,
    )


def _output_name(uri: str, taken: set[str]) -> str:
    stem = posixpath.splitext(image_name(uri))[0] or "image"
    name, n = f"{stem}.jpg", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.jpg"
    taken.add(name)
    return name


def render(
    predictions: Output | str,
    outdir: str,
    sample: int = 16,
    seed: int = 0,
    min_person_score: float = 0.0,
    keypoint_threshold: float = KEYPOINT_THRESHOLD,
    pick: str = "random",
) -> list[str]:
    """Draw `sample` randomly chosen error-free rows of `predictions` (an annotate OUTPUT or one .parquet file: a
    local path or fsspec URL, or an opened Output) and
    write them as `<image name>.jpg` into `outdir` (local or fsspec URL, created if missing; a repeated name gets
    `-2`, `-3`, ...). Keypoints scored > keypoint_threshold are drawn, of persons scored >= min_person_score.
    `pick`: "random" (a seeded uniform sample), or "lowest" / "median" / "highest": the images holding the lowest-,
    most typically or highest-scored persons (`scored_sample`). Returns the written paths (`outdir` joined with the file names), in sample order."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    predictions = Output.open(predictions)
    check_predictions(predictions)
    rows = iter_prediction_rows(iter_part_tables(predictions))
    chosen = reservoir_sample(rows, sample, seed) if pick == "random" else scored_sample(rows, sample, pick)
    source = image_source_of(predictions)
    fs, folder = open_filesystem(outdir)
    if chosen:
        fs.makedirs(folder, exist_ok=True)
    written: list[str] = []
    taken: set[str] = set()
    for row in chosen:
        try:
            image = read_image(row.image_uri, source)
            canvas = draw_row(image, row, min_person_score, keypoint_threshold)
        except Exception as exc:  # noqa: BLE001 - one bad image must not end the run
            message = str(exc).splitlines()[0] if str(exc) else ""
            logger.warning("render: skipped %s (%s: %s)", row.image_uri, type(exc).__name__, message)
            continue
        name = _output_name(row.image_uri, taken)
        buffer = io.BytesIO()
        Image.fromarray(canvas).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        fs.pipe_file(posixpath.join(folder, name), buffer.getvalue())
        written.append(outdir.rstrip("/") + "/" + name)
    return written
