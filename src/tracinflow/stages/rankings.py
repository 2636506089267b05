"""The ranking rules: cleanlab_logistic, train_fold, train_run, validation_influence,
suspicion_scores.

Each function takes its rule's ``inputs``, ``outputs`` and ``params`` (mappings by the names the
rule gives them), its ``threads`` and a ``log`` function; it reads, calls the library, and writes
every output atomically.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from tracinflow._util.device import select_device
from tracinflow._util.files import write_parquet
from tracinflow.analysis.confident_learning import (
    fold_assignment,
    label_quality,
    logistic_out_of_fold,
)
from tracinflow.analysis.rankings import suspicion_table
from tracinflow.config import checkpoint_name
from tracinflow.data.cache import CacheRows
from tracinflow.data.split import class_names_of
from tracinflow.influence.validation import validation_signals
from tracinflow.io.checkpoints import load_for_inference
from tracinflow.io.common import optional_input, version_split
from tracinflow.io.factor_store import load_checkpoints
from tracinflow.io.training import fit_version, starting_weights
from tracinflow.train.predict import predict_split
from tracinflow.train.trainer import pretrained_features

OUT_OF_FOLD_COLUMNS = ["train_idx", "label", "fold", "probs"]


def _out_of_fold_frame(idx, labels, fold, probs) -> pd.DataFrame:
    return pd.DataFrame(
        {"train_idx": idx, "label": labels, "fold": fold, "probs": list(np.asarray(probs))},
        columns=OUT_OF_FOLD_COLUMNS,
    )


def cleanlab_logistic(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """Out-of-fold probabilities of every training image from a logistic regression cross-validated
    (``params["folds"]``) on the frozen pretrained backbone's features, with the version's labels."""
    torch.set_num_threads(threads)
    manifest = pd.read_parquet(inputs["manifest"])
    images, labels, idx = version_split(manifest, "train", inputs["train_set"], inputs["train"])
    settings = params["settings"]
    state = starting_weights(inputs, settings)
    if state is None:
        raise ValueError("cleanlab_logistic needs the pretrained backbone's weights file")
    num_classes = len(class_names_of(manifest))
    device = select_device(settings["training"]["device"])
    features = pretrained_features(settings, num_classes, images, state, device, log)
    folds, seed = int(params["folds"]), int(params["seed"])
    probs = logistic_out_of_fold(features, labels, folds, seed, num_classes, workers=threads)
    accuracy = float((probs.argmax(1) == labels).mean())
    log(
        f"logistic regression on {features.shape[1]} frozen features, {folds} folds: out-of-fold "
        f"agreement with the training labels {accuracy:.4f}"
    )
    frame = _out_of_fold_frame(idx, labels, fold_assignment(labels, folds, seed), probs)
    write_parquet(outputs["probs"], frame)
    return frame


def _subset(images: CacheRows, rows: np.ndarray) -> CacheRows:
    """Some rows of a version's training images, still read from the memory-mapped cache."""
    return CacheRows(images.images, images.positions[rows])


def train_fold(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """One fold of k-fold training: the version's model trained (same settings) on the training
    images outside fold ``params["fold"]`` of ``params["folds"]``, then its probabilities on the
    images inside it, which it never saw."""
    manifest = pd.read_parquet(inputs["manifest"])
    images, labels, idx = version_split(manifest, "train", inputs["train_set"], inputs["train"])
    settings = params["settings"]
    fold, folds = int(params["fold"]), int(params["folds"])
    assigned = fold_assignment(labels, folds, int(settings["seed"]))
    held_out = np.flatnonzero(assigned == fold)
    trained = np.flatnonzero(assigned != fold)
    log(
        f"fold {fold + 1} of {folds}: training on {len(trained)} images, predicting {len(held_out)}"
    )
    files, _ = _fit_in(
        params["scratch"],
        _subset(images, trained),
        labels[trained],
        manifest,
        inputs,
        settings,
        threads,
        log,
    )
    model, _, loss_fn, device = load_for_inference(
        files["best"], threads, settings["training"]["device"],
        memory_format=settings["training"]["memory_format"],
    )  # fmt: skip
    predicted = predict_split(
        model, _subset(images, held_out), labels[held_out], idx[held_out], loss_fn, device=device
    )
    probs = np.stack(predicted["probs"].to_numpy())
    frame = _out_of_fold_frame(idx[held_out], labels[held_out], assigned[held_out], probs)
    agreement = float((probs.argmax(1) == labels[held_out]).mean())
    log(f"fold {fold + 1}: held-out agreement with the training labels {agreement:.4f}")
    write_parquet(outputs["probs"], frame)
    shutil.rmtree(params["scratch"])
    return frame


def _fit_in(work, images, labels, manifest, inputs, settings, threads, log, train_idx=None):
    """The version's model trained (its settings, its val split) on ``images`` with every file
    in the folder ``work``: a training kept for what it predicts or records, not for its
    checkpoints. With ``train_idx`` it records the trajectory too (``files["trajectory"]``).
    Returns ``fit``'s files and summary. ``work`` outlives a killed job: started again with the
    same settings and data, the training resumes after its last completed epoch (as
    ``train_model`` does); the caller removes it once its output is in place."""
    files = {name: f"{work}/{name}" for name in ("best", "history", "checkpoints", "curves")}
    files["curves"] += ".png"
    files["epochs"] = [
        f"{work}/{checkpoint_name(2, e)}.pt"
        for e in settings["training"]["stage2"]["checkpoint_epochs"]
    ]
    files["stage1_epochs"] = [
        f"{work}/{checkpoint_name(1, e)}.pt"
        for e in settings["training"]["stage1"].get("checkpoint_epochs", [])
    ]
    if train_idx is not None:
        files["trajectory"] = f"{work}/trajectory"
    summary = fit_version(
        manifest,
        images,
        labels,
        inputs,
        settings,
        files,
        f"{work}/scratch",
        threads=threads,
        log=log,
        train_idx=train_idx,
    )
    return files, summary


#: run k of rankings.trajectory_runs trains with the version's seed + RUN_SEED_STEP * k
RUN_SEED_STEP = 100


def train_run(inputs, outputs, params, threads=1, log=print) -> dict:
    """Run ``params["run"]`` (1, 2, ...) of rankings.trajectory_runs: the version's model trained
    again on its whole training set, same settings and labels, with training seed ``seed +
    RUN_SEED_STEP * run``; only its trajectory is kept, which the trajectory rankings average with
    the version's own. Returns the training summary."""
    manifest = pd.read_parquet(inputs["manifest"])
    images, labels, idx = version_split(manifest, "train", inputs["train_set"], inputs["train"])
    run = int(params["run"])
    settings = params["settings"]
    settings = {**settings, "seed": int(settings["seed"]) + RUN_SEED_STEP * run}
    log(f"run {run}: training seed {settings['seed']}, {len(idx)} training images")
    files, summary = _fit_in(
        params["scratch"], images, labels, manifest, inputs, settings, threads, log, idx
    )
    Path(outputs["trajectory"]).parent.mkdir(parents=True, exist_ok=True)
    os.replace(files["trajectory"], outputs["trajectory"])
    shutil.rmtree(params["scratch"])
    log(f"run {run}: best epoch {summary['best_epoch']}, val loss {summary['best_val_loss']:.4f}")
    return summary


def validation_influence(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """The two validation-set signals of every training image (val_harm, val_opponent)."""
    torch.set_num_threads(threads)
    val = load_checkpoints(list(inputs["val"]))
    train = load_checkpoints(list(inputs["train"]))
    val_pred = pd.read_parquet(inputs["val_predictions"], columns=["idx", "pred"]).set_index("idx")
    train_set = pd.read_parquet(inputs["train_set"]).set_index("idx")
    frame = validation_signals(
        val,
        train,
        val_pred.loc[val[0].idx, "pred"].to_numpy(),
        train_set.loc[train[0].idx, "label"].to_numpy(),
        log=log,
    )
    write_parquet(outputs["validation"], frame)
    return frame


def _folds_frame(paths) -> pd.DataFrame:
    """The k-fold out-of-fold probabilities: every training image exactly once over the folds."""
    frame = pd.concat([pd.read_parquet(path) for path in paths], ignore_index=True)
    if not frame["train_idx"].is_unique:
        raise ValueError("k-fold probabilities: an image is held out by more than one fold")
    return frame


def _cleanlab_inputs(inputs, log) -> dict[str, pd.DataFrame]:
    sources = {}
    logistic = optional_input(inputs, "cleanlab_logistic")
    if logistic:
        sources["cleanlab"] = pd.read_parquet(logistic)
    folds = list(inputs.get("kfold") or [])
    if folds:
        sources["cleanlab_kfold"] = _folds_frame(folds)
    qualities = {}
    for name, frame in sources.items():
        probs = np.stack(frame["probs"].to_numpy())
        qualities[name] = label_quality(frame["train_idx"], frame["label"], probs)
        log(f"{name}: find_label_issues flags {int(qualities[name]['label_issue'].sum())} images")
    return qualities


def suspicion_scores(inputs, outputs, params, threads=1, log=print) -> pd.DataFrame:
    """suspicion_scores.parquet: every ranking's score of every image the version trained on."""
    train_set = pd.read_parquet(inputs["train_set"])
    idx = train_set.loc[~train_set["dropped"].to_numpy(bool), "idx"].to_numpy(np.int64)
    table = suspicion_table(
        idx,
        pd.read_parquet(inputs["self_influence"]),
        pd.read_parquet(inputs["train_predictions"], columns=["idx", "loss"]),
        pd.read_parquet(inputs["error_self_influence"]),
        validation=pd.read_parquet(inputs["validation"]),
        curvature=pd.read_parquet(inputs["curvature_self_influence"]),
        # the version's own run, then its other runs' (rankings.trajectory_runs)
        trajectory=[
            pd.read_parquet(path) for path in [inputs["trajectory"], *(inputs.get("runs") or [])]
        ],
        cleanlab=_cleanlab_inputs(inputs, log),
        seed=int(params["seed"]),
    )
    write_parquet(outputs["scores"], table)
    log(f"suspicion scores of {len(table)} training images: {', '.join(table.columns[1:])}")
    return table
