"""Bad input in the dataset folder: each file gets a stable reason in rejected.csv, or is read right.

Real files on disk, scanned by the code build_manifest runs.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tracinflow.data.cache import decode_split
from tracinflow.data.scan import scan_image_folder
from tracinflow.data.split import split_images

EXTENSIONS = [".png", ".jpg"]


def image(path: Path, seed: int = 0, size=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def two_classes(root: Path, per_class: int = 3) -> Path:
    for c, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            image(root / name / f"{i}.png", seed=10 * c + i)
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims ``width x height`` pixels: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def reasons(rejected: pd.DataFrame) -> dict[str, str]:
    return dict(zip(rejected["path"], rejected["reason"], strict=True))


def test_a_symlink_to_a_file_outside_the_root_is_rejected_not_trained_on(tmp_path):
    root = two_classes(tmp_path / "data")
    outside = image(tmp_path / "elsewhere" / "stray.png", seed=99)
    (root / "cat" / "link.png").symlink_to(outside)
    (root / "dog" / "inside_link.png").symlink_to(root / "cat" / "0.png")  # inside: a copy
    images, rejected = scan_image_folder(root, EXTENSIONS)
    assert "cat/link.png" not in set(images["path"])
    why = reasons(rejected)["cat/link.png"]
    assert "symbolic link" in why and str(outside.resolve()) in why and "dataset.root" in why
    assert "dog/inside_link.png" in set(images["path"])


def test_a_decompression_bomb_is_rejected_from_its_header_with_the_limit_named(tmp_path):
    root = two_classes(tmp_path / "data")
    bomb = root / "cat" / "bomb.png"
    bomb.write_bytes(png_claiming(30_000, 30_000))  # 900 megapixels in 100 bytes
    start = time.perf_counter()
    images, rejected = scan_image_folder(root, EXTENSIONS)
    assert time.perf_counter() - start < 30  # decoding 2.7 GB would not fit; header only
    why = reasons(rejected)["cat/bomb.png"]
    assert "30000 x 30000 = 900,000,000 pixels" in why
    assert "dataset.max_pixels = 40,000,000" in why
    assert "cat/bomb.png" not in set(images["path"])


def test_a_20000_pixel_wide_image_is_rejected_by_default_and_read_under_a_raised_limit(tmp_path):
    root = two_classes(tmp_path / "data")
    Image.new("L", (20_000, 2_500), 128).save(root / "dog" / "wide.png")  # 50 megapixels
    _, rejected = scan_image_folder(root, EXTENSIONS)
    assert "dataset.max_pixels = 40,000,000" in reasons(rejected)["dog/wide.png"]
    images, rejected = scan_image_folder(root, EXTENSIONS, max_pixels=60_000_000)
    row = images.set_index("path").loc["dog/wide.png"]
    assert (row["width"], row["height"]) == (20_000, 2_500) and "dog/wide.png" not in set(
        rejected["path"]
    )


def test_rejection_reasons_are_the_same_on_every_run(tmp_path):
    root = two_classes(tmp_path / "data")
    (root / "cat" / "notes.jpg").write_text("not an image, renamed")
    (root / "dog" / "cut.png").write_bytes(
        image(tmp_path / "full.png", size=(64, 64)).read_bytes()[:200]
    )
    first = reasons(scan_image_folder(root, EXTENSIONS)[1])
    second = reasons(scan_image_folder(root, EXTENSIONS, workers=2)[1])
    assert first == second and set(first) == {"cat/notes.jpg", "dog/cut.png"}
    assert all("0x" not in why for why in first.values()), first
    assert first["cat/notes.jpg"] == (
        "not a readable image: UnidentifiedImageError: cannot identify image file"
    )


def test_the_scans_progress_counts_every_file_under_the_root(messy_folder):
    """Files rejected before decoding (a wrong extension, outside a class folder) count too."""
    lines = []
    scan_image_folder(messy_folder, [".png", ".jpg"], log=lines.append)
    files = sum(1 for path in messy_folder.rglob("*") if path.is_file())
    assert re.search(rf": {files}/{files} files \(100%\)", lines[-1]), lines[-1]


NAME_CHARACTERS = st.sampled_from(list("ab Z9-_.'\"$()[]{};&|\n\téü中🙂"))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(names=st.lists(st.text(NAME_CHARACTERS, min_size=1, max_size=12), min_size=2, max_size=6,
                      unique_by=lambda name: name.strip().lower()))  # fmt: skip
def test_file_names_of_any_characters_are_read_and_cached(tmp_path_factory, names):
    """Spaces, quotes, `$()`, newlines, tabs and non-ASCII in file names: every image is found,
    its path survives the manifest's Parquet file, and the cache decodes its own pixels."""
    root = tmp_path_factory.mktemp("names")
    files = [f"{name.replace('/', '_').strip('.') or 'x'}.png" for name in names]
    files += [f"plain {i}.png" for i in range(3)]  # a split needs 3 images per class
    expected = {}
    for i, name in enumerate(files):
        for folder in ("cat", "dog"):
            path = image(root / folder / name, seed=i + 100 * (folder == "cat"), size=(12, 12))
            expected[path.relative_to(root).as_posix()] = np.asarray(Image.open(path))
    images, rejected = scan_image_folder(root, EXTENSIONS)
    assert rejected.empty and set(images["path"]) == set(expected)
    manifest = split_images(images, {"train": 1.0, "val": 0.0, "test": 0.0}, seed=0)
    manifest.to_parquet(root.parent / f"{root.name}.parquet")
    manifest = pd.read_parquet(root.parent / f"{root.name}.parquet")
    train = manifest[manifest["split"] == "train"].sort_values("idx")
    cached = list(decode_split(manifest, root, "train", size=12))
    for path, pixels in zip(train["path"], cached, strict=True):
        np.testing.assert_array_equal(pixels, expected[path])


def test_an_empty_class_folder_one_class_or_a_tiny_class_stops_with_the_folder_named(tmp_path):
    from tracinflow.data import DataError

    root = two_classes(tmp_path / "empty")
    (root / "bird").mkdir()
    (root / "bird" / "broken.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"without a single readable image: \['bird'\].*broken"):
        scan_image_folder(root, EXTENSIONS)

    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    lone = image(tmp_path / "one" / "cat" / "0.png").parents[1]
    images, _ = scan_image_folder(lone, EXTENSIONS)
    with pytest.raises(DataError, match=r"need at least 2 classes.*found 1 \(cat\)"):
        split_images(images, fractions, seed=0)

    small = two_classes(tmp_path / "small", per_class=3)
    for extra in range(3):
        image(small / "cat" / f"more{extra}.png", seed=50 + extra)
    (small / "dog" / "1.png").unlink()
    (small / "dog" / "2.png").unlink()
    images, _ = scan_image_folder(small, EXTENSIONS)
    with pytest.raises(DataError, match="'dog' has 1 readable images"):
        split_images(images, fractions, seed=0)


def test_an_image_changed_after_the_manifest_stops_the_cache_naming_it(tmp_path):
    """Old and new pixels are never mixed: the cache checks every file's sha256 against the
    manifest and stops at the first that differs, saying how to rebuild."""
    from tracinflow.data import DataError

    root = two_classes(tmp_path / "data", per_class=4)
    images, _ = scan_image_folder(root, EXTENSIONS)
    manifest = split_images(images, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    changed = manifest.loc[manifest["split"] == "train", "path"].iloc[0]
    image(root / changed, seed=1234)  # same name, other pixels
    with pytest.raises(DataError) as info:
        list(decode_split(manifest, root, "train", size=12))
    assert str(root / changed) in str(info.value) and "build_manifest" in str(info.value)
