"""The one preprocessing path: every mode and orientation to RGB, and clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.classifier.preprocessing import open_image, preprocess, scale_pixels, to_rgb
from shared.errors import ImageTooLarge, UnreadableImage
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
