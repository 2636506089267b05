"""Attribution methods by name: dense scores of test images on training images from factors.

The counterfactual evaluation scores every method it can form from one set of factors (all
checkpoints, the head's Linear layers), so that each is judged by the same retrains:

- ``tracin_<layers>``: TracIn over ``<layers>`` (``final``: the last Linear layer, ``fc.4``; ``head``:
  ``fc.0``, ``fc.2``, ``fc.4``), summed over the checkpoints with their learning rates: what the
  workflow's top-k computes (:func:`~tracinflow.influence.kernel.score_block`);
- ``tracin_<layers>_epoch_EEE``: one checkpoint's term alone (its learning rate kept);
- ``tracin_<layers>_error``: ``sum_c lr_c sum_L <e, e'>``, the error signal without the activations.

The names' grammar is :func:`tracinflow.config.parse_method` (checked while the workflow is parsed);
a method a later part adds extends it and :func:`method_scores`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tracinflow.config import LAYER_SETS, default_method, parse_method
from tracinflow.influence.factors import Factors
from tracinflow.influence.inputs import checkpoint_list, learning_rates
from tracinflow.influence.kernel import score_block

__all__ = ["available_methods", "default_method", "error_score_block", "method_scores"]


def available_methods(layers: Sequence[str], epochs: Sequence[int]) -> list[str]:
    """Every method the factors of ``layers`` at checkpoints ``epochs`` can form, in a fixed order:
    per layer set, the summed TracIn, each checkpoint's, the error-only."""
    names = []
    for set_name, needed in LAYER_SETS.items():
        if not set(needed) <= set(layers):
            continue
        names.append(f"tracin_{set_name}")
        names += [f"tracin_{set_name}_epoch_{int(epoch):03d}" for epoch in epochs]
        names.append(f"tracin_{set_name}_error")
    return names


def _epoch_of(factors: Factors) -> int:
    epoch = factors.meta.get("epoch")
    if epoch is None:
        raise ValueError(
            "factors without an epoch in their meta: cannot pick a checkpoint by epoch"
        )
    return int(epoch)


def error_score_block(test: Sequence[Factors], train: Sequence[Factors], lrs, layers) -> np.ndarray:
    """``sum_c lr_c sum_L E_t E_r^T`` (T, N), in the factors' precision."""
    dtype = torch.float64 if test[0].err[layers[0]].dtype == np.float64 else torch.float32
    out = None
    with torch.inference_mode():
        for lr, t, r in zip(lrs, test, train, strict=True):
            for layer in layers:
                term = (
                    torch.as_tensor(np.asarray(t.err[layer]), dtype=dtype)
                    @ torch.as_tensor(np.asarray(r.err[layer]), dtype=dtype).T
                )
                out = lr * term if out is None else out + lr * term
    return out.numpy()


def method_scores(name: str, test, train, lrs: Sequence[float] | None = None) -> np.ndarray:
    """Dense scores (T, N) of method ``name`` (:func:`parse_method`) of every test row on every
    train row; ``test`` and ``train`` one :class:`Factors` per checkpoint (same order), ``lrs``
    defaulting to each checkpoint's meta ``lr``."""
    spec = parse_method(name)
    test, train = checkpoint_list(test), checkpoint_list(train)
    lrs = learning_rates([test, train], lrs)
    layers = list(spec["layers"])
    if spec["epoch"] is not None:
        chosen = [c for c, f in enumerate(test) if _epoch_of(f) == spec["epoch"]]
        if not chosen:
            epochs = [_epoch_of(f) for f in test]
            raise ValueError(f"{name}: no checkpoint of epoch {spec['epoch']} (epochs {epochs})")
        test, train = [test[c] for c in chosen], [train[c] for c in chosen]
        lrs = [lrs[c] for c in chosen]
    if spec["error_only"]:
        return error_score_block(test, train, lrs, layers)
    return score_block(test, train, lrs, layers=layers)
