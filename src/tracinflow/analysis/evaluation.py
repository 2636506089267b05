"""Is an attribution right? The arithmetic of the counterfactual tests (docs/evaluation.md).

- **LDS** (linear datamodeling score, Park et al. 2023): models retrained on random subsets ``S_m`` of
  the training set; a method predicts test image ``t``'s margin under model ``m`` as
  ``g_t(m) = sum_{j in S_m} score(t, j)``; its LDS is the mean over test images of the Spearman
  correlation over ``m`` of ``g_t`` and the retrained margins ``f_t``. Its CI bootstraps subsets and
  test images together. The retraining-noise ceiling is the LDS of one retrain's margins as the
  prediction of another's (same subsets, another seed).
- **Removal**: the union of the top-k proponents of the mispredicted test images, removed and
  retrained; against as many images drawn at random with the same labels, as many with the same
  labels and the nearest training loss (hardness-matched), and as many by the loss ranking. Each
  retrain is compared with the same seed's retrain on the whole training set.

Pure functions of arrays and tables; the evaluation stage reads and writes the files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

LDS_COLUMNS = ["method", "lds", "ci_low", "ci_high", "n_subsets", "n_test", "default", "kind"]
#: lds.csv's columns after LDS_COLUMNS: the LDS over the reference's mistakes; the LDS on the
#: half of the test images a method is chosen on, and on the other half with its CI
LDS_DETAIL_COLUMNS = ["lds_mistakes", "n_mistakes", "lds_selection", "lds_held_out",
                      "held_out_ci_low", "held_out_ci_high"]  # fmt: skip
#: what each row of lds.csv is: a method's scores, a method's scores averaged over models that
#: differ only in their seed (evaluation.ensemble), or a control that frames them
LDS_KINDS = ("method", "ensemble", "random", "ceiling")


# --- LDS -------------------------------------------------------------------------------------------


def subset_predictions(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """``g[t, m] = sum_j scores[t, j] * masks[m, j]``: a method's predicted margins, (T, M), in
    float64. ``scores`` (T, N) the method's scores of the test images on the training images,
    ``masks`` (M, N) booleans: which training images subset ``m`` keeps."""
    scores = np.asarray(scores, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    if scores.ndim != 2 or masks.ndim != 2 or scores.shape[1] != masks.shape[1]:
        raise ValueError(f"scores {scores.shape} and masks {masks.shape}: (T, N) and (M, N)")
    return scores @ masks.T


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank."""
    # scipy.stats here, not at the top: it adds about a second to the start-up of every job of the
    # evaluation's stage, most of which (the retrains' factor extractions) never rank anything
    from scipy.stats import rankdata

    return rankdata(values, axis=-1)


def spearman_rows(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """The Spearman correlation of each row of ``predicted`` with the same row of ``actual`` (both
    (T, M)); NaN for a row where either side is constant (no order to compare)."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if predicted.shape != actual.shape:
        raise ValueError(f"predicted {predicted.shape} and actual {actual.shape} must match")
    a = _ranks(predicted)
    b = _ranks(actual)
    a -= a.mean(axis=-1, keepdims=True)
    b -= b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=-1) / denominator, np.nan)


def lds(predicted: np.ndarray, actual: np.ndarray) -> float:
    """The mean over test images (rows) of the Spearman correlation over subsets (columns); rows
    without an order (constant margins or predictions) are left out."""
    correlations = spearman_rows(predicted, actual)
    return float(np.nanmean(correlations)) if np.isfinite(correlations).any() else float("nan")


def bootstrap_lds(
    predicted: np.ndarray, actual: np.ndarray, draws: int = 1000, seed: int = 0, level=0.95
) -> tuple[float, float, float]:
    """``(lds, ci_low, ci_high)``: the percentile interval of the LDS over ``draws`` resamples of
    the subsets (columns) and the test images (rows), both with replacement: the spread from which
    subsets were retrained and which test images were sampled."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    rng = np.random.default_rng(seed)
    n_test, n_subsets = predicted.shape
    values = np.empty(draws)
    for b in range(draws):
        rows = rng.integers(0, n_test, n_test)
        cols = rng.integers(0, n_subsets, n_subsets)
        values[b] = lds(predicted[np.ix_(rows, cols)], actual[np.ix_(rows, cols)])
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return lds(predicted, actual), float(low), float(high)


def ceiling_lds(margins_by_seed: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The retraining-noise ceiling's ``(predicted, actual)``: each seed's margins (T, M) as the
    prediction of each other seed's, every ordered pair of seeds stacked as more test rows (the
    LDS of one retrain against another: what a method that knew one retrain exactly would score)."""
    if len(margins_by_seed) < 2:
        raise ValueError("the ceiling needs the subsets retrained with at least 2 seeds")
    pairs = [
        (a, b)
        for i, a in enumerate(margins_by_seed)
        for j, b in enumerate(margins_by_seed)
        if i != j
    ]
    return np.vstack([a for a, _ in pairs]), np.vstack([b for _, b in pairs])


def selection_half(n_test: int, seed: int) -> np.ndarray:
    """(T,) booleans: a seeded random half of the sampled test images on which a method is chosen;
    the other half reports the chosen method's LDS, so that the choice is not judged on the
    images it was made on."""
    chosen = np.zeros(n_test, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n_test)[: n_test // 2]] = True
    return chosen


def chosen_method(table: pd.DataFrame) -> str | None:
    """The method with the highest ``lds_selection`` among the candidates: the rows of kind
    method whose damping is the default (the sensitivity rows, ``...@<damping>``, are not)."""
    candidates = table[(table["kind"] == "method") & ~table["method"].str.contains("@")]
    candidates = candidates[np.isfinite(candidates["lds_selection"].to_numpy(float))]
    if candidates.empty:
        return None
    return str(candidates.loc[candidates["lds_selection"].idxmax(), "method"])


def random_scores(shape: tuple[int, int], seed: int) -> np.ndarray:
    """The random control: independent standard normal scores, seeded."""
    return np.random.default_rng(seed).standard_normal(shape)


# --- removal ---------------------------------------------------------------------------------------

SELECTIONS = ("method", "random", "hardness", "loss")


def proponents_union(scores: np.ndarray, train_idx, k: int) -> np.ndarray:
    """The union over test rows of each row's ``k`` largest positive scores' training idx (ties by
    the lower idx, the project's rule), sorted."""
    scores = np.asarray(scores, dtype=np.float64)
    train_idx = np.asarray(train_idx, dtype=np.int64)
    chosen = set()
    for row in scores:
        order = np.lexsort((train_idx, -row))[:k]
        chosen.update(int(train_idx[j]) for j in order if row[j] > 0)
    return np.array(sorted(chosen), dtype=np.int64)


def _check_pool(labels, losses, idx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.asarray(idx, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    losses = np.asarray(losses, dtype=np.float64)
    if not len(idx) == len(labels) == len(losses):
        raise ValueError("idx, labels and losses must have one entry per training image")
    return idx, labels, losses


def label_matched_random(removed, idx, labels, seed: int) -> np.ndarray:
    """As many training images as ``removed`` with the same label counts, drawn uniformly (without
    replacement) among all training images of each label."""
    idx, labels, _ = _check_pool(labels, np.zeros(len(labels)), idx)
    position = {int(i): p for p, i in enumerate(idx)}
    wanted = np.bincount(labels[[position[int(i)] for i in removed]], minlength=labels.max() + 1)
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(idx[labels == label], size=count, replace=False)
        for label, count in enumerate(wanted)
        if count
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)


def hardness_matched(removed, idx, labels, losses, seed: int) -> np.ndarray:
    """For each removed image (in a seeded random order), the training image of the same label,
    not removed and not yet chosen, whose training loss is nearest: as many images, the same
    labels, as hard. (Drawing from the removed images themselves would return them.)"""
    idx, labels, losses = _check_pool(labels, losses, idx)
    removed = np.asarray(removed, dtype=np.int64)
    position = {int(i): p for p, i in enumerate(idx)}
    taken = np.isin(idx, removed)
    counts = np.bincount(labels[taken], minlength=labels.max() + 1)
    totals = np.bincount(labels, minlength=labels.max() + 1)
    if (2 * counts > totals).any():
        label = int(np.argmax(2 * counts - totals))
        raise ValueError(
            f"no hardness-matched control: the removal takes {counts[label]} of the "
            f"{totals[label]} training images of label {label}, and the control needs as many "
            f"others of that label; use a smaller removal k (evaluation.removal.k) for this method"
        )
    rng = np.random.default_rng(seed)
    chosen = []
    for i in rng.permutation(removed):
        p = position[int(i)]
        candidates = np.flatnonzero((labels == labels[p]) & ~taken)
        if not len(candidates):
            raise ValueError(f"no image of label {labels[p]} is left to match removed image {i}")
        gaps = np.abs(losses[candidates] - losses[p])
        nearest = candidates[gaps == gaps.min()]
        pick = int(rng.choice(nearest))
        taken[pick] = True
        chosen.append(idx[pick])
    return np.sort(np.asarray(chosen, dtype=np.int64))


def highest_loss(count: int, idx, losses) -> np.ndarray:
    """The ``count`` training images of the largest training loss (ties by the lower idx)."""
    idx, _, losses = _check_pool(np.zeros(len(idx)), losses, idx)
    order = np.lexsort((idx, -losses))[:count]
    return np.sort(idx[order])


def removal_outcome(group, label, full_pred, full_margin, removed_pred, removed_margin) -> dict:
    """One removal retrain against the same seed's retrain on the whole training set, on the test
    images (rows aligned): the share of the ``group`` (the mistakes the removal targets) predicted
    right (``fixed``), its mean margin, and the accuracy on the other test images, each as the
    removal model's value minus the full model's."""
    group = np.asarray(group, dtype=bool)
    label = np.asarray(label)
    right_full = np.asarray(full_pred) == label
    right_removed = np.asarray(removed_pred) == label
    margin_change = np.asarray(removed_margin, float) - np.asarray(full_margin, float)
    rest = ~group
    return {
        "fixed": float(right_removed[group].mean() - right_full[group].mean()),
        "margin": float(margin_change[group].mean()),
        "rest_accuracy": float(right_removed[rest].mean() - right_full[rest].mean())
        if rest.any()
        else float("nan"),
    }


def mean_and_se(values) -> tuple[float, float]:
    """Mean and standard error over seeds (the SE is NaN for one seed)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()) if len(values) else float("nan"), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


REMOVAL_COLUMNS = [
    "method", "k", "selection", "removed", "seeds",
    "fixed", "fixed_se", "margin", "margin_se", "rest_accuracy", "rest_accuracy_se",
    "method_minus_this_fixed", "method_minus_this_fixed_se",
    "method_minus_this_margin", "method_minus_this_margin_se",
]  # fmt: skip


def removal_table(outcomes: pd.DataFrame) -> pd.DataFrame:
    """``removal.csv`` from one row per retrain (``method, k, selection, seed, removed`` and the
    :func:`removal_outcome` keys): per (method, k, selection) the mean and SE over seeds of each
    change against the full retrain, and for each control the paired (same seed) difference of
    the method's selection minus the control's."""
    rows = []
    for (method, k), group in outcomes.groupby(["method", "k"], sort=False):
        own = group[group["selection"] == "method"].set_index("seed")
        for selection, part in group.groupby("selection", sort=False):
            part = part.set_index("seed")
            row = {"method": method, "k": int(k), "selection": selection,
                   "removed": int(part["removed"].iloc[0]), "seeds": len(part)}  # fmt: skip
            for key in ("fixed", "margin", "rest_accuracy"):
                row[key], row[f"{key}_se"] = mean_and_se(part[key])
            for key in ("fixed", "margin"):
                if selection == "method":
                    mean = se = float("nan")
                else:
                    seeds = own.index.intersection(part.index)
                    mean, se = mean_and_se(own.loc[seeds, key] - part.loc[seeds, key])
                row[f"method_minus_this_{key}"], row[f"method_minus_this_{key}_se"] = mean, se
            rows.append(row)
    return pd.DataFrame(rows, columns=REMOVAL_COLUMNS)


# --- brittleness ----------------------------------------------------------------------------------


def brittleness_sample(reference: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    """The idx of ``n`` test images the reference predicts right (``idx, label, pred``), a seeded
    sample in idx order."""
    right = np.sort(reference.loc[reference["pred"] == reference["label"], "idx"].to_numpy())
    if len(right) < n:
        raise ValueError(f"the brittleness test wants {n} correctly predicted test images; the "
                         f"reference has {len(right)}")  # fmt: skip
    return np.sort(np.random.default_rng(seed).choice(right, size=n, replace=False))


BRITTLENESS_COLUMNS = ["method", "selection", "test_idx", "smallest_k"]


def brittleness_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, selection, test image): the smallest k whose removal flipped its
    prediction (NaN when none did), and ``flipped_k<k>`` for each k."""
    out = []
    for (method, selection, test_idx), group in rows.groupby(
        ["method", "selection", "test_idx"], sort=False
    ):
        group = group.sort_values("k")
        flipped = group.loc[group["flipped"], "k"]
        row = {"method": method, "selection": selection, "test_idx": int(test_idx),
               "smallest_k": float(flipped.min()) if len(flipped) else float("nan")}  # fmt: skip
        row |= {f"flipped_k{int(k)}": bool(f) for k, f in zip(group["k"], group["flipped"],
                                                                strict=True)}  # fmt: skip
        out.append(row)
    return pd.DataFrame(out)


def lds_row(method: str, values: tuple[float, float, float], n_subsets: int, n_test: int,
            *, default: bool = False, kind: str = "method") -> dict:  # fmt: skip
    """One row of lds.csv."""
    if kind not in LDS_KINDS:
        raise ValueError(f"kind must be one of {LDS_KINDS}, got {kind!r}")
    value, low, high = values
    return {"method": method, "lds": value, "ci_low": low, "ci_high": high,
            "n_subsets": int(n_subsets), "n_test": int(n_test), "default": bool(default),
            "kind": kind}  # fmt: skip


def subset_masks(train_sets: Mapping[str, pd.DataFrame], train_idx) -> np.ndarray:
    """(M, N) booleans: which of the reference's training images (``train_idx``, in order) each
    subset version trains on (its train set's rows not dropped)."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    masks = []
    for name, frame in train_sets.items():
        kept = frame.loc[~frame["dropped"].to_numpy(bool), "idx"].to_numpy(np.int64)
        outside = np.setdiff1d(kept, train_idx)
        if len(outside):
            raise ValueError(
                f"subset version {name} trains on {len(outside)} images the reference does not, "
                f"e.g. idx {outside[:3].tolist()}"
            )
        masks.append(np.isin(train_idx, kept))
    return np.vstack(masks)
