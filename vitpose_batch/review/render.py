"""Look at predictions: draw a sample of annotated images with their poses, as JPEGs (random, or by score), and
the first videos (by video_uri) as MP4s with their skeletons and track ids.

The rows are streamed one part file at a time and a reservoir sample (Algorithm R, seeded) of the rows without an
error is kept, so any number of rows costs the memory of `sample` rows. Each sampled image is read again from its
`image_uri`:

* a plain image file or URL: read through fsspec;
* `<shard>.tar#<member>` (WebDataset): the member read with `tarfile` over an fsspec file handle;
* `<shard>.parquet#<row>`: that row of the shard's single binary column (a shard with none or several binary columns
  cannot be read, and says so).

An image that cannot be read or drawn is skipped with a warning (logger `vitpose_batch.review.render`), never a crash.

Video frame rows (`video_uri` set) never join the image sample. The first `sample` videos by video_uri each become
`<video name>.mp4` (`vitpose_batch.review.video_render.render_video`; names as `posetrack.video_names` makes them over
the OUTPUT's videos, so they match a posetrack export's `<video name>.json`), one output frame per row, timed by the
rows' timestamps. Their frames come from the video itself in one sequential decode (`FrameReader`: the video is
indexed once, `decode_frames` over the rows' frame indices, a generator advanced as the frames are asked for in
increasing order; after a decoding fault it starts again at the next frame asked for). The rows of the chosen videos
are gathered in one second pass over the parts (`read_video_rows`), so memory holds those videos' rows. A video that
cannot be read or drawn is skipped with a warning; its rows without a frame in the video (a video that could not be
read at all, or the error row of a file cut short) are left out.
"""

from __future__ import annotations

import heapq
import io
import logging
import posixpath
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from vitpose_batch.defaults import KEYPOINT_THRESHOLD
from vitpose_batch.files.addresses import image_name
from vitpose_batch.files.image_reader import image_source_of, read_image
from vitpose_batch.files.storage import open_filesystem
from vitpose_batch.output.layout import Output
from vitpose_batch.output.parts import iter_part_tables
from vitpose_batch.review.export import check_predictions, output_keypoint_set, read_video_rows
from vitpose_batch.review.posetrack import video_names
from vitpose_batch.review.video_render import render_video
from vitpose_batch.schemas.coco import PredictionRow, iter_prediction_rows
from vitpose_batch.video.decoding import VideoError, VideoIndex, decode_frames, scan
from vitpose_core.drawing import draw_poses
from vitpose_core.filesystems import open_uri

__all__ = ["PICKS", "FrameReader", "draw_row", "read_image", "render", "render_videos", "reservoir_sample",
           "scored_sample"]

logger = logging.getLogger(__name__)

JPEG_QUALITY = 90
# `read_image` (vitpose_batch.files.image_reader) reads any image_uri back as annotate saw it; re-exported here


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


# ----------------------------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------------------------


class FrameReader:
    """`read_frame(frame_index)` for `render_video` over one sequential decode of a video's wanted frames.

    `file`/`name`/`index`: the open video, its name in messages and its `scan`. `wanted`: the frame indices that will
    be asked for. Each call advances one `decode_frames` generator to the frame asked for (frames must be asked in
    increasing order; the ones in between are passed over) and returns it as HxWx3 uint8 RGB, upright. A frame the
    decoder does not give raises VideoError; after a decoding fault the next call starts a new decode at the frame it
    asks for (seeking to the keyframe before it), so a bad stretch costs only its frames. `close()` ends the decode."""

    def __init__(self, file, name: str, index: VideoIndex, wanted: Sequence[int]) -> None:
        self.file, self.name, self.index = file, name, index
        self.wanted = np.unique(np.asarray(wanted, np.int64))
        self.frames: Iterator[tuple[int, float, np.ndarray]] | None = None
        self.pending: tuple[int, float, np.ndarray] | None = None  # decoded, not yet asked for
        self.last = -1  # the last frame asked for

    def __call__(self, frame_index: int) -> np.ndarray:
        frame_index = int(frame_index)
        if frame_index <= self.last:
            raise ValueError(f"video {self.name}: frame {frame_index} asked after frame {self.last}; frames must "
                             "be asked in increasing order")
        self.last = frame_index
        if not 0 <= frame_index < self.index.frame_count:
            raise VideoError(f"video {self.name}: no frame {frame_index}, it has {self.index.frame_count} frames")
        if self.frames is None:  # the first frame, or the first after a fault: decode from here
            rest = np.union1d(self.wanted[self.wanted >= frame_index], [frame_index])
            self.frames = decode_frames(self.file, self.name, self.index, rest, frame_index, self.index.frame_count)
            self.pending = None
        while True:
            if self.pending is None:
                try:
                    self.pending = next(self.frames)
                except StopIteration:
                    self.frames = None
                    raise VideoError(f"video {self.name}: frame {frame_index} did not come out of the decoder") \
                        from None
                except VideoError:
                    self.frames = None
                    raise
            index, _, rgb = self.pending
            if index > frame_index:
                raise ValueError(f"video {self.name}: frame {frame_index} is not among the wanted frames")
            self.pending = None
            if index == frame_index:
                return rgb

    def close(self) -> None:
        """End the decode (the container is closed); the file stays open (its opener closes it)."""
        if self.frames is not None:
            self.frames.close()
            self.frames, self.pending = None, None


def _drawable(rows: pa.Table, index: VideoIndex) -> pa.Table:
    """The rows with a frame in the video (0 <= frame_index < its frames), timestamp_s filled from `index` where
    null."""
    frames = rows.column("frame_index")
    rows = rows.filter(pc.and_(pc.greater_equal(frames, 0), pc.less(frames, index.frame_count)))
    stamps = rows.column("timestamp_s")
    if stamps.null_count:
        known = index.timestamps_s[rows.column("frame_index").to_numpy()]
        filled = pc.coalesce(stamps, pa.array(known, pa.float64()))
        rows = rows.set_column(rows.schema.get_field_index("timestamp_s"), "timestamp_s", filled)
    return rows


def render_videos(
    predictions: Output,
    outdir: str,
    video_uris: Sequence[str],
    names: dict[str, str],
    min_person_score: float = 0.0,
    keypoint_threshold: float = KEYPOINT_THRESHOLD,
) -> list[str]:
    """Draw each video of `video_uris` (their rows read from `predictions` in one pass) as `<outdir>/<names[uri]>.mp4`
    (`render_video`: skeletons of the OUTPUT's keypoint set, boxes and track ids, frames decoded once in order by a
    `FrameReader`). A video that cannot be read or drawn is skipped with a warning. Returns the written paths, in
    `video_uris` order."""
    if not video_uris:
        return []
    videos = read_video_rows(predictions, video_uris)
    keypoint_set = output_keypoint_set(predictions)
    uris = videos.column("video_uri")
    written = []
    for uri in video_uris:
        dst = f"{outdir.rstrip('/')}/{names[uri]}.mp4"
        try:
            with open_uri(uri) as file:
                index = scan(file, uri)
                rows = _drawable(videos.filter(pc.equal(uris, uri)), index)
                if not rows.num_rows:
                    raise ValueError("none of its rows has a frame in the video")
                reader = FrameReader(file, uri, index, rows.column("frame_index").to_numpy())
                try:
                    render_video(rows, reader, dst, keypoint_set.keypoint_names, keypoint_set.skeleton,
                                 score_threshold=keypoint_threshold, min_person_score=min_person_score)
                finally:
                    reader.close()
        except Exception as exc:  # noqa: BLE001 - one bad video must not end the run
            message = str(exc).splitlines()[0] if str(exc) else ""
            logger.warning("render: skipped video %s (%s: %s)", uri, type(exc).__name__, message)
            continue
        written.append(dst)
    return written


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def _image_rows(predictions: Output, video_uris: set[str]) -> Iterator[pa.Table]:
    """The part tables without their video rows; the video_uris of the rows with a frame go into `video_uris`."""
    for table in iter_part_tables(predictions):
        if "video_uri" in table.column_names:
            videos = table.column("video_uri")
            if videos.null_count < table.num_rows:
                framed = pc.and_(pc.is_valid(videos), pc.is_valid(table.column("frame_index")))
                video_uris.update(pc.unique(pc.filter(videos, framed)).to_pylist())
                table = table.filter(pc.is_null(videos))
        yield table


def render(
    predictions: Output | str,
    outdir: str,
    sample: int = 16,
    seed: int = 0,
    min_person_score: float = 0.0,
    keypoint_threshold: float = KEYPOINT_THRESHOLD,
    pick: str = "random",
) -> list[str]:
    """Draw `sample` chosen error-free image rows of `predictions` (an annotate OUTPUT or one .parquet file: a
    local path or fsspec URL, or an opened Output) and write them as `<image name>.jpg` into `outdir` (local or
    fsspec URL, created if missing; a repeated name gets `-2`, `-3`, ...), and its first `sample` videos (by
    video_uri) as `<video name>.mp4` (see the module docstring). Keypoints scored > keypoint_threshold are drawn, of
    persons scored >= min_person_score. `pick` (images only): "random" (a seeded uniform sample), or "lowest" /
    "median" / "highest": the images holding the lowest-, most typically or highest-scored persons
    (`scored_sample`). Returns the written paths (`outdir` joined with the file names): the JPEGs in sample order,
    then the MP4s in video_uri order. Raises ValueError for a negative `sample`, an unknown `pick` or predictions
    that are not an annotate OUTPUT; an image or video that cannot be drawn is skipped with a warning."""
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    predictions = Output.open(predictions)
    check_predictions(predictions)
    video_uris: set[str] = set()
    rows = iter_prediction_rows(_image_rows(predictions, video_uris))
    chosen = reservoir_sample(rows, sample, seed) if pick == "random" else scored_sample(rows, sample, pick)
    source = image_source_of(predictions)
    fs, folder = open_filesystem(outdir)
    if chosen or (video_uris and sample):
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
    every_video = sorted(video_uris)
    written += render_videos(predictions, outdir, every_video[:sample], video_names(every_video),
                             min_person_score, keypoint_threshold)
    return written
