"""The one per-sample loss used by training, evaluation and factor extraction.

``l(theta; x, y) = w_y * CE_eps(f(x), y)`` with target ``(1 - eps) * onehot(y) + eps / K``.
Training averages it over the batch; influence uses it per sample, never as a batch mean, because a
batch mean scales every gradient by 1/B and makes it depend on which samples shared the batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def class_weights_from_labels(labels, num_classes: int, enabled: bool = True) -> torch.Tensor:
    """Inverse train-class frequency, normalised to sum to ``num_classes`` (all ones when disabled).

    A class absent from ``labels`` gets weight 0: it contributes nothing to training, and a zero count
    must not turn into an infinite weight.
    """
    if not enabled:
        return torch.ones(num_classes, dtype=torch.float64)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes]
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    if inverse.sum() == 0:
        raise ValueError("class weights: no labels given")
    return torch.as_tensor(inverse * num_classes / inverse.sum(), dtype=torch.float64)


def smoothed_targets(labels: torch.Tensor, num_classes: int, label_smoothing: float, dtype):
    """``(1 - eps) * onehot(y) + eps / K`` as a (B, K) tensor."""
    target = torch.full(
        (labels.shape[0], num_classes),
        label_smoothing / num_classes,
        dtype=dtype,
        device=labels.device,
    )
    target.scatter_add_(
        1,
        labels.view(-1, 1).long(),
        torch.full((labels.shape[0], 1), 1.0 - label_smoothing, dtype=dtype, device=labels.device),
    )
    return target


class WeightedSmoothedCrossEntropy(nn.Module):
    """Per-sample ``w_y * CE_eps``; ``reduction`` is ``"none"`` (per sample) or ``"mean"`` (batch mean).

    The class weights live in a buffer so the module moves with ``.to(device)`` and is saved in state
    dicts; they are cast to the logits' dtype at use, so a float64 model gets float64 losses.
    """

    def __init__(
        self, class_weights: torch.Tensor | None, num_classes: int, label_smoothing: float
    ):
        super().__init__()
        if class_weights is None:
            class_weights = torch.ones(num_classes, dtype=torch.float64)
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights has shape {tuple(class_weights.shape)}, expected ({num_classes},)"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float64))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"):
        log_probs = torch.log_softmax(logits, dim=1)
        target = smoothed_targets(labels, self.num_classes, self.label_smoothing, log_probs.dtype)
        weight = self.class_weights.to(device=logits.device, dtype=log_probs.dtype)[labels.long()]
        per_sample = -weight * (target * log_probs).sum(dim=1)
        if reduction == "none":
            return per_sample
        if reduction == "mean":
            return per_sample.mean()
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")

    def error_signal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``dl/dz = w_y * (softmax(z) - target)`` per sample, in closed form (no backward pass)."""
        target = smoothed_targets(labels, self.num_classes, self.label_smoothing, logits.dtype)
        weight = self.class_weights.to(device=logits.device, dtype=logits.dtype)[labels.long()]
        return weight.unsqueeze(1) * (torch.softmax(logits, dim=1) - target)

    def settings(self) -> dict:
        """Plain-JSON description, stored next to factors so a reader knows which loss they came from."""
        return {
            "loss": "weighted_smoothed_cross_entropy",
            "label_smoothing": self.label_smoothing,
            "class_weights": [float(w) for w in self.class_weights.tolist()],
            "num_classes": self.num_classes,
        }
