"""Confident learning, as its users run it: out-of-fold predicted probabilities of every training
image, then cleanlab's ``find_label_issues`` and ``get_label_quality_scores`` on them.

The out-of-fold probabilities come from one of two places: a logistic regression cross-validated on
the frozen pretrained backbone's features (:func:`logistic_out_of_fold`, cleanlab's documented
route for embeddings), or k-fold training of the project's own model (one training job per fold of
:func:`fold_assignment`, each predicting only the fold it never saw).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _check_folds(labels: np.ndarray, folds: int) -> None:
    if int(folds) < 2:
        raise ValueError(f"out-of-fold probabilities need at least 2 folds, got {folds}")
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min()) if len(counts) else 0
    if smallest < folds:
        raise ValueError(
            f"a class has {smallest} training images, fewer than the {folds} folds: every fold "
            f"needs each class; lower the folds or add images"
        )


def fold_assignment(labels, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each row: stratified by ``labels`` (each class spread evenly over
    the folds), shuffled with ``seed``; the same arguments give the same folds."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    _check_folds(labels, folds)
    fold = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=int(seed))
    for f, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        fold[held_out] = f
    return fold


def logistic_out_of_fold(
    features, labels, folds: int, seed: int, num_classes: int | None = None, workers: int = 1
) -> np.ndarray:
    """Out-of-fold class probabilities (N, K) of a standardised multinomial logistic regression on
    ``features``: row ``i``'s probabilities come from the model fitted on the other folds of
    :func:`fold_assignment`, never on row ``i``.

    Each fit runs its BLAS on one thread: its products are thin (N x d times d x K), which one
    thread does faster than several, and the optimizer's path (so the probabilities' last
    digits) would otherwise depend on how many cores the machine has. ``workers`` folds are
    fitted at once, on threads of their own; the result is the same for any ``workers``."""
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(num_classes or labels.max() + 1)
    fold = fold_assignment(labels, folds, seed)

    def fitted(f: int):
        held_out = fold == f
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        model.fit(features[~held_out], labels[~held_out])
        return held_out, model.classes_, model.predict_proba(features[held_out])

    probs = np.zeros((len(labels), num_classes))
    with threadpool_limits(limits=1), ThreadPoolExecutor(max(1, int(workers))) as pool:
        for held_out, classes, fold_probs in pool.map(fitted, range(int(folds))):
            probs[np.ix_(held_out, classes)] = fold_probs
    return probs


def label_quality(train_idx, labels, pred_probs) -> pd.DataFrame:
    """``train_idx, label_quality, label_issue`` from cleanlab: the quality score of each given
    label (``cleanlab.rank.get_label_quality_scores``, self-confidence: low = suspect) and whether
    ``cleanlab.filter.find_label_issues`` (its default, prune by noise rate) flags it."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    # cleanlab wants rows that sum to 1 exactly enough
    pred_probs = pred_probs / pred_probs.sum(axis=1, keepdims=True)
    return pd.DataFrame(
        {
            "train_idx": np.asarray(train_idx, dtype=np.int64),
            "label_quality": get_label_quality_scores(labels, pred_probs),
            # one process: the job keeps to its threads
            "label_issue": find_label_issues(labels, pred_probs, n_jobs=1),
        }
    )
