"""Workflow stages as plain functions over file paths: what each rule's script calls.

They read the contracted files (manifest, caches, checkpoints), call the library and write the
contracted outputs, so a script stays a few lines and the stages are testable without Snakemake.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow import io
from tracinflow.data import load_cache, split_rows
from tracinflow.model import load_checkpoint, loss_from_checkpoint
from tracinflow.predict import false_predictions, metrics, plot_confusion_matrix, predict_split
from tracinflow.training import select_device, train_model


def class_names_of(manifest: pd.DataFrame) -> list[str]:
    """Display names by label."""
    return manifest.drop_duplicates("label").sort_values("label")["class"].tolist()


def train_version(manifest_path, caches: dict, settings: dict, out_dir, threads: int, log) -> dict:
    """Train one version on the train split, early-stopping on val; writes the model folder."""
    manifest = pd.read_parquet(manifest_path)
    train, val = split_rows(manifest, "train"), split_rows(manifest, "val")
    return train_model(
        load_cache(caches["train"]),
        train["label"].to_numpy(),
        load_cache(caches["val"]),
        val["label"].to_numpy(),
        num_classes=len(class_names_of(manifest)),
        settings=settings,
        out_dir=out_dir,
        threads=threads,
        log=log,
    )


def predict_version(
    manifest_path, caches: dict, checkpoint_path, outputs: dict, threads: int, batch_size: int, log
) -> dict:
    """Predictions of every split with the best model, metrics, mispredictions, confusion matrix."""
    import torch

    torch.set_num_threads(threads)
    manifest = pd.read_parquet(manifest_path)
    names = class_names_of(manifest)
    device = select_device("auto")
    model, checkpoint = load_checkpoint(checkpoint_path, device=device)
    loss_fn = loss_from_checkpoint(checkpoint).to(device)
    log(f"predicting with {checkpoint_path} (epoch {checkpoint['epoch']}) on {device}")
    predictions = {}
    for split in ("train", "val", "test"):
        rows = split_rows(manifest, split)
        predictions[split] = predict_split(
            model,
            load_cache(caches[split]),
            rows["label"].to_numpy(),
            rows["idx"].to_numpy(np.int64),
            loss_fn,
            batch_size=batch_size,
            device=device,
        )
        accuracy = float((predictions[split]["pred"] == predictions[split]["label"]).mean())
        log(f"{split}: {len(rows)} images, accuracy {accuracy:.4f}")
        io.write_parquet(outputs[split], predictions[split])
    summary = metrics(predictions, names)
    io.write_json(outputs["metrics"], summary)
    io.write_csv(outputs["false_test"], false_predictions(predictions["test"], manifest, names))
    io.write_csv(outputs["false_train"], false_predictions(predictions["train"], manifest, names))
    plot_confusion_matrix(np.asarray(summary["confusion_matrix"]), names, outputs["confusion"])
    return summary
