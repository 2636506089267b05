"""Pictures of a trained model: its training curves and its test confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd


def plot_training_curves(history: pd.DataFrame):
    """Loss and accuracy (train and val) against the epoch, stage 1 then stage 2."""
    from matplotlib.figure import Figure

    x = np.arange(1, len(history) + 1)
    n_stage1 = int((history["stage"] == 1).sum())
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, metric, title in (
        (axes[0], "loss", "Loss (weighted, label-smoothed CE)"),
        (axes[1], "accuracy", "Accuracy"),
    ):
        ax.plot(x, history[f"train_{metric}"], marker=".", label="train")
        ax.plot(x, history[f"val_{metric}"], marker=".", label="val")
        if 0 < n_stage1 < len(history):
            ax.axvline(n_stage1 + 0.5, color="grey", linestyle="--", label="stage 2 starts")
        ax.set_title(title)
        ax.set_xlabel("epoch (stage 1, then stage 2)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves")
    return fig


def plot_confusion_matrix(cm, class_names, title: str = "Confusion matrix (test)"):
    """Counts as a heat map, class names on both axes, each cell annotated."""
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
    return fig
