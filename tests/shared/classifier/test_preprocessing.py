"""The one preprocessing path: every mode and orientation to RGB, and clear errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shared.classifier.preprocessing import (
    deep_to_gray,
    header_pixels,
    open_image,
    preprocess,
    scale_pixels,
    to_rgb,
)
from shared.errors import ImageTooLarge, UnreadableImage
from testkit.crafted import DEEP_IMAGES, flat_image
from tests.conftest import image_bytes

LIMIT = 10_000_000


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (0, 0, 0, 0), (255, 255, 255)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 32896, (128, 128, 128)),
        ("I", 65535, (255, 255, 255)),
        ("F", 100.0, (100, 100, 100)),
        ("LA", (50, 255), (50, 50, 50)),
    ],
)
def test_every_mode_becomes_8bit_rgb(mode: str, colour: object, expected: tuple[int, ...]) -> None:
    image = to_rgb(Image.new(mode, (4, 4), colour))  # type: ignore[arg-type]
    assert image.mode == "RGB"
    assert image.getpixel((1, 1)) == expected


def test_transparency_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgb = to_rgb(rgba)
    assert rgb.getpixel((0, 0)) == (255, 0, 0)
    assert rgb.getpixel((3, 3)) == (255, 255, 255)


def test_palette_with_transparency_uses_it() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    palette.info["transparency"] = 0
    assert to_rgb(palette).getpixel((2, 2)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("P", "PNG"), ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGBA", "PNG")]
)
def test_encoded_images_of_each_mode_preprocess(mode: str, fmt: str) -> None:
    array = preprocess(image_bytes(mode, (40, 30), fmt), "x", 71, LIMIT)
    assert array.shape == (71, 71, 3)
    assert array.dtype == np.float32
    assert -1.0 <= array.min() <= array.max() <= 1.0


def _exif_jpeg(orientation: int) -> bytes:
    """A 40x20 image, left half black and right half white, tagged with `orientation`."""
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("orientation", "size", "white_at"),
    [
        (1, (40, 20), (35, 10)),  # as stored
        (3, (40, 20), (5, 10)),  # rotated 180: white half moves left
        (6, (20, 40), (10, 35)),  # rotated 90 clockwise: white half moves to the bottom
        (8, (20, 40), (10, 5)),  # rotated 90 counter-clockwise: white half on top
        (2, (40, 20), (5, 10)),  # mirrored
    ],
)
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], white_at: tuple[int, int]
) -> None:
    image = open_image(_exif_jpeg(orientation), "photo.jpg", LIMIT)
    assert image.size == size
    assert min(image.getpixel(white_at)) > 200  # type: ignore[arg-type]


def test_scaling_matches_xception_preprocess_input() -> None:
    pixels = np.array([[[0, 127.5, 255]]], dtype=np.float32)
    assert scale_pixels(pixels).tolist() == [[[-1.0, 0.0, 1.0]]]


def test_resize_to_configured_size() -> None:
    assert preprocess(image_bytes(size=(150, 150)), "x", 299, LIMIT).shape == (299, 299, 3)


def test_not_an_image_names_the_file() -> None:
    with pytest.raises(UnreadableImage, match=r"notes\.txt.*not a recognised image format"):
        preprocess(b"hello, I am text", "notes.txt", 299, LIMIT)


def test_truncated_jpeg_names_the_file() -> None:
    data = image_bytes(size=(200, 200), fmt="JPEG", colour=(200, 10, 10))
    with pytest.raises(UnreadableImage, match=r"broken\.jpg"):
        preprocess(data[: len(data) // 2], "broken.jpg", 299, LIMIT)


def test_pixel_limit_refuses_before_decoding() -> None:
    # A 20000x20000 one-bit PNG is tiny on disk but 400 million pixels once decoded.
    bomb = image_bytes("1", (20_000, 20_000), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match=r"bomb\.png.*400,000,000 pixels.*limit of 10,000,000"):
        preprocess(bomb, "bomb.png", 299, LIMIT)


def test_image_at_the_limit_is_accepted() -> None:
    assert preprocess(image_bytes(size=(100, 100)), "x", 71, 10_000).shape == (71, 71, 3)
    with pytest.raises(ImageTooLarge):
        preprocess(image_bytes(size=(100, 101)), "x", 71, 10_000)


def float64_reference(image: Image.Image) -> Image.Image:
    """The conversion as it was: the whole image as float64, then divided and clipped."""
    array = np.asarray(image, dtype=np.float64)
    scale = 257.0 if image.mode != "F" and array.max(initial=0) > 255 else 1.0
    return Image.fromarray(np.clip(array / scale, 0, 255).astype(np.uint8))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    mode=st.sampled_from(["I;16", "I;16B", "I", "F"]),
    height=st.integers(1, 600),
    top=st.integers(0, 70_000),
    seed=st.integers(0, 2**32 - 1),
)
def test_deep_images_convert_by_strips_exactly_as_the_whole_image_did(
    mode: str, height: int, top: int, seed: int
) -> None:
    values = np.random.default_rng(seed).integers(0, top + 1, size=(height, 7))
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4"}[mode]
    image = Image.frombytes(mode, (7, height), values.astype(dtype).tobytes())
    assert np.array_equal(np.asarray(deep_to_gray(image)), np.asarray(float64_reference(image)))


def test_float_images_with_nan_and_infinity_convert() -> None:
    values = np.array([[np.nan, np.inf, -np.inf, 100.5]], dtype=np.float32)
    gray = deep_to_gray(Image.frombytes("F", (4, 1), values.tobytes()))
    assert np.asarray(gray).tolist() == [[0, 255, 0, 100]]


DECODE_PEAK = """
import sys
from pathlib import Path
from shared.classifier.preprocessing import preprocess
data = Path(sys.argv[1]).read_bytes()
preprocess(data, "image", 299, 10**9)
for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmHWM:"):
        print(int(line.split()[1]) // 1024)
"""


def decode_peak_mib(path: Path) -> int:
    run = subprocess.run(
        [sys.executable, "-c", DECODE_PEAK, str(path)], capture_output=True, text=True, check=True
    )
    return int(run.stdout)


def test_a_40_megapixel_image_costs_about_the_same_at_any_depth(tmp_path: Path) -> None:
    peaks = {}
    for name, (mode, fmt) in DEEP_IMAGES.items():
        path = tmp_path / f"{mode.replace(';', '')}.{fmt.lower()}"
        path.write_bytes(flat_image(mode, (8000, 5000), fmt, 1000 if mode != "RGB" else 0))
        peaks[name] = decode_peak_mib(path)
    eight_bit = peaks.pop("8-bit RGB PNG")
    # Before: a 16-bit PNG peaked 760 MiB above the 8-bit one, 32-bit images 920.
    for name, peak in peaks.items():
        assert peak < eight_bit + 200, (name, peak, eight_bit)


@pytest.mark.parametrize("fmt", ["EPS", "ICO", "TGA", "PCX", "PPM", "SGI", "IM", "DDS"])
def test_formats_outside_the_list_are_not_read(fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format=fmt)
    data = buffer.getvalue()
    with Image.open(io.BytesIO(data)) as image:  # Pillow itself would read it
        assert image.format == fmt
    assert header_pixels(data) is None
    with pytest.raises(
        UnreadableImage, match="the service reads JPEG, PNG, WebP, BMP, GIF or TIFF"
    ):
        open_image(data, "x", LIMIT)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_listed_formats_are_read(fmt: str) -> None:
    data = image_bytes(size=(16, 16), fmt=fmt, colour=(10, 200, 30))
    assert header_pixels(data) == 256
    assert open_image(data, "x", LIMIT).size == (16, 16)
