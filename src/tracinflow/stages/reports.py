"""The report rules: report_tables, report_plots, report_galleries, noise_detection.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them), its ``threads`` and a ``log`` function; it reads, calls the analysis and plots
packages, and writes every output atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tracinflow._util.files import read_json, save_figure, write_csv, write_parquet, write_text
from tracinflow.analysis.detection import detection_curve, detection_rankings, detection_table
from tracinflow.analysis.report_text import influence_report_text
from tracinflow.analysis.reports import (
    class_influence,
    influential_samples,
    mislabeled_inspection,
    misprediction_cross_analysis,
)
from tracinflow.data.images import Thumbnails
from tracinflow.data.split import class_names_of
from tracinflow.io.common import read_report_csv
from tracinflow.plots.dashboards import (
    plot_class_influence_heatmap,
    plot_influence_distributions,
    plot_self_influence_distribution,
    plot_top_influencers,
)
from tracinflow.plots.detection import plot_detection
from tracinflow.plots.galleries import (
    confident_mistakes,
    misprediction_gallery,
    no_gallery_reason,
    suspects_gallery,
)

# --- report_tables ------------------------------------------------------------------------------


def report_tables(inputs, outputs, params, threads=1, log=print) -> dict:
    """Every report table of one version and its text report. ``params``: ``version``,
    ``ranking`` (of the inspection report), ``top_n`` (influencers and suspects in the text) and
    ``k`` (the top-k asked for: the text notes when fewer rows per kind were available)."""
    ranking, version = params["ranking"], params["version"]
    manifest = pd.read_parquet(inputs["manifest"])
    names = class_names_of(manifest)
    train_pred, test_pred = pd.read_parquet(inputs["train"]), pd.read_parquet(inputs["test"])
    topk = pd.read_parquet(inputs["topk"])
    cross = misprediction_cross_analysis(topk, test_pred, train_pred, names)
    inspection = mislabeled_inspection(
        pd.read_parquet(inputs["suspicion"]), train_pred, cross, manifest, names, ranking
    )
    influential = influential_samples(topk, train_pred, manifest, names)
    tables = {
        "cross": (cross, write_csv),
        "cross_parquet": (cross, write_parquet),
        "inspection": (inspection, write_csv),
        "influential": (influential, write_csv),
        "class_influence": (class_influence(topk, test_pred, train_pred, names), write_csv),
    }
    for key, (frame, write) in tables.items():
        write(outputs[key], frame)
        log(f"{version}: wrote {outputs[key]} ({len(frame)} rows)")
    k = params.get("k")
    if k is None:  # the top-k table's own depth
        k = int(topk["rank"].max()) if len(topk) else 0
    text = influence_report_text(
        version=version, manifest=manifest, metrics=read_json(inputs["metrics"]),
        checkpoints=read_json(inputs["checkpoints"]), test_pred=test_pred, train_pred=train_pred,
        topk=topk, cross=cross, inspection=inspection, influential=influential, k=k,
        top_n=params["top_n"], rejected=pd.read_csv(inputs["rejected"], keep_default_na=False),
    )  # fmt: skip
    write_text(outputs["text"], text)
    log(f"{version}: wrote {outputs['text']} ({text.count(chr(10))} lines)")
    return {key: frame for key, (frame, _) in tables.items()}


# --- report_plots -------------------------------------------------------------------------------


def report_plots(inputs, outputs, params, threads=1, log=print) -> None:
    """The four dashboards of one version from its top-k table and report tables."""
    names = class_names_of(pd.read_parquet(inputs["manifest"], columns=["label", "class"]))
    test = pd.read_parquet(inputs["test"], columns=["idx", "label"])
    topk = pd.read_parquet(inputs["topk"])
    figures = {
        "distributions": lambda: plot_influence_distributions(
            topk, test.set_index("idx")["label"], names
        ),
        "top_influencers": lambda: plot_top_influencers(
            read_report_csv(inputs["influential"]), params["top_n"]
        ),
        "heatmap": lambda: plot_class_influence_heatmap(read_report_csv(inputs["class_influence"])),
        "self_influence": lambda: plot_self_influence_distribution(
            read_report_csv(inputs["inspection"]), params["suspects"]
        ),
    }
    for key, draw in figures.items():
        save_figure(draw(), outputs[key])
        log(f"wrote {outputs[key]}")


# --- report_galleries ---------------------------------------------------------------------------


def _clear_old_galleries(folder: Path) -> None:
    """Remove the galleries of an earlier run, so the folder shows this run's mistakes only."""
    for old in [*folder.glob("test_*.png"), folder / "README.txt"]:
        if old.is_file():
            old.unlink()


def _gallery_test_row(row, paths: pd.Series, names) -> dict:
    idx = int(row.idx)
    return {
        "idx": idx,
        "path": paths.get(idx),
        "true_label": names[int(row.label)],
        "predicted_label": names[int(row.pred)],
        "confidence": float(row.confidence),
    }


def report_galleries(inputs, outputs, params, threads=1, log=print) -> list[Path]:
    """``<galleries>/mispredictions/test_<idx>.png`` for the most confident mispredicted test
    images (``params["galleries"]["mispredictions"]`` of them), with their proponents and
    opponents from the cross analysis, and ``<galleries>/suspects.png``; thumbnails from the
    original files under ``inputs["root"]``, which must hold the bytes the manifest recorded
    (:class:`~tracinflow.data.images.ImageChanged` otherwise). With no gallery to draw the folder holds a
    ``README.txt`` saying why. Returns the files written."""
    settings = params["galleries"]
    thumb_px, limit = settings["thumbnail_px"], settings["mispredictions"]
    manifest = pd.read_parquet(
        inputs["manifest"], columns=["idx", "path", "label", "class", "sha256"]
    )
    # each original file is checked against the manifest's sha256 before it is drawn
    sha256 = {
        path: sha for path, sha in zip(manifest["path"], manifest["sha256"], strict=True)
        if isinstance(sha, str)
    }  # fmt: skip
    thumbnails, out_dir = Thumbnails(inputs["root"], sha256), Path(outputs["galleries"])
    names = np.asarray(class_names_of(manifest), dtype=object)
    paths = manifest.set_index("idx")["path"]
    predictions = pd.read_parquet(inputs["test"], columns=["idx", "label", "pred", "confidence"])
    mistakes, chosen = confident_mistakes(predictions, limit)
    cross = read_report_csv(inputs["cross"])
    cross["image_path"] = cross["train_idx"].map(paths)
    folder = out_dir / "mispredictions"
    folder.mkdir(parents=True, exist_ok=True)
    _clear_old_galleries(folder)
    written: list[Path] = []
    if chosen.empty:
        reason = no_gallery_reason(mistakes, limit)
        write_text(folder / "README.txt", reason)
        written.append(folder / "README.txt")
        log(reason.strip())
    by_test = dict(tuple(cross.groupby("test_idx"))) if len(cross) else {}
    for i, row in enumerate(chosen.itertuples(index=False), start=1):
        test_row = _gallery_test_row(row, paths, names)
        neighbours = by_test.get(test_row["idx"], cross.iloc[0:0])
        figure = misprediction_gallery(
            test_row,
            neighbours[neighbours["kind"] == "proponent"],
            neighbours[neighbours["kind"] == "opponent"],
            thumbnails,
            thumb_px=thumb_px,
        )
        written.append(save_figure(figure, folder / f"test_{test_row['idx']}.png"))
        log(
            f"gallery {i}/{len(chosen)}: test {test_row['idx']} "
            f"({test_row['confidence']:.2f} confident) -> {written[-1]}"
        )
    inspection = read_report_csv(inputs["inspection"])
    figure = suspects_gallery(inspection, thumbnails, settings["suspects"], thumb_px)
    written.append(save_figure(figure, out_dir / "suspects.png"))
    log(f"wrote {written[-1]} ({min(settings['suspects'], len(inspection))} suspects)")
    return written


# --- noise_detection ----------------------------------------------------------------------------


def noise_detection(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """Score one version's suspicion rankings against its planted flips: the table (share found at
    5/10/20% inspected, ROC AUC, average precision; ``params["default"]`` marked) and the plot of
    the detection curves."""
    rankings, flipped = detection_rankings(
        pd.read_parquet(inputs["train_set"]), pd.read_parquet(inputs["suspicion"])
    )
    default = params["default"]
    table = detection_table(rankings, flipped, default)
    curves = {name: detection_curve(scores, flipped) for name, scores in rankings.items()}
    title = f"Finding the planted label flips ({int(flipped.sum())} of {len(flipped)} images)"
    save_figure(plot_detection(curves, default, title=title), outputs["plot"])
    write_csv(outputs["table"], table)
    for row in table.itertuples(index=False):
        log(
            f"{row.ranking}{' (default)' if row.default else ''}: found "
            f"{row.found_at_5pct:.1%} / {row.found_at_10pct:.1%} / {row.found_at_20pct:.1%} "
            f"of the flips in the top 5/10/20%, ROC AUC {row.roc_auc:.3f}, "
            f"AP {row.average_precision:.3f}"
        )
    return table
