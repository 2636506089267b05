"""The training rules: build_train_set, train_model, download_weights.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them), its ``threads`` and a ``log`` function; it reads, calls the library, and writes
every output atomically.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd

from tracinflow._util.files import write_parquet
from tracinflow._util.tables import descending_rank
from tracinflow.analysis.rankings import suspicion_scores
from tracinflow.data import DataError
from tracinflow.data.marks import MarkedImages, marked_images, marks_table
from tracinflow.data.split import class_names_of, split_rows
from tracinflow.data.train_set import (
    apply_cleaning,
    apply_listed_cleaning,
    reference_probabilities,
    subset_train_set,
    without_images,
)
from tracinflow.data.train_set import build_train_set as noisy_train_set
from tracinflow.io.checkpoints import fetch_weights
from tracinflow.io.common import version_split
from tracinflow.io.training import fit_version

# --- build_train_set ----------------------------------------------------------------------------


def _cleaning_scores(ranking: str, source_set: pd.DataFrame, idx, inputs) -> np.ndarray:
    """The suspicion score of each ``idx`` under ``ranking``; ``oracle`` scores the planted flips
    1 and the rest 0 (the control that drops exactly them; it needs no suspicion scores)."""
    if ranking == "oracle":
        return source_set.set_index("idx").loc[idx, "noisy"].to_numpy(np.float64)
    return suspicion_scores(ranking, idx, pd.read_parquet(inputs["source_suspicion"]))


def _by_ranking(inputs, clean: dict, source_set, predictions, log) -> pd.DataFrame:
    """The source version's training set with its top suspects (by ``clean["ranking"]``) dropped
    or relabelled."""
    idx = source_set.loc[~source_set["dropped"].to_numpy(bool), "idx"].to_numpy(np.int64)
    scores = _cleaning_scores(clean["ranking"], source_set, idx, inputs)
    suspects = pd.DataFrame({"train_idx": idx, "rank": descending_rank(scores, idx)})
    train_set, acted = apply_cleaning(
        source_set,
        suspects,
        fraction=clean["fraction"],
        count=clean["count"],
        action=clean["action"],
        predicted=predictions[["idx", "pred"]],
    )
    flips = int(source_set.set_index("idx").loc[acted, "noisy"].sum())
    log(
        f"cleaning {clean['from']}: {clean['action']} {len(acted)} top suspects by "
        f"{clean['ranking']}; {flips} of them carry a planted flip (of "
        f"{int(source_set['noisy'].sum())} planted)"
    )
    return train_set


def read_marks(
    path, source_train_set: pd.DataFrame, manifest: pd.DataFrame, source: str = "the source"
) -> MarkedImages:
    """The idx a marks CSV (:mod:`tracinflow.data.marks`) acts on and keeps, checked against the
    source version's training set and the manifest."""
    what = f"marks file {path}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            lines = [(reader.line_num, cells) for cells in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{what}: not a CSV file of UTF-8 text ({err})") from None
    table = marks_table(lines, what)
    return marked_images(table, source_train_set, manifest, what=what, source=source)


def _by_list(inputs, clean: dict, source_set, predictions, log) -> pd.DataFrame:
    """The source version's training set with the images its marks file marks mislabeled dropped
    or relabelled."""
    manifest = pd.read_parquet(inputs["manifest"])
    marked = read_marks(inputs["marks"], source_set, manifest, source=clean["from"])
    train_set = apply_listed_cleaning(
        source_set, marked.acted, action=clean["action"], predicted=predictions[["idx", "pred"]]
    )
    planted = int(source_set["noisy"].sum())
    flips = int(source_set.set_index("idx").loc[marked.acted, "noisy"].sum())
    carried = f"; {flips} of them carry a planted flip (of {planted} planted)" if planted else ""
    log(
        f"cleaning {clean['from']} by the list {inputs['marks']}: {clean['action']} "
        f"{len(marked.acted)} images marked mislabeled, keep {len(marked.fine)} marked fine"
        + carried
    )
    return train_set


def _cleaned(inputs, clean: dict, log) -> pd.DataFrame:
    """The source version's training set cleaned by its marks file (``clean["list"]``) or of its
    top suspects by a ranking."""
    source_set = pd.read_parquet(inputs["source_train_set"])
    predictions = pd.read_parquet(inputs["source_predictions"])
    by = _by_list if clean.get("list") else _by_ranking
    return by(inputs, clean, source_set, predictions, log)


def _with_noise(inputs, label_noise: dict | None, log) -> pd.DataFrame:
    """The manifest's train split with the version's planted label noise (none without it)."""
    manifest = pd.read_parquet(inputs["manifest"])
    train = split_rows(manifest, "train")
    reference_probs = None
    if label_noise and label_noise["mode"] == "confusing":
        reference = pd.read_parquet(inputs["reference"])
        reference_probs = reference_probabilities(train, reference, str(inputs["reference"]))
    noise = {key: label_noise[key] for key in ("rate", "seed", "mode")} if label_noise else None
    train_set = noisy_train_set(
        train[["idx", "label"]],
        noise,
        reference_probs,
        num_classes=len(class_names_of(manifest)),
    )
    log(
        f"training set: {len(train_set)} images, {int(train_set['noisy'].sum())} labels flipped"
        + (f" ({label_noise['mode']}, rate {label_noise['rate']})" if label_noise else "")
    )
    return train_set


def _subset(inputs, subset: dict, log) -> pd.DataFrame:
    """The source version's training set, all of it, a seeded fraction of it, or without the
    images of a removal set (input ``removal``, a CSV with column ``idx``)."""
    source_set = pd.read_parquet(inputs["source_train_set"])
    if subset.get("remove"):
        removal = inputs["removal"]
        removed = pd.read_csv(removal)["idx"].to_numpy(np.int64)
        train_set = without_images(source_set, removed, f"removal set {removal}")
        how = f"without the {len(removed)} images of removal set {subset['remove']}"
    else:
        train_set = subset_train_set(source_set, subset.get("fraction"), subset.get("seed", 0))
        how = (
            f"a fraction {subset['fraction']} (seed {subset.get('seed', 0)})"
            if subset.get("fraction") is not None
            else "all of it"
        )
    kept = int((~train_set["dropped"]).sum())
    log(f"training set: {kept} of the images version {subset['from']} trains on, {how}")
    return train_set


def build_train_set(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """train_set.parquet of a version: the manifest's train split with planted label noise
    (``params["label_noise"]``), or a source version's training set cleaned of its top suspects
    (``params["clean"]``, its ranking resolved) or of the images its marks file (input ``marks``)
    marks mislabeled, or a subset of a source version's training set (``params["subset"]``). Every
    check runs before the one output is written."""
    clean, subset = params["clean"], params.get("subset")
    if subset:
        train_set = _subset(inputs, subset, log)
    elif clean:
        train_set = _cleaned(inputs, clean, log)
    else:
        train_set = _with_noise(inputs, params["label_noise"], log)
    write_parquet(outputs["train_set"], train_set)
    return train_set


# --- train_model --------------------------------------------------------------------------------


def train_model(inputs, outputs, params, threads=1, log=print) -> dict:
    """Train one version on its training set (``params["settings"]``: seed, model, training),
    early-stopping on val; writes the model files the rule declares."""
    manifest = pd.read_parquet(inputs["manifest"])
    train_images, train_labels, train_idx = version_split(
        manifest, "train", inputs["train_set"], inputs["train"]
    )
    summary = fit_version(
        manifest,
        train_images,
        train_labels,
        inputs,
        params["settings"],
        outputs,
        params["scratch"],
        threads=threads,
        log=log,
        train_idx=train_idx,
    )
    log(f"best epoch {summary['best_epoch']}, val loss {summary['best_val_loss']:.4f}")
    return summary


# --- download_weights ---------------------------------------------------------------------------


def download_weights(inputs, outputs, params, threads=1, log=print):
    """torchvision's ImageNet weights of ``params["arch"]``, where the network allows."""
    path = fetch_weights(params["arch"], outputs["weights"])
    log(f"wrote {path}")
    return path
