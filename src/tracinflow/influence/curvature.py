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

The damping rule looks at the training factors alone, never at a test image: a tenth of each
matrix's mean eigenvalue (Kronfluence's heuristic), fixed in advance; the evaluation reports a
tenth and ten times it beside.

Both fit TracIn's blocked kernel (:mod:`tracinflow.influence.kernel`), so the workflow's shards
score them exactly and top-k them like TracIn: K-FAC as above; the Gauss-Newton influence by
writing the preconditioned test gradient ``M_t = H^-1 g_t`` (a ``K x (d + 1)`` matrix) as ``K``
ghost terms, one per output: ``g_j^T M_t = sum_k e_j[k] (M_t[k] . a~_j)``, i.e. test factors
``(M_t[k], one-hot k)`` against the training factors ``(a~_j, e_j)`` for each ``k``
(:func:`preconditioned_sides`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from tracinflow.config import DEFAULT_DAMPING
from tracinflow.influence.factors import Factors

#: the curvature-aware methods the workflow's shards compute (influence.method)
CURVATURE_METHODS = ("kfac", "gauss_newton")


class WithOnes:
    """A read-only 2-D array-like: the rows of ``base`` (an array, memory map or
    :class:`~tracinflow.io.factor_store.NpyRows`) with a last column of ones, built only for
    the rows asked for, so that a streamed training side keeps reading one block at a time."""

    def __init__(self, base):
        self.base = base
        self.shape = (base.shape[0], base.shape[1] + 1)
        self.dtype = np.dtype(base.dtype)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        block = np.asarray(self.base[rows], dtype=self.dtype)
        return np.hstack([block, np.ones((block.shape[0], 1), dtype=self.dtype)])

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


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


def kfac_test_side(test: Factors, inverses: dict) -> Factors:
    """One checkpoint's test factors preconditioned by its K-FAC ``inverses`` (``{layer: (A^-1,
    S^-1)}``): ``(a~ A^-1, e S^-1)``, the bias folded in (``has_bias`` False); computed in
    float64, stored in the factors' precision."""
    dtype = np.asarray(test.err[next(iter(inverses))][:0]).dtype
    act, err = {}, {}
    for layer, (a_inv, s_inv) in inverses.items():
        act[layer] = _as(dtype, augmented(test, layer) @ a_inv)
        err[layer] = _as(dtype, np.asarray(test.err[layer], np.float64) @ s_inv)
    return replace(test, act=act, err=err, has_bias=dict.fromkeys(inverses, False))


def ones_side(train: Factors, layers: Sequence[str], copies: int = 1) -> Factors:
    """The training side of a preconditioned score: each layer's ``(a~, e)`` with the bias's ones
    as a last activation column (:class:`WithOnes`, read block by block), ``has_bias`` False.
    With ``copies`` > 1 (the Gauss-Newton form), each layer ``L`` appears as ``L#0`` ... ``L#K-1``,
    all reading the same arrays."""
    act, err = {}, {}
    for layer in layers:
        names = [layer] if copies == 1 else [f"{layer}#{k}" for k in range(copies)]
        for name in names:
            act[name] = WithOnes(train.act[layer]) if train.has_bias[layer] else train.act[layer]
            err[name] = train.err[layer]
    return replace(train, act=act, err=err, has_bias=dict.fromkeys(act, False))


def kfac_sides(
    test: Factors, train: Factors, layers: Sequence[str], damping: float = DEFAULT_DAMPING
) -> tuple[Factors, Factors]:
    """One checkpoint's test and train factors rewritten so that TracIn's kernel computes the K-FAC
    influence: the test side ``(a~ A^-1, e S^-1)``, the training side ``(a~, e)`` (the inverses from
    ``train`` itself; :func:`kfac_test_side`, :func:`ones_side`)."""
    return kfac_test_side(test, kfac_inverses(train, layers, damping)), ones_side(train, layers)


def gauss_newton_test_side(test: Factors, inverse: np.ndarray, layer: str) -> Factors:
    """One checkpoint's test factors of the final layer ``layer`` preconditioned by the damped
    Gauss-Newton ``inverse``, as ``K`` ghost terms ``L#k``: activations ``M_t[k]`` (``M_t = H^-1
    g_t`` as ``K x (d + 1)``) and errors the one-hot ``k`` (the module's docstring)."""
    dtype = np.asarray(test.err[layer][:0]).dtype
    k = np.asarray(test.err[layer][:0]).shape[1]
    preconditioned = (final_gradients(test, layer) @ inverse).reshape(len(test), k, -1)
    act = {f"{layer}#{c}": _as(dtype, preconditioned[:, c, :]) for c in range(k)}
    err = {}
    for c in range(k):
        onehot = np.zeros((len(test), k), dtype=dtype)
        onehot[:, c] = 1
        err[f"{layer}#{c}"] = onehot
    return replace(test, act=act, err=err, has_bias=dict.fromkeys(act, False))


def curvature_inverses(
    method: str, train: Sequence[Factors], layers: Sequence[str], damping: float = DEFAULT_DAMPING
) -> list[dict[str, np.ndarray]]:
    """Per checkpoint, the damped inverses a method preconditions with, float64: for ``kfac``
    ``{"<layer>/A": A^-1, "<layer>/S": S^-1}`` per layer; for ``gauss_newton`` (one layer, the
    final one) ``{"<layer>/H": H^-1}``. What the curvature rule stores."""
    if method not in CURVATURE_METHODS:
        raise ValueError(f"method must be one of {CURVATURE_METHODS}, got {method!r}")
    if method == "gauss_newton" and len(layers) != 1:
        raise ValueError(f"gauss_newton is the final layer's alone, not layers {list(layers)}")
    out = []
    for f in train:
        if method == "kfac":
            inverses = kfac_inverses(f, layers, damping)
            out.append({f"{layer}/{side}": inverses[layer][i] for layer in layers
                        for i, side in enumerate("AS")})  # fmt: skip
        else:
            out.append({f"{layers[0]}/H": damped_inverse(gauss_newton(f, layers[0]), damping)})
    return out


def preconditioned_sides(
    method: str, test: Sequence[Factors], train: Sequence[Factors], inverses, layers
) -> tuple[list[Factors], list[Factors], list[str]]:
    """``(test, train, layers)`` per checkpoint for TracIn's kernel to compute ``method``'s
    influence with the stored ``inverses`` (:func:`curvature_inverses`, same checkpoint order)."""
    if len(inverses) != len(test) or len(test) != len(train):
        raise ValueError(
            f"{len(inverses)} curvature checkpoints for {len(test)} test and {len(train)} train"
        )
    layers = list(layers)
    if method == "kfac":
        sides_t = [kfac_test_side(t, {layer: (inv[f"{layer}/A"], inv[f"{layer}/S"])
                                      for layer in layers})
                   for t, inv in zip(test, inverses, strict=True)]  # fmt: skip
        return sides_t, [ones_side(r, layers) for r in train], layers
    if method != "gauss_newton" or len(layers) != 1:
        raise ValueError(f"no preconditioned form of method {method!r} over layers {layers}")
    (layer,) = layers
    sides_t = [gauss_newton_test_side(t, inv[f"{layer}/H"], layer)
               for t, inv in zip(test, inverses, strict=True)]  # fmt: skip
    k = len(sides_t[0].act) if sides_t else 0
    return sides_t, [ones_side(r, layers, copies=k) for r in train], list(sides_t[0].act)


def final_gradients(factors: Factors, layer: str) -> np.ndarray:
    """Per-sample gradients ``e (x) a~`` of the final layer's weights and bias, (N, K (d+1))."""
    a = augmented(factors, layer)
    e = np.asarray(factors.err[layer], dtype=np.float64)
    return (e[:, :, None] * a[:, None, :]).reshape(len(a), -1)


def _hessian_weights(train: Factors) -> np.ndarray:
    """Each sample's factor on ``diag p - p p^T`` in its loss's Hessian in the logits: ``w_y``
    for the project's loss (``w_y CE_eps``), ``sum_c w_c t_c`` for PyTorch's weighted cross
    entropy with smoothed targets ``t``; 1 without class weights."""
    settings = train.meta.get("loss") or {}
    weights = settings.get("class_weights")
    labels = np.asarray(train.labels)
    if not weights:
        return np.ones(len(labels))
    weights = np.asarray(weights, dtype=np.float64)
    if settings.get("loss") == "cross_entropy":
        eps = float(settings.get("label_smoothing") or 0.0)
        return (1 - eps) * weights[labels] + eps * weights.mean()
    return weights[labels]


def gauss_newton(train: Factors, layer: str) -> np.ndarray:
    """The final layer's exact Gauss-Newton matrix (its Hessian) of the training loss, from the
    training factors: ``mean_j (w_j (diag p_j - p_j p_j^T)) (x) (a~_j a~_j^T)``; ``w_j`` from the
    loss settings in the factors' meta (:func:`_hessian_weights`)."""
    a = augmented(train, layer)
    logits = np.asarray(train.logits, dtype=np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    w = _hessian_weights(train)
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
    preconditioned = final_gradients(test, layer) @ inverse
    return _matmul(preconditioned, final_gradients(train, layer))


def curvature_self_influence(
    train: Sequence[Factors], kind: str, layers: Sequence[str], lrs: Sequence[float],
    damping: float = DEFAULT_DAMPING, rows: int = 4096,
) -> np.ndarray:  # fmt: skip
    """Each training row's self-influence ``sum_c lr_c g_j^T C_c^-1 g_j`` (N,), float64: ``kind``
    ``kfac`` with each checkpoint's damped K-FAC of every layer of ``layers`` (a product of two
    quadratic forms per layer), ``gauss_newton`` with the final layer's (``layers[0]``) damped
    exact Gauss-Newton matrix; ``rows`` at a time, so memory stays one block of gradients."""
    if kind not in CURVATURE_METHODS:
        raise ValueError(f"kind must be one of {CURVATURE_METHODS}, got {kind!r}")
    total = np.zeros(len(train[0]))
    for lr, factors in zip(lrs, train, strict=True):
        if kind == "kfac":
            inverses = kfac_inverses(factors, layers, damping)
        else:
            inverse = damped_inverse(gauss_newton(factors, layers[0]), damping)
        for start in range(0, len(total), rows):
            block = factors.take(np.arange(start, min(start + rows, len(total))))
            if kind == "kfac":
                term = _kfac_self_influence(block, inverses)
            else:
                gradients = final_gradients(block, layers[0])
                term = np.einsum("ij,ij->i", gradients @ inverse, gradients)
            total[start : start + len(block)] += lr * term
    return total


def _kfac_self_influence(block: Factors, inverses: dict) -> np.ndarray:
    """``sum_L (e^T S_L^-1 e)(a~^T A_L^-1 a~)`` of each row of ``block`` (one checkpoint)."""
    term = np.zeros(len(block))
    for layer, (a_inv, s_inv) in inverses.items():
        a = augmented(block, layer)
        e = np.asarray(block.err[layer], dtype=np.float64)
        term += np.einsum("ij,ij->i", a @ a_inv, a) * np.einsum("ij,ij->i", e @ s_inv, e)
    return term


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return (torch.from_numpy(left) @ torch.from_numpy(right).T).numpy()
