"""Predictions of a trained model on a split, the metrics over splits, and the mispredictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from tracinflow.io import atomic_path
from tracinflow.loss import WeightedSmoothedCrossEntropy
from tracinflow.model import to_input
from tracinflow.training import as_image_array, iter_batches

PREDICTION_COLUMNS = ["idx", "label", "pred", "confidence", "loss", "probs"]


@torch.inference_mode()
def predict_split(
    model: nn.Module,
    images,
    labels,
    idx,
    loss_fn: WeightedSmoothedCrossEntropy,
    batch_size: int = 256,
    device="cpu",
    arch: dict | None = None,
) -> pd.DataFrame:
    """One row per image: ``idx, label, pred, confidence, loss, probs``, in the input's row order.

    ``images``: uint8 (N, H, W, 3) (the memory-mapped cache) or a ``.npy`` path; ``labels``/``idx``:
    per-row arrays. The model runs in eval mode in float32 (no autocast, so the numbers match a plain
    forward pass); ``loss`` is the per-sample training loss ``w_y * CE_eps`` with the true label,
    ``confidence`` the largest softmax probability, ``probs`` all K probabilities.
    ``arch`` (mean/std) defaults to ``model.arch``, which :func:`tracinflow.model.build_model` sets.
    """
    images = as_image_array(images)
    labels = np.asarray(labels, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    if not len(images) == len(labels) == len(idx):
        raise ValueError(f"{len(images)} images, {len(labels)} labels, {len(idx)} idx: must match")
    device = torch.device(device)
    arch = arch if arch is not None else model.arch
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn.to(device)
    chunks_logits, chunks_loss = [], []
    for batch, y in iter_batches(images, labels, np.arange(len(labels)), batch_size):
        logits = model(to_input(batch, arch, device)).float()
        chunks_logits.append(logits.cpu())
        chunks_loss.append(loss_fn(logits, y.to(device), reduction="none").cpu())
    logits = torch.cat(chunks_logits) if chunks_logits else torch.zeros(0, arch["num_classes"])
    losses = torch.cat(chunks_loss) if chunks_loss else torch.zeros(0)
    probs = torch.softmax(logits, dim=1)
    confidence, pred = probs.max(dim=1)
    return pd.DataFrame(
        {
            "idx": idx,
            "label": labels,
            "pred": pred.numpy().astype(np.int64),
            "confidence": confidence.double().numpy(),
            "loss": losses.double().numpy(),
            "probs": probs.double().tolist(),
        },
        columns=PREDICTION_COLUMNS,
    )


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return cm


def per_class_metrics(cm: np.ndarray, class_names) -> dict:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    out = {}
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        predicted, support = int(cm[:, k].sum()), int(cm[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[str(name)] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def metrics(predictions_by_split: dict[str, pd.DataFrame], class_names) -> dict:
    """``{split: {"accuracy", "loss"}, "per_class": {...}, "confusion_matrix": [[...]]}``.

    Accuracy and mean per-sample loss for every split given; per-class precision/recall/F1/support
    and the confusion matrix (rows true, columns predicted) on the test split (val when no test
    split is given, else train).
    """
    out: dict = {}
    for split, frame in predictions_by_split.items():
        n = len(frame)
        out[split] = {
            "accuracy": float((frame["pred"] == frame["label"]).mean()) if n else float("nan"),
            "loss": float(frame["loss"].mean()) if n else float("nan"),
            "n": int(n),
        }
    for split in ("test", "val", "train"):
        if split in predictions_by_split:
            frame = predictions_by_split[split]
            break
    else:
        raise ValueError("metrics: no test, val or train predictions given")
    cm = confusion_matrix(frame["label"], frame["pred"], len(class_names))
    out["per_class"] = per_class_metrics(cm, class_names)
    out["confusion_matrix"] = cm.tolist()
    return out


def false_predictions(
    pred_df: pd.DataFrame, manifest_rows: pd.DataFrame, class_names
) -> pd.DataFrame:
    """The wrong predictions: ``index, true_label, predicted_label, confidence, image_path``.

    ``index`` is the dataset ``idx``; labels are class names; ``image_path`` is the manifest's
    ``path`` (relative to the dataset root). Most confident mistakes first, ties by index.
    """
    names = np.asarray([str(c) for c in class_names], dtype=object)
    wrong = pred_df.loc[pred_df["pred"] != pred_df["label"], ["idx", "label", "pred", "confidence"]]
    paths = manifest_rows.set_index("idx")["path"]
    missing = ~wrong["idx"].isin(paths.index)
    if missing.any():
        raise KeyError(
            f"{int(missing.sum())} predicted idx not in the manifest, e.g. {wrong['idx'][missing].iloc[0]}"
        )
    out = pd.DataFrame(
        {
            "index": wrong["idx"].to_numpy(np.int64),
            "true_label": names[wrong["label"].to_numpy(np.int64)],
            "predicted_label": names[wrong["pred"].to_numpy(np.int64)],
            "confidence": wrong["confidence"].to_numpy(np.float64),
            "image_path": paths.loc[wrong["idx"]].to_numpy(),
        }
    )
    return out.sort_values(
        ["confidence", "index"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)


def plot_confusion_matrix(cm, class_names, path, title: str = "Confusion matrix (test)") -> None:
    """Counts as a heat map, class names on both axes, each cell annotated; written atomically."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = len(class_names)
    size = max(4.5, 0.6 * k + 2.5)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > threshold else "black",
                fontsize=8,
            )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
