"""A version's training set: the train split with planted label noise, or another version's
training set cleaned of its top suspects (or of the images a marks file lists, data.marks).

``train_set.parquet`` holds one row per train-split manifest row: ``idx, label, original_label,
noisy, dropped``. ``label`` is what training uses, ``original_label`` the manifest's label, ``noisy``
marks a label that differs from the manifest's, ``dropped`` a row that cleaning excluded from
training. Val and test rows never appear, so their labels never change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tracinflow._util.tables import row_positions
from tracinflow.data import DataError
from tracinflow.data.split import split_rows

TRAIN_SET_COLUMNS = ["idx", "label", "original_label", "noisy", "dropped"]
NOISE_MODES = ("uniform", "confusing")
CLEANING_ACTIONS = ("drop", "relabel")


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); counts here round halves up.
    return math.floor(value + 0.5)


# --------------------------------------------------------------------------------------------------
# planting noise


def _checked_labels(labels, num_classes: int, rate: float, mode: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2 to flip a label, got {num_classes}")
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    return labels


def _checked_probs(reference_probs, n: int, num_classes: int) -> np.ndarray:
    if reference_probs is None:
        raise ValueError("noise mode 'confusing' needs reference_probs (N, K) from a model")
    probs = _as_probs(reference_probs)
    if probs.shape != (n, num_classes):
        raise ValueError(
            f"reference_probs must have shape ({n}, {num_classes}) (labels x classes), "
            f"got {probs.shape}"
        )
    return probs


def flip_labels(
    labels,
    num_classes: int,
    rate: float,
    seed: int,
    mode: str = "uniform",
    reference_probs=None,
) -> np.ndarray:
    """The labels with exactly ``round(rate * N)`` of them flipped (halves round up).

    The flipped positions are drawn uniformly without replacement from
    ``np.random.default_rng(seed)``. ``mode="uniform"`` sends each one to a uniformly drawn other
    class; ``mode="confusing"`` to the class ``reference_probs`` ((N, K), aligned with ``labels``)
    finds most likely other than the true one, ties by the lower class. Same seed, same result.
    """
    labels = _checked_labels(labels, num_classes, rate, mode)
    num_classes, n = int(num_classes), len(labels)
    probs = _checked_probs(reference_probs, n, num_classes) if mode == "confusing" else None

    rng = np.random.default_rng(seed)
    n_flip = _round_half_up(rate * n)
    positions = rng.choice(n, size=n_flip, replace=False)
    noisy = labels.copy()
    if mode == "uniform":
        # An offset in 1..K-1 lands on every other class with equal chance and never on its own.
        noisy[positions] = (labels[positions] + rng.integers(1, num_classes, size=n_flip)) % (
            num_classes
        )
    else:
        chosen = probs[positions].copy()
        chosen[np.arange(n_flip), labels[positions]] = -np.inf
        noisy[positions] = np.argmax(chosen, axis=1)  # argmax takes the first max: lower class
    return noisy


def _as_probs(reference_probs) -> np.ndarray:
    # A predictions parquet stores probs as a column of lists: stack it into a matrix.
    if isinstance(reference_probs, pd.Series) or (
        isinstance(reference_probs, np.ndarray) and reference_probs.dtype == object
    ):
        values = list(reference_probs)
        return np.stack(values).astype(np.float64) if values else np.zeros((0, 0))
    return np.asarray(reference_probs, dtype=np.float64)


def _train_rows_by_idx(train_rows: pd.DataFrame, reference_probs):
    """``(idx, labels, probs or None)`` of the train rows, sorted by idx."""
    missing = {"idx", "label"} - set(train_rows.columns)
    if missing:
        raise ValueError(f"train_rows needs columns idx and label, missing {sorted(missing)}")
    keep = np.ones(len(train_rows), dtype=bool)
    if "split" in train_rows.columns:
        keep = (train_rows["split"] == "train").to_numpy()
    idx = train_rows["idx"].to_numpy(np.int64)[keep]
    labels = train_rows["label"].to_numpy(np.int64)[keep]
    if len(np.unique(idx)) != len(idx):
        raise ValueError("train_rows: an idx appears more than once")
    probs = None
    if reference_probs is not None:
        probs = _as_probs(reference_probs)
        if probs.ndim != 2 or len(probs) != len(train_rows):
            raise ValueError(
                f"reference_probs must be (rows, classes) with one row per train_rows row "
                f"({len(train_rows)}), got shape {probs.shape}"
            )
        probs = probs[keep]
    order = np.argsort(idx, kind="stable")
    return idx[order], labels[order], None if probs is None else probs[order]


def _noisy_labels(labels, noise: Mapping | None, probs, num_classes: int | None) -> np.ndarray:
    if noise is None:
        return labels.copy()
    unknown = set(noise) - {"rate", "seed", "mode"}
    if unknown:
        raise ValueError(f"noise: unknown keys {sorted(unknown)} (known: rate, seed, mode)")
    if "rate" not in noise:
        raise ValueError("noise: 'rate' is required")
    if float(noise["rate"]) <= 0:
        return labels.copy()
    if num_classes is None:
        if probs is not None:
            num_classes = probs.shape[1]
        else:
            num_classes = int(labels.max()) + 1 if len(labels) else 0
    return flip_labels(
        labels,
        num_classes,
        float(noise["rate"]),
        int(noise.get("seed", 0)),
        mode=noise.get("mode", "uniform"),
        reference_probs=probs,
    )


def build_train_set(
    train_rows: pd.DataFrame,
    noise: Mapping | None,
    reference_probs=None,
    *,
    num_classes: int | None = None,
) -> pd.DataFrame:
    """A version's training set (``TRAIN_SET_COLUMNS``) with the planted noise, sorted by idx.

    ``train_rows`` has ``idx, label``; when it also has ``split`` (a whole manifest) only the
    ``"train"`` rows are kept. ``noise`` is ``{"rate", "seed" (0), "mode" ("uniform")}``; ``None`` or
    rate 0 plants nothing. ``reference_probs`` ((N, K), aligned with ``train_rows`` as given) is
    needed for mode ``"confusing"``. ``num_classes`` defaults to the width of ``reference_probs``,
    else the largest label + 1. Flips are drawn in idx order, so the row order given doesn't matter.
    """
    idx, labels, probs = _train_rows_by_idx(train_rows, reference_probs)
    noisy_labels = _noisy_labels(labels, noise, probs, num_classes)
    return pd.DataFrame(
        {
            "idx": idx,
            "label": noisy_labels,
            "original_label": labels,
            "noisy": noisy_labels != labels,
            "dropped": np.zeros(len(idx), dtype=bool),
        },
        columns=TRAIN_SET_COLUMNS,
    )


def reference_probabilities(train: pd.DataFrame, reference: pd.DataFrame, what: str) -> np.ndarray:
    """The reference model's class probabilities of every ``train`` row, in its order (confusing
    noise); ``reference`` is a predictions table (``idx, probs``) that must cover every row."""
    reference = reference.set_index("idx")
    missing = ~train["idx"].isin(reference.index)
    if missing.any():
        raise ValueError(
            f"{what} has no prediction for {int(missing.sum())} training "
            "images: the reference version must train on the whole train split"
        )
    return np.stack(reference.loc[train["idx"], "probs"].to_numpy())


# --------------------------------------------------------------------------------------------------
# cleaning


def check_train_set(train_set: pd.DataFrame, what: str = "train set") -> None:
    missing = set(TRAIN_SET_COLUMNS) - set(train_set.columns)
    if missing:
        raise ValueError(f"{what} lacks columns {sorted(missing)} (needs {TRAIN_SET_COLUMNS})")
    if not train_set["idx"].is_unique:
        raise ValueError(f"{what}: an idx appears more than once")


def _cleaning_count(dropped: np.ndarray, fraction: float | None, count: int | None) -> int:
    """How many rows to act on: ``count``, or ``fraction`` of the non-dropped rows rounded half up
    (at least one for a positive fraction)."""
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction or count")
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"cleaning fraction must be in [0, 1], got {fraction}")
        n_act = _round_half_up(fraction * int((~dropped).sum()))
        return max(n_act, 1) if fraction > 0 else n_act
    if int(count) != count or count < 0:
        raise ValueError(f"cleaning count must be a non-negative integer, got {count}")
    return int(count)


def _top_eligible(suspects: pd.DataFrame, idx, dropped, n_act: int, action: str):
    """``(row positions, idx)`` of the ``n_act`` best-ranked suspects not dropped yet."""
    missing = {"train_idx", "rank"} - set(suspects.columns)
    if missing:
        raise ValueError(f"suspects need columns train_idx and rank, missing {sorted(missing)}")
    suspect_idx = suspects["train_idx"].to_numpy(np.int64)
    order = np.lexsort((suspect_idx, suspects["rank"].to_numpy()))
    suspect_idx = suspect_idx[order]
    if len(np.unique(suspect_idx)) != len(suspect_idx):
        raise ValueError("suspects: a train_idx appears more than once")
    positions = row_positions(idx, suspect_idx, "the train set (suspects)")
    eligible = ~dropped[positions]
    positions, suspect_idx = positions[eligible], suspect_idx[eligible]
    if n_act > len(positions):
        raise ValueError(
            f"asked to {action} {n_act} rows but only {len(positions)} suspects are not dropped"
        )
    return positions[:n_act], suspect_idx[:n_act]


def _relabelled(out: pd.DataFrame, positions, acted, predicted) -> None:
    if predicted is None:
        raise ValueError("cleaning action 'relabel' needs the source model's predictions")
    if isinstance(predicted, pd.DataFrame):
        predicted = predicted.set_index("idx")["pred"]
    new_labels = predicted.to_numpy(np.int64)[
        row_positions(predicted.index, acted, "the predictions (relabel)")
    ]
    label = out["label"].to_numpy(np.int64).copy()
    label[positions] = new_labels
    out["label"] = label
    out["noisy"] = label != out["original_label"].to_numpy(np.int64)


def apply_cleaning(
    train_set: pd.DataFrame,
    suspects: pd.DataFrame,
    *,
    fraction: float | None = None,
    count: int | None = None,
    action: str = "drop",
    predicted: pd.Series | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The train set with its top suspects dropped or relabelled, and the idx acted on.

    ``suspects`` has ``train_idx, rank`` (rank 1 = most suspect; ties by lower train_idx); only
    suspects not already dropped count. Exactly one of ``count`` or ``fraction`` says how many: a
    fraction of the non-dropped rows, rounded half up and at least 1 when the fraction is positive.
    ``action="drop"`` sets ``dropped``; ``"relabel"`` sets ``label`` to ``predicted`` (the source
    model's predicted label by idx: a Series, or a predictions frame with ``idx, pred``) and
    recomputes ``noisy = label != original_label``. Returns ``(new train set, acted idx)``, the idx
    most suspect first; the input frame is left untouched. Fewer eligible suspects than asked for,
    or a suspect not in the train set, is an error.
    """
    check_train_set(train_set)
    if action not in CLEANING_ACTIONS:
        raise ValueError(f"cleaning action must be one of {CLEANING_ACTIONS}, got {action!r}")
    out = train_set.copy()
    idx = out["idx"].to_numpy(np.int64)
    dropped = out["dropped"].to_numpy(bool)
    n_act = _cleaning_count(dropped, fraction, count)
    positions, acted = _top_eligible(suspects, idx, dropped, n_act, action)
    _act_on(out, positions, acted, action, predicted)
    return out, acted


def _act_on(out: pd.DataFrame, positions, acted, action: str, predicted) -> None:
    """Drop or relabel the rows at ``positions`` (their idx ``acted``) of ``out``, in place."""
    if action == "drop":
        dropped = out["dropped"].to_numpy(bool).copy()
        dropped[positions] = True
        out["dropped"] = dropped
    else:
        _relabelled(out, positions, acted, predicted)


def apply_listed_cleaning(
    train_set: pd.DataFrame,
    listed,
    *,
    action: str = "drop",
    predicted: pd.Series | None = None,
) -> pd.DataFrame:
    """The train set with the images ``listed`` (idx, e.g. those a marks file marks mislabeled)
    dropped or relabelled, as :func:`apply_cleaning` acts on its top suspects. Every listed idx
    must be in the train set and not dropped yet; the input frame is left untouched."""
    check_train_set(train_set)
    if action not in CLEANING_ACTIONS:
        raise ValueError(f"cleaning action must be one of {CLEANING_ACTIONS}, got {action!r}")
    listed = np.unique(np.asarray(listed, dtype=np.int64))
    out = train_set.copy()
    positions = row_positions(out["idx"].to_numpy(np.int64), listed, "the train set (list)")
    already = out["dropped"].to_numpy(bool)[positions]
    if already.any():
        raise ValueError(
            f"cannot {action} idx {listed[already][:5].tolist()}: already dropped from the train set"
        )
    _act_on(out, positions, listed, action, predicted)
    return out


# --------------------------------------------------------------------------------------------------
# subsets (the retrains of the counterfactual evaluation)


def subset_train_set(source: pd.DataFrame, fraction: float | None, seed: int) -> pd.DataFrame:
    """The source version's training set with all but a seeded random ``fraction`` of the images it
    trains on dropped (rounded half up, at least one); ``None``: all of them (a retrain of the
    same training set). Labels, noise flags and the rows the source dropped stay as they are."""
    check_train_set(source, "the source training set")
    out = source.sort_values("idx", kind="stable").reset_index(drop=True).copy()
    if fraction is None:
        return out
    if not 0 < fraction < 1:
        raise ValueError(f"subset fraction must be in (0, 1), got {fraction}")
    used = np.flatnonzero(~out["dropped"].to_numpy(bool))
    keep = np.random.default_rng(seed).choice(
        used, size=max(1, _round_half_up(fraction * len(used))), replace=False
    )
    dropped = np.ones(len(out), dtype=bool)
    dropped[keep] = False
    out["dropped"] = dropped
    return out


def without_images(source: pd.DataFrame, removed, what: str) -> pd.DataFrame:
    """The source version's training set with the images ``removed`` (idx) dropped too; each must
    be one the source trains on (``what`` names the list in the error)."""
    check_train_set(source, "the source training set")
    out = source.sort_values("idx", kind="stable").reset_index(drop=True).copy()
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    trained = set(out.loc[~out["dropped"].to_numpy(bool), "idx"].tolist())
    strangers = [int(i) for i in removed if int(i) not in trained]
    if strangers:
        raise ValueError(
            f"{what}: idx {strangers[:5]} {'is' if len(strangers) == 1 else 'are'} not among the "
            f"images the source version trains on"
        )
    out["dropped"] = out["dropped"].to_numpy(bool) | out["idx"].isin(removed).to_numpy()
    return out


# --------------------------------------------------------------------------------------------------
# what training reads


def train_set_rows(train_set: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows a version trains on (not dropped), in train-cache order, with ``position`` (row of
    cache/train.npy), ``idx`` and ``label`` (the training label, noisy where noise was planted)."""
    used = train_set.loc[~train_set["dropped"].to_numpy(bool), ["idx", "label"]]
    cache_idx = pd.Index(split_rows(manifest, "train")["idx"].to_numpy(np.int64))
    positions = cache_idx.get_indexer(used["idx"].to_numpy(np.int64))
    if (positions < 0).any():
        missing = used["idx"].to_numpy()[positions < 0][:5].tolist()
        raise DataError(
            f"train_set.parquet lists images that are not in the manifest's train split, e.g. idx "
            f"{missing}: it was built from another manifest; rerun with -R build_train_set"
        )
    rows = used.assign(position=positions).sort_values("position", kind="stable")
    return rows[["position", "idx", "label"]].reset_index(drop=True)
