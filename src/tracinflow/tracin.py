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

from tracinflow._util.device import inference_form, select_device
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
    """Exact TracIn of the training samples of `train_loader` over `checkpoints`.

    The influence of training sample `j` on test sample `i` is the sum over checkpoints of the
    learning rate times the dot product of their per-sample loss gradients, restricted to the
    traced Linear layers (weights and biases): positive when a step on `j` lowers `i`'s loss
    (a proponent), negative when it raises it (an opponent). Every layer named is traced, the
    bias term is kept, the loss is taken per sample whatever its `reduction`, and scores are
    summed over checkpoints before any top-k is taken. The factors of the training set are
    extracted once per checkpoint, on first use, and reused by every query.

    Args:
        model: The network. Its logits must come straight out of the last Linear layer of the
            submodule `head` (this project's models, or a torchvision ResNet with
            `head="fc"`, `layers=["fc"]`). It is copied; the original is never changed.
        train_loader: Yields `(inputs, labels)` or `(inputs, labels, idx)` batches; `idx`
            are the dataset indices the results report (default: the running row number).
        layers: Module paths of the Linear layers to trace, e.g. `["fc.4"]` (the final
            layer, in closed form) or `["fc.0", "fc.2", "fc.4"]` (the whole head).
        loss: An `nn.CrossEntropyLoss` (its `weight` and `label_smoothing` applied per sample
            exactly as PyTorch does), this project's `WeightedSmoothedCrossEntropy`, or any
            `tracinflow.train.loss.PerSampleLoss`. `None` takes the loss recorded in the
            checkpoint files of this project's workflow.
        checkpoints: Paths or state dicts, in training order. A path is read with
            `torch.load(weights_only=True)`; the workflow's own files
            (`results/<version>/model/epoch_EEE.pt`) also carry their learning rate and loss.
        lrs: The learning rate of the traced layers' parameter group during each checkpoint's
            epoch. `None` reads it from the workflow's checkpoint files (`lr_head`).
        head: Module path of the classifier head that holds the traced layers.
        device (str): `"auto"` (CUDA when available), `"cpu"`, `"cuda"`, ...
        factor_dtype (type[np.floating]): The dtype the factors are kept in; `np.float64`
            with a float64 model keeps every digit.

    Raises:
        ValueError: No checkpoints; a layer that is not found, not inside `head` or not an
            `nn.Linear` (the message lists the Linear layers there are); `lrs` or `loss` left
            out for checkpoints that do not record them; a number of learning rates other than
            the number of checkpoints; a loss for another number of classes than the model's.
        TypeError: A checkpoint that is neither a path nor a state dict, or a loss that is not
            per sample (the message says what is accepted).
        CheckpointError: A checkpoint file that is truncated, corrupt or holds pickled objects
            beyond tensors (a `ValueError`; none of its code runs).

    Example:
        ```python
        tracin = TracIn(model, train, layers=["fc.0", "fc.2"], loss=loss,
                        checkpoints=checkpoints, lrs=lrs)
        top = tracin.topk(test, k=5)
        suspects = tracin.self_influence()
        ```
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
        self.model = copy.deepcopy(model).eval()  # factors come from the eval-mode forward
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
                inference_form(self.model), loader, self.loss, self.layers, self.head, target, self.device,
                dtype=self.factor_dtype,
            )  # fmt: skip
            out.append(factors)
        return out

    @property
    def train_factors(self) -> list[Factors]:
        """The training set's factors, extracted on first use and kept.

        Returns:
            One `tracinflow.influence.factors.Factors` per checkpoint, in training order: each
            traced layer's input activations and per-sample loss gradients at its output.
        """
        if self._train is None:
            self._train = self._factors(self.train_loader, "label")
        return self._train

    # --- queries

    def scores(self, test_loader: Iterable, target: str = "label") -> np.ndarray:
        """Dense TracIn scores of every test sample against every training sample.

        Meant for small problems: the matrix is `n_test x n_train`. `topk` gives the same
        scores' top-k over any training set without holding the matrix.

        Args:
            test_loader: Yields test batches of the form `train_loader` yields.
            target: The test loss at the `"label"` or at the model's `"prediction"`.

        Returns:
            A `(n_test, n_train)` array whose entry `(i, j)` is training sample `j`'s
            influence on test sample `i`, summed over checkpoints (positive: a step on `j`
            lowers `i`'s loss), in loader order.

        Raises:
            ValueError: `target` is neither `"label"` nor `"prediction"`.
        """
        test = self._factors(test_loader, target)
        return score_block(test, self.train_factors, self.lrs, device=self.device)

    def topk(
        self, test_loader: Iterable, k: int = 10, kind: str = "both", target: str = "label"
    ) -> pd.DataFrame:
        """The `k` strongest proponents and opponents of every test sample, exactly.

        Every test sample is scored against the whole training set, summed over checkpoints, and
        its top-k taken from the exact scores (ties go to the lower train idx).

        Args:
            test_loader: Yields test batches of the form `train_loader` yields.
            k: How many proponents and how many opponents per test sample.
            kind: `"both"`, `"proponent"` or `"opponent"`.
            target: The test loss at the `"label"` or at the model's `"prediction"`.

        Returns:
            A DataFrame with columns `test_idx, kind, rank, train_idx, influence`: up to `k`
            rows of each kind asked for per test sample, rank 1 the strongest. Proponents have
            positive influence and opponents negative, so a sample with fewer than `k` scores
            of a sign gets fewer rows of that kind.

        Raises:
            ValueError: `kind` or `target` is not one of its choices.
        """
        if kind not in KIND_CHOICES:
            raise ValueError(f"kind must be one of {KIND_CHOICES}, got {kind!r}")
        test = self._factors(test_loader, target)
        frame = topk_influence(test, self.train_factors, k, self.lrs, device=self.device)
        if kind != "both":
            frame = frame[frame["kind"] == kind].reset_index(drop=True)
        return frame

    def self_influence(self, mode: str = "full") -> pd.DataFrame:
        """Every training sample's influence on itself, ranked: likely mislabels first.

        Args:
            mode: `"full"`, the TracIn self-influence `sum lr |e|^2 (|a|^2 + 1)` over the
                traced layers and checkpoints; `"error"` drops the activation term
                (`sum lr |e|^2`).

        Returns:
            A DataFrame with columns `train_idx, self_influence, rank` (rank 1 the largest)
            and each checkpoint's term.

        Raises:
            ValueError: `mode` is neither `"full"` nor `"error"`.
        """
        return self_influence(self.train_factors, self.lrs, mode=mode, per_checkpoint=True)
