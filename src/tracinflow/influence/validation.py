"""Suspicion signals from the TracIn scores of the training images on the validation images.

``score[v, i] = sum_ckpt lr * g(z_v) . g(z_i)`` (the same exact scores as the top-k, from
:func:`~tracinflow.influence.kernel.score_block`): positive when a step on training image ``i``
lowers the loss of validation image ``v``. Two signals per training image, higher = more suspect:

- ``val_harm = -sum_v score[v, i]``: minus its influence on the whole validation loss, the classic
  "harmful training sample" score (a mislabeled image pulls the images like it towards its wrong
  label, raising their loss);
- ``val_opponent = sum_v max(0, -score[v, i])`` over the mispredicted validation images ``v``
  whose wrong prediction is image ``i``'s training label: how strongly it opposes the mistakes it
  would explain (a wrongly labelled image of class ``a`` labelled ``b`` opposes the ``a`` images
  the model calls ``b``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from tracinflow.influence.inputs import Checkpoints, checkpoint_list
from tracinflow.influence.kernel import score_block


def validation_signals(
    val: Checkpoints,
    train: Checkpoints,
    val_pred,
    train_labels,
    lrs: Sequence[float] | None = None,
    *,
    layers: Sequence[str] | None = None,
    val_rows: int = 512,
    log=None,
) -> pd.DataFrame:
    """``train_idx, val_harm, val_opponent`` (module docstring) for every training row, in float64.

    ``val`` and ``train`` are one :class:`~tracinflow.influence.factors.Factors` per checkpoint
    (same order); ``val_pred`` the model's predicted class of each validation row, ``train_labels``
    the training label of each training row (row order of the factors). The validation rows are
    scored ``val_rows`` at a time, so memory stays at ``val_rows x n_train`` scores.
    """
    val, train = checkpoint_list(val), checkpoint_list(train)
    val_pred = np.asarray(val_pred, dtype=np.int64)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    n_val, n_train = len(val[0]), len(train[0])
    if val_pred.shape != (n_val,) or train_labels.shape != (n_train,):
        raise ValueError(
            f"val_pred {val_pred.shape} and train_labels {train_labels.shape} must match the "
            f"{n_val} val and {n_train} train rows"
        )
    wrong = val_pred != np.asarray(val[0].labels, dtype=np.int64)
    total = np.zeros(n_train)
    opposed = np.zeros(n_train)
    for start in range(0, n_val, val_rows):
        rows = slice(start, min(start + val_rows, n_val))
        scores = score_block([f.rows(rows) for f in val], train, lrs, layers=layers)
        scores = scores.astype(np.float64)
        total += scores.sum(axis=0)
        mistakes = np.flatnonzero(wrong[rows])
        if len(mistakes):
            explains = val_pred[rows][mistakes][:, None] == train_labels[None, :]
            opposed += (np.maximum(-scores[mistakes], 0.0) * explains).sum(axis=0)
        if log is not None:
            log(f"validation influence: {rows.stop} of {n_val} val images scored")
    return pd.DataFrame(
        {
            "train_idx": np.asarray(train[0].idx, dtype=np.int64),
            "val_harm": -total,
            "val_opponent": opposed,
        }
    )
