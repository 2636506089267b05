"""Decoding the dataset's image files into RGB, whatever their mode, resized for the cache or as
gallery thumbnails."""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tracinflow.data import DataError

RESAMPLE = Image.Resampling.BILINEAR
#: the default of ``dataset.max_pixels``: larger images are rejected before their pixels are decoded
#: (40 megapixels decode to 120 MB of RGB; a 12,000 x 12,000 PNG of 485 KB would take 430 MB)
MAX_PIXELS = 40_000_000


class ImageTooLarge(ValueError):
    """An image with more pixels than the limit; raised from its header, before decoding."""


class ImageChanged(DataError):
    """A file whose bytes are not those the manifest recorded (its sha256): it was edited,
    replaced or removed after the manifest was built."""

    def __init__(self, path):
        self.path = Path(path)
        super().__init__(changed_images_message([self.path]))

    def __reduce__(self):  # raised in a worker process, re-raised in the stage's
        return (type(self), (self.path,))


def changed_images_message(paths, shown: int = 5) -> str:
    """What a stage says when image files differ from the manifest: which (absolute paths), and
    how to rebuild."""
    paths = [str(Path(path).absolute()) for path in paths]
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    names = ", ".join(f"'{path}'" for path in paths[:shown])
    return (
        f"{len(paths)} image file{'s' if len(paths) != 1 else ''} changed since the manifest was "
        f"built ({names}{more}): nothing is drawn or cached from pixels the manifest does not "
        f"record. Run snakemake again: it sees the change and rebuilds the manifest and what "
        f"depends on it (with --rerun-triggers leaving out params, force it: snakemake -R "
        f"build_manifest)."
    )


def read_checked(path, sha256: str | None) -> bytes:
    """The bytes of ``path``, which must have the ``sha256`` the manifest recorded (``None``: no
    check); a missing file or other bytes raise :class:`ImageChanged`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        if sha256 is None:
            raise
        raise ImageChanged(path) from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ImageChanged(path)
    return data


def stable_reason(error: Exception) -> str:
    """``Type: message`` without what differs between runs (object reprs with an address, such as
    ``<_io.BytesIO object at 0x7f39...>``), so rejection reasons are the same on every run."""
    message = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))
    return f"{type(error).__name__}: {message}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Grayscale, palette, CMYK and the like convert directly; transparent images are composited on
    white (dropping alpha would expose whatever colour the transparent pixels happen to hold),
    including those whose transparency is one key colour or palette entries (PNG's tRNS, GIF's);
    16-bit and 32-bit integer images are scaled to 8 bits rather than clipped, which would turn a
    16-bit scan almost white.
    """
    keyed = "transparency" in image.info  # a transparent key colour, value or palette alphas
    if image.mode == "RGB" and not keyed:
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
        if keyed and image.mode != "F":  # the 16-bit key value is transparent: white
            gray[values == image.info["transparency"]] = 255
        return Image.fromarray(gray).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        keyed and image.mode in ("1", "L", "P", "RGB")
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _open_header(data: bytes) -> Image.Image:
    """Open an image, reading its header only, without PIL's decompression-bomb check (warning or
    error at 89 / 179 megapixels): :func:`decode_bytes` checks ``dataset.max_pixels`` instead."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit


def decode_bytes(data: bytes, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Fully decode an image (so truncation is caught here, not later), upright per EXIF, in RGB.

    An image of more than ``max_pixels`` raises :class:`ImageTooLarge` from its header, before any
    pixel is decoded; ``None``: no limit (a file the scan has already accepted)."""
    with _open_header(data) as image:
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageTooLarge(
                f"{width} x {height} = {width * height:,} pixels, more than dataset.max_pixels = "
                f"{max_pixels:,} (raise it to read the file, at about 3 bytes per pixel)"
            )
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


def load_for_cache(path, size: int, mode: str = "squash", sha256: str | None = None) -> np.ndarray:
    """The cached pixels of one file: (size, size, 3) uint8, from bytes with the manifest's
    ``sha256`` (:func:`read_checked`). No pixel limit: the scan has accepted the file."""
    image = decode_bytes(read_checked(path, sha256), max_pixels=None)
    return np.asarray(resize_square(image, size, mode), dtype=np.uint8)


THUMBNAIL_PAD_RGB = (255, 255, 255)  # around a thumbnail that is not square


def load_thumbnail(path, thumb_px: int, sha256: str | None = None) -> np.ndarray | None:
    """The image at ``path`` in RGB, its longer side scaled to ``thumb_px`` (aspect kept), centred
    on a ``thumb_px`` square of white; ``None`` when the file is missing or unreadable. Given the
    manifest's ``sha256``, a file with other bytes (or none) raises :class:`ImageChanged`."""
    if path is None or (isinstance(path, float) and not np.isfinite(path)):
        return None
    data = read_checked(path, sha256) if sha256 is not None else None
    try:
        if data is None:
            with open(path, "rb") as handle:
                data = handle.read()
        image = decode_bytes(data)
        width, height = image.size
        scale = thumb_px / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(size, RESAMPLE)
    except Exception:  # a gallery must never fail on one bad file
        return None
    canvas = Image.new("RGB", (thumb_px, thumb_px), THUMBNAIL_PAD_RGB)
    canvas.paste(image, ((thumb_px - size[0]) // 2, (thumb_px - size[1]) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def small_image(path, longest: int, sha256: str | None = None) -> Image.Image:
    """The image at ``path`` in RGB, upright, its longer side shrunk to at most ``longest`` pixels
    (aspect kept, never enlarged): what the explorer shows. JPEG files decode at a reduced scale
    (PIL's draft mode), several times faster for photos; a file the scan accepted is assumed, with
    the manifest's ``sha256`` when given (:func:`read_checked`)."""
    data = read_checked(path, sha256)
    with _open_header(data) as image:
        image.draft("RGB", (longest, longest))  # JPEG only: a power-of-two scale at least this big
        image.load()
        upright = to_rgb(ImageOps.exif_transpose(image))
    upright.thumbnail((longest, longest), Image.Resampling.LANCZOS)
    return upright


class Thumbnails:
    """Thumbnails of the dataset's images by their manifest path (relative to ``root``): what the
    galleries draw, decoded from the original files. A missing path gives ``None``; given the
    manifest's ``{path: sha256}``, a file whose bytes differ from it (or that is gone) raises
    :class:`ImageChanged`, so no gallery shows pixels the model did not train on."""

    def __init__(self, root, sha256: dict[str, str] | None = None):
        self.root = root
        self.sha256 = sha256

    def __call__(self, relative, thumb_px: int) -> np.ndarray | None:
        if relative is None or (isinstance(relative, float) and not np.isfinite(relative)):
            return None
        expected = None if self.sha256 is None else self.sha256.get(str(relative))
        return load_thumbnail(Path(self.root) / str(relative), thumb_px, expected)
