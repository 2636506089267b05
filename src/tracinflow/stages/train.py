"""The training rules: build_train_set, train_model, download_weights.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them), its ``threads`` and a ``log`` function; it reads, calls the library, and writes
every output atomically.
"""

from __future__ import annotations

import contextlib
import csv
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tracinflow._util.device import select_device
from tracinflow._util.files import save_figure, write_csv, write_json, write_parquet
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
from tracinflow.io.checkpoints import (
    fetch_weights,
    file_sha256,
    read_backbone_weights,
    read_train_state,
    save_checkpoint,
    save_train_state,
)
from tracinflow.io.common import load_cache, optional_input, version_split
from tracinflow.plots.training import plot_training_curves
from tracinflow.train.trainer import HISTORY_COLUMNS, Trainer, resolve_settings

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


def starting_weights(inputs, settings: dict) -> dict | None:
    """The state dict of the backbone weights file a version starts from (its input ``weights``),
    or None when it starts from none."""
    weights = optional_input(inputs, "weights")
    return read_backbone_weights(weights, settings["model"]["arch"]) if weights else None


TRAIN_STATE = "train_state.pt"  # the resume state, in the scratch folder


def _history_frame(history: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(history, columns=HISTORY_COLUMNS)


def fit(
    train_images,
    train_labels,
    val_images,
    val_labels,
    num_classes: int,
    settings: dict,
    files: Mapping,
    scratch,
    *,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    epoch_callback: Callable[[int, int], None] | None = None,
    pretrained_state: dict | None = None,
) -> dict:
    """Train the two stages and write the model files; returns the training summary.

    ``files`` names them: ``epochs`` (one checkpoint file per ``stage2.checkpoint_epochs``, in
    epoch order), ``stage1_epochs`` (the same of ``stage1.checkpoint_epochs``, when any),
    ``best``, ``history``, ``checkpoints`` (checkpoints.json) and ``curves``. While training, the checkpoints, the best model, the history and the resume state live in the folder
    ``scratch``; they move into place once the run has finished, so a killed run leaves no model
    file that looks complete, and started again with the same settings and data it continues
    after its last completed epoch (Snakemake deletes a job's outputs before it reruns it, never
    the scratch folder), with the same result as an uninterrupted run. ``epoch_callback(stage,
    epoch)`` runs after each epoch's state is saved (tests use it to simulate a kill).
    """
    if threads:
        torch.set_num_threads(int(threads))
    device = select_device(resolve_settings(settings)["training"]["device"])
    trainer = Trainer(
        settings, num_classes, train_images, train_labels, val_images, val_labels,
        device=device, pretrained_state=pretrained_state, log=log,
    )  # fmt: skip
    final = {"best": files["best"], "history": files["history"]}
    for stage, key in ((1, "stage1_epochs"), (2, "epochs")):
        epochs = trainer.settings["training"][f"stage{stage}"]["checkpoint_epochs"]
        paths = list(files.get(key) or [])
        if len(paths) != len(epochs):
            raise ValueError(f"{len(paths)} checkpoint files for the stage-{stage} epochs {epochs}")
        final |= {(stage, epoch): path for epoch, path in zip(epochs, paths, strict=True)}
    work = {key: Path(scratch) / Path(path).name for key, path in final.items()}
    state_path = Path(scratch) / TRAIN_STATE
    trainer.resume(read_train_state(state_path, log), source=state_path.name)
    for done in trainer.epochs():
        if done.improved:
            save_checkpoint(work["best"], trainer.checkpoint(done.row))
        if done.checkpoint:
            save_checkpoint(work[(done.stage, done.epoch)], trainer.checkpoint(done.row))
        write_csv(work["history"], _history_frame(trainer.progress.history))
        save_train_state(state_path, trainer.state())
        if epoch_callback is not None:
            epoch_callback(done.stage, done.epoch)
    _finish(trainer, files, final, work, scratch)
    return trainer.summary()


def _finish(trainer: Trainer, files: Mapping, final: dict, work: dict, scratch) -> None:
    """Move the run's files from the scratch folder into place, then write checkpoints.json and
    the training curves, and remove the resume state and the (then empty) scratch folder."""
    for key, path in final.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(work[key], path)
    listed = []
    for c in trainer.progress.checkpoints:
        path = final[(c.get("stage", 2), c["epoch"])]
        listed.append(
            {"stage": c.get("stage", 2), "epoch": c["epoch"], "file": Path(path).name}
            | {key: c[key] for key in ("lr_head", "lr_backbone", "val_loss")}
            | {"sha256": file_sha256(path)}  # verified when factor extraction loads it
        )
    write_json(files["checkpoints"], listed)
    save_figure(plot_training_curves(_history_frame(trainer.progress.history)), files["curves"])
    (Path(scratch) / TRAIN_STATE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the scratch folder, unless it holds other files
        Path(scratch).rmdir()


def train_model(inputs, outputs, params, threads=1, log=print) -> dict:
    """Train one version on its training set (``params["settings"]``: seed, model, training),
    early-stopping on val; writes the model files the rule declares."""
    manifest = pd.read_parquet(inputs["manifest"])
    train_images, train_labels, _ = version_split(
        manifest, "train", inputs["train_set"], inputs["train"]
    )
    val = split_rows(manifest, "val")
    settings = params["settings"]
    summary = fit(
        train_images,
        train_labels,
        load_cache(inputs["val"]),
        val["label"].to_numpy(),
        num_classes=len(class_names_of(manifest)),
        settings=settings,
        files=outputs,
        scratch=params["scratch"],
        threads=threads,
        log=log,
        pretrained_state=starting_weights(inputs, settings),
    )
    log(f"best epoch {summary['best_epoch']}, val loss {summary['best_val_loss']:.4f}")
    return summary


# --- download_weights ---------------------------------------------------------------------------


def download_weights(inputs, outputs, params, threads=1, log=print):
    """torchvision's ImageNet weights of ``params["arch"]``, where the network allows."""
    path = fetch_weights(params["arch"], outputs["weights"])
    log(f"wrote {path}")
    return path
