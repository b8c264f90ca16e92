"""Read and decode: encoded bytes -> upright RGB pixels, or a per-image error; person boxes attached.

The pose actors decode their own batches (`decode_items`): encoded bytes, about a fifth of the pixels' size, are
what crosses Ray's object store. Before GPU actors, CPU tasks read the files (`read_batch`) so that the actor
never waits on storage; JPEGs then decode on the GPU (vitpose_batch.pipeline.nvjpeg). A file that cannot be read or decoded
becomes a row with `error` set; the job goes on.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from vitpose_core.crops import boxes_to_center_scale
from vitpose_core.filesystems import open_uri

ENCODED_SCHEMA = pa.schema([
    ("image_uri", pa.string()),
    ("image_id", pa.int64()),
    ("data", pa.large_binary()),  # the file's bytes; empty when it could not be read
    ("error", pa.string()),
    ("error_retryable", pa.bool_()),
])

READ_ATTEMPTS = 6  # object stores blink: ~0.5+1+2+4+8 s of patience before an image is given up as unreadable


class ImageError(ValueError):
    """An image that cannot be used; the message says why, for its row's `error`. `retryable`: the failure may
    pass (the file may appear, storage may come back), so a re-run redoes it."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def read_bytes(uri: str, attempts: int = READ_ATTEMPTS) -> bytes:
    """Whole file at `uri` (a local path, literally, or an fsspec URL), retrying transient failures with exponential
    backoff."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            with open_uri(uri, "rb") as handle:
                return handle.read()
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise ImageError(f"cannot read: {type(exc).__name__}", retryable=True) from None
        except Exception as exc:  # noqa: BLE001 - network stacks raise anything; retry, then report
            if attempt == attempts - 1:
                raise ImageError(f"cannot read after {attempts} attempts: {type(exc).__name__}: {exc}",
                                 retryable=True) from None
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


def decode_image(data: bytes) -> np.ndarray:
    """Encoded image -> HxWx3 uint8 RGB, EXIF orientation applied. Raises ImageError naming the problem."""
    return decode_reduced(data, 1)[0]


CROP_HEIGHT = 256  # ViTPose's input height: a person region needs no more source rows than this
REDUCTIONS = (8, 4, 2)  # what a JPEG decoder can skip for free (DCT scaling)
# Only photos this large are decoded reduced: below it the saving is small, and a full decode keeps the job's rows
# identical to in-process PoseEstimator's on the same image.
MIN_PIXELS_TO_REDUCE = 4_000_000


def reduction_for(boxes: np.ndarray | None) -> int | None:
    """The JPEG reduction (1, 2, 4 or 8) that still leaves every crop at least one source pixel per crop pixel.

    None when the boxes are unknown: a detector looks first, at what `detector_reduction` leaves it; 8 for an image
    without boxes (only its size is needed)."""
    if boxes is None:
        return None
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return REDUCTIONS[0]
    _, size = boxes_to_center_scale(boxes, aspect_ratio=192 / 256)
    ratio = float(size[:, 1].min()) / CROP_HEIGHT  # regions are widened to the crop's aspect: height decides
    return next((f for f in REDUCTIONS if ratio >= f), 1)


DETECTOR_MIN_SIDE = 960  # a detector sees the image letterboxed to 416-640 px: 1.5x that is plenty for it


def detector_reduction(width: int, height: int) -> int:
    """The largest JPEG reduction leaving the image's longer side at least DETECTOR_MIN_SIDE pixels (1 if none)."""
    return next((f for f in REDUCTIONS if max(width, height) / f >= DETECTOR_MIN_SIDE), 1)


def decode_reduced(data: bytes, reduction: int | None) -> tuple[np.ndarray, int]:
    """Encoded image -> (HxWx3 uint8 RGB, the reduction applied), EXIF orientation applied.

    A JPEG of MIN_PIXELS_TO_REDUCE pixels or more is decoded at 1/`reduction` of its size where the decoder can (DCT
    scaling: reduced pixel i covers full pixels [i*f, (i+1)*f)); None: as far as `detector_reduction` allows.
    Others are decoded whole (reduction 1). Raises ImageError naming the problem."""
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large but within the limit: decode
            with Image.open(io.BytesIO(data)) as image:
                applied = 1
                large = image.size[0] * image.size[1] >= MIN_PIXELS_TO_REDUCE
                if reduction is None:
                    reduction = detector_reduction(*image.size)
                if reduction > 1 and large and image.format == "JPEG":
                    width = image.size[0]
                    image.draft(image.mode, (-(-image.size[0] // reduction), -(-image.size[1] // reduction)))
                    applied = round(width / image.size[0])
                return to_rgb(ImageOps.exif_transpose(image)), applied
    except ImageError:
        raise  # ours already says what is wrong (an unsupported mode)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(exc))
        size = f" ({int(found[1]):,} pixels, limit {int(found[2]):,})" if found else ""
        raise ImageError(f"image too large{size}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None


def full_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image after EXIF orientation, from its header."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        transposed = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (height, width) if transposed else (width, height)


def to_reduced(boxes: np.ndarray, reduction: int) -> np.ndarray:
    """COCO xywh boxes in full-image pixels -> in the pixels of an image decoded at 1/reduction."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    boxes[:, :2] = (boxes[:, :2] - (reduction - 1) / 2) / reduction
    boxes[:, 2:] /= reduction
    return boxes


def to_full(points: np.ndarray, reduction: int) -> np.ndarray:
    """Points (..., 2) in the pixels of an image decoded at 1/reduction -> full-image pixels."""
    return np.asarray(points, np.float32) * reduction + (reduction - 1) / 2


def boxes_to_full(boxes: np.ndarray, reduction: int) -> np.ndarray:
    """COCO xywh boxes in the pixels of an image decoded at 1/reduction -> full-image pixels (`to_reduced`'s
    inverse)."""
    full = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    full[:, :2], full[:, 2:] = to_full(full[:, :2], reduction), full[:, 2:] * reduction
    return full


def redecode(item: Decoded, reduction: int) -> None:
    """Decode `item` again from its kept bytes at a smaller reduction (its small persons need more pixels)."""
    item.image, item.reduction = decode_reduced(item.data, reduction)


def to_rgb(image: Image.Image) -> np.ndarray:
    """A PIL image of any mode -> HxWx3 uint8 RGB: the picture a viewer shows, or ImageError naming the mode.

    - 1, L, P, RGB, RGBX, CMYK, YCbCr, HSV, LAB: Pillow's own conversion (bilevel as 0/255; CMYK by the plain
      formula, (255-C)(255-K)/255, no ICC profile; YCbCr as JFIF; LAB as CIE L*a*b* D50 to sRGB through LittleCMS,
      as ImageCms does). A Pillow that cannot convert one (LAB without LittleCMS) raises "unsupported image mode
      <MODE>: ..."
    - Transparency is composited on white: RGBA, LA, PA, P with a transparent index or an RGBA palette, 1/L/RGB
      with a transparent colour (PNG tRNS). Premultiplied La and RGBa: the stored colour plus (255 - alpha), the
      same picture as un-premultiplying and compositing.
    - Wide greyscale keeps its range, not its low byte; scaled to 0..255 (integers truncated, floats rounded):
      I;16, I;16B, I;16L, I;16N (16-bit) by 65535, as GIMP and browsers show a 16-bit PNG (truncated, not
      rounded: 40000 -> 155, as this decoder always gave);
      I (32-bit signed) by 255 when all values are in 0..255, by 65535 when in 0..65535 (16-bit PGMs open as I),
      else by its min..max;
      F (32-bit float) by 255 when its finite values are in [0, 1], else by its finite min..max (as ImageJ shows
      it); NaN is black, +inf white, -inf black. A flat I or F image outside those ranges is clipped into 0..65535
      or [0, 1] (positive: white). A transparent grey level (tRNS) is white.
    Any other mode raises "unsupported image mode <MODE>: ...".
    """
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return wide_grey_to_rgb(image)
    if mode in ("La", "RGBa"):
        return premultiplied_on_white(image)
    transparent = "transparency" in image.info and mode in ("1", "L", "RGB", "P")
    if mode in ("RGBA", "LA", "PA") or transparent or (mode == "P" and getattr(image.palette, "mode", "") == "RGBA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # people are labelled on paper-white
        image = Image.alpha_composite(background, image)
    elif mode not in ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV", "LAB"):
        raise ImageError(f"unsupported image mode {mode}: no rule to show it as RGB")
    try:
        rgb = image.convert("RGB")
    except (ValueError, ImportError) as exc:  # a Pillow without this conversion, or without LittleCMS for it
        raise ImageError(f"unsupported image mode {mode}: {exc}") from None
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def wide_grey_to_rgb(image: Image.Image) -> np.ndarray:
    """16-bit, 32-bit integer and float greyscale -> HxWx3 uint8 RGB, scaled by `to_rgb`'s rule."""
    values = np.asarray(image)
    low, high = values.min(), values.max()
    if image.mode == "F" and not (np.isfinite(low) and np.isfinite(high)):
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    low, high = float(low), float(high)
    if image.mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    elif image.mode == "I" and low >= 0 and high <= 255:
        low, high = 0.0, 255.0
    elif image.mode == "I" and low >= 0 and high <= 65535:
        low, high = 0.0, 65535.0
    elif high <= low:  # flat, outside the ranges above: clipped into the type's usual range
        low, high = (0.0, 1.0) if image.mode == "F" else (0.0, 65535.0)
    grey = np.nan_to_num(values.astype(np.float64), nan=low, posinf=high, neginf=low)
    # multiplied before dividing, so that exact multiples land exactly (257 -> 1); integers truncate, as 16-bit grey
    # always did (40000 -> 155); floats round (0.25 -> 64; an 8-bit image stored as v / 255 comes back as v)
    scaled = (np.clip(grey, low, high) - low) * 255.0 / (high - low)
    grey = (np.rint(scaled) if image.mode == "F" else np.floor(scaled)).astype(np.uint8)
    transparent = image.info.get("transparency")
    if isinstance(transparent, int) and image.mode != "F":
        grey[values == transparent] = 255  # a transparent grey level (PNG tRNS), composited on white
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def premultiplied_on_white(image: Image.Image) -> np.ndarray:
    """La / RGBa (colour premultiplied by alpha) -> HxWx3 uint8 RGB composited on white: colour + (255 - alpha)."""
    pixels = np.asarray(image).astype(np.int16)
    colour, alpha = pixels[..., :-1], pixels[..., -1:]
    rgb = np.clip(colour + (255 - alpha), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb)


@dataclass
class Decoded:
    """One image ready for the pose stage, or the reason it is not (`error`)."""

    image_uri: str
    image_id: int | None
    width: int = 0  # of the full image, after EXIF orientation
    height: int = 0
    image: Any = None  # HxWx3 uint8 RGB at 1/reduction: a numpy array, or a torch tensor on the pose device
    reduction: int = 1
    error: str | None = None
    retryable: bool | None = None
    boxes: np.ndarray | None = None  # (n, 4) xywh from --boxes, full-image pixels; None: run the detector
    box_scores: np.ndarray | None = None
    data: bytes | None = None  # kept when decoded reduced for a detector: small persons need a second decode
    dropped: list = field(default_factory=list)  # given boxes left out: {"reason", "bbox"} (vitpose_batch.pipeline.pose_worker)


def read_batch(batch: pa.Table) -> pa.Table:
    """ITEM rows -> ENCODED rows: the bytes of every file row read (shard members carry theirs), read failures in
    `error`. Runs in CPU tasks before GPU actors, so that encoded bytes, not pixels, cross the object store."""
    datas = batch.column("data").to_pylist()
    errors: list[str | None] = batch.column("error").to_pylist() if "error" in batch.column_names \
        else [None] * len(datas)
    retryable: list[bool | None] = batch.column("error_retryable").to_pylist() \
        if "error_retryable" in batch.column_names else [None] * len(datas)
    for i, (uri, data) in enumerate(zip(batch.column("image_uri").to_pylist(), datas)):
        if data is None and errors[i] is None:
            try:
                datas[i] = read_bytes(uri)
            except ImageError as exc:
                errors[i], retryable[i] = str(exc), exc.retryable
    return pa.table({"image_uri": batch.column("image_uri"), "image_id": batch.column("image_id"),
                     "data": pa.array(datas, pa.large_binary()), "error": pa.array(errors, pa.string()),
                     "error_retryable": pa.array(retryable, pa.bool_())}, schema=ENCODED_SCHEMA)


def decode_items(batch: pa.Table, boxes=None, pool: Executor | None = None, jpeg=None) -> list[Decoded]:
    """ITEM or ENCODED rows -> one `Decoded` per row, in order: `batch_items` then `decode_batch`."""
    items = batch_items(batch, boxes)
    decode_batch(items, batch.column("data").to_pylist(), pool=pool, jpeg=jpeg)
    return items


def batch_items(batch: pa.Table, boxes=None) -> list[Decoded]:
    """ITEM or ENCODED rows -> one undecoded `Decoded` per row, in order, with its --boxes attached (`boxes`: a
    vitpose_batch.schemas.box_files.BoxIndex or None) and any read error the row carries."""
    uris = batch.column("image_uri").to_pylist()
    ids = batch.column("image_id").to_pylist()
    given = batch.column("error").to_pylist() if "error" in batch.column_names else [None] * len(uris)
    items = [attach_boxes(Decoded(uri, image_id, error=error), boxes) for uri, image_id, error in zip(uris, ids, given)]
    if "error_retryable" in batch.column_names:
        for item, retryable in zip(items, batch.column("error_retryable").to_pylist()):
            item.retryable = retryable
    return items


def decode_batch(items: list[Decoded], datas: list[bytes | None], pool: Executor | None = None, jpeg=None) -> None:
    """Decode every item without an error from its bytes (`datas[i]`; None: read the file first), in place.

    A large JPEG is decoded no larger than its crops need (`reduction_for`) or, before a detector, than the detector
    needs (`detector_reduction`; the pose stage decodes again what its small persons need); width and height stay
    the full image's. `pool` decodes images in parallel (PIL releases the GIL). `jpeg` (a vitpose_batch.pipeline.nvjpeg.DeviceJpeg)
    decodes the JPEGs it accepts straight into device memory, in one call for the batch; every other image, and any
    it fails on, takes the CPU path, whose messages name the problem.
    """
    run = pool.map if pool is not None else map
    todo = [i for i, item in enumerate(items) if item.error is None]
    if jpeg is not None:
        done = jpeg.decode_into([items[i] for i in todo], [datas[i] for i in todo])
        todo = [i for i, ok in zip(todo, done) if not ok]
    list(run(decode_one, [items[i] for i in todo], [datas[i] for i in todo]))  # fills the items in place


def attach_boxes(item: Decoded, boxes) -> Decoded:
    """The --boxes of `item`'s image (by file name or COCO id), and its COCO id when the boxes file knows it."""
    if boxes is not None:
        name = boxes.name_for(item.image_uri)
        found, scores = boxes.boxes_for(file_name=name, image_id=item.image_id)
        item.boxes = np.asarray(found, np.float32).reshape(-1, 4)
        item.box_scores = np.asarray(scores, np.float32).reshape(-1)
        if item.image_id is None:
            item.image_id = boxes.image_id_for(name)
    return item


def decode_one(item: Decoded, data: bytes | None) -> Decoded:
    """Read (when `data` is None) and decode one image on the CPU into `item`; failures become its error."""
    try:
        data = read_bytes(item.image_uri) if data is None else data
        item.image, item.reduction = decode_reduced(data, reduction_for(item.boxes))
        item.height, item.width = item.image.shape[:2]
        if item.reduction > 1:
            item.width, item.height = full_size(data)
            if item.boxes is None:
                item.data = data
    except ImageError as exc:
        item.image, item.error, item.retryable = None, str(exc), exc.retryable
    return item
