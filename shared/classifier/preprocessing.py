"""Bytes to model input: the one preprocessing path for training, evaluation, CLI and workers."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from shared.errors import ImageTooLarge, UnreadableImage

DEFAULT_INPUT_SIZE = 299
# Bump when `preprocess` changes what it returns: cached network outputs are keyed by it.
PREPROCESSING_VERSION = 1

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}

# We enforce our own pixel limit from the header, before decoding; Pillow's own
# bomb check would otherwise raise or warn with a different message.
Image.MAX_IMAGE_PIXELS = None


def header_pixels(data: bytes) -> int | None:
    """Width times height from the image's header alone, or None when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.width * image.height)
    except Exception:  # Pillow's plugins raise many types on hostile headers
        return None


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode `data` into an upright RGB image, refusing bombs before decoding them."""
    # Pillow's decoders raise whatever their parsers trip on (struct.error, KeyError,
    # IndexError, ZeroDivisionError, ...): every one means this image cannot be read.
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise UnreadableImage(name, _reason(exc)) from exc
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise ImageTooLarge(name, pixels, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF and palette warnings are noise for us
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except Exception as exc:
        raise UnreadableImage(name, _reason(exc)) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        # 16-bit images span 0..65535; a plain convert("L") would clip them to white.
        scale = 257.0 if image.mode != "F" and array.max(initial=0) > 255 else 1.0
        gray = np.clip(array / scale, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA", "RGBa", "La"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BILINEAR)


def scale_pixels(array: np.ndarray) -> np.ndarray:
    """Xception's `preprocess_input` ("tf" mode): 0..255 to -1..1, without importing TensorFlow."""
    return array.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def preprocess(data: bytes, name: str, size: int, max_pixels: int) -> np.ndarray:
    """Image bytes to a float32 array of shape (size, size, 3) ready for the network."""
    image = open_image(data, name, max_pixels)
    return scale_pixels(np.asarray(resize(image, size)))


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "cannot identify image file" in text:
        return "not a recognised image format"
    if isinstance(exc, (OSError, SyntaxError, ValueError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
