"""Bytes to model input: the one preprocessing path for training, evaluation, CLI and workers."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import (  # the plugins of ACCEPTED_FORMATS, registered by their import
    BmpImagePlugin,  # noqa: F401
    GifImagePlugin,  # noqa: F401
    Image,
    ImageOps,
    JpegImagePlugin,  # noqa: F401
    MpoImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)

from shared.errors import ImageTooLarge, UnreadableImage

DEFAULT_INPUT_SIZE = 299
# Bump when `preprocess` changes what it returns: cached network outputs are keyed by it.
PREPROCESSING_VERSION = 1

# Modes of more than 8 bits a sample: integer (16 and 32 bits) and float.
_DEEP_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_STRIP_ROWS = 256

# The formats the service takes, and the only Pillow plugins it lets look at a
# file: Pillow knows dozens more (EPS runs Ghostscript where it is installed;
# PSD, FITS, ... are parsers nobody here needs exposed to uploads). JPEG's opener
# also reads MPO, what cameras call a JPEG with a preview inside.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
ACCEPTED_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"

# We enforce our own pixel limit from the header, before decoding; Pillow's own
# bomb check would otherwise raise or warn with a different message.
Image.MAX_IMAGE_PIXELS = None


def header_pixels(data: bytes) -> int | None:
    """Width times height from the image's header alone, or None when it is not an image."""
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
            return int(image.width * image.height)
    except Exception:  # Pillow's plugins raise many types on hostile headers
        return None


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode `data` into an upright RGB image, refusing bombs before decoding them."""
    # Pillow's decoders raise whatever their parsers trip on (struct.error, KeyError,
    # IndexError, ZeroDivisionError, ...): every one means this image cannot be read.
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Exception as exc:
        raise UnreadableImage(name, _reason(exc)) from exc
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageTooLarge(name, pixels, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are noise for us
            image.load()
            # In place: a transposed copy would hold a second whole image.
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode not in _DEEP_MODES:
                return to_rgb(image)
            gray = deep_to_gray(image)
            image.close()  # the deep pixels go before the 8-bit RGB copy is made
            return gray.convert("RGB")
    except Exception as exc:
        raise UnreadableImage(name, _reason(exc)) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_MODES:
        return deep_to_gray(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def deep_to_gray(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float image as 8-bit grey, converted a strip of rows at a time.

    16-bit values span 0..65535, so they are divided by 257 (a plain convert("L")
    would clip them to white); float values are clipped to 0..255. A whole 40 MP
    image as float64 would be 320 MB, and the arithmetic on it twice that again:
    strips keep the extra memory to a few MB, so any depth costs what 8 bits do.
    """
    strips = [
        (top, min(top + _STRIP_ROWS, image.height)) for top in range(0, image.height, _STRIP_ROWS)
    ]

    def strip(top: int, bottom: int) -> np.ndarray:
        rows = np.asarray(image.crop((0, top, image.width, bottom)), dtype=np.float32)
        return np.nan_to_num(rows, nan=0.0, posinf=255.0, neginf=0.0)

    deep_values = image.mode != "F" and any(strip(*rows).max(initial=0) > 255 for rows in strips)
    scale = np.float32(257.0 if deep_values else 1.0)
    gray = np.empty((image.height, image.width), dtype=np.uint8)
    for top, bottom in strips:
        gray[top:bottom] = np.clip(strip(top, bottom) / scale, 0, 255).astype(np.uint8)
    return Image.fromarray(gray)


def resize(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BILINEAR)


def scale_pixels(array: np.ndarray) -> np.ndarray:
    """Xception's `preprocess_input` ("tf" mode): 0..255 to -1..1, without importing TensorFlow."""
    # In place on one copy: each image is about a megabyte of float32, and every
    # temporary is a fresh allocation the kernel maps and zeroes.
    scaled = array.astype(np.float32)
    scaled /= np.float32(127.5)
    scaled -= np.float32(1.0)
    return scaled


def preprocess(data: bytes, name: str, size: int, max_pixels: int) -> np.ndarray:
    """Image bytes to a float32 array of shape (size, size, 3) ready for the network."""
    image = open_image(data, name, max_pixels)
    return scale_pixels(np.asarray(resize(image, size)))


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "cannot identify image file" in text:
        return f"not a recognised image format (the service reads {ACCEPTED_FORMAT_NAMES})"
    if isinstance(exc, (OSError, SyntaxError, ValueError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
