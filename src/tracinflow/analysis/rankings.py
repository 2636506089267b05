"""Suspicion rankings: which training images most likely carry a wrong label.

Every ranking scores the images a version trained on, higher = more suspect. One table per version
(``suspicion_scores.parquet``, built by :func:`suspicion_table`) holds every ranking's scores; the
training-set stage (cleaning), the reports and the noise evaluation all read their ranking from it,
so a ranking means the same everywhere.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracinflow._util.tables import row_positions
from tracinflow.analysis.trajectory import trajectory_signals
from tracinflow.config import RANKING_NEEDS

# self_influence.parquet's per-checkpoint columns (ckpt_N when a checkpoint's epoch is unknown).
CHECKPOINT_COLUMN = re.compile(r"^self_influence_(epoch_\d+|ckpt_\d+)$")
#: computed for every version from its training factors and predictions
TRACIN_RANKINGS = (
    "self_influence",
    "self_influence_first",
    "self_influence_last",
    "self_influence_normalized",
    "error_self_influence",
    "loss",
    "combined",
    "error_combined",
)
#: self-influence under the curvature (K-FAC of the traced layers; the final layer's exact
#: Gauss-Newton where it is traced), from the training factors
CURVATURE_RANKINGS = ("kfac_self_influence", "gn_self_influence")
#: from the training trajectory (model/trajectory.parquet, :mod:`tracinflow.analysis.trajectory`);
#: ``aum_combined`` is the one combination with it, fixed before any study ran: the rank average
#: of the whole run's margins and the best model's loss (what the network made of the image early,
#: and at the end)
TRAJECTORY_RANKINGS = ("aum", "loss_sum", "forgetting", "aum_combined")
#: computed from the TracIn scores of the training images on the validation images
VALIDATION_RANKINGS = ("val_harm", "val_opponent")
#: confident learning: cleanlab on out-of-fold predicted probabilities
CLEANLAB_RANKINGS = ("cleanlab", "cleanlab_kfold")
#: the choices of reports.ranking (and of clean.ranking)
RANKINGS = (
    TRACIN_RANKINGS
    + CURVATURE_RANKINGS
    + TRAJECTORY_RANKINGS
    + VALIDATION_RANKINGS
    + CLEANLAB_RANKINGS
)
RANKING_MEANINGS = {
    "self_influence": "TracIn self-influence summed over checkpoints, largest first",
    "self_influence_first": "TracIn self-influence at the first checkpoint, largest first",
    "self_influence_last": "TracIn self-influence at the last checkpoint, largest first",
    "self_influence_normalized": "self-influence with each checkpoint's term divided by its mean, "
    "summed",
    "error_self_influence": "error-signal-only self-influence |e|^2 summed over checkpoints",
    "kfac_self_influence": "self-influence under the K-FAC curvature of the traced layers, "
    "summed over checkpoints, largest first",
    "gn_self_influence": "self-influence under the final layer's exact Gauss-Newton curvature, "
    "summed over checkpoints, largest first",
    "loss": "training loss at the best checkpoint, largest first",
    "aum": "area under the margin: the given label's logit margin averaged over every training "
    "epoch of both stages, lowest first",
    "loss_sum": "training loss summed over every training epoch of both stages, largest first",
    "forgetting": "forgetting events over the training epochs (correct, then wrong); never "
    "learned counts as forgotten every epoch",
    "aum_combined": "mean percentile rank of the area under the margin and the loss",
    "combined": "mean percentile rank of self-influence and loss, largest first",
    "error_combined": "mean percentile rank of error-signal self-influence and loss",
    "val_harm": "minus the TracIn influence on the validation loss, summed over val images "
    "(the images whose training raised it most)",
    "val_opponent": "how strongly an image opposes mispredicted val images whose wrong "
    "prediction is its own label",
    "cleanlab": "cleanlab's label quality (self-confidence) of out-of-fold probabilities from a "
    "logistic regression on the frozen pretrained features, lowest first",
    "cleanlab_kfold": "cleanlab's label quality of out-of-fold probabilities from k-fold "
    "training of the model, lowest first",
    "random": "uniform random scores (the floor)",
    "oracle": "the planted flips themselves (the ceiling; cleaning control only)",
}


def checkpoint_columns(self_influence: pd.DataFrame) -> list[str]:
    """The per-checkpoint columns of self_influence.parquet, in checkpoint order."""
    return sorted(c for c in self_influence.columns if CHECKPOINT_COLUMN.match(c))


def percentile_rank_mean(*scores: np.ndarray) -> np.ndarray:
    """The mean of the ascending percentile ranks of each score array, ``sum r / (m N)`` (ties
    share their average rank), in (0, 1]: no quantity's scale matters."""
    # Rank sums are whole or half numbers, so equal sums stay exactly equal before dividing and the
    # tie-break by train idx is not decided by rounding.
    rank_sum = sum(pd.Series(s).rank(method="average").to_numpy() for s in scores)
    return rank_sum / (len(scores) * len(scores[0]))


def random_scores(n: int, seed: int) -> np.ndarray:
    """``n`` uniform scores in [0, 1) from ``np.random.default_rng(seed)``: the random floor."""
    return np.random.default_rng(seed).random(int(n))


def _aligned(frame: pd.DataFrame, key: str, column: str, idx: np.ndarray, what: str):
    if not frame[key].is_unique:
        raise ValueError(f"{what}: a {key} appears more than once")
    return frame[column].to_numpy(np.float64)[row_positions(frame[key], idx, what)]


def _tracin_columns(idx, self_influence, train_pred, error_self_influence) -> dict:
    total = _aligned(self_influence, "train_idx", "self_influence", idx, "self_influence")
    loss = _aligned(train_pred, "idx", "loss", idx, "the train predictions")
    columns = {"self_influence": total}
    per_checkpoint = checkpoint_columns(self_influence)
    per = {
        c: _aligned(self_influence, "train_idx", c, idx, "self_influence") for c in per_checkpoint
    }
    columns |= per
    if per:
        columns["self_influence_first"] = per[per_checkpoint[0]]
        columns["self_influence_last"] = per[per_checkpoint[-1]]
        # each checkpoint weighs the same, whatever its learning rate and loss scale
        columns["self_influence_normalized"] = sum(
            v / v.mean() if v.mean() > 0 else v for v in per.values()
        )
    if error_self_influence is not None:
        what = "error self-influence"
        error = _aligned(error_self_influence, "train_idx", "self_influence", idx, what)
        columns["error_self_influence"] = error
    columns["loss"] = loss
    columns["combined"] = percentile_rank_mean(total, loss)
    if error_self_influence is not None:
        columns["error_combined"] = percentile_rank_mean(columns["error_self_influence"], loss)
    return columns


def suspicion_table(
    train_idx,
    self_influence: pd.DataFrame,
    train_pred: pd.DataFrame,
    error_self_influence: pd.DataFrame | None = None,
    *,
    validation: pd.DataFrame | None = None,
    curvature: pd.DataFrame | None = None,
    trajectory: pd.DataFrame | list[pd.DataFrame] | None = None,
    cleanlab: dict[str, pd.DataFrame] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Every ranking's suspicion score of each ``train_idx`` (higher = more suspect):

    - ``self_influence`` (TracIn self-influence summed over checkpoints) and each checkpoint's term
      (``self_influence_epoch_EEE``); ``self_influence_first`` / ``_last`` (the first / last
      checkpoint's term); ``self_influence_normalized`` (each checkpoint's term divided by its mean
      over the images, summed); these four only when ``self_influence`` has per-checkpoint columns;
    - with ``error_self_influence``: ``sum lr |e|^2``, the error signal without the activations;
    - ``loss`` (the per-sample training loss at the best checkpoint, from ``train_pred``);
    - ``combined`` / ``error_combined``: :func:`percentile_rank_mean` of (self-influence, loss) /
      (error self-influence, loss);
    - with ``curvature`` (``train_idx`` and the :data:`CURVATURE_RANKINGS` it has, from
      :func:`tracinflow.stages.influence.curvature_self_influence_frame`): those;
    - with ``trajectory`` (the trainer's per-epoch table, ``model/trajectory.parquet``, or a list
      of them, the version's own and its other runs'):
      :func:`tracinflow.analysis.trajectory.trajectory_signals` (``aum``, ``loss_sum``,
      ``forgetting``, each the mean over the runs) and ``aum_combined``,
      :func:`percentile_rank_mean` of (``aum``, ``loss``);
    - with ``validation`` (``train_idx, val_harm, val_opponent``, from
      :func:`tracinflow.influence.validation.validation_signals`): those two;
    - with ``cleanlab`` (``{ranking: frame of train_idx, label_quality, label_issue}``, from
      :func:`tracinflow.analysis.confident_learning.label_quality`): ``1 - label_quality`` as the
      score, and ``<ranking>_issue`` (cleanlab's ``find_label_issues`` verdict);
    - ``random``: :func:`random_scores` with ``seed``.

    One image missing from a table is an error, never dropped.
    """
    idx = np.asarray(train_idx, dtype=np.int64)
    columns = {"train_idx": idx}
    columns |= _tracin_columns(idx, self_influence, train_pred, error_self_influence)
    for name in CURVATURE_RANKINGS:
        if curvature is not None and name in curvature:
            columns[name] = _aligned(curvature, "train_idx", name, idx, "curvature self-influence")
    if trajectory is not None:
        columns |= trajectory_signals(trajectory, idx)
        columns["aum_combined"] = percentile_rank_mean(columns["aum"], columns["loss"])
    if validation is not None:
        for name in VALIDATION_RANKINGS:
            columns[name] = _aligned(validation, "train_idx", name, idx, "validation influence")
    for name, frame in (cleanlab or {}).items():
        if name not in CLEANLAB_RANKINGS:
            raise ValueError(f"unknown cleanlab ranking {name!r}; one of {CLEANLAB_RANKINGS}")
        what = f"the {name} label quality"
        columns[name] = 1.0 - _aligned(frame, "train_idx", "label_quality", idx, what)
        issue = frame["label_issue"].to_numpy(bool)[row_positions(frame["train_idx"], idx, what)]
        columns[f"{name}_issue"] = issue
    columns["random"] = random_scores(len(idx), seed)
    return pd.DataFrame(columns)


def ranking_columns(table: pd.DataFrame) -> list[str]:
    """The ranking columns of a suspicion table, in the table's order (not idx, not the flags)."""
    return [c for c in table.columns if c != "train_idx" and not c.endswith("_issue")]


def suspicion_scores(ranking: str, train_idx, table: pd.DataFrame) -> np.ndarray:
    """The scores of ``train_idx`` under ``ranking`` from a :func:`suspicion_table`; a ranking the
    table lacks is an error that says what it needs."""
    if ranking not in RANKINGS and ranking != "random":
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if ranking not in table.columns:
        need = RANKING_NEEDS.get(ranking, "its inputs")
        raise ValueError(
            f"ranking {ranking} is not in this version's suspicion scores: it needs {need}"
        )
    idx = np.asarray(train_idx, dtype=np.int64)
    return _aligned(table, "train_idx", ranking, idx, "the suspicion scores")
