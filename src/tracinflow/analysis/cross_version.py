"""Comparison of several versions (seeds, label noise, cleaned training sets) on one test set.

Every version is trained on its own training set and evaluated on the same, untouched test images,
so their results line up image by image. The pure functions here build the comparison tables from
each version's loaded results (``{version name: data}`` dictionaries, versions in the dictionary's
order); :func:`compare_versions` builds all of them at once, with a registry of what each version
was (the cross_version stage reads and writes the files;
:mod:`tracinflow.analysis.cross_version_text` renders the summary that links them).

Influence signs follow :mod:`tracinflow.influence`: positive = proponent (helped the test loss go
down), negative = opponent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

INFLUENCE_KINDS = ("all", "proponent", "opponent")
ALL_VERSIONS = "all"  # the version name of the summed-over-versions confused pairs

PERFORMANCE_COLUMNS = [
    "version",
    "val_accuracy",
    "val_loss",
    "test_accuracy",
    "test_loss",
    "test_images",
    "test_mispredictions",
    "train_images",
    "flipped",
    "dropped",
]
PERSISTENT_COLUMNS = [
    "test_idx",
    "image_path",
    "true_label",
    "versions_wrong",
    "n_versions",
    "predictions",
]
INFLUENCER_COLUMNS = [
    "train_idx",
    "kind",
    "versions",
    "version_list",
    "mean_influence_sum",
    "image_path",
    "class",
]
CANDIDATE_COLUMNS = [
    "train_idx",
    "versions",
    "version_list",
    "best_rank",
    "mean_rank",
    "image_path",
    "true_label",
]
STATISTICS_COLUMNS = ["version", "kind", "count", "mean", "median", "min", "max", "std"]
PAIR_COLUMNS = ["version", "true_class", "predicted_class", "count"]

VERSION_SEPARATOR = "; "


# --------------------------------------------------------------------------------------------------
# checks and lookups


def _require_columns(frame: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing} (needs {list(columns)})")


def _check_versions(data: Mapping, what: str) -> list[str]:
    if not data:
        raise ValueError(f"{what}: no versions given")
    return [str(v) for v in data]


def _check_min_versions(min_versions: int, n_versions: int) -> None:
    if int(min_versions) != min_versions or min_versions < 1:
        raise ValueError(f"min_versions must be a positive integer, got {min_versions}")
    if min_versions > n_versions:
        raise ValueError(
            f"min_versions ({min_versions}) is more than the number of versions ({n_versions})"
        )


def _check_top(top: int) -> None:
    if int(top) != top or top < 1:
        raise ValueError(f"top must be a positive integer, got {top}")


def _manifest_lookup(manifest: pd.DataFrame, idx, what: str) -> pd.DataFrame:
    """The manifest rows (``path``, ``class``) of every ``idx``; a clear error for any missing."""
    by_idx = manifest.set_index("idx")
    idx = np.asarray(idx, dtype=np.int64)
    positions = by_idx.index.get_indexer(idx)
    if (positions < 0).any():
        absent = np.unique(idx[positions < 0])
        raise KeyError(f"{len(absent)} {what} idx not in the manifest, e.g. {absent[:5].tolist()}")
    return by_idx.iloc[positions]


def _join_versions(versions) -> str:
    return VERSION_SEPARATOR.join(str(v) for v in versions)


def _metric(metrics: dict, split: str, name: str) -> float:
    value = metrics.get(split, {}).get(name)
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# tables


def _train_set_counts(train_set: pd.DataFrame, what: str) -> dict[str, int]:
    """Images used for training, flipped labels among them, and dropped images."""
    _require_columns(train_set, ["idx", "label", "noisy", "dropped"], what)
    dropped = train_set["dropped"].to_numpy(bool)
    noisy = train_set["noisy"].to_numpy(bool)
    return {
        "train_images": int((~dropped).sum()),
        # A dropped image's wrong label never reached training: only the used ones count.
        "flipped": int((noisy & ~dropped).sum()),
        "dropped": int(dropped.sum()),
    }


def performance_table(
    metrics: Mapping[str, dict],
    predictions: Mapping[str, pd.DataFrame],
    train_sets: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per version (``PERFORMANCE_COLUMNS``), in the order of ``metrics``.

    Accuracy and loss on val and test come from each version's ``metrics.json``; ``test_images`` and
    ``test_mispredictions`` (pred != label) from its test predictions. ``train_images`` (rows not
    dropped), ``flipped`` (noisy labels among them) and ``dropped`` come from its training set when
    ``train_sets`` is given, else they are missing (``<NA>``).
    """
    versions = _check_versions(metrics, "performance_table")
    rows = []
    for version in versions:
        if version not in predictions:
            raise KeyError(f"no test predictions for version {version!r}")
        test = predictions[version]
        _require_columns(test, ["idx", "label", "pred"], f"{version} test predictions")
        summary = metrics[version]
        counts = {"train_images": pd.NA, "flipped": pd.NA, "dropped": pd.NA}
        if train_sets is not None:
            if version not in train_sets:
                raise KeyError(f"no training set for version {version!r}")
            counts = _train_set_counts(train_sets[version], f"{version} training set")
        rows.append(
            {
                "version": version,
                "val_accuracy": _metric(summary, "val", "accuracy"),
                "val_loss": _metric(summary, "val", "loss"),
                "test_accuracy": _metric(summary, "test", "accuracy"),
                "test_loss": _metric(summary, "test", "loss"),
                "test_images": len(test),
                "test_mispredictions": int((test["pred"] != test["label"]).sum()),
                **counts,
            }
        )
    frame = pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS)
    for column in ("train_images", "flipped", "dropped"):
        frame[column] = frame[column].astype("Int64")
    return frame


def persistent_mispredictions(
    predictions: Mapping[str, pd.DataFrame],
    manifest: pd.DataFrame,
    class_names,
    min_versions: int,
) -> pd.DataFrame:
    """Test images mispredicted by at least ``min_versions`` of the versions (``PERSISTENT_COLUMNS``).

    ``versions_wrong`` counts the versions that got the image wrong, ``n_versions`` is how many were
    compared, ``predictions`` lists every version's predicted class (``"v1:Cat; v2:Dog"``),
    ``true_label`` the test label's class name, ``image_path`` the manifest path. Most versions wrong
    first, ties by test idx. Every version must hold the same test idx set (the test set is never
    changed between versions); ``min_versions`` above the number of versions is an error.
    """
    versions = _check_versions(predictions, "persistent_mispredictions")
    _check_min_versions(min_versions, len(versions))
    names = np.asarray([str(c) for c in class_names], dtype=object)
    reference_idx = None
    labels = None
    wrong_count = None
    predicted: list[np.ndarray] = []
    for version in versions:
        frame = predictions[version]
        _require_columns(frame, ["idx", "label", "pred"], f"{version} test predictions")
        frame = frame.sort_values("idx", kind="stable")
        idx = frame["idx"].to_numpy(np.int64)
        if reference_idx is None:
            reference_idx, labels = idx, frame["label"].to_numpy(np.int64)
            wrong_count = np.zeros(len(idx), dtype=np.int64)
        elif not np.array_equal(idx, reference_idx):
            raise ValueError(
                f"version {version!r} has other test images than {versions[0]!r}: "
                "every version must be evaluated on the same test set"
            )
        pred = frame["pred"].to_numpy(np.int64)
        wrong_count += pred != labels
        predicted.append(names[pred])

    keep = wrong_count >= min_versions
    rows = _manifest_lookup(manifest, reference_idx[keep], "test")
    listed = [
        _join_versions(f"{v}:{p}" for v, p in zip(versions, per_image, strict=True))
        for per_image in zip(*(p[keep] for p in predicted), strict=True)
    ]
    out = pd.DataFrame(
        {
            "test_idx": reference_idx[keep],
            "image_path": rows["path"].to_numpy(),
            "true_label": names[labels[keep]],
            "versions_wrong": wrong_count[keep],
            "n_versions": np.full(int(keep.sum()), len(versions), dtype=np.int64),
            "predictions": np.asarray(listed, dtype=object),
        },
        columns=PERSISTENT_COLUMNS,
    )
    return out.sort_values(
        ["versions_wrong", "test_idx"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


def _influence_sums(topk: pd.DataFrame, what: str) -> pd.Series:
    """Summed influence of every training image over all top-k rows, indexed by train_idx."""
    _require_columns(topk, ["train_idx", "influence"], what)
    return topk.groupby("train_idx", sort=True)["influence"].sum().astype(np.float64)


def consistent_influencers(
    topk: Mapping[str, pd.DataFrame],
    manifest: pd.DataFrame,
    class_names,
    top: int = 50,
    min_versions: int = 2,
) -> pd.DataFrame:
    """Training images among every version's strongest influencers in several versions.

    Per version, each training image's influence is summed over all rows of the top-k table (all
    test images, both kinds). Its ``top`` largest positive sums are the most helpful images, its
    ``top`` most negative sums the most harmful (ties by lower train_idx). A training image listed
    as helpful (or harmful) by at least ``min_versions`` versions is reported
    (``INFLUENCER_COLUMNS``): ``versions`` counts them, ``version_list`` names them,
    ``mean_influence_sum`` is the mean of its sums over them, ``class`` and ``image_path`` come from
    the manifest. Helpful first, then harmful; most versions, then largest magnitude first.
    """
    versions = _check_versions(topk, "consistent_influencers")
    _check_top(top)
    _check_min_versions(min_versions, len(versions))
    listed = []
    for version in versions:
        sums = _influence_sums(topk[version], f"{version} top-k influences")
        frame = pd.DataFrame({"train_idx": sums.index.to_numpy(np.int64), "sum": sums.to_numpy()})
        helpful = frame[frame["sum"] > 0].sort_values(
            ["sum", "train_idx"], ascending=[False, True], kind="stable"
        )
        harmful = frame[frame["sum"] < 0].sort_values(
            ["sum", "train_idx"], ascending=[True, True], kind="stable"
        )
        for kind, part in (("helpful", helpful), ("harmful", harmful)):
            listed.append(part.head(top).assign(kind=kind, version=version))
    listed = pd.concat(listed, ignore_index=True)
    grouped = listed.groupby(["kind", "train_idx"], sort=False).agg(
        versions=("version", "size"),
        version_list=("version", _join_versions),
        mean_influence_sum=("sum", "mean"),
    )
    grouped = grouped[grouped["versions"] >= min_versions].reset_index()
    names = np.asarray([str(c) for c in class_names], dtype=object)
    rows = _manifest_lookup(manifest, grouped["train_idx"], "training")
    grouped["image_path"] = rows["path"].to_numpy()
    grouped["class"] = names[rows["label"].to_numpy(np.int64)]
    grouped["versions"] = grouped["versions"].astype(np.int64)
    order = np.lexsort(
        (
            grouped["train_idx"].to_numpy(),
            -grouped["mean_influence_sum"].abs().to_numpy(),
            -grouped["versions"].to_numpy(),
            (grouped["kind"] == "harmful").to_numpy(),
        )
    )
    return grouped.iloc[order][INFLUENCER_COLUMNS].reset_index(drop=True)


def shared_mislabel_candidates(
    inspections: Mapping[str, pd.DataFrame],
    manifest: pd.DataFrame,
    top: int = 50,
    min_versions: int = 2,
) -> pd.DataFrame:
    """Training images among the ``top`` suspects (inspection rank <= top) of several versions.

    ``CANDIDATE_COLUMNS``: ``versions`` counts the versions that list the image, ``version_list``
    names them, ``best_rank`` and ``mean_rank`` summarise its ranks there (1 = most suspect),
    ``image_path`` and ``true_label`` are the manifest's path and class (the dataset's label, not a
    version's possibly flipped one). Most versions first, then lowest mean rank, best rank, idx.
    """
    versions = _check_versions(inspections, "shared_mislabel_candidates")
    _check_top(top)
    _check_min_versions(min_versions, len(versions))
    listed = []
    for version in versions:
        frame = inspections[version]
        _require_columns(frame, ["rank", "train_idx"], f"{version} inspection report")
        part = frame.loc[frame["rank"] <= top, ["train_idx", "rank"]]
        listed.append(part.assign(version=version))
    listed = pd.concat(listed, ignore_index=True)
    grouped = (
        listed.groupby("train_idx", sort=True)
        .agg(
            versions=("version", "size"),
            version_list=("version", _join_versions),
            best_rank=("rank", "min"),
            mean_rank=("rank", "mean"),
        )
        .reset_index()
    )
    grouped = grouped[grouped["versions"] >= min_versions].reset_index(drop=True)
    rows = _manifest_lookup(manifest, grouped["train_idx"], "training")
    grouped["image_path"] = rows["path"].to_numpy()
    grouped["true_label"] = rows["class"].astype(str).to_numpy()
    grouped["versions"] = grouped["versions"].astype(np.int64)
    grouped["best_rank"] = grouped["best_rank"].astype(np.int64)
    grouped["mean_rank"] = grouped["mean_rank"].astype(np.float64)
    grouped = grouped.sort_values(
        ["versions", "mean_rank", "best_rank", "train_idx"],
        ascending=[False, True, True, True],
        kind="stable",
    )
    return grouped[CANDIDATE_COLUMNS].reset_index(drop=True)


def influence_statistics(topk: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Count, mean, median, min, max and std of the top-k influence values per version and kind.

    Kinds ``all`` (every row), ``proponent`` and ``opponent``; ``std`` is the population standard
    deviation (numpy's default, ddof 0). A kind without rows has count 0 and missing statistics.
    """
    versions = _check_versions(topk, "influence_statistics")
    rows = []
    for version in versions:
        frame = topk[version]
        _require_columns(frame, ["kind", "influence"], f"{version} top-k influences")
        values = frame["influence"].to_numpy(np.float64)
        kind = frame["kind"].astype(str).to_numpy()
        for name in INFLUENCE_KINDS:
            part = values if name == "all" else values[kind == name]
            stats = {key: float("nan") for key in ("mean", "median", "min", "max", "std")}
            if part.size:
                stats = {
                    "mean": float(np.mean(part)),
                    "median": float(np.median(part)),
                    "min": float(np.min(part)),
                    "max": float(np.max(part)),
                    "std": float(np.std(part)),
                }
            rows.append({"version": version, "kind": name, "count": int(part.size), **stats})
    return pd.DataFrame(rows, columns=STATISTICS_COLUMNS)


def confused_pairs(metrics: Mapping[str, dict], class_names, top: int = 10) -> pd.DataFrame:
    """The most confused (true, predicted) class pairs of the test confusion matrices.

    ``PAIR_COLUMNS``. The rows of version ``"all"`` (counts summed over the versions) come first,
    then each version's; each block holds its ``top`` largest off-diagonal counts (zero counts
    never), largest first, ties by true then predicted class order.
    """
    versions = _check_versions(metrics, "confused_pairs")
    _check_top(top)
    names = np.asarray([str(c) for c in class_names], dtype=object)
    k = len(names)
    matrices = {}
    for version in versions:
        if "confusion_matrix" not in metrics[version]:
            raise ValueError(f"metrics of version {version!r} hold no confusion_matrix")
        cm = np.asarray(metrics[version]["confusion_matrix"], dtype=np.int64)
        if cm.shape != (k, k):
            raise ValueError(
                f"confusion matrix of version {version!r} has shape {cm.shape}, "
                f"expected ({k}, {k}) for {k} classes"
            )
        matrices[version] = cm

    def block(version: str, cm: np.ndarray) -> pd.DataFrame:
        true, predicted = np.nonzero((cm > 0) & ~np.eye(k, dtype=bool))  # row-major: class order
        counts = cm[true, predicted]
        order = np.argsort(-counts, kind="stable")[:top]
        return pd.DataFrame(
            {
                "version": version,
                "true_class": names[true[order]],
                "predicted_class": names[predicted[order]],
                "count": counts[order].astype(np.int64),
            },
            columns=PAIR_COLUMNS,
        )

    blocks = [block(ALL_VERSIONS, sum(matrices.values()))]
    blocks += [block(version, cm) for version, cm in matrices.items()]
    return pd.concat(blocks, ignore_index=True)


def train_set_fingerprint(train_set: pd.DataFrame) -> str:
    """sha256 (hex) of the (idx, label) pairs of the rows used for training, sorted by idx.

    The pairs are hashed as little-endian int64, idx then label per row; row order and dropped rows
    don't matter, any relabelled or dropped used row changes it.
    """
    _require_columns(train_set, ["idx", "label", "dropped"], "training set")
    used = train_set.loc[~train_set["dropped"].to_numpy(bool)]
    pairs = np.column_stack(
        [used["idx"].to_numpy(np.int64), used["label"].to_numpy(np.int64)]
    ).reshape(-1, 2)
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    return hashlib.sha256(np.ascontiguousarray(pairs, dtype="<i8").tobytes()).hexdigest()


def _jsonable(value):
    """``value`` with numpy scalars, paths and tuples made plain; NaN becomes null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def version_registry(
    settings: Mapping[str, dict],
    train_sets: Mapping[str, pd.DataFrame],
    metrics: Mapping[str, dict],
    checkpoints: Mapping[str, list],
    trained_at: Mapping[str, str],
) -> dict:
    """What every version was: ``{version: {settings, train_set, metrics, checkpoints, trained_at}}``.

    ``train_set`` holds the :func:`train_set_fingerprint` and the counts (``images`` used for
    training, ``flipped`` labels among them, ``dropped``); ``metrics`` the val and test accuracy
    and loss; ``checkpoints`` each saved epoch with its learning rates (and val loss when known);
    ``trained_at`` the time given (ISO 8601 UTC). Plain JSON values only (NaN becomes null).
    """
    versions = _check_versions(settings, "version_registry")
    registry = {}
    for version in versions:
        for what, data in (
            ("training set", train_sets),
            ("metrics", metrics),
            ("checkpoints", checkpoints),
        ):
            if version not in data:
                raise KeyError(f"no {what} for version {version!r}")
        counts = _train_set_counts(train_sets[version], f"{version} training set")
        registry[version] = _jsonable(
            {
                "settings": settings[version],
                "train_set": {
                    "fingerprint": train_set_fingerprint(train_sets[version]),
                    "images": counts["train_images"],
                    "flipped": counts["flipped"],
                    "dropped": counts["dropped"],
                },
                "metrics": {
                    f"{split}_{name}": _metric(metrics[version], split, name)
                    for split in ("val", "test")
                    for name in ("accuracy", "loss")
                },
                "checkpoints": [
                    {
                        key: value
                        for key, value in entry.items()
                        if key in ("epoch", "val_loss") or key.startswith("lr")
                    }
                    for entry in checkpoints[version]
                ],
                "trained_at": trained_at.get(version),
            }
        )
    return registry


CLEANING_COLUMNS = [
    "version",
    "source",
    "ranking",
    "action",
    "acted_on",
    "planted_flips_in_source",
    "flips_removed",
    "flips_left",
    "source_test_accuracy",
    "test_accuracy",
]


def cleaning_per_version(
    settings: Mapping[str, dict], train_sets: Mapping[str, pd.DataFrame], metrics: Mapping
) -> pd.DataFrame:
    """One row per version that cleans another's training set: what picked the images (its
    ``ranking``, or ``list <marks file>``), how many images it acted on, how many of those carried
    a planted label flip (``flips_removed``: dropped, or relabelled back to the original label), how
    many flips remain in what it trains on, and both test accuracies."""
    rows = []
    for name, setting in settings.items():
        clean = setting.get("clean")
        if not clean:
            continue
        source = clean["from"]
        before = train_sets[source].set_index("idx")
        after = train_sets[name].set_index("idx").loc[before.index]
        used_before = ~before["dropped"].to_numpy(bool)
        acted = used_before & (
            after["dropped"].to_numpy(bool)
            | (after["label"].to_numpy() != before["label"].to_numpy())
        )
        flipped_before = before["noisy"].to_numpy(bool) & used_before
        flipped_after = after["noisy"].to_numpy(bool) & ~after["dropped"].to_numpy(bool)
        rows.append(
            {
                "version": name,
                "source": source,
                # a marks file, not a ranking, picked the images of a version cleaned by a list
                "ranking": f"list {clean['list']}" if clean.get("list") else clean.get("ranking"),
                "action": clean.get("action", "drop"),
                "acted_on": int(acted.sum()),
                "planted_flips_in_source": int(flipped_before.sum()),
                "flips_removed": int((flipped_before & ~flipped_after).sum()),
                "flips_left": int(flipped_after.sum()),
                "source_test_accuracy": metrics[source]["test"]["accuracy"],
                "test_accuracy": metrics[name]["test"]["accuracy"],
            }
        )
    return pd.DataFrame(rows, columns=CLEANING_COLUMNS)


@dataclass(frozen=True)
class Comparison:
    """Every cross-version table, the registry of what each version was, and the settings used."""

    performance: pd.DataFrame
    persistent: pd.DataFrame
    influencers: pd.DataFrame
    candidates: pd.DataFrame
    statistics: pd.DataFrame
    pairs: pd.DataFrame
    cleaning: pd.DataFrame
    registry: dict
    min_versions: int
    top: int


def compare_versions(
    *,
    settings: Mapping[str, dict],
    metrics: Mapping[str, dict],
    predictions: Mapping[str, pd.DataFrame],
    topk: Mapping[str, pd.DataFrame],
    inspections: Mapping[str, pd.DataFrame],
    train_sets: Mapping[str, pd.DataFrame],
    checkpoints: Mapping[str, list],
    trained_at: Mapping[str, str],
    manifest: pd.DataFrame,
    class_names,
    min_versions: int,
    top: int = 50,
) -> Comparison:
    """All of the comparison for the versions of ``settings`` (in its order), each mapping keyed by
    version name. ``min_versions`` must not exceed the number of versions (the stage lowers it)."""
    return Comparison(
        performance=performance_table(metrics, predictions, train_sets),
        persistent=persistent_mispredictions(predictions, manifest, class_names, min_versions),
        influencers=consistent_influencers(topk, manifest, class_names, top, min_versions),
        candidates=shared_mislabel_candidates(inspections, manifest, top, min_versions),
        statistics=influence_statistics(topk),
        pairs=confused_pairs(metrics, class_names),
        cleaning=cleaning_per_version(settings, train_sets, metrics),
        registry=version_registry(settings, train_sets, metrics, checkpoints, trained_at),
        min_versions=min_versions,
        top=top,
    )
