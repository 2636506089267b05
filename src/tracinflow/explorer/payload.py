"""The explorer page's data: one version's tables in compact columns that the page's script reads.

Every list of a table is in the same row order (``test``: the test predictions' rows; ``train``:
the rows the version trained on, by idx), and images are referred to by manifest idx. Influence
values are kept as they are in ``top_k_influences.parquet`` (a float64 written by JSON's shortest
round-trip form, so the page shows exactly the file's value); suspicion scores keep 6 significant
digits (they are only shown), with their ranks computed here by the workflow's own tie rule.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tracinflow._util.tables import descending_rank, row_positions
from tracinflow.analysis.rankings import RANKING_MEANINGS, RANKINGS
from tracinflow.config import method_label
from tracinflow.data.split import class_names_of

#: how many test images a training image's page lists as the ones it helps (and harms) most
TRAIN_TOP = 5
#: how many proponents of a test image the across-versions view shows per version
COMPARE_TOP = 3


def _rounded(values, digits: int = 6) -> list:
    """Floats with ``digits`` significant digits; NaN (no score) as None."""
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in map(float, values)]


def top_lists(topk: pd.DataFrame, kind: str, key: str, other: str, top: int, order) -> dict:
    """``{key value: [[other value, influence], ...]}`` of one kind of top-k entry, the ``top``
    largest (proponents) or most negative (opponents) influences first; ties by the lower
    ``other`` idx, the order of the influence top-k."""
    rows = topk[topk["kind"] == kind]
    sign = -1.0 if kind == "proponent" else 1.0
    keys = rows[key].to_numpy(np.int64)
    others = rows[other].to_numpy(np.int64)
    values = rows["influence"].to_numpy(np.float64)
    sorted_at = np.lexsort((others, sign * values, keys))
    keys, others, values = keys[sorted_at], others[sorted_at], values[sorted_at]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else []
    ends = [*list(starts[1:]), len(keys)]
    lists = {}
    for start, end in zip(starts, ends, strict=True):
        stop = min(end, start + top)
        lists[int(keys[start])] = [
            [int(o), float(v)] for o, v in zip(others[start:stop], values[start:stop], strict=True)
        ]
    return {k: lists.get(int(k), []) for k in order}


def _test_table(test_pred: pd.DataFrame, topk: pd.DataFrame, top: int) -> dict:
    idx = test_pred["idx"].to_numpy(np.int64)
    lists = {
        kind: top_lists(topk, kind, "test_idx", "train_idx", top, idx)
        for kind in ("proponent", "opponent")
    }
    return {
        "idx": idx.tolist(),
        "label": test_pred["label"].astype(int).tolist(),
        "pred": test_pred["pred"].astype(int).tolist(),
        "confidence": _rounded(test_pred["confidence"], 4),
        "proponents": list(lists["proponent"].values()),
        "opponents": list(lists["opponent"].values()),
    }


def _rankings(suspicion: pd.DataFrame, idx: np.ndarray) -> dict:
    """Every ranking the suspicion table has: each training row's score and rank (1 = most
    suspect; a row with no score has none)."""
    rows = row_positions(suspicion["train_idx"], idx, "the suspicion scores")
    scores, ranks = {}, {}
    for name in (r for r in RANKINGS if r in suspicion.columns):
        values = suspicion[name].to_numpy(np.float64)[rows]
        known = np.isfinite(values)
        rank = np.zeros(len(values), dtype=np.int64)
        rank[known] = descending_rank(values[known], idx[known])
        scores[name] = _rounded(values)
        ranks[name] = [int(r) if r else None for r in rank]
    return {"scores": scores, "ranks": ranks}


def _train_table(train_set, train_pred, suspicion, topk) -> dict:
    trained = train_set[~train_set["dropped"].to_numpy(bool)].sort_values("idx", kind="stable")
    idx = trained["idx"].to_numpy(np.int64)
    rows = row_positions(train_pred["idx"], idx, "the train predictions")
    return {
        "idx": idx.tolist(),
        "label": trained["label"].astype(int).tolist(),
        "original": trained["original_label"].astype(int).tolist(),
        "flipped": trained["noisy"].astype(bool).tolist(),
        "pred": train_pred["pred"].to_numpy(np.int64)[rows].tolist(),
        "confidence": _rounded(train_pred["confidence"].to_numpy(np.float64)[rows], 4),
        **_rankings(suspicion, idx),
        "helps": list(
            top_lists(topk, "proponent", "train_idx", "test_idx", TRAIN_TOP, idx).values()
        ),
        "harms": list(
            top_lists(topk, "opponent", "train_idx", "test_idx", TRAIN_TOP, idx).values()
        ),
    }


def _images(manifest: pd.DataFrame) -> dict:
    """The train and test images of the manifest (the ones the page can show): idx, relative
    path, split and the dataset's own label."""
    shown = manifest[manifest["split"].isin(["train", "test"])].sort_values("idx", kind="stable")
    return {
        "idx": shown["idx"].astype(int).tolist(),
        "path": shown["path"].astype(str).tolist(),
        "split": shown["split"].astype(str).tolist(),
        "label": shown["label"].astype(int).tolist(),
    }


def compared_version(test_idx, test_pred: pd.DataFrame, topk: pd.DataFrame) -> dict:
    """Another version's prediction, confidence and top proponents of each test image, in the
    order ``test_idx`` (every version has the same test set)."""
    rows = row_positions(test_pred["idx"], test_idx, "the compared version's test predictions")
    lists = top_lists(topk, "proponent", "test_idx", "train_idx", COMPARE_TOP, test_idx)
    return {
        "pred": test_pred["pred"].to_numpy(np.int64)[rows].tolist(),
        "confidence": _rounded(test_pred["confidence"].to_numpy(np.float64)[rows], 4),
        "proponents": list(lists.values()),
    }


def explorer_payload(tables: dict, *, version: str, default_ranking: str, top: int,
                     planted: bool, compared: dict[str, dict] | None = None,
                     method: str | None = "tracin_final", ensemble=()) -> dict:  # fmt: skip
    """The page's data of one version. ``tables``: ``manifest``, ``train_set``, ``train_pred``,
    ``test_pred``, ``topk`` and ``suspicion`` (the version's files as frames); ``top``: the
    proponents and opponents listed per test image; ``planted``: whether the training set carries
    planted flips (the page then says whether each label was flipped); ``compared``: the versions
    of the across-versions view, ``{name: {"test_pred": ..., "topk": ...}}`` (this one included
    where it is compared); ``method``: the attribution method the top-k lists come from (its name
    in :func:`tracinflow.config.parse_method`'s grammar), shown on the page with the ``ensemble``
    whose models' scores it averages."""
    test_pred = tables["test_pred"].sort_values("idx", kind="stable").reset_index(drop=True)
    test_idx = test_pred["idx"].to_numpy(np.int64)
    train = _train_table(
        tables["train_set"], tables["train_pred"], tables["suspicion"], tables["topk"]
    )
    rankings = [r for r in RANKINGS if r in train["scores"]]
    return {
        "version": version,
        "method": method or "",
        "method_label": method_label(method, ensemble) if method else "the influence",
        "classes": class_names_of(tables["manifest"]),
        "top": int(top),
        "planted": bool(planted),
        "default_ranking": default_ranking,
        "rankings": rankings,
        "ranking_meanings": {r: RANKING_MEANINGS.get(r, r) for r in rankings},
        "images": _images(tables["manifest"]),
        "test": _test_table(test_pred, tables["topk"], top),
        "train": train,
        "versions": {
            name: compared_version(test_idx, files["test_pred"], files["topk"])
            for name, files in (compared or {}).items()
        },
    }
