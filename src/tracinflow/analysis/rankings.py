"""Suspicion rankings: which training images most likely carry a wrong label.

Every ranking scores the images a version trained on, higher = more suspect; the training-set
stage (cleaning), the reports and the noise evaluation all use these, so a ranking means the same
everywhere.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracinflow._util.tables import row_positions

# self_influence.parquet's per-checkpoint columns (ckpt_N when a checkpoint's epoch is unknown).
CHECKPOINT_COLUMN = re.compile(r"^self_influence_(epoch_\d+|ckpt_\d+)$")
RANKINGS = ("self_influence", "self_influence_last", "error_self_influence", "loss", "combined")
RANKING_MEANINGS = {
    "self_influence": "TracIn self-influence summed over checkpoints, largest first",
    "self_influence_last": "TracIn self-influence at the last checkpoint, largest first",
    "error_self_influence": "error-signal-only self-influence |e|^2 summed over checkpoints",
    "loss": "training loss at the best checkpoint, largest first",
    "combined": "mean percentile rank of self-influence and loss, largest first",
}


def checkpoint_columns(self_influence: pd.DataFrame) -> list[str]:
    """The per-checkpoint columns of self_influence.parquet, in checkpoint order."""
    return sorted(c for c in self_influence.columns if CHECKPOINT_COLUMN.match(c))


def _last_checkpoint_column(self_influence: pd.DataFrame) -> str:
    columns = checkpoint_columns(self_influence)
    if not columns:
        raise ValueError(
            "ranking self_influence_last needs the per-checkpoint columns "
            "self_influence_epoch_EEE in self_influence.parquet"
        )
    return columns[-1]


def suspicion_scores(
    ranking: str,
    train_idx,
    self_influence: pd.DataFrame,
    train_pred: pd.DataFrame,
    error_self_influence: pd.DataFrame | None = None,
) -> np.ndarray:
    """The suspicion score of each ``train_idx`` (higher = more likely mislabeled) under ``ranking``:

    - ``"self_influence"``: TracIn self-influence summed over checkpoints;
    - ``"self_influence_last"``: the last checkpoint's self-influence term alone;
    - ``"error_self_influence"``: ``sum lr |e|^2``, the error signal without the activations
      (``error_self_influence``: a frame in self_influence.parquet's format);
    - ``"loss"``: the per-sample training loss at the best checkpoint (``train_pred``);
    - ``"combined"``: the mean of the percentile ranks of self-influence and loss,
      ``(r_self + r_loss) / (2 N)`` with ascending ranks (ties share their average rank), so the
      score lies in (0, 1] and neither quantity's scale matters.

    One used image missing from a table is an error, never dropped.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    train_idx = np.asarray(train_idx, dtype=np.int64)

    def column(frame, key, name, what):
        return frame[name].to_numpy(np.float64)[row_positions(frame[key], train_idx, what)]

    if ranking == "error_self_influence":
        if error_self_influence is None:
            raise ValueError("ranking error_self_influence needs the error-signal self-influence")
        return column(error_self_influence, "train_idx", "self_influence", "error self-influence")
    if ranking == "self_influence_last":
        last = _last_checkpoint_column(self_influence)
        return column(self_influence, "train_idx", last, "self_influence")
    scores = column(self_influence, "train_idx", "self_influence", "self_influence")
    if ranking == "self_influence":
        return scores
    loss = column(train_pred, "idx", "loss", "the train predictions")
    if ranking == "loss":
        return loss
    # Rank sums are whole or half numbers, so equal sums stay exactly equal before dividing and the
    # tie-break by train idx is not decided by rounding.
    rank_sum = (
        pd.Series(scores).rank(method="average").to_numpy()
        + pd.Series(loss).rank(method="average").to_numpy()
    )
    return rank_sum / (2 * len(train_idx))
