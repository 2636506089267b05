"""Batches of the uint8 image cache, as training, prediction and factor extraction read them."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from tracinflow.train.model import to_input


def as_image_array(images) -> np.ndarray:
    """``images`` (an array, a memory map, or rows of one) checked to be uint8 (N, H, W, 3)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def load_batch(images: np.ndarray, rows: np.ndarray, pin: bool = False) -> torch.Tensor:
    """Rows of the (memory-mapped) uint8 cache as a (B, H, W, 3) tensor, read in index order."""
    batch = torch.from_numpy(np.ascontiguousarray(images[rows]))
    return batch.pin_memory() if pin else batch


def batch_rows(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The rows of each batch: consecutive chunks of ``order``, each sorted (sequential reads from
    the memory map); which rows form each batch depends on ``order`` alone."""
    return [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def iter_batches(images, labels, order, batch_size: int, pin: bool = False):
    """Yield ``(uint8 images, labels)`` for the batches of :func:`batch_rows`, the next one read
    ahead; deterministic."""
    chunks = batch_rows(order, batch_size)

    def load(rows):
        return load_batch(images, rows, pin), torch.from_numpy(np.asarray(labels[rows], np.int64))

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(load, chunks[0]) if chunks else None
        for i in range(len(chunks)):
            batch = pending.result()
            pending = pool.submit(load, chunks[i + 1]) if i + 1 < len(chunks) else None
            yield batch


class CacheBatches:
    """Normalised batches of the memory-mapped cache, in row order, with labels and dataset idx;
    sized, so progress lines can say how many batches are left."""

    def __init__(self, images, labels, idx, arch, batch_size: int, device):
        self.images, self.labels, self.idx = images, labels, idx
        self.arch, self.batch_size, self.device = arch, batch_size, device

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.labels), self.batch_size):
            stop = start + self.batch_size
            batch = torch.from_numpy(np.array(self.images[start:stop]))  # a writable copy
            yield (
                to_input(batch, self.arch, self.device),
                # copies: the label and idx arrays may be read-only views of a table
                torch.tensor(self.labels[start:stop], device=self.device),
                torch.tensor(self.idx[start:stop]),
            )
