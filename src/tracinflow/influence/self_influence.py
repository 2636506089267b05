"""Self-influence: each training image's influence on itself, the diagonal of the train x train
scores (``sum_ckpt lr * sum_L |e|^2 (|a|^2 + 1)``), a ranking of likely mislabels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tracinflow._util.tables import descending_rank
from tracinflow.config import checkpoint_name
from tracinflow.influence.inputs import (
    Checkpoints,
    check_side,
    checkpoint_list,
    common_layers,
    learning_rates,
)


def self_influence_scores(
    train: Checkpoints,
    lrs: Sequence[float] | None = None,
    *,
    layers: Sequence[str] | None = None,
    mode: str = "full",
    per_checkpoint: bool = False,
    chunk_rows: int = 65536,
) -> np.ndarray:
    """Self-influence of every row, in float64: shape (N,), or (n_checkpoints, N) per checkpoint.

    ``mode="full"``: ``lr * sum_L |e|^2 (|a|^2 + 1)`` (the diagonal of the train x train scores);
    ``mode="error"``: ``lr * sum_L |e|^2`` (the error-signal-only variant). Rows are read in chunks of
    ``chunk_rows``, so memory-mapped folders are never loaded whole.
    """
    if mode not in ("full", "error"):
        raise ValueError(f"mode must be 'full' or 'error', got {mode!r}")
    side = checkpoint_list(train)
    layers = common_layers([side], layers)
    check_side(side, layers, "train")
    lrs = learning_rates([side], lrs)
    n = len(side[0])
    out = np.zeros((len(side), n), dtype=np.float64)
    for c, f in enumerate(side):
        for layer in layers:
            bias = 1.0 if f.has_bias[layer] else 0.0
            for start in range(0, n, chunk_rows):
                rows = slice(start, min(start + chunk_rows, n))
                e = np.asarray(f.err[layer][rows], dtype=np.float64)
                term = np.einsum("ij,ij->i", e, e)
                if mode == "full":
                    a = np.asarray(f.act[layer][rows], dtype=np.float64)
                    term *= np.einsum("ij,ij->i", a, a) + bias
                out[c, rows] += lrs[c] * term
    return out if per_checkpoint else out.sum(axis=0)


def self_influence(
    train: Checkpoints,
    lrs: Sequence[float] | None = None,
    *,
    layers: Sequence[str] | None = None,
    mode: str = "full",
    per_checkpoint: bool = False,
    chunk_rows: int = 65536,
) -> pd.DataFrame:
    """Self-influence of every train row: ``train_idx, self_influence, rank`` (rank 1 = largest, ties
    by lower train idx), ordered by rank.

    ``mode="error"`` ranks by the error-signal-only score ``sum lr * |e|^2`` instead. With
    ``per_checkpoint=True`` one more column per checkpoint, ``self_influence_epoch_{E:03d}`` (``self_influence_stage1_epoch_{E:03d}`` at a stage-1 checkpoint; or
    ``self_influence_ckpt_{i}`` when the epoch is unknown), holds that checkpoint's term.
    """
    side = checkpoint_list(train)
    per = self_influence_scores(
        side, lrs, layers=layers, mode=mode, per_checkpoint=True, chunk_rows=chunk_rows
    )
    total = per.sum(axis=0)
    idx = np.asarray(side[0].idx, dtype=np.int64)
    rank = descending_rank(total, idx)
    frame = pd.DataFrame({"train_idx": idx, "self_influence": total, "rank": rank})
    if per_checkpoint:
        for c, f in enumerate(side):
            epoch = f.meta.get("epoch")
            name = (
                f"self_influence_ckpt_{c}"
                if epoch is None
                else f"self_influence_{checkpoint_name(f.stage, epoch)}"
            )
            frame[name] = per[c]
    return frame.iloc[np.argsort(rank)].reset_index(drop=True)
