"""Embedded demo datasets: the images and labels the make_demo_dataset rule writes as real PNG
files in ImageFolder layout, so every later stage runs the same code on the demo as on a user's
Animals-10 folder.

Fashion-MNIST comes from Debian's package dataset-fashion-mnist (fetched at set-up time by
``make fetch-demo-data``; the rule reads its IDX files); the digits preset uses scikit-learn's
bundled 8x8 digits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """An IDX file's bytes (the MNIST format, already un-gzipped) as a numpy array; ``source``
    names the file in errors."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"'{source}' is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(data) - offset != expected:
        raise ValueError(
            f"'{source}' holds {len(data) - offset} bytes of data, expected {expected}"
        )
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


@dataclass(frozen=True)
class DemoImages:
    """Grayscale images (N, H, W) uint8, their labels, the class folder of each label, and the
    prefix of the file names (``<folder>/<prefix>_<number>.png``)."""

    images: np.ndarray
    labels: np.ndarray
    folders: tuple[str, ...]
    prefix: str


def fashion_mnist_demo(images: np.ndarray, labels: np.ndarray, per_class, seed: int, source: str):
    """A stratified subset of Fashion-MNIST's training images (``images``, ``labels``: the parsed
    IDX arrays of ``source``)."""
    if len(images) != len(labels):
        raise ValueError(f"'{source}': {len(images)} images but {len(labels)} labels")
    if labels.max() >= len(FASHION_MNIST_FOLDERS):
        raise ValueError(f"'{source}': label {labels.max()} outside the 10 Fashion-MNIST classes")
    keep = stratified_pick(labels, per_class, seed)
    return DemoImages(images[keep], labels[keep], FASHION_MNIST_FOLDERS, "fmnist")


def digits_demo(per_class, seed: int) -> DemoImages:
    """scikit-learn's 8x8 digits (values 0-16) as 8-bit images, classes '0' to '9'."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    keep = stratified_pick(digits.target, per_class, seed)
    folders = tuple(str(d) for d in range(10))
    return DemoImages(pixels[keep], digits.target[keep], folders, "digit")
