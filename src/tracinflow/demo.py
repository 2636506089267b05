"""Embedded demo datasets written as real PNG files in ImageFolder layout.

Every later stage then runs the same code on the demo as on a user's Animals-10 folder.
Fashion-MNIST comes from Debian's package dataset-fashion-mnist (fetched at set-up time by
``make fetch-demo-data``); the digits preset uses scikit-learn's bundled 8x8 digits.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tracinflow.progress import Progress

# Folder names must be valid file names ("T-shirt/top" is not); config maps them to display names.
FASHION_MNIST_FOLDERS = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)
FASHION_MNIST_NAMES = {"T-shirt_top": "T-shirt/top", "Ankle_boot": "Ankle boot"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format, optionally gzipped) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"'{path}' is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(f"'{path}' holds {len(data) - offset} bytes of data, expected {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def stratified_pick(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Indices of ``per_class`` random images of every class (all when None), sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if per_class is not None and per_class < len(members):
            members = rng.choice(members, size=per_class, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen))


def write_image_folder(
    images: np.ndarray, labels: np.ndarray, folders, out_root, prefix: str, log=None
) -> int:
    """Write grayscale arrays as 3-channel PNGs into ``out_root/<folder>/<prefix>_<i>.png``.

    Written into a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a partial dataset that looks complete.
    """
    out_root = Path(out_root)
    out_root.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".{out_root.name}.", dir=out_root.parent))
    try:
        for folder in folders:
            (tmp_root / folder).mkdir()
        progress = Progress(len(images), f"write {out_root}", unit="images", log=log)
        for number, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            rgb = Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB")
            rgb.save(tmp_root / folders[int(label)] / f"{prefix}_{number:05d}.png")
            progress.update()
        if out_root.exists():
            shutil.rmtree(out_root)
        tmp_root.rename(out_root)
    finally:
        if tmp_root.exists():
            shutil.rmtree(tmp_root)
    return len(images)


def write_fashion_mnist_demo(raw_dir, out_root, per_class: int | None, seed: int, log=None) -> int:
    """A stratified subset of Fashion-MNIST's training images as PNG files."""
    raw_dir = Path(raw_dir)
    images = read_idx(raw_dir / "train-images-idx3-ubyte.gz")
    labels = read_idx(raw_dir / "train-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise ValueError(f"'{raw_dir}': {len(images)} images but {len(labels)} labels")
    if labels.max() >= len(FASHION_MNIST_FOLDERS):
        raise ValueError(f"'{raw_dir}': label {labels.max()} outside the 10 Fashion-MNIST classes")
    keep = stratified_pick(labels, per_class, seed)
    return write_image_folder(
        images[keep], labels[keep], FASHION_MNIST_FOLDERS, out_root, "fmnist", log
    )


def write_digits_demo(out_root, per_class: int | None, seed: int, log=None) -> int:
    """scikit-learn's 8x8 digits (values 0-16) as 8-bit PNG files, classes '0' to '9'."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    keep = stratified_pick(digits.target, per_class, seed)
    folders = [str(d) for d in range(10)]
    return write_image_folder(pixels[keep], digits.target[keep], folders, out_root, "digit", log)


def write_demo_dataset(demo: dict, out_root, log=None) -> int:
    """Dispatch on ``dataset.demo.source``."""
    if demo["source"] == "fashion_mnist":
        return write_fashion_mnist_demo(
            demo["raw_dir"], out_root, demo.get("images_per_class"), demo.get("seed", 0), log
        )
    if demo["source"] == "digits":
        return write_digits_demo(out_root, demo.get("images_per_class"), demo.get("seed", 0), log)
    raise ValueError(f"unknown demo source {demo['source']!r}")
