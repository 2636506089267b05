"""``influence_report.txt``: one version's run at a glance, as plain text, one section per function."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow.analysis.rankings import RANKING_MEANINGS
from tracinflow.analysis.reports import KINDS, NO_MISPREDICTIONS, same_error_rates
from tracinflow.data.scan import LABEL_CONFLICT


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


def _not_used(rejected: pd.DataFrame | None) -> list[str]:
    """How many files of the dataset folder were not used, and how many of them as label conflicts."""
    if rejected is None or not len(rejected):
        return []
    conflicts = int(rejected["reason"].astype(str).str.startswith(LABEL_CONFLICT).sum())
    files = f"{len(rejected)} file{'' if len(rejected) == 1 else 's'}"
    line = f"Not used: {files} (rejected.csv gives each one's reason)"
    if conflicts:
        line += (
            f", of them {conflicts} byte-identical copies of files in other classes, excluded as "
            f"label conflicts (dataset.conflicting_duplicates)"
        )
    return [line]


def dataset_section(manifest: pd.DataFrame, rejected: pd.DataFrame | None = None) -> list[str]:
    """Images per split, and per class and split; the files not used (``rejected``: rejected.csv)."""
    splits = [s for s in ("train", "val", "test") if s in set(manifest["split"])]
    classes = manifest.drop_duplicates("label").sort_values("label")
    counts = manifest.groupby(["label", "split"]).size().unstack(fill_value=0)
    per_split = [[s, int((manifest["split"] == s).sum())] for s in splits]
    per_class = [
        [int(label), str(name)]
        + [int(counts.at[label, s]) if s in counts.columns else 0 for s in splits]
        for label, name in zip(classes["label"], classes["class"], strict=True)
    ]
    return [
        f"Dataset: {len(manifest)} images, {len(classes)} classes",
        *_not_used(rejected),
        _table([*per_split, ["all", len(manifest)]], ["split", "images"]),
        "",
        _table(per_class, ["label", "class", *splits]),
        "",
    ]


def checkpoints_section(checkpoints: list[dict]) -> list[str]:
    out = [f"Checkpoints traced: {len(checkpoints)}"]
    if checkpoints:
        columns = ["stage", "epoch", "lr_head", "lr_backbone", "val_loss", "file"]
        rows = [
            [c.get(name, 2 if name == "stage" else "") for name in columns] for c in checkpoints
        ]
        out.append(_table(rows, columns))
    return [*out, ""]


def accuracy_section(metrics: dict) -> list[str]:
    rows = [
        [s, metrics[s].get("n", ""), metrics[s]["accuracy"], metrics[s]["loss"]]
        for s in ("train", "val", "test")
        if s in metrics
    ]
    return ["Accuracy", _table(rows, ["split", "images", "accuracy", "mean loss"]), ""]


def mispredictions_section(test_pred: pd.DataFrame, train_pred: pd.DataFrame) -> list[str]:
    wrong = int((test_pred["pred"] != test_pred["label"]).sum())
    wrong_train = int((train_pred["pred"] != train_pred["label"]).sum())
    out = [f"Mispredicted test images: {wrong} of {len(test_pred)}"]
    if wrong == 0:
        out.append(f"  {NO_MISPREDICTIONS}")
    return [*out, f"Mispredicted training images: {wrong_train} of {len(train_pred)}", ""]


def influence_section(topk: pd.DataFrame, k: int) -> list[str]:
    """The spread of the top-k influence values, over all rows and per kind."""
    rank_max = int(topk["rank"].max()) if len(topk) else 0
    # k larger than the train split leaves fewer rows per kind than asked for.
    available = f" ({rank_max} per kind available)" if rank_max < k else ""
    out = [
        f"Top-k influences: k = {k}{available}, {len(topk)} rows over "
        f"{topk['test_idx'].nunique()} test images"
    ]
    if len(topk):
        rows = []
        for label, part in [("all", topk), *((kind, topk[topk["kind"] == kind]) for kind in KINDS)]:
            values = part["influence"].to_numpy(np.float64)
            stats = (
                [values.min(), values.max(), values.mean(), float(np.median(values))]
                if len(values)
                else [float("nan")] * 4
            )
            rows.append([label, len(values), *stats])
        out.append(_table(rows, ["rows", "count", "min", "max", "mean", "median"]))
    return [*out, ""]


def same_error_section(test_pred: pd.DataFrame, cross: pd.DataFrame) -> list[str]:
    out = ["Same error: training image mispredicted into the test image's wrong class"]
    if int((test_pred["pred"] != test_pred["label"]).sum()) == 0:
        out.append(f"  {NO_MISPREDICTIONS}")
    elif cross.empty:
        out.append("  no top-k rows for the mispredicted test images")
    else:
        rates = same_error_rates(cross)
        rows = [
            [kind + "s", int((cross["kind"] == kind).sum()), _percent(rates[kind])]
            for kind in KINDS
        ]
        out.append(_table(rows, ["top-k of mispredicted", "rows", "same error"]))
    return [*out, ""]


def influencers_section(influential: pd.DataFrame, top_n: int) -> list[str]:
    """The ``top_n`` most helpful and most harmful training images."""
    columns = ["train_idx", "influence_sum", "appearances", "true_label", "predicted_label"]
    headers = ["train_idx", "influence sum", "appearances", "class", "predicted", "image_path"]
    harmful = influential.sort_values(["influence_sum", "train_idx"], kind="stable")
    out = []
    for title, part in (
        ("most helpful (largest summed influence)", influential.head(top_n)),
        ("most harmful (smallest summed influence)", harmful.head(top_n)),
    ):
        out.append(f"Top {top_n} influencers, {title}")
        if part.empty:
            out.append("  none")
        else:
            rows = [[*row[columns], row["image_path"]] for _, row in part.iterrows()]
            out.append(_table(rows, headers))
        out.append("")
    return out


SUSPECT_COLUMNS = {
    "rank": "rank",
    "train_idx": "train_idx",
    "suspicion": "suspicion",
    "self_influence": "self infl.",
    "loss": "loss",
    "true_label": "class",
    "predicted_label": "predicted",
    "confidence": "confidence",
    "opponent_count": "opponent",
    "same_error_count": "same error",
}


def suspects_section(inspection: pd.DataFrame, top_n: int) -> list[str]:
    """The ``top_n`` most suspicious labels under the inspection report's ranking."""
    ranking = inspection["ranking"].iloc[0] if len(inspection) else "n/a"
    meaning = RANKING_MEANINGS.get(ranking, "")
    out = [
        f"Top {top_n} suspected label errors, ranked by {ranking}"
        + (f" ({meaning})" if meaning else "")
    ]
    suspects = inspection.head(top_n)
    if suspects.empty:
        out.append("  none")
    else:
        columns = list(SUSPECT_COLUMNS)
        rows = [[*row[columns], row["image_path"]] for _, row in suspects.iterrows()]
        out.append(_table(rows, [*SUSPECT_COLUMNS.values(), "image_path"]))
    return [*out, ""]


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
    rejected: pd.DataFrame | None = None,
) -> str:
    """The run at a glance, as plain text.

    Dataset sizes per split and class, the checkpoints (epochs, learning rates, val loss), the
    accuracy per split, the mispredicted test images, the spread of the top-k influences, how often
    the proponents and opponents of mispredicted test images share their mistake, and the ``top_n``
    most helpful and most harmful training images and the ``top_n`` most suspicious labels.
    """
    return "\n".join(
        [
            f"TracIn influence report: {version}",
            "",
            *dataset_section(manifest, rejected),
            *checkpoints_section(checkpoints),
            *accuracy_section(metrics),
            *mispredictions_section(test_pred, train_pred),
            *influence_section(topk, k),
            *same_error_section(test_pred, cross),
            *influencers_section(influential, top_n),
            *suspects_section(inspection, top_n),
        ]
    )
