"""Accuracy, loss and per-class metrics of a version's predictions, and its mispredictions."""

from __future__ import annotations

import numpy as np
import pandas as pd


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
