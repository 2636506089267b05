"""``TracIn``: exact TracIn influence from Python, on any model whose logits come from a Linear head.

Reads like Captum's ``TracInCP`` (a model, the training data, checkpoints, a loss; then ``topk``
and ``self_influence``), and is exact where Captum is not: every layer named is used (an unknown
name is an error, never ignored), the bias term is kept, the loss is per sample (its reduction is
never guessed), and scores are summed over checkpoints before the top-k is taken. The math is in
``docs/math.md``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from torch import nn

from tracinflow._util.device import select_device
from tracinflow.influence.factors import Factors, extract_factors, resolve_layers
from tracinflow.influence.kernel import KINDS, score_block, topk_influence
from tracinflow.influence.self_influence import self_influence
from tracinflow.io.checkpoints import read_checkpoint
from tracinflow.train.loss import PerSampleLoss, loss_from_settings, per_sample_loss

KIND_CHOICES = ("both", *KINDS)


def _read_checkpoint(checkpoint) -> tuple[dict, float | None, dict | None]:
    """``(state dict, lr or None, loss settings or None)`` of a checkpoint given as a path (a
    tracinflow checkpoint file or a plain state-dict file, read with ``weights_only=True``) or as
    a state dict (or a tracinflow checkpoint dict)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint(checkpoint)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"a checkpoint is a path or a state dict, got {type(checkpoint).__name__}")
    if isinstance(checkpoint.get("model"), dict):  # a tracinflow checkpoint: state and metadata
        return checkpoint["model"], checkpoint.get("lr_head"), checkpoint.get("loss")
    return checkpoint, None, None


class TracIn:
    """Exact TracIn of the training samples of ``train_loader`` over ``checkpoints``.

    - ``model``: the network; its logits must come straight out of the last Linear layer of the
      submodule ``head`` (default ``"fc"``: the head of this project's models, or a torchvision
      ResNet's ``fc``). It is copied; the original is never changed.
    - ``train_loader``: yields ``(images, labels)`` or ``(images, labels, idx)`` batches of model
      inputs (idx: dataset indices reported in the results; default the running row number).
    - ``layers``: module paths of the Linear layers to trace, e.g. ``["fc.4"]`` (the final layer,
      in closed form) or ``["fc.0", "fc.2", "fc.4"]`` (the whole head).
    - ``loss``: an ``nn.CrossEntropyLoss`` (its ``weight`` and ``label_smoothing`` are applied per
      sample exactly as PyTorch does), this project's ``WeightedSmoothedCrossEntropy``, or any
      :class:`~tracinflow.train.loss.PerSampleLoss`; ``None`` takes the loss recorded in the
      checkpoint files of this project's workflow.
    - ``checkpoints``: paths or state dicts, in training order; ``lrs``: the learning rate of the
      traced layers' parameter group at each one (``None``: read from the workflow's checkpoint
      files, ``lr_head``).
    - ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ...; ``factor_dtype``: the dtype the
      factors are kept in (``np.float64`` with a float64 model keeps every digit).

    The factors of the training set are extracted once per checkpoint, on first use, and reused by
    every query.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: Iterable,
        layers: Sequence[str] = ("fc.4",),
        loss: nn.Module | PerSampleLoss | None = None,
        checkpoints: Sequence = (),
        lrs: Sequence[float] | None = None,
        *,
        head: str = "fc",
        device="auto",
        factor_dtype=np.float32,
    ):
        self.model = copy.deepcopy(model)
        self.layers, self.head = list(layers), head
        _, _, final = resolve_layers(self.model, self.layers, head)
        self.num_classes = int(dict(self.model.named_modules())[final].out_features)
        self.train_loader = train_loader
        self.device = select_device(device)
        self.factor_dtype = factor_dtype
        if not checkpoints:
            raise ValueError("no checkpoints given: pass the saved states, in training order")
        read = [_read_checkpoint(c) for c in checkpoints]
        self._states = [state for state, _, _ in read]
        self.lrs = self._learning_rates(lrs, [lr for _, lr, _ in read])
        self.loss = self._loss(loss, [spec for _, _, spec in read])
        self._train: list[Factors] | None = None

    def _learning_rates(self, lrs, recorded) -> list[float]:
        if lrs is None:
            if any(lr is None for lr in recorded):
                raise ValueError(
                    "pass lrs=: the learning rate of each checkpoint (only tracinflow checkpoint "
                    "files record theirs)"
                )
            lrs = recorded
        lrs = [float(lr) for lr in lrs]
        if len(lrs) != len(self._states):
            raise ValueError(f"{len(lrs)} learning rates for {len(self._states)} checkpoints")
        return lrs

    def _loss(self, loss, recorded) -> PerSampleLoss:
        if loss is None:
            if recorded[0] is None:
                raise ValueError(
                    "pass loss=: e.g. nn.CrossEntropyLoss(weight=..., label_smoothing=...) as in "
                    "training (only tracinflow checkpoint files record theirs)"
                )
            loss = loss_from_settings(recorded[0])
        return per_sample_loss(loss, self.num_classes)

    def __repr__(self) -> str:
        return (
            f"TracIn(layers={self.layers}, checkpoints={len(self._states)}, lrs={self.lrs}, "
            f"loss={self.loss.settings()}, device={self.device})"
        )

    # --- factors

    def _factors(self, loader: Iterable, target: str) -> list[Factors]:
        out = []
        for state in self._states:
            self.model.load_state_dict(state)
            factors = extract_factors(
                self.model, loader, self.loss, self.layers, self.head, target, self.device,
                dtype=self.factor_dtype,
            )  # fmt: skip
            out.append(factors)
        return out

    @property
    def train_factors(self) -> list[Factors]:
        """The training set's factors, one :class:`Factors` per checkpoint (extracted once)."""
        if self._train is None:
            self._train = self._factors(self.train_loader, "label")
        return self._train

    # --- queries

    def scores(self, test_loader: Iterable, target: str = "label") -> np.ndarray:
        """Dense TracIn scores (n_test, n_train): entry (i, j) is training sample j's influence on
        test sample i, summed over checkpoints (positive: a step on j lowers i's loss)."""
        test = self._factors(test_loader, target)
        return score_block(test, self.train_factors, self.lrs, device=self.device)

    def topk(
        self, test_loader: Iterable, k: int = 10, kind: str = "both", target: str = "label"
    ) -> pd.DataFrame:
        """The ``k`` strongest proponents and/or opponents of every test sample over the whole
        training set: ``test_idx, kind, rank, train_idx, influence``, exact (ties by the lower
        train idx). Proponents have positive influence and opponents negative: a sample with fewer
        than ``k`` scores of a sign gets fewer rows of that kind. ``kind``: ``"both"``,
        ``"proponent"`` or ``"opponent"``; ``target``: the test loss at the ``"label"`` or at the
        model's ``"prediction"``."""
        if kind not in KIND_CHOICES:
            raise ValueError(f"kind must be one of {KIND_CHOICES}, got {kind!r}")
        test = self._factors(test_loader, target)
        frame = topk_influence(test, self.train_factors, k, self.lrs, device=self.device)
        if kind != "both":
            frame = frame[frame["kind"] == kind].reset_index(drop=True)
        return frame

    def self_influence(self, mode: str = "full") -> pd.DataFrame:
        """Every training sample's influence on itself, ranked (rank 1 = largest: the likeliest
        mislabel): ``train_idx, self_influence, rank`` and each checkpoint's term.
        ``mode="error"`` drops the activation term (``sum lr |e|^2``)."""
        return self_influence(self.train_factors, self.lrs, mode=mode, per_checkpoint=True)
