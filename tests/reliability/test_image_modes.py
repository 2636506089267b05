"""Every image mode decodes to the RGB pixels a reference conversion gives, not just to an RGB shape.

The library's rule (docs/outputs.md, ``tracinflow.data.images.to_rgb``): grayscale, palette and
CMYK convert directly; anything transparent (an alpha channel, palette alphas, a tRNS key colour)
is composited on white; 16-bit grayscale is scaled by 255 / 65535 and rounded, not clipped. The
references below are written from the source arrays each file is built from, in numpy, without
PIL's conversions: so a file is checked against what it holds, not against the library's own code
path.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, pattern_image
from PIL import Image, ImageOps, features

from tracinflow.data.cache import decode_split
from tracinflow.data.images import decode_bytes, load_for_cache, load_thumbnail
from tracinflow.data.scan import scan_image_folder
from tracinflow.data.split import split_images, split_rows

SIZE = (24, 20)  # width, height of every source picture


def rgb_source(seed: int) -> np.ndarray:
    return np.array(pattern_image(seed, SIZE), dtype=np.uint8)


def alpha_ramp(seed: int) -> np.ndarray:
    """Every alpha value 0..255 somewhere in the picture (a shuffled ramp): fully transparent,
    opaque and all the partial values between."""
    values = np.resize(np.arange(256, dtype=np.uint8), SIZE[0] * SIZE[1])
    return np.random.default_rng(seed).permutation(values).reshape(SIZE[1], SIZE[0])


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha * colour + (1 - alpha) * white``, to the nearest level: the compositing rule."""
    a = alpha.astype(np.int64)[..., None]
    return np.rint((rgb.astype(np.int64) * a + 255 * (255 - a)) / 255).astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.uint8)


def cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """The uncalibrated rule (no ICC profile is applied): R = (255 - K) (1 - C / 255), likewise G
    from M and B from Y."""
    ink = cmyk.astype(np.int64)
    paper = 255 - ink[..., 3:]
    return (paper - np.rint(ink[..., :3] * paper / 255)).astype(np.uint8)


def sixteen_to_8(values: np.ndarray) -> np.ndarray:
    return np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_by_hand(pixels: np.ndarray, color_type: int) -> bytes:
    """A 16-bit-per-sample PNG (PIL writes none of colour): big-endian samples, filter 0."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def palette_source(seed: int, colours: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """(indices, palette): a picture of ``colours`` random palette entries."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
    indices = rng.integers(0, colours, (SIZE[1], SIZE[0]), dtype=np.uint8)
    return indices, palette


def palette_image(indices: np.ndarray, palette: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.ravel().tolist())
    return image


# Each case: file name -> (file bytes, the RGB pixels the file holds by the rule).


def case_rgb():
    rgb = rgb_source(1)
    return encoded(Image.fromarray(rgb), "PNG"), rgb


def case_gray():
    gray = np.asarray(pattern_image(2, SIZE, "L"))
    return encoded(Image.fromarray(gray, "L"), "PNG"), gray_to_rgb(gray)


def case_bilevel():
    bits = np.asarray(pattern_image(3, SIZE, "L")) > 128
    return encoded(Image.fromarray(bits), "PNG"), gray_to_rgb(bits * np.uint8(255))


def case_gray_alpha():
    gray, alpha = np.asarray(pattern_image(4, SIZE, "L")), alpha_ramp(4)
    data = encoded(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG")
    return data, on_white(gray_to_rgb(gray), alpha)


def case_rgba():
    rgb, alpha = rgb_source(5), alpha_ramp(5)
    data = encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")
    return data, on_white(rgb, alpha)


def case_palette():
    indices, palette = palette_source(6)
    return encoded(palette_image(indices, palette), "PNG"), palette[indices]


def case_palette_one_transparent_entry():
    indices, palette = palette_source(7)
    alpha = np.where(indices == 3, 0, 255).astype(np.uint8)
    data = encoded(palette_image(indices, palette), "PNG", transparency=3)
    return data, on_white(palette[indices], alpha)


def case_palette_alpha_per_entry():
    indices, palette = palette_source(8)
    # tRNS alphas for the first 30 of the 40 entries (the rest are opaque), partial ones among them
    entry_alpha = np.full(len(palette), 255, np.uint8)
    entry_alpha[:30] = np.linspace(0, 255, 30).astype(np.uint8)
    data = encoded(palette_image(indices, palette), "PNG", transparency=bytes(entry_alpha[:30]))
    return data, on_white(palette[indices], entry_alpha[indices])


def case_gif_transparent():
    indices, palette = palette_source(9, colours=32)
    alpha = np.where(indices == 5, 0, 255).astype(np.uint8)
    data = encoded(palette_image(indices, palette), "GIF", transparency=5)
    return data, on_white(palette[indices], alpha)


def case_cmyk_tiff():
    cmyk = np.random.default_rng(10).integers(0, 256, (SIZE[1], SIZE[0], 4), dtype=np.uint8)
    return encoded(Image.fromarray(cmyk, "CMYK"), "TIFF"), cmyk_to_rgb(cmyk)


def case_sixteen_bit():
    values = np.random.default_rng(11).integers(0, 65536, (SIZE[1], SIZE[0]), dtype=np.uint16)
    values[0, :3] = (0, 65535, 128)  # both ends and a value that 8-bit clipping would keep
    return encoded(Image.fromarray(values), "PNG"), gray_to_rgb(sixteen_to_8(values))


def case_sixteen_bit_dark():
    """A dark 16-bit image stays dark: the scale is the format's range, not the image's own."""
    values = np.random.default_rng(12).integers(0, 2000, (SIZE[1], SIZE[0]), dtype=np.uint16)
    return encoded(Image.fromarray(values), "PNG"), gray_to_rgb(sixteen_to_8(values))


def case_sixteen_bit_big_endian_tiff():
    values = np.random.default_rng(13).integers(0, 65536, (SIZE[1], SIZE[0])).astype(">u2")
    image = Image.frombytes("I;16B", SIZE, values.tobytes())
    return encoded(image, "TIFF"), gray_to_rgb(sixteen_to_8(values))


def case_rgb_key_colour():
    rgb = rgb_source(14)
    key = (10, 200, 30)
    rgb[::3, ::4] = key  # a PNG tRNS colour: every pixel of exactly this colour is transparent
    alpha = np.where((rgb == key).all(-1), 0, 255).astype(np.uint8)
    return encoded(Image.fromarray(rgb), "PNG", transparency=key), on_white(rgb, alpha)


def case_gray_key_value():
    gray = np.array(pattern_image(15, SIZE, "L"))
    gray[1::2, ::3] = 77
    alpha = np.where(gray == 77, 0, 255).astype(np.uint8)
    data = encoded(Image.fromarray(gray, "L"), "PNG", transparency=77)
    return data, on_white(gray_to_rgb(gray), alpha)


def case_sixteen_bit_key_value():
    values = np.random.default_rng(16).integers(0, 65536, (SIZE[1], SIZE[0]), dtype=np.uint16)
    values[::2, ::5] = 40000
    expected = gray_to_rgb(sixteen_to_8(values))
    expected[values == 40000] = 255
    return encoded(Image.fromarray(values), "PNG", transparency=40000), expected


CASES = {
    "rgb.png": case_rgb,
    "gray.png": case_gray,
    "bilevel.png": case_bilevel,
    "gray_alpha.png": case_gray_alpha,
    "rgba.png": case_rgba,
    "palette.png": case_palette,
    "palette_one_transparent_entry.png": case_palette_one_transparent_entry,
    "palette_alpha_per_entry.png": case_palette_alpha_per_entry,
    "palette_transparent.gif": case_gif_transparent,
    "cmyk.tif": case_cmyk_tiff,
    "sixteen_bit.png": case_sixteen_bit,
    "sixteen_bit_dark.png": case_sixteen_bit_dark,
    "sixteen_bit_big_endian.tif": case_sixteen_bit_big_endian_tiff,
    "rgb_key_colour.png": case_rgb_key_colour,
    "gray_key_value.png": case_gray_key_value,
    "sixteen_bit_key_value.png": case_sixteen_bit_key_value,
}

# the mode PIL opens each file in: the case really exercises that mode (not a quiet RGB)
OPENED_MODE = {
    "rgb.png": "RGB",
    "gray.png": "L",
    "bilevel.png": "1",
    "gray_alpha.png": "LA",
    "rgba.png": "RGBA",
    "palette.png": "P",
    "palette_one_transparent_entry.png": "P",
    "palette_alpha_per_entry.png": "P",
    "palette_transparent.gif": "P",
    "cmyk.tif": "CMYK",
    "sixteen_bit.png": "I;16",
    "sixteen_bit_dark.png": "I;16",
    "sixteen_bit_big_endian.tif": "I;16B",
    "rgb_key_colour.png": "RGB",
    "gray_key_value.png": "L",
    "sixteen_bit_key_value.png": "I;16",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_mode_decodes_to_the_reference_pixels(name):
    data, expected = CASES[name]()
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == OPENED_MODE[name]
    decoded = decode_bytes(data)
    assert decoded.mode == "RGB" and decoded.size == SIZE
    np.testing.assert_array_equal(np.asarray(decoded), expected, err_msg=name)


def test_transparent_key_colours_become_white_not_their_colour():
    """A PNG's tRNS key colour (RGB) or value (grayscale, 16-bit) marks those pixels transparent:
    they are composited on white like alpha, not kept in the key colour (the library kept it until
    the tRNS of RGB and grayscale files was honoured)."""
    for case in (case_rgb_key_colour, case_gray_key_value, case_sixteen_bit_key_value):
        data, expected = case()
        transparent = (expected == 255).all(-1)
        assert transparent.sum() >= 20
        assert (np.asarray(decode_bytes(data))[transparent] == 255).all(), case.__name__


def test_rgba_webp_composites_its_transparent_pixels_on_white():
    """Lossless WebP keeps partial alpha exactly but may rewrite the colour of fully transparent
    pixels (libwebp's default): compositing on white makes them white whatever they hold."""
    if not features.check("webp"):
        pytest.skip("this Pillow has no WebP support")
    rgb, alpha = rgb_source(17), alpha_ramp(17)
    data = encoded(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "WEBP", lossless=True)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(opened)[..., 3], alpha)
    np.testing.assert_array_equal(np.asarray(decode_bytes(data)), on_white(rgb, alpha))


def test_cmyk_jpeg_follows_the_cmyk_rule_on_its_decoded_ink():
    """JPEG is lossy, so the file's ink differs from the source's: the exact check applies the
    rule to the ink as decoded (PIL undoes Adobe's inverted CMYK on reading); the check against
    the source, within JPEG's error at quality 95 on a smooth picture, shows that the ink was
    not left inverted (inverted ink would be off by about 90 levels on average here)."""
    yy, xx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    cmyk = np.stack([xx * 10, yy * 12, (xx + yy) * 5, np.full_like(xx, 60)], -1).astype(np.uint8)
    data = encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "CMYK"
        ink = np.asarray(opened)
    decoded = np.asarray(decode_bytes(data))
    np.testing.assert_array_equal(decoded, cmyk_to_rgb(ink))
    error = np.abs(decoded.astype(int) - cmyk_to_rgb(cmyk).astype(int))
    assert error.mean() < 2 and error.max() <= 12, (error.mean(), error.max())


def test_sixteen_bit_rgb_png_keeps_the_high_byte_within_one_level_of_the_scaled_value():
    """A 48-bit RGB PNG is opened by PIL as 8-bit RGB, each sample's high byte (v >> 8): not the
    grayscale rule's rint(v * 255 / 65535), but never more than one level from it (and never
    clipped)."""
    values = np.random.default_rng(18).integers(0, 65536, (SIZE[1], SIZE[0], 3)).astype(np.uint16)
    values[0, 0] = (0, 65535, 32896)
    decoded = np.asarray(decode_bytes(png_by_hand(values, color_type=2)))
    np.testing.assert_array_equal(decoded, (values >> 8).astype(np.uint8))
    assert np.abs(decoded.astype(int) - sixteen_to_8(values).astype(int)).max() <= 1


def demo_image_settings() -> tuple[int, str]:
    with open(REPO / "config/config.yaml") as handle:
        dataset = yaml.safe_load(handle)["dataset"]
    return dataset["image_size"], dataset["resize"]


def resized(expected: np.ndarray, size: int, mode: str) -> np.ndarray:
    """PIL's bilinear resize of the reference pixels (resizing is tested in tests/test_data.py;
    what is checked here is that the cache resizes the right pixels)."""
    image = Image.fromarray(expected)
    if mode == "squash":
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))
    return np.asarray(ImageOps.fit(image, (size, size), method=Image.Resampling.BILINEAR))


def write_cases(root: Path) -> dict[str, np.ndarray]:
    """Every case as a file, alternately in two class folders; relative path -> expected RGB."""
    expected = {}
    for position, name in enumerate(sorted(CASES)):
        data, pixels = CASES[name]()
        relative = f"{'ab'[position % 2]}/{name}"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        expected[relative] = pixels
    return expected


def test_the_cache_holds_the_reference_pixels_at_the_configured_size(tmp_path):
    """The cache path build_manifest and cache_images run (scan, split, decode_split) at the demo
    config's image_size and resize: each row is the reference conversion, resized."""
    size, mode = demo_image_settings()
    root = tmp_path / "images"
    expected = write_cases(root)
    images, rejected = scan_image_folder(root, [".png", ".tif", ".gif"])
    assert rejected.empty and set(images["path"]) == set(expected)
    manifest = split_images(images, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    for split in ("train", "val", "test"):
        rows = split_rows(manifest, split)
        cached = list(decode_split(manifest, root, split, size, mode))
        assert len(cached) == len(rows) > 0
        for path, pixels in zip(rows["path"], cached, strict=True):
            np.testing.assert_array_equal(pixels, resized(expected[path], size, mode), path)


@pytest.mark.parametrize("mode", ["squash", "center_crop"])
def test_both_resize_modes_of_the_cache_start_from_the_reference(tmp_path, mode):
    for name in ("rgba.png", "palette_alpha_per_entry.png", "cmyk.tif", "sixteen_bit.png"):
        data, expected = CASES[name]()
        path = tmp_path / name
        path.write_bytes(data)
        np.testing.assert_array_equal(
            load_for_cache(path, 16, mode), resized(expected, 16, mode), name
        )


def test_thumbnails_of_transparent_images_show_white_where_transparent(tmp_path):
    """Galleries decode the original files the same way: the thumbnail is the reference pixels,
    scaled, on the white square."""
    data, expected = case_rgba()
    path = tmp_path / "rgba.png"
    path.write_bytes(data)
    thumb = load_thumbnail(path, 48)
    image = Image.fromarray(expected).resize((48, 40), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (48, 48), (255, 255, 255))
    canvas.paste(image, (0, 4))
    np.testing.assert_array_equal(thumb, np.asarray(canvas))
