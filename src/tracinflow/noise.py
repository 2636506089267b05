"""Planted label noise, dataset cleaning, and how well a ranking finds the planted flips.

A version's training set (``train_set.parquet``) holds one row per train-split manifest row:
``idx, label, original_label, noisy, dropped``. ``label`` is what training uses, ``original_label``
the manifest's label, ``noisy`` marks a label that differs from the manifest's, ``dropped`` a row
that cleaning excluded from training. Val and test rows never appear, so their labels never change.

:func:`flip_labels` and :func:`build_train_set` plant the noise, :func:`apply_cleaning` drops or
relabels a source version's top suspects, and the detection functions score suspicion rankings
(higher score = more suspect) against the planted flips; :func:`write_noise_detection` does the
last for one version's files.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from tracinflow.io import atomic_path, write_csv
from tracinflow.reports import checkpoint_columns, row_positions, suspicion_scores

TRAIN_SET_COLUMNS = ["idx", "label", "original_label", "noisy", "dropped"]
NOISE_MODES = ("uniform", "confusing")
CLEANING_ACTIONS = ("drop", "relabel")
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
# Per-checkpoint self-influence columns, as tracinflow.influence.self_influence names them.


def _round_half_up(value: float) -> int:
    # Python's round() rounds halves to even (round(2.5) == 2); counts here round halves up.
    return math.floor(value + 0.5)


# --------------------------------------------------------------------------------------------------
# planting noise


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
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2 to flip a label, got {num_classes}")
    num_classes = int(num_classes)
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must be in [0, 1), got {rate}")
    if mode not in NOISE_MODES:
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}"
        )
    n = len(labels)
    probs = None
    if mode == "confusing":
        if reference_probs is None:
            raise ValueError("noise mode 'confusing' needs reference_probs (N, K) from a model")
        probs = _as_probs(reference_probs)
        if probs.shape != (n, num_classes):
            raise ValueError(
                f"reference_probs must have shape ({n}, {num_classes}) (labels x classes), "
                f"got {probs.shape}"
            )

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
    idx, labels = idx[order], labels[order]
    if probs is not None:
        probs = probs[order]

    noisy_labels = labels.copy()
    if noise is not None:
        unknown = set(noise) - {"rate", "seed", "mode"}
        if unknown:
            raise ValueError(f"noise: unknown keys {sorted(unknown)} (known: rate, seed, mode)")
        if "rate" not in noise:
            raise ValueError("noise: 'rate' is required")
        if float(noise["rate"]) > 0:
            if num_classes is None:
                if probs is not None:
                    num_classes = probs.shape[1]
                else:
                    num_classes = int(labels.max()) + 1 if len(labels) else 0
            noisy_labels = flip_labels(
                labels,
                num_classes,
                float(noise["rate"]),
                int(noise.get("seed", 0)),
                mode=noise.get("mode", "uniform"),
                reference_probs=probs,
            )
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


# --------------------------------------------------------------------------------------------------
# cleaning


def _check_train_set(train_set: pd.DataFrame, what: str = "train set") -> None:
    missing = set(TRAIN_SET_COLUMNS) - set(train_set.columns)
    if missing:
        raise ValueError(f"{what} lacks columns {sorted(missing)} (needs {TRAIN_SET_COLUMNS})")
    if not train_set["idx"].is_unique:
        raise ValueError(f"{what}: an idx appears more than once")


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
    _check_train_set(train_set)
    if action not in CLEANING_ACTIONS:
        raise ValueError(f"cleaning action must be one of {CLEANING_ACTIONS}, got {action!r}")
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction or count")
    missing = {"train_idx", "rank"} - set(suspects.columns)
    if missing:
        raise ValueError(f"suspects need columns train_idx and rank, missing {sorted(missing)}")

    out = train_set.copy()
    idx = out["idx"].to_numpy(np.int64)
    dropped = out["dropped"].to_numpy(bool)
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise ValueError(f"cleaning fraction must be in [0, 1], got {fraction}")
        n_act = _round_half_up(fraction * int((~dropped).sum()))
        if fraction > 0:
            n_act = max(n_act, 1)
    else:
        if int(count) != count or count < 0:
            raise ValueError(f"cleaning count must be a non-negative integer, got {count}")
        n_act = int(count)

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
    positions, acted = positions[:n_act], suspect_idx[:n_act]

    if action == "drop":
        dropped = dropped.copy()
        dropped[positions] = True
        out["dropped"] = dropped
    else:
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
    return out, acted


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


def random_scores(n: int, seed: int) -> np.ndarray:
    """``n`` uniform scores in [0, 1) from ``np.random.default_rng(seed)``: the random floor."""
    return np.random.default_rng(seed).random(int(n))


def plot_detection(
    curves: Mapping,
    path,
    default: str,
    title: str = "Finding the planted label flips",
) -> None:
    """Found fraction against inspected fraction, one line per ranking; written atomically as PNG.

    ``curves`` maps a name to ``(inspected, found)`` from :func:`detection_curve`. The default
    ranking is drawn thicker; a dashed diagonal shows random inspection, dotted lines 5/10/20%.
    The figure is 7 x 5 inches at 120 dpi (840 x 600 pixels).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    if default not in curves:
        raise ValueError(f"default ranking {default!r} is not one of {list(curves)}")
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="random (expected)")
    for fraction in DETECTION_FRACTIONS:
        ax.axvline(fraction, linestyle=":", color="lightgray", linewidth=1)
    for name, (x, y) in curves.items():
        is_default = name == default
        ax.plot(
            x,
            y,
            linewidth=2.8 if is_default else 1.3,
            label=f"{name} (default)" if is_default else str(name),
            zorder=3 if is_default else 2,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    ax.set_xlabel("training images inspected, most suspect first")
    ax.set_ylabel("planted flips found")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


# --------------------------------------------------------------------------------------------------
# files


def _aligned(frame: pd.DataFrame, key: str, columns, idx: np.ndarray, what: str) -> pd.DataFrame:
    """``columns`` of ``frame`` in the order of ``idx`` (matched on ``key``); missing idx error."""
    if not frame[key].is_unique:
        raise ValueError(f"{what}: a {key} appears more than once")
    positions = row_positions(frame[key], idx, what)
    return frame.iloc[positions][list(columns)].reset_index(drop=True)


def write_noise_detection(
    *,
    train_set_path,
    self_influence_path,
    train_predictions_path,
    error_self_influence_path=None,
    default: str,
    out_csv,
    out_png,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Score one version's suspicion rankings against its planted flips; write table and plot.

    Evaluated on the train set's non-dropped rows, flipped = ``noisy``. Rankings, in this order:
    ``self_influence`` (summed), one per checkpoint column (``self_influence_epoch_EEE``),
    ``error_self_influence`` (summed, when that file is given), ``loss`` (train predictions) and
    ``random`` (:func:`random_scores` with ``seed``). Every score file must cover every evaluated
    idx. Writes ``out_csv`` (:func:`detection_table`) and ``out_png`` (:func:`plot_detection`)
    atomically, logs one line per ranking and returns the table.
    """
    train_set = pd.read_parquet(train_set_path)
    _check_train_set(train_set, str(train_set_path))
    train_set = train_set.loc[~train_set["dropped"].to_numpy(bool)]
    idx = train_set["idx"].to_numpy(np.int64)
    flipped = train_set["noisy"].to_numpy(bool)

    self_inf = pd.read_parquet(self_influence_path)
    per_checkpoint = checkpoint_columns(self_inf)
    aligned = _aligned(
        self_inf,
        "train_idx",
        ["self_influence", *per_checkpoint],
        idx,
        str(self_influence_path),
    )
    rankings: dict[str, np.ndarray] = {
        column: aligned[column].to_numpy(np.float64)
        for column in ["self_influence", *per_checkpoint]
    }
    if error_self_influence_path is not None:
        error = pd.read_parquet(error_self_influence_path)
        rankings["error_self_influence"] = _aligned(
            error, "train_idx", ["self_influence"], idx, str(error_self_influence_path)
        )["self_influence"].to_numpy(np.float64)
    predictions = pd.read_parquet(train_predictions_path, columns=["idx", "loss"])
    rankings["loss"] = _aligned(predictions, "idx", ["loss"], idx, str(train_predictions_path))[
        "loss"
    ].to_numpy(np.float64)
    if per_checkpoint:
        # The configurable rankings (reports.ranking) by their own names, so the default is a row.
        rankings["self_influence_last"] = rankings[per_checkpoint[-1]]
    rankings["combined"] = suspicion_scores("combined", idx, self_inf, predictions)
    rankings["random"] = random_scores(len(idx), seed)

    table = detection_table(rankings, flipped, default)
    curves = {name: detection_curve(scores, flipped) for name, scores in rankings.items()}
    plot_detection(
        curves,
        out_png,
        default,
        title=f"Finding the planted label flips ({int(flipped.sum())} of {len(idx)} images)",
    )
    write_csv(out_csv, table)
    for row in table.itertuples(index=False):
        log(
            f"{row.ranking}{' (default)' if row.default else ''}: found "
            f"{row.found_at_5pct:.1%} / {row.found_at_10pct:.1%} / {row.found_at_20pct:.1%} "
            f"of the flips in the top 5/10/20%, ROC AUC {row.roc_auc:.3f}, "
            f"AP {row.average_precision:.3f}"
        )
    return table
