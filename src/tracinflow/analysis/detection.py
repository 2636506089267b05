"""How well a suspicion ranking finds planted label flips: the share found after inspecting the
top 5/10/20%, ROC AUC and average precision, for every ranking of a version (higher score = more
suspect). The planting itself is :mod:`tracinflow.data.train_set`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tracinflow._util.tables import row_positions
from tracinflow.analysis.rankings import checkpoint_columns, ranking_columns
from tracinflow.data.train_set import check_train_set

DETECTION_FRACTIONS = (0.05, 0.10, 0.20)
DETECTION_COLUMNS = [
    "ranking",
    "found_at_5pct",
    "found_at_10pct",
    "found_at_20pct",
    "roc_auc",
    "average_precision",
    "default",
]
NOTHING_PLANTED = "no flipped labels among the rows: nothing was planted, nothing to detect"


# --------------------------------------------------------------------------------------------------
# detection


def _scores_and_flipped(scores, flipped) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    flipped = np.asarray(flipped, dtype=bool)
    if scores.ndim != 1 or scores.shape != flipped.shape:
        raise ValueError(f"scores {scores.shape} and flipped {flipped.shape} must be equal 1-D")
    if not np.isfinite(scores).all():
        raise ValueError("scores must all be finite")
    if not flipped.any():
        raise ValueError(NOTHING_PLANTED)
    return scores, flipped


def detection_curve(scores, flipped) -> tuple[np.ndarray, np.ndarray]:
    """``(inspected fraction, found fraction)`` after each prefix of the ranking, from (0, 0).

    Rows are inspected by score, highest first, ties in their given order; the found fraction is
    the share of all flipped rows among those inspected. Both arrays have N + 1 points.
    """
    scores, flipped = _scores_and_flipped(scores, flipped)
    order = np.argsort(-scores, kind="stable")
    found = np.concatenate([[0], np.cumsum(flipped[order])])
    inspected = np.arange(len(scores) + 1) / len(scores)
    return inspected, found / flipped.sum()


def inspected_count(n: int, fraction: float) -> int:
    """How many of ``n`` rows "inspecting ``fraction``" means: ``ceil(fraction * n)``.

    Ceil, so a fraction never inspects less than asked (5% of 10 rows is 1 row); the tiny slack
    keeps float noise such as ``0.07 * 100 = 7.000000000000001`` from adding a row.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return min(n, math.ceil(fraction * n - 1e-9))


def found_at(scores, flipped, fraction: float) -> float:
    """Share of the flipped rows among the top ``ceil(fraction * N)`` by score (see
    :func:`inspected_count`), ties in their given order."""
    _, found = detection_curve(scores, flipped)
    return float(found[inspected_count(len(found) - 1, fraction)])


def detection_table(rankings: Mapping, flipped, default: str) -> pd.DataFrame:
    """One row per ranking (``DETECTION_COLUMNS``), in the mapping's order.

    ``rankings`` maps a name to per-row scores aligned with ``flipped``, higher = more suspect.
    ``found_at_*`` come from :func:`found_at`; ROC AUC and average precision from scikit-learn
    (ROC AUC is NaN when every row is flipped). ``default`` marks the ranking the workflow uses.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    flipped = np.asarray(flipped, dtype=bool)
    if not flipped.any():
        raise ValueError(NOTHING_PLANTED)
    if default not in rankings:
        raise ValueError(f"default ranking {default!r} is not one of {list(rankings)}")
    rows = []
    for name, scores in rankings.items():
        scores, _ = _scores_and_flipped(scores, flipped)
        rows.append(
            {
                "ranking": str(name),
                **{
                    column: found_at(scores, flipped, fraction)
                    for column, fraction in zip(
                        DETECTION_COLUMNS[1:4], DETECTION_FRACTIONS, strict=True
                    )
                },
                "roc_auc": (
                    float(roc_auc_score(flipped, scores)) if not flipped.all() else float("nan")
                ),
                "average_precision": float(average_precision_score(flipped, scores)),
                "default": name == default,
            }
        )
    return pd.DataFrame(rows, columns=DETECTION_COLUMNS)


#: the stable names of a checkpoint's self-influence (whatever its epoch), which the noise study
#: compares across versions
ALIAS_RANKINGS = ("self_influence_first", "self_influence_last")


def detection_rankings(
    train_set: pd.DataFrame, suspicion: pd.DataFrame
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every suspicion ranking of one version, aligned with its planted flips: ``(rankings,
    flipped)`` over the train set's non-dropped rows (flipped = ``noisy``), the rankings in the
    suspicion table's column order (:func:`~tracinflow.analysis.rankings.suspicion_table`). The
    first and last checkpoint's columns (``self_influence_epoch_EEE``) are left out where
    ``self_influence_first`` / ``_last`` name the same numbers. The table must cover every
    evaluated idx; a missing row is an error, never dropped.
    """
    check_train_set(train_set)
    train_set = train_set.loc[~train_set["dropped"].to_numpy(bool)]
    idx = train_set["idx"].to_numpy(np.int64)
    flipped = train_set["noisy"].to_numpy(bool)
    positions = row_positions(suspicion["train_idx"], idx, "the suspicion scores")
    rankings = {
        name: suspicion[name].to_numpy(np.float64)[positions] for name in ranking_columns(suspicion)
    }
    aliases = [rankings[name] for name in ALIAS_RANKINGS if name in rankings]
    for name in checkpoint_columns(suspicion):
        if any(np.array_equal(rankings[name], alias, equal_nan=True) for alias in aliases):
            del rankings[name]
    return rankings, flipped
