"""Lookups between tables keyed by dataset ``idx``, shared by every stage that joins them."""

from __future__ import annotations

import numpy as np
import pandas as pd


def row_positions(index_values, query, what: str) -> np.ndarray:
    """Row position in ``index_values`` of every ``query`` value; a clear error for any missing."""
    index = pd.Index(np.asarray(index_values, dtype=np.int64))
    if not index.is_unique:
        duplicated = index[index.duplicated()]
        raise ValueError(f"{what}: idx {int(duplicated[0])} appears more than once")
    query = np.asarray(query, dtype=np.int64)
    positions = index.get_indexer(query)
    missing = positions < 0
    if missing.any():
        absent = np.unique(query[missing])
        raise KeyError(f"{len(absent)} idx missing from {what}, e.g. {absent[:5].tolist()}")
    return positions


def descending_rank(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """1 = largest value; ties by the lower idx (the order the influence top-k uses)."""
    order = np.lexsort((idx, -values))
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(1, len(values) + 1)
    return rank
