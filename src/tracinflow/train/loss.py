"""The one per-sample loss used by training, evaluation and factor extraction, and the contract any
loss meets to be used for influence.

``l(theta; x, y) = w_y * CE_eps(f(x), y)`` with target ``(1 - eps) * onehot(y) + eps / K``.
Training averages it over the batch; influence uses it per sample, never as a batch mean, because a
batch mean scales every gradient by 1/B and makes it depend on which samples shared the batch.

A plain ``nn.CrossEntropyLoss`` serves too (:func:`per_sample_loss` wraps it): its ``weight`` and
``label_smoothing`` are read and applied exactly as PyTorch applies them, per sample.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@runtime_checkable
class PerSampleLoss(Protocol):
    """What factor extraction needs of a loss: an ``nn.Module`` (it moves with ``.to(device)``) that

    - ``num_classes``: the number of classes K (the width of the logits);
    - ``loss(logits, labels, reduction="none")``: the per-sample loss, shape (B,) (``"mean"``: its
      mean, used by training);
    - ``error_signal(logits, labels)``: ``dl/dz`` of each sample's loss with respect to its logits,
      shape (B, K), in closed form (the final layer's TracIn factor, no backward pass);
    - ``settings()``: a plain-JSON description, stored beside the factors.
    """

    num_classes: int

    def __call__(
        self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor: ...

    def error_signal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    def settings(self) -> dict: ...

    def to(self, *args, **kwargs): ...


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")


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
        return _reduce(-weight * (target * log_probs).sum(dim=1), reduction)

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


class TorchCrossEntropy(nn.Module):
    """A plain ``nn.CrossEntropyLoss`` as a :class:`PerSampleLoss`: its ``weight`` (per class) and
    ``label_smoothing`` are applied exactly as PyTorch does with ``reduction="none"``,

        l = -sum_c w_c t_c log p_c,   t = (1 - eps) onehot(y) + eps / K,

    whatever the wrapped loss's own ``reduction`` (influence is per sample; a batch mean only
    scales every score by one constant). The error signal is then ``dl/dz = p sum_c q_c - q`` with
    ``q_c = w_c t_c``. Labels equal to ``ignore_index`` are refused: they have no loss to trace.
    """

    def __init__(self, loss: nn.CrossEntropyLoss, num_classes: int):
        super().__init__()
        weight = loss.weight
        if weight is not None and tuple(weight.shape) != (num_classes,):
            raise ValueError(
                f"the CrossEntropyLoss weight has shape {tuple(weight.shape)}, expected "
                f"({num_classes},) for {num_classes} classes"
            )
        self.num_classes = int(num_classes)
        self.label_smoothing = float(loss.label_smoothing)
        self.ignore_index = int(loss.ignore_index)
        weight = torch.ones(num_classes) if weight is None else weight.detach()
        self.register_buffer("class_weights", weight.to(torch.float64))
        self.weighted = loss.weight is not None

    def _check(self, labels: torch.Tensor) -> None:
        if bool((labels == self.ignore_index).any()):
            raise ValueError(
                f"labels equal to the loss's ignore_index ({self.ignore_index}) have no loss to trace"
            )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean"):
        self._check(labels)
        weight = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        per_sample = F.cross_entropy(
            logits,
            labels.long(),
            weight=weight if self.weighted else None,
            label_smoothing=self.label_smoothing,
            reduction="none",
        )
        return _reduce(per_sample, reduction)

    def error_signal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self._check(labels)
        target = smoothed_targets(labels, self.num_classes, self.label_smoothing, logits.dtype)
        q = self.class_weights.to(device=logits.device, dtype=logits.dtype) * target
        return torch.softmax(logits, dim=1) * q.sum(dim=1, keepdim=True) - q

    def settings(self) -> dict:
        return {
            "loss": "cross_entropy",
            "label_smoothing": self.label_smoothing,
            "class_weights": [float(w) for w in self.class_weights.tolist()]
            if self.weighted
            else None,
            "num_classes": self.num_classes,
        }


def per_sample_loss(loss, num_classes: int) -> PerSampleLoss:
    """``loss`` as a :class:`PerSampleLoss`: one already (the project's loss) as it is, an
    ``nn.CrossEntropyLoss`` wrapped by :class:`TorchCrossEntropy`; anything else is refused rather
    than guessed."""
    if isinstance(loss, nn.CrossEntropyLoss):
        return TorchCrossEntropy(loss, num_classes)
    if isinstance(loss, PerSampleLoss):
        if int(loss.num_classes) != int(num_classes):
            raise ValueError(
                f"the loss is for {loss.num_classes} classes, the model has {num_classes}"
            )
        return loss
    raise TypeError(
        f"{type(loss).__name__} is not a per-sample loss: pass nn.CrossEntropyLoss(weight=..., "
        "label_smoothing=...), tracinflow's WeightedSmoothedCrossEntropy, or a module with "
        "num_classes, loss(logits, labels, reduction='none'), error_signal(logits, labels) and "
        "settings() (tracinflow.train.loss.PerSampleLoss)"
    )


def loss_from_settings(spec: dict) -> PerSampleLoss:
    """The loss a ``settings()`` record describes (a checkpoint's ``"loss"`` field, a factor
    folder's meta.json), rebuilt exactly."""
    num_classes = int(spec["num_classes"])
    smoothing = float(spec["label_smoothing"])
    weights = spec.get("class_weights")
    if spec.get("loss") == "cross_entropy":
        weight = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        return TorchCrossEntropy(
            nn.CrossEntropyLoss(weight, label_smoothing=smoothing), num_classes
        )
    return WeightedSmoothedCrossEntropy(
        torch.tensor(weights, dtype=torch.float64), num_classes, smoothing
    )


def loss_from_checkpoint(checkpoint: dict) -> PerSampleLoss:
    """The exact training loss recorded in a checkpoint's ``"loss"`` field."""
    return loss_from_settings(checkpoint["loss"])
