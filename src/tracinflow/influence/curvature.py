"""Curvature-aware influence on the head's Linear layers (docs/math.md, "Influence functions").

TracIn is a plain gradient dot product ``g_t . g_j``. An influence function preconditions it with
the inverse curvature of the training loss, ``g_t^T (H + lambda I)^-1 g_j``. On a Linear layer with
input ``a`` and output gradient ``e`` the per-sample gradient is ``g = e (x) a~`` (``a~ = [a, 1]``
with the bias folded in), and two curvatures are cheap:

- **K-FAC** (per layer): ``H ~ S (x) A`` with ``A = mean_j a~_j a~_j^T`` and ``S = mean_j e_j
  e_j^T``, the empirical Fisher of the output gradients (at the training labels, from the factors
  as stored), each damped by ``damping`` times its mean eigenvalue. Then ``g_t^T H^-1 g_j =
  (e_t^T S^-1 e_j)(a~_t^T A^-1 a~_j)``: the same ghost product as TracIn's, of the test side's
  factors transformed (``a~ A^-1``, ``e S^-1``) against the training side's ``a~`` and ``e``, so the
  exact blocked kernel scores it unchanged.
- **The final layer's exact Gauss-Newton matrix** ``H = mean_j (w_y (diag p_j - p_j p_j^T)) (x)
  (a~_j a~_j^T)``, ``K (d_in + 1)`` square (2,570 for 256 -> 10), which for the final layer of a
  softmax cross-entropy is its exact Hessian; damped by ``damping`` times its mean eigenvalue.

The damping rule looks at the training factors alone, never at a test image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from tracinflow.influence.factors import Factors

#: the default damping: this fraction of a curvature matrix's mean eigenvalue is added to its
#: diagonal
DEFAULT_DAMPING = 0.1


def augmented(factors: Factors, layer: str) -> np.ndarray:
    """``a~``: a layer's inputs with a column of ones for its bias (float64)."""
    act = np.asarray(factors.act[layer], dtype=np.float64)
    if factors.has_bias[layer]:
        return np.hstack([act, np.ones((len(act), 1))])
    return act


def damped_inverse(matrix: np.ndarray, damping: float) -> np.ndarray:
    """``(M + damping * mean eigenvalue(M) * I)^-1`` of a symmetric positive semi-definite ``M``."""
    dim = matrix.shape[0]
    shift = damping * np.trace(matrix) / dim
    return np.linalg.inv(matrix + shift * np.eye(dim))


def kfac_inverses(train: Factors, layers: Sequence[str], damping: float = DEFAULT_DAMPING) -> dict:
    """``{layer: (A^-1, S^-1)}`` of one checkpoint's training factors, damped."""
    inverses = {}
    for layer in layers:
        a = augmented(train, layer)
        e = np.asarray(train.err[layer], dtype=np.float64)
        inverses[layer] = (
            damped_inverse(a.T @ a / len(a), damping),
            damped_inverse(e.T @ e / len(e), damping),
        )
    return inverses


def _as(dtype, array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def kfac_sides(
    test: Factors, train: Factors, layers: Sequence[str], damping: float = DEFAULT_DAMPING
) -> tuple[Factors, Factors]:
    """One checkpoint's test and train factors rewritten so that TracIn's kernel computes the K-FAC
    influence: the test side ``(a~ A^-1, e S^-1)``, the training side ``(a~, e)``, the bias folded
    into the activations (``has_bias`` False). In the factors' precision; the inverses in float64."""
    dtype = np.asarray(test.err[layers[0]]).dtype
    inverses = kfac_inverses(train, layers, damping)
    test_act, test_err, train_act, train_err = {}, {}, {}, {}
    for layer in layers:
        a_inv, s_inv = inverses[layer]
        test_act[layer] = _as(dtype, augmented(test, layer) @ a_inv)
        test_err[layer] = _as(dtype, np.asarray(test.err[layer], np.float64) @ s_inv)
        train_act[layer] = _as(dtype, augmented(train, layer))
        train_err[layer] = _as(dtype, train.err[layer])
    no_bias = dict.fromkeys(layers, False)
    return (
        replace(test, act=test_act, err=test_err, has_bias=no_bias),
        replace(train, act=train_act, err=train_err, has_bias=no_bias),
    )


def _final_gradients(factors: Factors, layer: str) -> np.ndarray:
    """Per-sample gradients ``e (x) a~`` of the final layer's weights and bias, (N, K (d+1))."""
    a = augmented(factors, layer)
    e = np.asarray(factors.err[layer], dtype=np.float64)
    return (e[:, :, None] * a[:, None, :]).reshape(len(a), -1)


def gauss_newton(train: Factors, layer: str) -> np.ndarray:
    """The final layer's exact Gauss-Newton matrix (its Hessian) of the training loss, from the
    training factors: ``mean_j (w_y (diag p_j - p_j p_j^T)) (x) (a~_j a~_j^T)``; ``w_y`` the class
    weights of the loss settings in the factors' meta (1 without)."""
    a = augmented(train, layer)
    logits = np.asarray(train.logits, dtype=np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    weights = train.meta.get("loss", {}).get("class_weights")
    w = np.asarray(weights, float)[np.asarray(train.labels)] if weights else np.ones(len(a))
    k, d = p.shape[1], a.shape[1]
    # block (k, l) of the Kronecker sum: sum_j h_j[k, l] a~_j a~_j^T, one (d x d) product each
    h = w[:, None, None] * (np.einsum("nk,kl->nkl", p, np.eye(k)) - p[:, :, None] * p[:, None, :])
    out = np.zeros((k, d, k, d))
    for row in range(k):
        for col in range(row, k):
            block = (a * h[:, row, col, None]).T @ a
            out[row, :, col, :] = block
            out[col, :, row, :] = block.T
    return out.reshape(k * d, k * d) / len(a)


def gauss_newton_scores(
    test: Factors, train: Factors, layer: str, damping: float = DEFAULT_DAMPING
) -> np.ndarray:
    """``g_t^T (H + lambda I)^-1 g_j`` (T, N) for the final layer ``layer`` of one checkpoint, with
    :func:`gauss_newton`'s ``H`` and ``lambda`` = ``damping`` times its mean eigenvalue; float64."""
    inverse = damped_inverse(gauss_newton(train, layer), damping)
    preconditioned = _final_gradients(test, layer) @ inverse
    return _matmul(preconditioned, _final_gradients(train, layer))


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return (torch.from_numpy(left) @ torch.from_numpy(right).T).numpy()
