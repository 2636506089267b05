"""Shards: the test x train matrix cut into tiles scored as separate jobs, and the exact merge.

Shard (t, r) scores the rows of test tile ``t`` against those of train tile ``r``; every (test,
train) pair is scored whole in exactly one shard, so the per-test-row top-k of all shards'
candidates equals the unsharded top-k (and, on the kernel's fixed block grid, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tracinflow.influence.kernel import KINDS, canonical_topk


def tile_rows(t: int, T: int, n: int) -> slice:
    """Rows of tile ``t`` of ``T`` over ``n`` rows: ``[t*n//T, (t+1)*n//T)``."""
    if not (T >= 1 and 0 <= t < T):
        raise ValueError(f"tile {t} of {T} does not exist")
    return slice(t * n // T, (t + 1) * n // T)


def merge_topk(frames: Sequence[pd.DataFrame] | pd.DataFrame, k: int) -> pd.DataFrame:
    """Per test row and kind, the top-``k`` over all shards' candidates, with the same tie rule.

    Identical (same rows, same order, same values) to :func:`topk_influence` on the unsharded data.
    """
    frame = (
        frames if isinstance(frames, pd.DataFrame) else pd.concat(list(frames), ignore_index=True)
    )
    frame = frame.drop_duplicates(["test_idx", "kind", "train_idx"])
    unknown = set(frame["kind"].unique()) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}")
    dtype = frame["influence"].dtype if len(frame) else np.float64
    parts = []
    for code, kind in enumerate(KINDS):
        part = frame[frame["kind"].to_numpy() == kind]
        test_idx = part["test_idx"].to_numpy(np.int64)
        train_idx = part["train_idx"].to_numpy(np.int64)
        value = part["influence"].to_numpy()
        order = np.lexsort((train_idx, -value if kind == "proponent" else value, test_idx))
        test_idx, train_idx, value = test_idx[order], train_idx[order], value[order]
        first = np.r_[True, test_idx[1:] != test_idx[:-1]] if len(test_idx) else np.zeros(0, bool)
        starts = np.maximum.accumulate(np.where(first, np.arange(len(test_idx)), 0))
        rank = np.arange(len(test_idx)) - starts + 1
        keep = rank <= k
        parts.append(
            {
                "test_idx": test_idx[keep],
                "kind_code": np.full(int(keep.sum()), code),
                "rank": rank[keep],
                "train_idx": train_idx[keep],
                "influence": value[keep],
            }
        )
    cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return canonical_topk(cols, dtype)
