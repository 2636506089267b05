"""Reports over one version's influence results: which training images explain the mistakes.

Pure functions on the workflow's tables (manifest, predictions, top-k influences, self-influence)
build the report tables; the report_tables stage reads and writes them. Influence signs follow
:mod:`tracinflow.influence`: positive = proponent (helped the test loss go down), negative =
opponent. Everything is vectorised over the top-k table, which holds up to
``2 * k`` rows per test image (over a million for 6,000 test images at k = 100; fewer where a test
image has fewer than ``k`` scores of a sign: proponents are positive, opponents negative).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow._util.tables import descending_rank, row_positions
from tracinflow.analysis.rankings import RANKINGS, suspicion_scores

KINDS = ("proponent", "opponent")
CROSS_COLUMNS = [
    "test_idx",
    "test_true",
    "test_pred",
    "train_idx",
    "train_true",
    "train_pred",
    "influence",
    "rank",
    "kind",
    "same_error",
]
INSPECTION_COLUMNS = [
    "rank",
    "train_idx",
    "ranking",
    "suspicion",
    "self_influence",
    "self_influence_rank",
    "loss",
    "loss_rank",
    "true_label",
    "predicted_label",
    "confidence",
    "opponent_count",
    "proponent_count",
    "same_error_count",
    "image_path",
]
INFLUENTIAL_COLUMNS = [
    "train_idx",
    "true_label",
    "predicted_label",
    "image_path",
    "appearances",
    "proponent_count",
    "opponent_count",
    "influence_sum",
    "influence_mean",
    "proponent_sum",
    "opponent_sum",
]

NO_MISPREDICTIONS = "no mispredicted test images: nothing to explain"


# --------------------------------------------------------------------------------------------------
# lookups


def _kind_codes(topk: pd.DataFrame) -> np.ndarray:
    """0 for proponent rows, 1 for opponent rows; any other kind is an error."""
    kind = topk["kind"].astype(str).to_numpy()
    proponent, opponent = kind == "proponent", kind == "opponent"
    if not (proponent | opponent).all():
        raise ValueError(f"topk kind must be one of {KINDS}, got {sorted(set(kind) - set(KINDS))}")
    return opponent.astype(np.int64)


def _names(class_names) -> np.ndarray:
    return np.asarray([str(c) for c in class_names], dtype=object)


# --------------------------------------------------------------------------------------------------
# tables


def misprediction_cross_analysis(
    topk: pd.DataFrame, test_pred: pd.DataFrame, train_pred: pd.DataFrame, class_names
) -> pd.DataFrame:
    """The top-k proponents and opponents of every mispredicted test image, with both predictions.

    One row per top-k entry of a test image whose ``pred != label``: ``test_idx, test_true,
    test_pred, train_idx, train_true, train_pred, influence, rank, kind, same_error``; true/pred
    columns are class names. ``same_error`` is True when the training image is itself mispredicted
    into the same wrong class as the test image (compared by label). Rows are ordered by test_idx,
    kind (proponents first), rank; no mispredictions give an empty table with these columns.
    """
    names = _names(class_names)
    kind_code = _kind_codes(topk)
    test_rows = row_positions(test_pred["idx"], topk["test_idx"], "the test predictions")
    test_label = test_pred["label"].to_numpy(np.int64)[test_rows]
    test_guess = test_pred["pred"].to_numpy(np.int64)[test_rows]
    keep = np.flatnonzero(test_label != test_guess)
    train_idx = topk["train_idx"].to_numpy(np.int64)[keep]
    train_rows = row_positions(train_pred["idx"], train_idx, "the train predictions")
    train_label = train_pred["label"].to_numpy(np.int64)[train_rows]
    train_guess = train_pred["pred"].to_numpy(np.int64)[train_rows]
    test_label, test_guess = test_label[keep], test_guess[keep]
    test_idx = topk["test_idx"].to_numpy(np.int64)[keep]
    rank = topk["rank"].to_numpy(np.int64)[keep]
    kind_code = kind_code[keep]
    order = np.lexsort((rank, kind_code, test_idx))
    return pd.DataFrame(
        {
            "test_idx": test_idx[order],
            "test_true": names[test_label[order]],
            "test_pred": names[test_guess[order]],
            "train_idx": train_idx[order],
            "train_true": names[train_label[order]],
            "train_pred": names[train_guess[order]],
            "influence": topk["influence"].to_numpy()[keep][order],
            "rank": rank[order],
            "kind": np.asarray(KINDS, dtype=object)[kind_code[order]],
            "same_error": ((train_guess == test_guess) & (train_guess != train_label))[order],
        },
        columns=CROSS_COLUMNS,
    )


def same_error_rates(cross: pd.DataFrame) -> dict[str, float]:
    """Fraction of ``same_error`` rows among the proponents and among the opponents (nan if none)."""
    rates = {}
    for kind in KINDS:
        rows = cross.loc[cross["kind"] == kind, "same_error"]
        rates[kind] = float(rows.astype(bool).mean()) if len(rows) else float("nan")
    return rates


def _appearance_counts(cross: pd.DataFrame, train_idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per training image: rows as opponent, as proponent, and rows with same_error, in ``cross``."""
    rows = row_positions(train_idx, cross["train_idx"], "the training images")
    opponent = (cross["kind"] == "opponent").to_numpy()
    same_error = cross["same_error"].to_numpy(bool)
    n = len(train_idx)
    return {
        "opponent_count": np.bincount(rows[opponent], minlength=n),
        "proponent_count": np.bincount(rows[~opponent], minlength=n),
        "same_error_count": np.bincount(rows[same_error], minlength=n),
    }


def mislabeled_inspection(
    suspicion: pd.DataFrame,
    train_pred: pd.DataFrame,
    cross: pd.DataFrame,
    manifest: pd.DataFrame,
    class_names,
    ranking: str = "self_influence",
) -> pd.DataFrame:
    """Every training image, most suspicious first: the candidates to check for a wrong label.

    ``suspicion`` is the version's suspicion table
    (:func:`~tracinflow.analysis.rankings.suspicion_table`); ``ranking`` picks its score. The
    training images are the rows of ``train_pred`` and ``suspicion`` (the images the version
    trained on, with the labels it trained with; the manifest's train split minus any dropped by
    cleaning); one missing from either table, or from the manifest, is an error, never dropped.
    Ties break by the lower train idx.
    Columns: ``rank, train_idx, ranking, suspicion, self_influence, self_influence_rank, loss,
    loss_rank`` (ranks: 1 = largest), ``true_label`` (the training label), ``predicted_label,
    confidence``, the number of times the image is an opponent / a proponent of a mispredicted test
    image in ``cross`` and how many of those rows have ``same_error``, and ``image_path`` (the
    manifest path).
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    train_idx = np.unique(
        np.concatenate(
            [train_pred["idx"].to_numpy(np.int64), suspicion["train_idx"].to_numpy(np.int64)]
        )
    )
    suspicion_score = suspicion_scores(ranking, train_idx, suspicion)
    scores = suspicion_scores("self_influence", train_idx, suspicion)
    pred_rows = row_positions(train_pred["idx"], train_idx, "the train predictions")
    loss = train_pred["loss"].to_numpy(np.float64)[pred_rows]
    paths = manifest["path"].to_numpy()[row_positions(manifest["idx"], train_idx, "the manifest")]
    names = _names(class_names)
    counts = _appearance_counts(cross, train_idx)
    frame = pd.DataFrame(
        {
            "rank": descending_rank(suspicion_score, train_idx),
            "train_idx": train_idx,
            "ranking": ranking,
            "suspicion": suspicion_score,
            "self_influence": scores,
            "self_influence_rank": descending_rank(scores, train_idx),
            "loss": loss,
            "loss_rank": descending_rank(loss, train_idx),
            "true_label": names[train_pred["label"].to_numpy(np.int64)[pred_rows]],
            "predicted_label": names[train_pred["pred"].to_numpy(np.int64)[pred_rows]],
            "confidence": train_pred["confidence"].to_numpy(np.float64)[pred_rows],
            **counts,
            "image_path": paths,
        },
        columns=INSPECTION_COLUMNS,
    )
    return frame.sort_values("rank", kind="stable").reset_index(drop=True)


def influential_samples(
    topk: pd.DataFrame, train_pred: pd.DataFrame, manifest: pd.DataFrame, class_names
) -> pd.DataFrame:
    """Every training image in the top-k table with its influence summed over all its appearances.

    Columns: ``train_idx, true_label, predicted_label, image_path, appearances`` (top-k rows it is
    in), ``proponent_count, opponent_count, influence_sum, influence_mean`` (over all its rows),
    ``proponent_sum, opponent_sum`` (influence summed over its proponent / opponent rows). Ordered
    by ``influence_sum`` descending, ties by lower train idx: the head holds the training images
    that helped the test predictions most, the tail those that hurt them most.
    """
    kind_code = _kind_codes(topk)
    train_idx, rows = np.unique(topk["train_idx"].to_numpy(np.int64), return_inverse=True)
    influence = topk["influence"].to_numpy(np.float64)
    n = len(train_idx)
    opponent = kind_code == 1
    appearances = np.bincount(rows, minlength=n)
    influence_sum = np.bincount(rows, weights=influence, minlength=n)
    pred_rows = row_positions(train_pred["idx"], train_idx, "the train predictions")
    names = _names(class_names)
    frame = pd.DataFrame(
        {
            "train_idx": train_idx,
            "true_label": names[train_pred["label"].to_numpy(np.int64)[pred_rows]],
            "predicted_label": names[train_pred["pred"].to_numpy(np.int64)[pred_rows]],
            "image_path": manifest["path"].to_numpy()[
                row_positions(manifest["idx"], train_idx, "the manifest")
            ],
            "appearances": appearances,
            "proponent_count": np.bincount(rows[~opponent], minlength=n),
            "opponent_count": np.bincount(rows[opponent], minlength=n),
            "influence_sum": influence_sum,
            "influence_mean": influence_sum / np.maximum(appearances, 1),
            "proponent_sum": np.bincount(
                rows[~opponent], weights=influence[~opponent], minlength=n
            ),
            "opponent_sum": np.bincount(rows[opponent], weights=influence[opponent], minlength=n),
        },
        columns=INFLUENTIAL_COLUMNS,
    )
    order = np.lexsort((train_idx, -influence_sum))
    return frame.iloc[order].reset_index(drop=True)


def class_influence(
    topk: pd.DataFrame, test_pred: pd.DataFrame, train_pred: pd.DataFrame, class_names
) -> pd.DataFrame:
    """Influence summed over the top-k entries by class pair, as a K x K wide table.

    Row = the training image's true class (first column ``train_class``), column = the test image's
    true class; every class appears in both, with 0 where no top-k entry falls.
    """
    names = _names(class_names)
    k = len(names)
    train_label = train_pred["label"].to_numpy(np.int64)[
        row_positions(train_pred["idx"], topk["train_idx"], "the train predictions")
    ]
    test_label = test_pred["label"].to_numpy(np.int64)[
        row_positions(test_pred["idx"], topk["test_idx"], "the test predictions")
    ]
    sums = np.bincount(
        train_label * k + test_label,
        weights=topk["influence"].to_numpy(np.float64),
        minlength=k * k,
    ).reshape(k, k)
    frame = pd.DataFrame(sums, columns=list(names))
    frame.insert(0, "train_class", names)
    return frame


def readable_topk(
    topk: pd.DataFrame,
    manifest: pd.DataFrame,
    test_pred: pd.DataFrame,
    train_pred: pd.DataFrame,
    class_names,
) -> pd.DataFrame:
    """The top-k table with both images' paths, true classes and predicted classes (names), for a
    person reading the CSV: ``test_path, test_true, test_pred`` and the same for ``train``."""
    by_idx = manifest.set_index("idx")
    readable = topk.copy()
    for side, predictions in (("test", test_pred), ("train", train_pred)):
        pred = predictions.set_index("idx")["pred"]
        key = readable[f"{side}_idx"]
        readable[f"{side}_path"] = by_idx.loc[key, "path"].to_numpy()
        readable[f"{side}_true"] = [class_names[i] for i in by_idx.loc[key, "label"]]
        readable[f"{side}_pred"] = [class_names[i] for i in pred.loc[key]]
    return readable
