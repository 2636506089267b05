"""Reports over one version's influence results: which training images explain the mistakes.

Pure functions on the workflow's tables (manifest, predictions, top-k influences, self-influence)
build the report tables; :func:`write_version_reports` reads the files and writes them all.
Influence signs follow :mod:`tracinflow.influence`: positive = proponent (helped the test loss go
down), negative = opponent. Everything is vectorised over the top-k table, which holds
``2 * k`` rows per test image (over a million for 6,000 test images at k = 100).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tracinflow import io
from tracinflow.data import class_names_of

KINDS = ("proponent", "opponent")
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

REPORT_FILES = {
    "cross": "misprediction_cross_analysis.csv",
    "cross_parquet": "misprediction_cross_analysis.parquet",
    "inspection": "mislabeled_inspection_report.csv",
    "influential": "influential_samples.csv",
    "class_influence": "class_influence.csv",
    "text": "influence_report.txt",
}
NO_MISPREDICTIONS = "no mispredicted test images: nothing to explain"


# --------------------------------------------------------------------------------------------------
# lookups


def row_positions(index_values, query, what: str) -> np.ndarray:
    """Row position in ``index_values`` of every ``query`` value; a clear error for any missing."""
    index = pd.Index(np.asarray(index_values, dtype=np.int64))
    if not index.is_unique:
        duplicated = index[index.duplicated()]
        raise ValueError(f"{what}: idx {int(duplicated[0])} appears more than once")
    query = np.asarray(query, dtype=np.int64)
    positions = index.get_indexer(query)
    missing = positions < 0
    if missing.any():
        absent = np.unique(query[missing])
        raise KeyError(f"{len(absent)} idx missing from {what}, e.g. {absent[:5].tolist()}")
    return positions


def _kind_codes(topk: pd.DataFrame) -> np.ndarray:
    """0 for proponent rows, 1 for opponent rows; any other kind is an error."""
    kind = topk["kind"].astype(str).to_numpy()
    proponent, opponent = kind == "proponent", kind == "opponent"
    if not (proponent | opponent).all():
        raise ValueError(f"topk kind must be one of {KINDS}, got {sorted(set(kind) - set(KINDS))}")
    return opponent.astype(np.int64)


def _names(class_names) -> np.ndarray:
    return np.asarray([str(c) for c in class_names], dtype=object)


def descending_rank(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """1 = largest value; ties by the lower idx (the order :mod:`tracinflow.influence` uses)."""
    order = np.lexsort((idx, -values))
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(1, len(values) + 1)
    return rank


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


def mislabeled_inspection(
    self_influence: pd.DataFrame,
    train_pred: pd.DataFrame,
    cross: pd.DataFrame,
    manifest: pd.DataFrame,
    class_names,
    ranking: str = "self_influence",
    error_self_influence: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Every training image, most suspicious first: the candidates to check for a wrong label.

    ``ranking`` picks the suspicion score (see :func:`suspicion_scores`). The training images are
    the rows of ``train_pred`` and ``self_influence`` (the images the version trained on, with the
    labels it trained with; the manifest's train split minus any dropped by cleaning); one missing
    from either table, or from the manifest, is an error, never dropped. Ties break by the lower train idx.
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
            [train_pred["idx"].to_numpy(np.int64), self_influence["train_idx"].to_numpy(np.int64)]
        )
    )
    suspicion = suspicion_scores(
        ranking, train_idx, self_influence, train_pred, error_self_influence
    )
    scores = suspicion_scores("self_influence", train_idx, self_influence, train_pred)
    pred_rows = row_positions(train_pred["idx"], train_idx, "the train predictions")
    loss = train_pred["loss"].to_numpy(np.float64)[pred_rows]
    paths = manifest["path"].to_numpy()[row_positions(manifest["idx"], train_idx, "the manifest")]
    names = _names(class_names)
    counts = _appearance_counts(cross, train_idx)
    frame = pd.DataFrame(
        {
            "rank": descending_rank(suspicion, train_idx),
            "train_idx": train_idx,
            "ranking": ranking,
            "suspicion": suspicion,
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


# --------------------------------------------------------------------------------------------------
# text report


def _number(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "nan" if np.isnan(value) else f"{float(value):.4g}"
    return str(value)


def _table(rows: list[list], headers: list[str], indent: str = "  ") -> str:
    """Left-aligned columns, numbers right-aligned, under a header and a rule."""
    cells = [[_number(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[c]) for r in cells]) for c, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(r[c], (int, float, np.integer, np.floating)) for r in rows)
        for c in range(len(headers))
    ]

    def line(values):
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    out = [line(headers), indent + "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _percent(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100 * value:.1f}%"


def influence_report_text(
    *,
    version,
    manifest: pd.DataFrame,
    metrics: dict,
    checkpoints: list[dict],
    test_pred: pd.DataFrame,
    train_pred: pd.DataFrame,
    topk: pd.DataFrame,
    cross: pd.DataFrame,
    inspection: pd.DataFrame,
    influential: pd.DataFrame,
    k: int,
    top_n: int = 10,
) -> str:
    """The run at a glance, as plain text.

    Dataset sizes per split and class, the checkpoints (epochs, learning rates, val loss), the
    accuracy per split, the mispredicted test images, the spread of the top-k influences, how often
    the proponents and opponents of mispredicted test images share their mistake, and the ``top_n``
    most helpful and most harmful training images and the ``top_n`` most suspicious labels.
    """
    splits = [s for s in ("train", "val", "test") if s in set(manifest["split"])]
    classes = manifest.drop_duplicates("label").sort_values("label")
    counts = manifest.groupby(["label", "split"]).size().unstack(fill_value=0)
    out = [f"TracIn influence report: {version}", ""]

    out.append(f"Dataset: {len(manifest)} images, {len(classes)} classes")
    out.append(
        _table(
            [[s, int((manifest["split"] == s).sum())] for s in splits] + [["all", len(manifest)]],
            ["split", "images"],
        )
    )
    out.append("")
    out.append(
        _table(
            [
                [int(label), str(name)]
                + [int(counts.at[label, s]) if s in counts.columns else 0 for s in splits]
                for label, name in zip(classes["label"], classes["class"], strict=True)
            ],
            ["label", "class", *splits],
        )
    )
    out.append("")

    out.append(f"Checkpoints used for TracIn: {len(checkpoints)}")
    if checkpoints:
        columns = ["epoch", "lr_head", "lr_backbone", "val_loss", "file"]
        out.append(_table([[c.get(name, "") for name in columns] for c in checkpoints], columns))
    out.append("")

    out.append("Accuracy")
    out.append(
        _table(
            [
                [s, metrics[s].get("n", ""), metrics[s]["accuracy"], metrics[s]["loss"]]
                for s in ("train", "val", "test")
                if s in metrics
            ],
            ["split", "images", "accuracy", "mean loss"],
        )
    )
    out.append("")

    wrong = int((test_pred["pred"] != test_pred["label"]).sum())
    wrong_train = int((train_pred["pred"] != train_pred["label"]).sum())
    out.append(f"Mispredicted test images: {wrong} of {len(test_pred)}")
    if wrong == 0:
        out.append(f"  {NO_MISPREDICTIONS}")
    out.append(f"Mispredicted training images: {wrong_train} of {len(train_pred)}")
    out.append("")

    rank_max = int(topk["rank"].max()) if len(topk) else 0
    # k larger than the train split leaves fewer rows per kind than asked for.
    available = f" ({rank_max} per kind available)" if rank_max < k else ""
    out.append(
        f"Top-k influences: k = {k}{available}, {len(topk)} rows over "
        f"{topk['test_idx'].nunique()} test images"
    )
    if len(topk):
        rows = []
        for label, part in [("all", topk), *((kind, topk[topk["kind"] == kind]) for kind in KINDS)]:
            values = part["influence"].to_numpy(np.float64)
            rows.append(
                [label, len(values)]
                + (
                    [values.min(), values.max(), values.mean(), float(np.median(values))]
                    if len(values)
                    else [float("nan")] * 4
                )
            )
        out.append(_table(rows, ["rows", "count", "min", "max", "mean", "median"]))
    out.append("")

    out.append("Same error: training image mispredicted into the test image's wrong class")
    if wrong == 0:
        out.append(f"  {NO_MISPREDICTIONS}")
    elif cross.empty:
        out.append("  no top-k rows for the mispredicted test images")
    else:
        rates = same_error_rates(cross)
        out.append(
            _table(
                [
                    [kind + "s", int((cross["kind"] == kind).sum()), _percent(rates[kind])]
                    for kind in KINDS
                ],
                ["top-k of mispredicted", "rows", "same error"],
            )
        )
    out.append("")

    columns = ["train_idx", "influence_sum", "appearances", "true_label", "predicted_label"]
    headers = ["train_idx", "influence sum", "appearances", "class", "predicted", "image_path"]
    for title, part in (
        ("most helpful (largest summed influence)", influential.head(top_n)),
        (
            "most harmful (smallest summed influence)",
            influential.sort_values(["influence_sum", "train_idx"], kind="stable").head(top_n),
        ),
    ):
        out.append(f"Top {top_n} influencers, {title}")
        if part.empty:
            out.append("  none")
        else:
            out.append(
                _table(
                    [[*row[columns], row["image_path"]] for _, row in part.iterrows()],
                    headers,
                )
            )
        out.append("")

    ranking = inspection["ranking"].iloc[0] if len(inspection) else "n/a"
    meaning = RANKING_MEANINGS.get(ranking, "")
    out.append(
        f"Top {top_n} suspected label errors, ranked by {ranking}"
        + (f" ({meaning})" if meaning else "")
    )
    suspects = inspection.head(top_n)
    if suspects.empty:
        out.append("  none")
    else:
        columns = [
            "rank",
            "train_idx",
            "suspicion",
            "self_influence",
            "loss",
            "true_label",
            "predicted_label",
            "confidence",
            "opponent_count",
            "same_error_count",
        ]
        headers = [
            "rank",
            "train_idx",
            "suspicion",
            "self infl.",
            "loss",
            "class",
            "predicted",
            "confidence",
            "opponent",
            "same error",
            "image_path",
        ]
        out.append(
            _table([[*row[columns], row["image_path"]] for _, row in suspects.iterrows()], headers)
        )
    out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# files


def write_version_reports(
    *,
    version,
    manifest_path,
    predictions: dict,
    topk_path,
    self_influence_path,
    error_self_influence_path=None,
    checkpoints_path,
    metrics_path,
    out_dir,
    ranking: str = "self_influence",
    top_n: int = 10,
    k: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Read one version's results and write every report into ``out_dir``, each file atomically.

    ``predictions`` maps ``"train"`` and ``"test"`` to the prediction parquet files. Writes
    ``misprediction_cross_analysis.csv`` (and ``.parquet``), ``mislabeled_inspection_report.csv``,
    ``influential_samples.csv``, ``class_influence.csv`` and ``influence_report.txt``, logs one line
    per file, and returns ``{file name: path}``. ``k`` is the top-k asked for (the report notes when
    fewer rows per kind were available); by default the largest rank in the top-k table.
    """
    # Imported here: stages.py may in turn import this module for its report stage.

    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    manifest = pd.read_parquet(manifest_path)
    names = class_names_of(manifest)
    train_pred = pd.read_parquet(predictions["train"])
    test_pred = pd.read_parquet(predictions["test"])
    topk = pd.read_parquet(topk_path)
    scores = pd.read_parquet(self_influence_path)
    error_scores = (
        pd.read_parquet(error_self_influence_path)
        if error_self_influence_path is not None
        else None
    )
    checkpoints = json.loads(Path(checkpoints_path).read_text())
    summary = json.loads(Path(metrics_path).read_text())

    cross = misprediction_cross_analysis(topk, test_pred, train_pred, names)
    inspection = mislabeled_inspection(
        scores, train_pred, cross, manifest, names, ranking, error_scores
    )
    influential = influential_samples(topk, train_pred, manifest, names)
    by_class = class_influence(topk, test_pred, train_pred, names)
    if k is None:
        k = int(topk["rank"].max()) if len(topk) else 0
    text = influence_report_text(
        version=version,
        manifest=manifest,
        metrics=summary,
        checkpoints=checkpoints,
        test_pred=test_pred,
        train_pred=train_pred,
        topk=topk,
        cross=cross,
        inspection=inspection,
        influential=influential,
        k=k,
        top_n=top_n,
    )

    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for key, frame, writer in (
        ("cross", cross, io.write_csv),
        ("cross_parquet", cross, io.write_parquet),
        ("inspection", inspection, io.write_csv),
        ("influential", influential, io.write_csv),
        ("class_influence", by_class, io.write_csv),
    ):
        path = out_dir / REPORT_FILES[key]
        writer(path, frame)
        log(f"{version}: wrote {path} ({len(frame)} rows)")
        written[REPORT_FILES[key]] = path
    path = out_dir / REPORT_FILES["text"]
    io.write_text(path, text)
    log(f"{version}: wrote {path} ({text.count(chr(10))} lines)")
    written[REPORT_FILES["text"]] = path
    return written
