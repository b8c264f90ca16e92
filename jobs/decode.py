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

DECODED_SCHEMA = pa.schema([
    ("image_uri", pa.string()),
    ("image_id", pa.int64()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("pixels", pa.large_binary()),  # HxWx3 uint8 RGB, C order; empty when error is set
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
    if not data:
        raise ImageError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # large but within the limit: decode
            with Image.open(io.BytesIO(data)) as image:
                return to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(exc))
        size = f" ({int(found[1]):,} pixels, limit {int(found[2]):,})" if found else ""
        raise ImageError(f"image too large{size}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from None


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
    """ITEM rows (image_uri, image_id, data) -> DECODED_SCHEMA rows. `boxes`: a schemas.coco.BoxIndex or None."""
    out: dict[str, list] = {name: [] for name in DECODED_SCHEMA.names}
    uris = batch.column("image_uri").to_pylist()
    ids = batch.column("image_id").to_pylist()
    datas = batch.column("data").to_pylist()
    for uri, image_id, data in zip(uris, ids, datas):
        pixels, width, height, error, retryable = b"", 0, 0, None, None
        try:
            image = decode_image(read_bytes(uri) if data is None else data)
            height, width = image.shape[:2]
            pixels = image.tobytes()
        except ImageError as exc:
            error, retryable = str(exc), exc.retryable
        box_list = score_list = None
        if boxes is not None:
            found_boxes, found_scores = boxes.boxes_for(file_name=image_name(uri), image_id=image_id)
            box_list = np.asarray(found_boxes, np.float32).reshape(-1).tolist()
            score_list = np.asarray(found_scores, np.float32).reshape(-1).tolist()
            if image_id is None:
                image_id = boxes.image_id_for(image_name(uri))
        for name, value in zip(DECODED_SCHEMA.names,
                               (uri, image_id, width, height, pixels, error, retryable, box_list, score_list)):
            out[name].append(value)
    return pa.table(out, schema=DECODED_SCHEMA)


def pixels_of(row_pixels: bytes, width: int, height: int) -> np.ndarray:
    """The HxWx3 view of a decoded row's pixels (no copy)."""
    return np.frombuffer(row_pixels, dtype=np.uint8).reshape(height, width, 3)
