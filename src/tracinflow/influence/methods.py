"""Attribution methods by name: dense scores of test images on training images from factors.

The counterfactual evaluation scores every method it can form from one set of factors (all
checkpoints, the head's Linear layers), so that each is judged by the same retrains. ``<layers>``
is ``final`` (the last Linear layer, ``fc.4``) or ``head`` (``fc.0``, ``fc.2``, ``fc.4``):

- ``tracin_<layers>``: TracIn, summed over the checkpoints with their learning rates: what the
  workflow's top-k computes (:func:`~tracinflow.influence.kernel.score_block`);
  ``tracin_<layers>_epoch_EEE`` one checkpoint's term; ``tracin_<layers>_error`` the error signal
  without the activations, ``sum_c lr_c sum_L <e, e'>``;
- ``kfac_<layers>``: the K-FAC influence function at each checkpoint, summed with the learning
  rates like TracIn (``_epoch_EEE``: one checkpoint, the last being the final model alone);
- ``gn_final``: the final layer's exact (damped) Gauss-Newton influence function, the same way;
- ``cosine_<layers>``: the cosine of the TracIn gradients (summed over checkpoints);
- ``relatif_<method>``: RelatIF (Barshan et al. 2020, its l-relative form): the method's score over
  the square root of the training image's self-influence under the same method, so that a few
  images with large gradients do not head every list.

Curvature methods are damped by :data:`~tracinflow.config.DEFAULT_DAMPING` times each
matrix's mean eigenvalue, or by the ``@<damping>`` their name ends in. The names' grammar is
:func:`tracinflow.config.parse_method` (checked while the workflow is parsed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tracinflow.config import DEFAULT_DAMPING, LAYER_SETS, default_method, parse_method
from tracinflow.influence.curvature import (
    curvature_self_influence,
    gauss_newton_scores,
    kfac_sides,
)
from tracinflow.influence.factors import Factors
from tracinflow.influence.inputs import checkpoint_list, learning_rates
from tracinflow.influence.kernel import score_block
from tracinflow.influence.self_influence import self_influence_scores

__all__ = [
    "available_methods", "damping_variants", "default_method", "ensemble_scores",
    "error_score_block", "method_scores", "self_scores",
]  # fmt: skip

FINAL = LAYER_SETS["final"][0]


def available_methods(
    layers: Sequence[str], epochs: Sequence[int], trajectory: bool = False
) -> list[str]:
    """Every method the factors of ``layers`` at the stage-2 checkpoints ``epochs`` can form, in a
    fixed order: per layer set, TracIn (summed, per checkpoint, error-only), K-FAC (summed, per
    checkpoint), the Gauss-Newton influence (final layer), the cosine, and RelatIF of each summed
    method. ``trajectory``: stage-1 checkpoints are traced too, so the summed methods also come
    as ``_stage2`` (stage 2's checkpoints alone)."""
    names = []
    per_epoch = [f"_epoch_{int(epoch):03d}" for epoch in epochs]
    if trajectory:
        per_epoch.append("_stage2")
    for set_name, needed in LAYER_SETS.items():
        if not set(needed) <= set(layers):
            continue
        bases = [f"tracin_{set_name}", f"kfac_{set_name}"]
        if set_name == "final":
            bases.append("gn_final")
        names += [f"tracin_{set_name}", *(f"tracin_{set_name}{e}" for e in per_epoch)]
        names.append(f"tracin_{set_name}_error")
        for base in bases[1:]:
            names += [base, *(f"{base}{e}" for e in per_epoch)]
        names.append(f"cosine_{set_name}")
        names += [f"relatif_{base}" for base in bases]
    return names


#: the damping of the sensitivity rows: a tenth and ten times the default
SENSITIVITY_DAMPINGS = (DEFAULT_DAMPING / 10, DEFAULT_DAMPING * 10)


def damping_variants(names: Sequence[str], dampings=SENSITIVITY_DAMPINGS) -> list[str]:
    """``<method>@<damping>`` of each summed curvature method among ``names`` (kfac_<layers>,
    gn_final) at each of ``dampings``: the rows of the damping's sensitivity table."""
    summed = [
        n for n in names
        if n.split("_")[0] in ("kfac", "gn") and "_epoch_" not in n and not n.endswith("_stage2")
    ]  # fmt: skip
    return [f"{name}@{damping:g}" for name in summed for damping in dampings]


def _epoch_of(factors: Factors) -> int:
    epoch = factors.meta.get("epoch")
    if epoch is None:
        raise ValueError(
            "factors without an epoch in their meta: cannot pick a checkpoint by epoch"
        )
    return int(epoch)


def error_score_block(test: Sequence[Factors], train: Sequence[Factors], lrs, layers) -> np.ndarray:
    """``sum_c lr_c sum_L E_t E_r^T`` (T, N), in the factors' precision."""
    dtype = np.float64 if test[0].err[layers[0]].dtype == np.float64 else np.float32

    def tensor(values) -> torch.Tensor:  # a copy: the factors may be read-only memory maps
        return torch.from_numpy(np.array(values, dtype=dtype))

    out = None
    with torch.inference_mode():
        for lr, t, r in zip(lrs, test, train, strict=True):
            for layer in layers:
                term = tensor(t.err[layer]) @ tensor(r.err[layer]).T
                out = lr * term if out is None else out + lr * term
    return out.numpy()


def _checkpoints(spec, test, train, lrs):
    """The checkpoints a method sums over (one with ``_epoch_EEE``) and their learning rates."""
    test, train = checkpoint_list(test), checkpoint_list(train)
    lrs = learning_rates([test, train], lrs)
    if spec["epoch"] is None and not spec.get("stage2_only"):
        return test, train, lrs
    chosen = [
        c for c, f in enumerate(test)
        if f.stage == 2 and spec["epoch"] in (None, _epoch_of(f))
    ]  # fmt: skip
    if not chosen:
        epochs = [_epoch_of(f) for f in test]
        raise ValueError(f"no checkpoint of epoch {spec['epoch']} (epochs {epochs})")
    return [test[c] for c in chosen], [train[c] for c in chosen], [lrs[c] for c in chosen]


def self_scores(name: str, train, lrs: Sequence[float] | None = None) -> np.ndarray:
    """Each training row's self-influence under method ``name`` (its relative and cosine forms
    use the plain method's), float64, (N,)."""
    spec = parse_method(name)
    _, train, lrs = _checkpoints(spec, train, train, lrs)
    layers = list(spec["layers"])
    damping = spec["damping"] or DEFAULT_DAMPING
    if spec["kind"] in ("tracin", "cosine"):
        mode = "error" if spec["error_only"] else "full"
        return self_influence_scores(train, lrs, layers=layers, mode=mode)
    if spec["kind"] == "kfac":
        return curvature_self_influence(train, "kfac", layers, lrs, damping)
    return curvature_self_influence(train, "gauss_newton", [FINAL], lrs, damping)


def _plain_scores(spec, test, train, lrs) -> np.ndarray:
    layers = list(spec["layers"])
    damping = spec["damping"] or DEFAULT_DAMPING
    if spec["kind"] in ("tracin", "cosine"):
        if spec["error_only"]:
            return error_score_block(test, train, lrs, layers)
        return score_block(test, train, lrs, layers=layers)
    if spec["kind"] == "kfac":
        sides = [kfac_sides(t, r, layers, damping) for t, r in zip(test, train, strict=True)]
        return score_block([t for t, _ in sides], [r for _, r in sides], lrs, layers=layers)
    terms = [gauss_newton_scores(t, r, FINAL, damping) for t, r in zip(test, train, strict=True)]
    return sum(lr * term for lr, term in zip(lrs, terms, strict=True))


def method_scores(name: str, test, train, lrs: Sequence[float] | None = None) -> np.ndarray:
    """Dense scores (T, N) of method ``name`` (:func:`tracinflow.config.parse_method`) of every
    test row on every train row; ``test`` and ``train`` one :class:`Factors` per checkpoint (same
    order), ``lrs`` defaulting to each checkpoint's meta ``lr``."""
    spec = parse_method(name)
    try:
        test, train, lrs = _checkpoints(spec, test, train, lrs)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    scores = _plain_scores(spec, test, train, lrs)
    if spec["kind"] == "cosine":
        own = self_influence_scores(test, lrs, layers=list(spec["layers"]))
        others = self_scores(name, train, lrs)
        return scores / np.sqrt(np.outer(own, others))
    if spec["relative"]:
        return scores / np.sqrt(self_scores(name.removeprefix("relatif_"), train, lrs))[None, :]
    return scores


def ensemble_scores(name: str, members: Sequence[tuple]) -> np.ndarray:
    """TRAK's ensembling: the mean over ``members`` ((test, train) factors of models that differ
    only in their training seed, rows in the same order) of method ``name``'s dense scores (T, N).
    For TracIn and the curvature methods, sums over checkpoints, this is one sum over every
    member's checkpoints with each learning rate divided by the number of members (what
    influence.ensemble's shards compute)."""
    if not members:
        raise ValueError("an ensemble of no models")
    total = None
    for test, train in members:
        scores = method_scores(name, test, train)
        total = scores if total is None else total + scores
    return total / len(members)
