"""The predict rule: every split through a version's best model, its metrics and mistakes.

``predict(inputs, outputs, params, threads, log)`` takes the rule's named inputs, outputs and params,
reads, calls the library, and writes every output atomically.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracinflow._util.files import save_figure, write_csv, write_json, write_parquet
from tracinflow.analysis.metrics import false_predictions, metrics
from tracinflow.data.split import class_names_of
from tracinflow.io.checkpoints import load_for_inference
from tracinflow.io.common import version_split
from tracinflow.plots.training import plot_confusion_matrix
from tracinflow.train.predict import predict_split


def predict(inputs, outputs, params, threads=1, log=print) -> dict:
    """Predictions of every split with the best model (train: the version's training set, with its
    training labels), metrics, mispredictions, confusion matrix."""
    manifest = pd.read_parquet(inputs["manifest"])
    names = class_names_of(manifest)
    model, checkpoint, loss_fn, device = load_for_inference(
        inputs["best"], threads, params["device"], memory_format=params["memory_format"]
    )
    log(f"predicting with {inputs['best']} (epoch {checkpoint['epoch']}) on {device}")
    predictions = {}
    for split in ("train", "val", "test"):
        images, labels, idx = version_split(manifest, split, inputs["train_set"], inputs[split])
        predictions[split] = predict_split(
            model, images, labels, idx, loss_fn, batch_size=params["batch_size"], device=device
        )
        accuracy = float((predictions[split]["pred"] == predictions[split]["label"]).mean())
        log(f"{split}: {len(labels)} images, accuracy {accuracy:.4f}")
        write_parquet(outputs[split], predictions[split])
    summary = metrics(predictions, names)
    write_json(outputs["metrics"], summary)
    write_csv(outputs["false_test"], false_predictions(predictions["test"], manifest, names))
    write_csv(outputs["false_train"], false_predictions(predictions["train"], manifest, names))
    save_figure(
        plot_confusion_matrix(np.asarray(summary["confusion_matrix"]), names), outputs["confusion"]
    )
    log(f"test accuracy {summary['test']['accuracy']:.4f}")
    return summary
