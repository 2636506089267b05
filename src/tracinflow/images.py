"""Decoding image files into RGB, whatever their mode, and resizing them for the cache."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

RESAMPLE = Image.Resampling.BILINEAR


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Grayscale, palette, CMYK and the like convert directly; transparent images are composited on
    white (dropping alpha would expose whatever colour the transparent pixels happen to hold);
    16-bit and 32-bit integer images are scaled to 8 bits rather than clipped, which would turn a
    16-bit scan almost white.
    """
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if values.size and values.max() <= 1.0 else 255.0
        elif image.mode == "I" and values.size and values.max() <= 255:
            top = 255.0
        else:
            top = 65535.0
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_bytes(data: bytes) -> Image.Image:
    """Fully decode an image (so truncation is caught here, not later), upright per EXIF, in RGB."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright)


def resize_square(image: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """``squash``: resize to size x size, keeping all content; ``center_crop``: scale the shorter
    side to ``size`` and crop the centre."""
    if mode == "squash":
        return image.resize((size, size), RESAMPLE)
    if mode == "center_crop":
        return ImageOps.fit(image, (size, size), method=RESAMPLE, centering=(0.5, 0.5))
    raise ValueError(f"resize mode must be 'squash' or 'center_crop', got {mode!r}")


def load_for_cache(path, size: int, mode: str = "squash") -> np.ndarray:
    """The cached pixels of one file: (size, size, 3) uint8."""
    with open(path, "rb") as handle:
        image = decode_bytes(handle.read())
    return np.asarray(resize_square(image, size, mode), dtype=np.uint8)
