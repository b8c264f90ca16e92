"""Every image mode Pillow has decodes to the picture a viewer shows, or is refused naming the mode (issue 18).

Each case builds a real image in the mode (from a real COCO photo, or a gradient where the mode cannot hold one),
writes it in each format Pillow can write for that mode, checks that the file opens in that mode again, and compares
`decode_image` with an expectation computed here, independently of vitpose_batch.pipeline.image_decoding: the photo itself for lossless
modes, transparency composited on white by the compositing formula, wide greyscale scaled by the documented rule,
colour spaces through their own maths. Modes no file Pillow writes opens in (HSV, I;16L, I;16N, RGBX, RGBa) go
through `to_rgb` too.
"""

from __future__ import annotations

import colorsys
import io
import struct
import warnings

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vitpose_batch.pipeline.image_decoding import ImageError, decode_image, decode_items, to_rgb
from vitpose_batch.pipeline.sources import ITEM_SCHEMA
from tests.shared_data import shared_path

PHOTO = "data/coco-val-4/000000000785.jpg"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The real photo, reduced 4x (160x107) to keep the per-pixel reference maths quick: HxWx3 uint8."""
    with Image.open(shared_path(PHOTO)) as image:
        return np.asarray(image.convert("RGB").reduce(4))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def opened_mode(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return image.mode


def decoded(data: bytes, mode: str, fmt: str) -> np.ndarray:
    """decode_image of a file that must open in `mode` (else the case would not test that mode)."""
    assert opened_mode(data) == mode, f"{fmt} opens as {opened_mode(data)}, not {mode}"
    return decode_image(data)


def grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, np.uint8)[..., None], 3, axis=2)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as an 8-bit greyscale image."""
    return np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).clip(0, 255).astype(np.uint8)


def alpha_ramp(shape: tuple[int, int]) -> np.ndarray:
    """Alpha from 0 (left) to 255 (right), with fully transparent and fully opaque columns."""
    return np.broadcast_to(np.linspace(0, 255, shape[1]).round().astype(np.uint8), shape).copy()


def on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight colour composited on white: c * a + 255 * (1 - a)."""
    a = alpha.astype(np.float64)[..., None] / 255
    return colour.astype(np.float64) * a + 255 * (1 - a)


def assert_close(got: np.ndarray, expected: np.ndarray, atol: float, mean: float | None = None) -> None:
    expected = np.asarray(expected, np.float64)
    assert got.dtype == np.uint8 and got.shape == expected.shape, (got.dtype, got.shape, expected.shape)
    diff = np.abs(got.astype(np.float64) - expected)
    if mean is not None:
        assert diff.mean() <= mean, f"mean difference {diff.mean():.2f} > {mean}"
    assert diff.max() <= atol, f"max difference {diff.max()} > {atol} at {np.unravel_index(diff.argmax(), diff.shape)}"


def assert_jpeg_close(got: np.ndarray, expected: np.ndarray) -> None:
    """A JPEG (quality 95) of `expected`: close on average and almost everywhere; edges may ring."""
    diff = np.abs(got.astype(np.float64) - np.asarray(expected, np.float64))
    assert got.dtype == np.uint8 and got.shape == diff.shape
    assert diff.mean() <= 3 and np.percentile(diff, 99) <= 25, (diff.mean(), np.percentile(diff, 99))


def set_extra_samples(tiff: bytes, value: int) -> bytes:
    """A little-endian TIFF with its ExtraSamples tag (338) set to `value` (1: associated, premultiplied alpha)."""
    assert tiff[:4] == b"II*\x00"
    data = bytearray(tiff)
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from("<HHI", data, entry)
        if tag == 338:
            assert (kind, n) == (3, 1)  # one SHORT, stored in the entry
            struct.pack_into("<H", data, entry + 8, value)
            return bytes(data)
    raise AssertionError("no ExtraSamples tag")


def wide_grey_16(shape: tuple[int, int], photo: np.ndarray) -> np.ndarray:
    """16-bit grey spanning 0..65535: the photo's grey in the high byte, a ramp in the low one."""
    ramp = (np.arange(shape[0] * shape[1]).reshape(shape) * 37) % 256
    values = luma(photo).astype(np.uint32) * 256 + ramp
    values[0, 0], values[0, 1] = 0, 65535
    return values.astype(np.uint16)


def by_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The documented scaling: low..high -> 0..255, clipped; integers truncated, floats rounded (exact rational
    maths, independent of the code's)."""
    from fractions import Fraction

    low, high = Fraction(float(low)), Fraction(float(high))
    integer = np.issubdtype(values.dtype, np.integer)
    out = []
    for v in values.astype(np.float64).reshape(-1).tolist():
        scaled = (min(max(Fraction(v), low), high) - low) * 255 / (high - low)
        out.append(int(scaled) if integer else round(scaled))
    return grey3(np.array(out, np.uint8).reshape(values.shape))


SRGB_TO_XYZ_D50 = np.array([[0.4360747, 0.3850649, 0.1430804],  # linear sRGB -> XYZ D50 (Bradford), as the
                            [0.2225045, 0.7168786, 0.0606169],  # sRGB ICC profile has it
                            [0.0139322, 0.0971045, 0.7141733]])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB -> CIE L*a*b* relative to D50 (ICC PCS, Bradford-adapted from sRGB's D65), float (L, a, b)."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ SRGB_TO_XYZ_D50.T / [0.9642, 1.0, 0.8249]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_bytes_to_srgb(stored: np.ndarray) -> np.ndarray:
    """Pillow LAB bytes (L* * 255/100, signed a*, b*) -> sRGB floats 0..255, D50 -> D65 as `srgb_to_lab`."""
    lightness = stored[..., 0].astype(np.float64) * 100 / 255
    a, b = stored[..., 1].view(np.int8).astype(np.float64), stored[..., 2].view(np.int8).astype(np.float64)
    fy = (lightness + 16) / 116
    f = np.stack([fy + a / 500, fy, fy - b / 200], -1)
    xyz = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * [0.9642, 1.0, 0.8249]
    linear = np.clip(xyz @ np.linalg.inv(SRGB_TO_XYZ_D50).T, 0, 1)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055) * 255


def lab_image(lab: np.ndarray) -> Image.Image:
    """Pillow's LAB mode: L* scaled to 0..255, a* and b* as signed bytes (as TIFF CIELab stores them)."""
    stored = np.stack([np.rint(lab[..., 0] * 255 / 100).clip(0, 255),
                       np.rint(lab[..., 1]).clip(-128, 127) % 256,
                       np.rint(lab[..., 2]).clip(-128, 127) % 256], -1).astype(np.uint8)
    return Image.frombytes("LAB", stored.shape[1::-1], stored.tobytes())


# -- one case per mode: each asserts on the formats that write it, and on to_rgb where none yields it ------------

def case_1(photo):
    bilevel = luma(photo) >= 128
    image = Image.fromarray(bilevel)
    assert image.mode == "1"
    for fmt in ("PNG", "TIFF", "BMP"):
        np.testing.assert_array_equal(decoded(encode(image, fmt), "1", fmt), grey3(bilevel * 255), err_msg=fmt)
    # black transparent (PNG tRNS): white all over
    np.testing.assert_array_equal(decoded(encode(image, "PNG", transparency=0), "1", "PNG tRNS"),
                                  np.full(photo.shape, 255, np.uint8))


def case_L(photo):
    grey = luma(photo)
    for fmt in ("PNG", "TIFF", "BMP"):
        np.testing.assert_array_equal(decoded(encode(Image.fromarray(grey), fmt), "L", fmt), grey3(grey),
                                      err_msg=fmt)
    assert_jpeg_close(decoded(encode(Image.fromarray(grey), "JPEG", quality=95), "L", "JPEG"), grey3(grey))
    # a PNG whose grey level 255 is transparent (tRNS): white where it was 255, as it was
    transparent = grey.copy()
    transparent[:10] = 0
    data = encode(Image.fromarray(transparent), "PNG", transparency=0)
    expected = grey3(np.where(transparent == 0, 255, transparent))
    np.testing.assert_array_equal(decoded(data, "L", "PNG tRNS"), expected)


def case_LA(photo):
    grey, alpha = luma(photo), alpha_ramp(photo.shape[:2])
    image = Image.fromarray(np.stack([grey, alpha], -1), "LA")
    for fmt in ("PNG", "TIFF"):
        assert_close(decoded(encode(image, fmt), "LA", fmt), on_white(grey3(grey), alpha), 1)


def case_La(photo):
    grey, alpha = luma(photo), alpha_ramp(photo.shape[:2])
    premultiplied = np.rint(grey.astype(np.float64) * alpha / 255).astype(np.uint8)
    stored = Image.fromarray(np.stack([premultiplied, alpha], -1), "LA")
    data = set_extra_samples(encode(stored, "TIFF"), 1)  # a TIFF with associated (premultiplied) alpha
    assert_close(decoded(data, "La", "TIFF"), on_white(grey3(grey), alpha), 1)


def case_P(photo):
    image = Image.fromarray(photo).quantize(64)
    index = np.asarray(image)
    palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
    for fmt in ("PNG", "TIFF", "BMP", "GIF"):
        np.testing.assert_array_equal(decoded(encode(image, fmt), "P", fmt), palette[index], err_msg=fmt)
    # a transparent index (PNG tRNS, GIF): white there
    hidden = int(index[0, 0])
    expected = np.where((index == hidden)[..., None], 255, palette[index])
    for fmt in ("PNG", "GIF"):
        np.testing.assert_array_equal(decoded(encode(image, fmt, transparency=hidden), "P", fmt), expected,
                                      err_msg=fmt)
    # a palette with alpha in it (in memory, as quantising an RGBA image gives)
    alpha = alpha_ramp(photo.shape[:2])
    rgba = Image.fromarray(np.dstack([photo, alpha]), "RGBA").quantize(64)
    assert rgba.palette.mode == "RGBA"
    held = np.array(rgba.getpalette("RGBA"), np.uint8).reshape(-1, 4)[np.asarray(rgba)]
    assert_close(to_rgb(rgba), on_white(held[..., :3], held[..., 3]), 1)


def case_PA(photo):
    image = Image.fromarray(photo).quantize(64)
    index, alpha = np.asarray(image), alpha_ramp(photo.shape[:2])
    palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
    pa_image = image.convert("PA")
    pa_image.putalpha(Image.fromarray(alpha))
    assert pa_image.mode == "PA"
    assert_close(decoded(encode(pa_image, "TIFF"), "PA", "TIFF"), on_white(palette[index], alpha), 1)


def case_RGB(photo):
    image = Image.fromarray(photo)
    for fmt in ("PNG", "TIFF", "BMP", "PPM"):
        np.testing.assert_array_equal(decoded(encode(image, fmt), "RGB", fmt), photo, err_msg=fmt)
    webp = encode(image, "WEBP", lossless=True)
    np.testing.assert_array_equal(decoded(webp, "RGB", "WEBP"), photo)
    assert_jpeg_close(decoded(encode(image, "JPEG", quality=95), "RGB", "JPEG"), photo)
    # a PNG with a transparent colour (tRNS): white there
    marked = photo.copy()
    marked[:8, :8] = (1, 2, 3)
    expected = marked.copy()
    expected[(marked == (1, 2, 3)).all(-1)] = 255
    np.testing.assert_array_equal(decoded(encode(Image.fromarray(marked), "PNG", transparency=(1, 2, 3)), "RGB",
                                          "PNG tRNS"), expected)


def case_RGBA(photo):
    alpha = alpha_ramp(photo.shape[:2])
    image = Image.fromarray(np.dstack([photo, alpha]), "RGBA")
    for fmt, options in (("PNG", {}), ("TIFF", {}), ("WEBP", {"lossless": True, "exact": True})):
        assert_close(decoded(encode(image, fmt, **options), "RGBA", fmt), on_white(photo, alpha), 1)


def case_RGBa(photo):
    alpha = alpha_ramp(photo.shape[:2])
    premultiplied = np.rint(photo.astype(np.float64) * alpha[..., None] / 255).astype(np.uint8)
    # no format opens as RGBa (a TIFF with associated alpha opens as RGBA, un-premultiplied by Pillow): both ways
    in_memory = Image.frombytes("RGBa", photo.shape[1::-1], np.dstack([premultiplied, alpha]).tobytes())
    assert_close(to_rgb(in_memory), on_white(photo, alpha), 1)
    stored = Image.fromarray(np.dstack([premultiplied, alpha]), "RGBA")
    data = set_extra_samples(encode(stored, "TIFF"), 1)
    assert_close(decoded(data, "RGBA", "TIFF associated alpha"), on_white(photo, alpha), 2)


def case_RGBX(photo):
    padding = np.random.default_rng(1).integers(0, 256, photo.shape[:2], dtype=np.uint8)
    image = Image.frombytes("RGBX", photo.shape[1::-1], np.dstack([photo, padding]).tobytes())
    np.testing.assert_array_equal(to_rgb(image), photo)  # no format opens as RGBX: TIFF writes it, opens RGB
    np.testing.assert_array_equal(decoded(encode(image, "TIFF"), "RGB", "TIFF"), photo)


def case_CMYK(photo):
    # full under-colour removal, computed here: K = 255 - max(R, G, B), C = (255 - R - K) / (255 - K) * 255 ...
    rgb = photo.astype(np.float64)
    k = 255 - rgb.max(-1)
    cmy = np.where(k[..., None] < 255, (255 - rgb - k[..., None]) * 255 / np.maximum(255 - k[..., None], 1), 0)
    cmyk = np.rint(np.dstack([cmy, k])).astype(np.uint8)
    image = Image.frombytes("CMYK", photo.shape[1::-1], cmyk.tobytes())
    # ... and the plain inverse a viewer without an ICC profile applies: (255 - C)(255 - K) / 255
    expected = (255 - cmyk[..., :3].astype(np.float64)) * (255 - cmyk[..., 3:].astype(np.float64)) / 255
    assert np.abs(expected - photo).max() <= 1  # the reference maths round-trips
    assert_close(decoded(encode(image, "TIFF"), "CMYK", "TIFF"), expected, 1)
    assert_jpeg_close(decoded(encode(image, "JPEG", quality=95), "CMYK", "JPEG"), expected)


def case_YCbCr(photo):
    rgb = photo.astype(np.float64)  # JFIF (full-range BT.601), computed here
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    cb = 128 - 0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 128 + 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    ycc = np.rint(np.dstack([y, cb, cr])).clip(0, 255).astype(np.uint8)
    image = Image.frombytes("YCbCr", photo.shape[1::-1], ycc.tobytes())
    assert_close(decoded(encode(image, "TIFF"), "YCbCr", "TIFF"), photo, 2)
    assert_jpeg_close(decoded(encode(image, "JPEG", quality=95), "RGB", "JPEG"), photo)


def case_LAB(photo):
    # LittleCMS's 8-bit transform interpolates a table: near a channel's zero, where sRGB is steepest, it is off
    # the exact maths by up to ~10 levels on the photo (~35 on saturated grid colours), a fraction of one on average
    image = lab_image(srgb_to_lab(photo))
    got = decoded(encode(image, "TIFF"), "LAB", "TIFF")
    assert_close(got, lab_bytes_to_srgb(np.asarray(image)), 12, mean=0.5)  # the stored bytes, by the maths here
    assert_close(got, photo, 12, mean=0.6)  # which is the photo, to 8-bit L*a*b*'s precision
    grid = np.stack(np.meshgrid(np.arange(0, 256, 17), np.arange(0, 256, 17), np.arange(0, 256, 17)), -1)
    grid = lab_image(srgb_to_lab(grid.reshape(-1, 3)[None].astype(np.uint8)))  # 1 x 4096 x 3, saturated too
    assert_close(to_rgb(grid), lab_bytes_to_srgb(np.asarray(grid)), 40, mean=2)
    neutral = lab_image(np.array([[[0.0, 0, 0], [50.0, 0, 0], [100.0, 0, 0]]]))  # black, mid grey, white
    assert_close(to_rgb(neutral), grey3([[0, 119, 255]]), 1)


def case_HSV(photo):
    # no format writes HSV: to_rgb of an HSV image computed here, against colorsys's inverse of the stored bytes
    hsv = np.array([colorsys.rgb_to_hsv(*p) for p in photo.reshape(-1, 3) / 255.0])
    stored = np.rint(hsv * 255).astype(np.uint8)
    image = Image.frombytes("HSV", photo.shape[1::-1], stored.tobytes())
    expected = np.array([colorsys.hsv_to_rgb(*p) for p in stored / 255.0]).reshape(photo.shape) * 255
    assert_close(to_rgb(image), expected, 2, mean=0.5)
    assert_close(to_rgb(image), photo, 8, mean=1)  # and that is the photo, to 8-bit HSV's precision


def case_16(mode: str, formats: tuple[str, ...]):
    def check(photo):
        values = wide_grey_16(photo.shape[:2], photo)
        expected = grey3((values.astype(np.int64) * 255 // 65535).astype(np.uint8))  # by 65535, never the low byte
        raw = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}[mode]
        image = Image.frombytes(mode, photo.shape[1::-1], values.astype(raw).tobytes())
        np.testing.assert_array_equal(to_rgb(image), expected)
        for fmt in formats:
            np.testing.assert_array_equal(decoded(encode(image, fmt), mode, fmt), expected, err_msg=fmt)
        if mode == "I;16":  # a PNG whose 16-bit grey level 0 is transparent (tRNS): white there
            data = encode(image, "PNG", transparency=0)
            np.testing.assert_array_equal(decoded(data, "I;16", "PNG tRNS"), np.where(values[..., None] == 0, 255,
                                                                                       expected))
    return check


def case_I(photo):
    grey = luma(photo)
    shape = grey.shape
    cases = {  # values -> what the rule scales them by
        "8-bit range": (grey.astype(np.int32), (0, 255)),
        "16-bit range": (wide_grey_16(shape, photo).astype(np.int32), (0, 65535)),
        "32-bit": (grey.astype(np.int32) * 8_000_000 + 5, None),  # beyond 16 bits: min..max
        "negative": (grey.astype(np.int32) - 100, None),  # signed: min..max
    }
    for name, (values, scale) in cases.items():
        low, high = scale or (values.min(), values.max())
        expected = by_range(values, low, high)
        image = Image.fromarray(values)
        assert image.mode == "I"
        np.testing.assert_array_equal(decoded(encode(image, "TIFF"), "I", "TIFF"), expected, err_msg=name)
    # a 16-bit PGM opens as I with 0..65535: scaled by 65535
    values = wide_grey_16(shape, photo)
    pgm = b"P5\n%d %d\n65535\n" % shape[::-1] + values.astype(">u2").tobytes()
    np.testing.assert_array_equal(decoded(pgm, "I", "PGM"), grey3((values.astype(np.int64) * 255 // 65535)
                                                                  .astype(np.uint8)))
    # flat beyond 16 bits: clipped into 0..65535 (white); flat negative: black
    flat = Image.fromarray(np.full((4, 5), 100_000, np.int32))
    np.testing.assert_array_equal(decode_image(encode(flat, "TIFF")), np.full((4, 5, 3), 255, np.uint8))
    flat = Image.fromarray(np.full((4, 5), -7, np.int32))
    np.testing.assert_array_equal(decode_image(encode(flat, "TIFF")), np.zeros((4, 5, 3), np.uint8))


def case_F(photo):
    grey = luma(photo).astype(np.float64)
    unit = (grey / 255).astype(np.float32)
    # the image: float grey in [0, 1] is the photo (by 255), not black
    for fmt in ("TIFF", "PPM"):  # PPM writes float as PFM
        np.testing.assert_array_equal(decoded(encode(Image.fromarray(unit), fmt), "F", fmt), grey3(grey),
                                      err_msg=fmt)
    # other ranges: by the finite min..max
    for name, values in {"0..255": grey.astype(np.float32), "signed": (grey / 40 - 3).astype(np.float32),
                         "HDR": (unit * 1.5).astype(np.float32)}.items():
        expected = by_range(values, float(values.min()), float(values.max()))
        np.testing.assert_array_equal(decoded(encode(Image.fromarray(values), "TIFF"), "F", "TIFF"), expected,
                                      err_msg=name)
    # SPIDER stores every image as float (here the grey photo's 0..255): min..max
    spider = decoded(encode(Image.fromarray(grey.astype(np.float32)), "SPIDER"), "F", "SPIDER")
    np.testing.assert_array_equal(spider, by_range(grey, grey.min(), grey.max()))
    # NaN black, +inf white, -inf black, the range from the finite values, and no warning on the way
    special = unit.copy()
    special[0, :3] = (np.nan, np.inf, -np.inf)
    expected = grey3(np.rint(np.nan_to_num(special.astype(np.float64), nan=0, posinf=1, neginf=0) * 255))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(decode_image(encode(Image.fromarray(special), "TIFF")), expected)
        all_nan = Image.fromarray(np.full((3, 4), np.nan, np.float32))
        np.testing.assert_array_equal(decode_image(encode(all_nan, "TIFF")), np.zeros((3, 4, 3), np.uint8))
    flat = Image.fromarray(np.full((3, 4), 0.25, np.float32))  # flat inside [0, 1]: by 255
    np.testing.assert_array_equal(decode_image(encode(flat, "TIFF")), np.full((3, 4, 3), 64, np.uint8))
    flat = Image.fromarray(np.full((3, 4), 7.0, np.float32))  # flat beyond: clipped into [0, 1]
    np.testing.assert_array_equal(decode_image(encode(flat, "TIFF")), np.full((3, 4, 3), 255, np.uint8))


CASES = {
    "1": case_1, "L": case_L, "LA": case_LA, "La": case_La, "P": case_P, "PA": case_PA, "RGB": case_RGB,
    "RGBA": case_RGBA, "RGBa": case_RGBa, "RGBX": case_RGBX, "CMYK": case_CMYK, "YCbCr": case_YCbCr,
    "LAB": case_LAB, "HSV": case_HSV, "I": case_I, "F": case_F,
    "I;16": case_16("I;16", ("PNG", "TIFF")), "I;16B": case_16("I;16B", ("TIFF",)),
    "I;16L": case_16("I;16L", ()), "I;16N": case_16("I;16N", ()),  # no file Pillow writes opens in these two
}


def test_every_pillow_mode_has_a_case():
    assert sorted(CASES) == sorted(Image.MODES)


@pytest.mark.parametrize("mode", sorted(CASES))
def test_mode_decodes_to_what_a_viewer_shows(mode, photo):
    CASES[mode](photo)


def test_a_mode_without_a_rule_is_refused_naming_it():
    image = Image.new("L", (4, 3))
    image._mode = "XYZ"  # a mode a later Pillow might add: refused, not guessed
    with pytest.raises(ImageError) as raised:
        to_rgb(image)
    assert str(raised.value) == "unsupported image mode XYZ: no rule to show it as RGB"


LAB_BEFORE_9_4 = ValueError("conversion from LAB to RGB not supported")  # Pillow before 9.4
LAB_WITHOUT_LCMS = ImportError("The _imagingcms C module is not installed")  # a Pillow built without LittleCMS


def refuse_lab(monkeypatch, error: Exception) -> None:
    """A Pillow that cannot convert LAB to RGB: its error, in place of Pillow's own conversion."""
    convert = Image.Image.convert

    def without_lab(self, mode=None, *args, **kwargs):
        if self.mode == "LAB" and mode == "RGB":
            raise error
        return convert(self, mode, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "convert", without_lab)


@pytest.mark.parametrize("error", [LAB_BEFORE_9_4, LAB_WITHOUT_LCMS], ids=["old-pillow", "no-littlecms"])
def test_a_mode_pillow_cannot_convert_is_refused_naming_it(photo, monkeypatch, error):
    refuse_lab(monkeypatch, error)
    with pytest.raises(ImageError) as raised:
        to_rgb(lab_image(srgb_to_lab(photo)))
    assert str(raised.value) == f"unsupported image mode LAB: {error}"


def test_batch_keeps_a_row_per_image_and_the_refusal_on_its_item(photo, monkeypatch):
    refuse_lab(monkeypatch, LAB_BEFORE_9_4)
    jpeg = shared_path(PHOTO).read_bytes()
    unit = Image.fromarray((luma(photo) / 255).astype(np.float32))
    datas = [jpeg, encode(lab_image(srgb_to_lab(photo)), "TIFF"), encode(unit, "TIFF"), b""]
    uris = ["/a/photo.jpg", "/a/lab.tif", "/a/float.tif", "/a/empty.jpg"]
    items = decode_items(pa.table({"image_uri": uris, "image_id": [1, 2, 3, 4], "data": datas}, schema=ITEM_SCHEMA))
    assert [(i.image_uri, i.image_id) for i in items] == list(zip(uris, [1, 2, 3, 4]))
    assert [i.error is None for i in items] == [True, False, True, False]
    assert items[1].error == "unsupported image mode LAB: conversion from LAB to RGB not supported"
    assert items[1].image is None and items[1].retryable is False
    assert items[3].error == "empty file"
    assert (items[0].width, items[0].height) == (640, 425)
    np.testing.assert_array_equal(items[2].image, grey3(luma(photo)))  # the float image is the photo, not black
