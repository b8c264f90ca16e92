"""Decode stage (CPU tasks): encoded bytes -> upright RGB pixels, or a per-image error; person boxes attached.

Runs between reading and the pose actors so that GPU actors only ever see ready pixels. A file that cannot be read
or decoded becomes a row with `error` set; the job goes on.
"""

from __future__ import annotations

import io
import re
import time
import warnings

import fsspec
import numpy as np
import pyarrow as pa
from PIL import Image, ImageOps, UnidentifiedImageError

from schemas.coco import image_name
from vitpose_core.crops import boxes_to_center_scale

DECODED_SCHEMA = pa.schema([
    ("image_uri", pa.string()),
    ("image_id", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("pixels", pa.large_binary()),  # HxWx3 uint8 RGB, C order, at 1/reduction of width x height; empty on error
    ("reduction", pa.int32()),  # 1, or the JPEG DCT reduction the pixels were decoded at
    ("error", pa.string()),
    ("error_retryable", pa.bool_()),
    ("boxes", pa.list_(pa.float32())),  # flat n*4 xywh from --boxes; null: run the detector
    ("box_scores", pa.list_(pa.float32())),
])

READ_ATTEMPTS = 6  # object stores blink: ~0.5+1+2+4+8 s of patience before an image is given up as unreadable


class ImageError(ValueError):
    """An image that cannot be used; the message says why, for its row's `error`. `retryable`: the failure may
    pass (the file may appear, storage may come back), so a re-run redoes it."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


def read_bytes(uri: str, attempts: int = READ_ATTEMPTS) -> bytes:
    """Whole file at `uri` through fsspec, retrying transient failures with exponential backoff."""
    delay = 0.5
    for attempt in range(attempts):
        try:
            with fsspec.open(uri, "rb") as handle:
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


def reduction_for(boxes: np.ndarray | None) -> int:
    """The JPEG reduction (1, 2, 4 or 8) that still leaves every crop at least one source pixel per crop pixel.

    1 when the boxes are unknown (a detector will look at the whole image); 8 for an image without boxes (only its
    size is needed)."""
    if boxes is None:
        return 1
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(boxes):
        return REDUCTIONS[0]
    _, size = boxes_to_center_scale(boxes, aspect_ratio=192 / 256)
    ratio = float(size[:, 1].min()) / CROP_HEIGHT  # regions are widened to the crop's aspect: height decides
    return next((f for f in REDUCTIONS if ratio >= f), 1)


def decode_reduced(data: bytes, reduction: int) -> tuple[np.ndarray, int]:
    """Encoded image -> (HxWx3 uint8 RGB, the reduction applied), EXIF orientation applied.

    A JPEG of MIN_PIXELS_TO_REDUCE pixels or more is decoded at 1/`reduction` of its size where the decoder can (DCT
    scaling: reduced pixel i covers full pixels [i*f, (i+1)*f)); others are decoded whole (reduction 1). Raises
    ImageError naming the problem."""
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large but within the limit: decode
            with Image.open(io.BytesIO(data)) as image:
                applied = 1
                large = image.size[0] * image.size[1] >= MIN_PIXELS_TO_REDUCE
                if reduction > 1 and large and image.format == "JPEG":
                    width = image.size[0]
                    image.draft(image.mode, (-(-image.size[0] // reduction), -(-image.size[1] // reduction)))
                    applied = round(width / image.size[0])
                return to_rgb(ImageOps.exif_transpose(image)), applied
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


def to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: keep the range, not the low byte
        grey = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
        grey8 = np.clip(grey * (255.0 / peak), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey8[..., None], 3, axis=2))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # people are labelled on paper-white
        image = Image.alpha_composite(background, image)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def decode_batch(batch: pa.Table, boxes=None) -> pa.Table:
    """ITEM rows (image_uri, image_id, data) -> DECODED_SCHEMA rows. `boxes`: a schemas.coco.BoxIndex or None.

    With boxes known, a large JPEG is decoded no larger than its crops need (`reduction_for`); width and height are
    the full image's, and the pose stage maps its keypoints back to full-image pixels."""
    out: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    uris = batch.column("image_uri").to_pylist()
    ids = batch.column("image_id").to_pylist()
    datas = batch.column("data").to_pylist()
    for uri, image_id, data in zip(uris, ids, datas):
        pixels, width, height, error, retryable, reduction = b"", 0, 0, None, None, 1
        box_list = score_list = found_boxes = None
        if boxes is not None:
            found_boxes, found_scores = boxes.boxes_for(file_name=image_name(uri), image_id=image_id)
            box_list = np.asarray(found_boxes, np.float32).reshape(-1).tolist()
            score_list = np.asarray(found_scores, np.float32).reshape(-1).tolist()
            if image_id is None:
                image_id = boxes.image_id_for(image_name(uri))
        try:
            data = read_bytes(uri) if data is None else data
            image, reduction = decode_reduced(data, reduction_for(found_boxes))
            height, width = image.shape[:2]
            if reduction > 1:
                width, height = full_size(data)
            pixels = image.tobytes()
        except ImageError as exc:
            error, retryable = str(exc), exc.retryable
        for name, value in zip(DECODED_SCHEMA.names, (uri, image_id, width, height, pixels, reduction, error,
                                                      retryable, box_list, score_list)):
            out[name].append(value)
    return pa.table(out, schema=DECODED_SCHEMA)


def pixels_of(row_pixels: bytes, width: int, height: int, reduction: int = 1) -> np.ndarray:
    """The HxWx3 view of a decoded row's pixels (no copy); width x height of the full image, decoded at
    1/reduction."""
    return np.frombuffer(row_pixels, dtype=np.uint8).reshape(-(-height // reduction), -(-width // reduction), 3)
