"""The decoded image cache: one uint8 (N, H, W, 3) array per split, in manifest idx order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from tracinflow.data.images import load_for_cache
from tracinflow.data.scan import ordered_map
from tracinflow.data.split import split_rows


class _CacheLoader:
    """Picklable per-file job for the pool: decode, check the file is unchanged, resize."""

    def __init__(self, root, size, resize):
        self.root, self.size, self.resize = Path(root), size, resize

    def __call__(self, item):
        relative, sha256 = item
        return load_for_cache(self.root / relative, self.size, self.resize, sha256)


def decode_split(
    manifest: pd.DataFrame, root, split: str, size: int, resize: str = "squash", workers: int = 1
) -> Iterator[np.ndarray]:
    """The cached pixels of every image of ``split``, in cache order (:func:`split_rows`): one
    (size, size, 3) uint8 array per image, decoded by ``workers`` processes. A file whose bytes
    changed since the manifest was built stops it with an error naming the file."""
    rows = split_rows(manifest, split)
    items = list(zip(rows["path"], rows["sha256"], strict=True))
    yield from ordered_map(_CacheLoader(root, size, resize), items, workers)


class CacheRows:
    """Some rows of an image cache, indexed like an array (``rows[i]``, ``rows[a:b]``,
    ``rows[positions]``) without copying the memory-mapped file: a version that trains on part of the
    train split (cleaning dropped some images) reads only its rows, in the cache's order."""

    def __init__(self, images: np.ndarray, positions):
        positions = np.asarray(positions, dtype=np.int64)
        if positions.ndim != 1 or (positions.size and np.any(np.diff(positions) <= 0)):
            raise ValueError("cache positions must be strictly increasing (the cache's row order)")
        if positions.size and (positions[0] < 0 or positions[-1] >= len(images)):
            raise ValueError(f"cache positions out of range for a cache of {len(images)} images")
        self.images, self.positions = images, positions
        self.shape = (len(positions), *images.shape[1:])
        self.ndim, self.dtype = images.ndim, images.dtype

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, rows):
        return self.images[self.positions[rows]]
