"""Mislabel signals from the training trajectory: how each training image's loss and label margin
moved over every epoch of both stages (``model/trajectory.parquet``, recorded by the trainer from
the forward each optimizer step runs anyway).

- **Area under the margin** (Pleiss et al., NeurIPS 2020): the mean over the epochs of the margin
  ``z_y - max_{k != y} z_k`` of the given label. A mislabeled image's margin stays low or negative
  while the network learns the true class from the other images of it; a clean hard image's
  margin rises. Lower is more suspect.
- **Summed loss**: the training loss summed over the epochs; it sees the early epochs, before the
  network memorises a wrong label, which the final model's loss does not.
- **Forgetting events** (Toneva et al., ICLR 2019): how often an image goes from classified
  correctly to wrongly between consecutive epochs; an image never classified correctly counts as
  forgotten in every epoch (more than any learned image can be), as Toneva et al. treat it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow._util.tables import row_positions


def trajectory_matrices(frame: pd.DataFrame, train_idx) -> dict[str, np.ndarray]:
    """``loss``, ``margin`` (float64) and ``correct`` (bool) as (images, epochs) matrices, rows in
    the order of ``train_idx``, columns in training order (stage, then epoch). Every image must
    have a value in every epoch: a missing or repeated one is an error, never filled in."""
    idx = np.asarray(train_idx, dtype=np.int64)
    if frame.empty:
        raise ValueError("the training trajectory is empty: the version trained no epoch")
    epochs = frame[["stage", "epoch"]].drop_duplicates().sort_values(["stage", "epoch"])
    keys = ["train_idx", "stage", "epoch"]
    if frame.duplicated(keys).any() or len(frame) != frame["train_idx"].nunique() * len(epochs):
        raise ValueError("the training trajectory must hold every training image once per epoch")
    order = list(epochs.itertuples(index=False, name=None))
    wide = frame.pivot(
        index="train_idx", columns=["stage", "epoch"], values=["loss", "margin", "correct"]
    )
    rows = row_positions(wide.index.to_series(), idx, "the training trajectory")
    return {
        key: wide[key][order].to_numpy()[rows].astype(dtype)
        for key, dtype in (("loss", np.float64), ("margin", np.float64), ("correct", bool))
    }


def area_under_margin(margin: np.ndarray) -> np.ndarray:
    """The mean margin of each image (row) over the epochs (columns)."""
    return np.asarray(margin, dtype=np.float64).mean(axis=1)


def summed_loss(loss: np.ndarray) -> np.ndarray:
    """Each image's training loss summed over the epochs."""
    return np.asarray(loss, dtype=np.float64).sum(axis=1)


def forgetting_events(correct: np.ndarray) -> np.ndarray:
    """Per image, the count of epochs classified wrongly right after one classified correctly; an
    image never classified correctly gets the number of epochs (above any learned image's count,
    which is at most half of them)."""
    correct = np.asarray(correct, dtype=bool)
    forgotten = (correct[:, :-1] & ~correct[:, 1:]).sum(axis=1).astype(np.float64)
    never_learned = ~correct.any(axis=1)
    forgotten[never_learned] = correct.shape[1]
    return forgotten


def trajectory_signals(frames, train_idx) -> dict[str, np.ndarray]:
    """The suspicion scores (higher = more suspect) of ``train_idx`` from a trajectory table, or
    from several (independent trainings of the same labels, rankings.trajectory_runs; each score
    the mean of the runs' scores): ``aum`` (minus the area under the margin), ``loss_sum`` and
    ``forgetting``."""
    runs = [frames] if isinstance(frames, pd.DataFrame) else list(frames)
    if not runs:
        raise ValueError("no training trajectory given")
    signals = {"aum": [], "loss_sum": [], "forgetting": []}
    for frame in runs:
        m = trajectory_matrices(frame, train_idx)
        signals["aum"].append(-area_under_margin(m["margin"]))
        signals["loss_sum"].append(summed_loss(m["loss"]))
        signals["forgetting"].append(forgetting_events(m["correct"]))
    # one run's mean is that run's scores to the bit
    return {name: np.mean(values, axis=0) for name, values in signals.items()}
