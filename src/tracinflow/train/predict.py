"""Predictions of a trained model on a split: label, prediction, confidence, loss, probabilities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from tracinflow._util.device import in_pieces
from tracinflow.train.batches import as_image_array, iter_batches
from tracinflow.train.loss import PerSampleLoss
from tracinflow.train.model import to_input

PREDICTION_COLUMNS = ["idx", "label", "pred", "confidence", "loss", "margin", "probs"]


def true_label_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p_y - log(1 - p_y) = z_y - logsumexp_{k != y} z_k`` at the true label, in float64 from
    the logits (a confident prediction keeps its margin instead of rounding to infinity)."""
    z = logits.double()
    rows = torch.arange(len(z))
    others = z.clone()
    others[rows, labels] = -torch.inf
    return z[rows, labels] - torch.logsumexp(others, dim=1)


@torch.inference_mode()
def predict_split(
    model: nn.Module,
    images,
    labels,
    idx,
    loss_fn: PerSampleLoss,
    batch_size: int = 256,
    device="cpu",
    arch: dict | None = None,
) -> pd.DataFrame:
    """One row per image: ``idx, label, pred, confidence, loss, margin, probs``, in the input's row
    order.

    ``images``: uint8 (N, H, W, 3) (the memory-mapped cache); ``labels``/``idx``:
    per-row arrays. The model runs in eval mode in float32 (no autocast, so the numbers match a plain
    forward pass); ``loss`` is the per-sample training loss ``w_y * CE_eps`` with the true label,
    ``confidence`` the largest softmax probability, ``margin`` the log-odds of the true label
    (:func:`true_label_margins`, what the counterfactual evaluation retrains against), ``probs``
    all K probabilities.
    ``arch`` (mean/std) defaults to ``model.arch``, which :func:`tracinflow.model.build_model` sets.
    """
    images = as_image_array(images)
    labels = np.asarray(labels, dtype=np.int64)
    idx = np.asarray(idx, dtype=np.int64)
    if not len(images) == len(labels) == len(idx):
        raise ValueError(f"{len(images)} images, {len(labels)} labels, {len(idx)} idx: must match")
    device = torch.device(device)
    arch = arch if arch is not None else model.arch
    model = model.to(device).eval()  # in the memory format its caller chose (in_memory_format)
    loss_fn = loss_fn.to(device)
    chunks_logits, chunks_loss = [], []
    for batch, y in iter_batches(images, labels, np.arange(len(labels)), batch_size):
        logits = in_pieces(model, to_input(batch, arch, device)).float()
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
            "margin": true_label_margins(logits, torch.as_tensor(labels)).numpy(),
            "probs": probs.double().tolist(),
        },
        columns=PREDICTION_COLUMNS,
    )
