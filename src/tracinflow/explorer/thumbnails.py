"""The explorer's thumbnails: one small WebP image per dataset image, made from the original file."""

from __future__ import annotations

import io

from tracinflow.data.images import small_image

#: WebP quality of the thumbnails: 80 keeps fur and feathers recognisable at a few KB per image
WEBP_QUALITY = 80


def thumbnail_name(idx: int) -> str:
    """The file of image ``idx`` in the thumbnails folder (the page's script builds the same)."""
    return f"{int(idx)}.webp"


def webp_thumbnail(path, longest: int, sha256: str | None = None) -> bytes:
    """The image at ``path`` as WebP bytes, its longer side at most ``longest`` pixels; given the
    manifest's ``sha256``, a file with other bytes raises
    :class:`~tracinflow.data.images.ImageChanged`."""
    buffer = io.BytesIO()
    small_image(path, longest, sha256).save(buffer, "WEBP", quality=WEBP_QUALITY, method=4)
    return buffer.getvalue()
