"""A training run on disk: :func:`fit` trains a version's model and writes its model files
(checkpoints, the best model, history, checkpoints.json, the training curves), resumable from its
scratch folder; :func:`starting_weights` reads the backbone weights a run starts from. The
train_model rule and the k-fold trainings (train_fold) both train through them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd
import torch

from tracinflow._util.device import select_device
from tracinflow._util.files import save_figure, write_csv, write_json, write_parquet
from tracinflow.data.split import class_names_of, split_rows
from tracinflow.io.checkpoints import (
    file_sha256,
    read_backbone_weights,
    read_train_state,
    save_checkpoint,
    save_train_state,
)
from tracinflow.io.common import load_cache, optional_input
from tracinflow.plots.training import plot_training_curves
from tracinflow.train.trainer import HISTORY_COLUMNS, Trainer, resolve_settings


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
    train_idx=None,
) -> dict:
    """Train the two stages and write the model files; returns the training summary.

    ``files`` names them: ``epochs`` (one checkpoint file per ``stage2.checkpoint_epochs``, in
    epoch order), ``stage1_epochs`` (the same of ``stage1.checkpoint_epochs``, when any),
    ``best``, ``history``, ``checkpoints`` (checkpoints.json), ``curves`` and, optionally,
    ``trajectory`` (every training image's loss, margin and correctness per epoch, by
    ``train_idx``, the dataset idx of each training row). While training, the checkpoints, the
    best model, the history and the resume state live in the folder ``scratch``; they move into
    place once the run has finished, so a killed run leaves no model file that looks complete, and
    started again with the same settings and data it continues after its last completed epoch
    (Snakemake deletes a job's outputs before it reruns it, never the scratch folder), with the
    same result as an uninterrupted run. ``epoch_callback(stage, epoch)`` runs after each epoch's
    state is saved (tests use it to simulate a kill).
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
    _finish(trainer, files, final, work, scratch, train_idx)
    return trainer.summary()


def fit_version(
    manifest: pd.DataFrame,
    train_images,
    train_labels,
    inputs,
    settings: dict,
    files: Mapping,
    scratch,
    *,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    train_idx=None,
) -> dict:
    """:func:`fit` as a version trains: early-stopping on the manifest's val split (its cached
    images, ``inputs["val"]``), as many classes as the manifest names, from the version's
    starting weights (:func:`starting_weights`)."""
    val = split_rows(manifest, "val")
    return fit(
        train_images,
        train_labels,
        load_cache(inputs["val"]),
        val["label"].to_numpy(),
        num_classes=len(class_names_of(manifest)),
        settings=settings,
        files=files,
        scratch=scratch,
        threads=threads,
        log=log,
        pretrained_state=starting_weights(inputs, settings),
        train_idx=train_idx,
    )


def _finish(trainer: Trainer, files: Mapping, final: dict, work: dict, scratch, train_idx) -> None:
    """Move the run's files from the scratch folder into place, then write checkpoints.json, the
    trajectory and the training curves, and remove the resume state and the (then empty) scratch
    folder."""
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
    if files.get("trajectory"):
        write_parquet(files["trajectory"], trainer.trajectory_frame(train_idx))
    save_figure(plot_training_curves(_history_frame(trainer.progress.history)), files["curves"])
    (Path(scratch) / TRAIN_STATE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the scratch folder, unless it holds other files
        Path(scratch).rmdir()
