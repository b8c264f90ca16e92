"""JPEG decoding straight into GPU memory (torchvision's nvjpeg path) for the pose actors.

A batch's JPEGs go to the device in one `decode_jpeg` call; EXIF orientation, which nvjpeg ignores, is applied on the
device by `orient`. What nvjpeg cannot take (other formats, CMYK, decompression-bomb sizes, a file it fails on) is
left to the CPU decoder of `vitpose_batch.pipeline.image_decoding`, so a row's width, height and error do not depend on the path it took.
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import torch
from PIL import Image

ORIENTATION = 0x0112  # EXIF tag


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) as stored -> as shown: the EXIF orientation (1-8) applied, exactly as PIL's exif_transpose does."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return image.transpose(-1, -2).flip(-1)
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return image.transpose(-1, -2).flip(-2)
    return image


def jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG nvjpeg can decode as RGB (baseline or progressive, 1 or 3 channels, within
    PIL's pixel limit), from its header alone; None for anything else."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG" or image.mode not in ("RGB", "L"):
                return None
            limit = Image.MAX_IMAGE_PIXELS
            if limit and image.size[0] * image.size[1] > limit:
                return None  # the CPU path says "image too large" or warns, as it does for every format
            orientation = image.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - anything odd: the CPU path names it
        return None
    return orientation if orientation in range(1, 9) else 1


JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


class DeviceJpeg:
    """Decodes the JPEGs of a batch into (H, W, 3) uint8 tensors on `device`.

    `decoder(list of 1-D uint8 CPU tensors, device) -> list of (3, H, W) uint8 tensors` is torchvision's batched
    `decode_jpeg` (see `for_device`); any function with that contract works, which is how the CPU tests run it.
    """

    def __init__(self, device: str | torch.device, decoder: JpegDecoder) -> None:
        self.device = torch.device(device)
        self.decoder = decoder

    @classmethod
    def for_device(cls, device: str | torch.device) -> "DeviceJpeg | None":
        """nvjpeg on a CUDA device when torchvision's image ops load; None (decode on the CPU) otherwise."""
        device = torch.device(device)
        if device.type != "cuda":
            return None
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except Exception:  # noqa: BLE001 - not installed, or built for another torch
            return None

        def nvjpeg(datas: list[torch.Tensor], target: torch.device) -> list[torch.Tensor]:
            return decode_jpeg(datas, mode=ImageReadMode.RGB, device=target)

        return cls(device, nvjpeg)

    def decode_into(self, items: Sequence, datas: Sequence[bytes | None]) -> list[bool]:
        """Decode what it can of `datas` into the matching `vitpose_batch.pipeline.image_decoding.Decoded` items (image, width, height);
        returns which ones it did. Files not yet read (None) and formats it does not take are left alone."""
        done = [False] * len(items)
        chosen = [(i, orientation) for i, data in enumerate(datas)
                  if data and (orientation := jpeg_orientation(data)) is not None]
        if not chosen:
            return done
        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i, _ in chosen]
        try:
            decoded: list[torch.Tensor | None] = list(self.decoder(encoded, self.device))
        except Exception:  # noqa: BLE001 - one bad file fails the whole call: find it, keep the others
            decoded = [self.decode_single(data) for data in encoded]
        for (i, orientation), image in zip(chosen, decoded):
            if image is None:
                continue
            image = orient(image, orientation).permute(1, 2, 0)  # (H, W, 3) view of the upright image
            items[i].image, items[i].reduction = image, 1
            items[i].height, items[i].width = int(image.shape[0]), int(image.shape[1])
            done[i] = True
        return done

    def decode_single(self, data: torch.Tensor) -> torch.Tensor | None:
        try:
            return self.decoder([data], self.device)[0]
        except Exception:  # noqa: BLE001 - the CPU path will say what is wrong with it
            return None
