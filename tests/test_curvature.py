"""Curvature-aware influence against dense float64 brute forces of its formulas: K-FAC (Kronecker
factors of the head's layers from per-sample autograd gradients, the dense Kronecker product
inverted) and the final layer's exact Gauss-Newton matrix (the autograd Hessian of the training
loss in the final layer's weights and bias, which for softmax cross-entropy it is)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_influence import HEAD_LAYERS, checkpoints_and_samples, extract

from tracinflow.influence.curvature import (
    WithOnes,
    augmented,
    curvature_inverses,
    gauss_newton,
    gauss_newton_scores,
    kfac_sides,
    preconditioned_sides,
)
from tracinflow.influence.kernel import score_block


def rel_err(got, expected):
    scale = np.maximum(np.abs(expected), 1e-3 * np.abs(expected).max())
    return float(np.max(np.abs(got - expected) / scale))


@pytest.fixture(scope="module")
def setup():
    models, loss_fn, test_xy, train_xy = checkpoints_and_samples()
    return models[-1], loss_fn, test_xy, train_xy


def per_sample_gradients(model, loss_fn, x, y, layer):
    """(N, d_out (d_in + 1)) gradients of a layer's weights with its bias as a last column, row by
    row (the order of ``e (x) a~``)."""
    module = dict(model.named_modules())[layer]
    rows = []
    for i in range(len(y)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1], reduction="none").sum()
        dw, db = torch.autograd.grad(loss, (module.weight, module.bias))
        rows.append(torch.cat([dw, db[:, None]], dim=1).reshape(-1))
    return torch.stack(rows).numpy()


def damped(matrix, damping):
    return matrix + damping * np.trace(matrix) / len(matrix) * np.eye(len(matrix))


def test_kfac_scores_equal_the_dense_kronecker_inverse(setup):
    """Per layer, the gradients' K-FAC curvature ``S (x) A`` built densely from autograd's
    per-sample gradients, damped factor by factor, inverted as one matrix."""
    model, loss_fn, (x_test, y_test), (x_train, y_train) = setup
    damping = 0.1
    expected = np.zeros((len(y_test), len(y_train)))
    for layer in HEAD_LAYERS:
        g_test = per_sample_gradients(model, loss_fn, x_test, y_test, layer)
        g_train = per_sample_gradients(model, loss_fn, x_train, y_train, layer)
        module = dict(model.named_modules())[layer]
        d_out, d_in = module.weight.shape
        grads = g_train.reshape(len(y_train), d_out, d_in + 1)
        a = grads[:, 0, :] / grads[:, 0, -1:]  # a~ = g / e, row 0 (its last column is e itself)
        e = grads[:, :, -1]
        a_factor, s_factor = a.T @ a / len(a), e.T @ e / len(e)
        curvature = np.kron(damped(s_factor, damping), damped(a_factor, damping))
        expected += g_test @ np.linalg.solve(curvature, g_train.T)
    assert np.abs(expected).max() > 1e-3
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        test = extract([model], loss_fn, x_test, y_test, HEAD_LAYERS, dtype)[0]
        train = extract([model], loss_fn, x_train, y_train, HEAD_LAYERS, dtype)[0]
        test_k, train_k = kfac_sides(test, train, list(HEAD_LAYERS), damping)
        got = score_block([test_k], [train_k], [1.0], device="cpu")
        assert got.dtype == dtype and rel_err(got, expected) < tol, (dtype, rel_err(got, expected))


def test_the_gauss_newton_matrix_is_the_final_layers_autograd_hessian(setup):
    model, loss_fn, (x_test, y_test), (x_train, y_train) = setup
    final = model.fc[4]
    weight, bias = final.weight.detach().clone(), final.bias.detach().clone()
    features = model.fc[:4](model.backbone(x_train)).detach()

    def mean_loss(theta):
        w = theta.reshape(weight.shape[0], weight.shape[1] + 1)
        logits = features @ w[:, :-1].T + w[:, -1]
        return loss_fn(logits, y_train, reduction="none").mean()

    theta = torch.cat([weight, bias[:, None]], dim=1).reshape(-1)
    hessian = torch.autograd.functional.hessian(mean_loss, theta).numpy()
    train = extract([model], loss_fn, x_train, y_train, ["fc.4"], np.float64)[0]
    train.meta["loss"] = {"class_weights": loss_fn.class_weights.tolist()}
    assert np.abs(gauss_newton(train, "fc.4") - hessian).max() < 1e-12
    damping = 0.05
    g_test = per_sample_gradients(model, loss_fn, x_test, y_test, "fc.4")
    g_train = per_sample_gradients(model, loss_fn, x_train, y_train, "fc.4")
    expected = g_test @ np.linalg.solve(damped(hessian, damping), g_train.T)
    test = extract([model], loss_fn, x_test, y_test, ["fc.4"], np.float64)[0]
    got = gauss_newton_scores(test, train, "fc.4", damping)
    assert rel_err(got, expected) < 1e-10


def test_the_bias_is_folded_into_the_activations(setup):
    model, loss_fn, _, (x_train, y_train) = setup
    train = extract([model], loss_fn, x_train, y_train, ["fc.4"], np.float64)[0]
    a = augmented(train, "fc.4")
    assert a.shape == (len(y_train), train.act["fc.4"].shape[1] + 1) and (a[:, -1] == 1).all()


def test_the_gauss_newton_influence_in_the_kernels_ghost_form_equals_the_dense_one(setup):
    """The workflow's form: the preconditioned test gradient as K ghost terms, scored by TracIn's
    blocked kernel against the stored training factors, equals the dense autograd computation."""
    model, loss_fn, (x_test, y_test), (x_train, y_train) = setup
    weights = {"class_weights": loss_fn.class_weights.tolist()}
    train64 = extract([model], loss_fn, x_train, y_train, ["fc.4"], np.float64)[0]
    train64.meta["loss"] = weights
    test64 = extract([model], loss_fn, x_test, y_test, ["fc.4"], np.float64)[0]
    expected = gauss_newton_scores(test64, train64, "fc.4", 0.1)  # the dense form, tested above
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
        test = extract([model], loss_fn, x_test, y_test, ["fc.4"], dtype)[0]
        train = extract([model], loss_fn, x_train, y_train, ["fc.4"], dtype)[0]
        train.meta["loss"] = weights
        inverses = curvature_inverses("gauss_newton", [train], ["fc.4"], 0.1)
        sides_t, sides_r, layers = preconditioned_sides("gauss_newton", [test], [train], inverses,
                                                        ["fc.4"])  # fmt: skip
        assert layers == [f"fc.4#{k}" for k in range(test.err["fc.4"].shape[1])]
        got = score_block(sides_t, sides_r, [1.0], layers=layers, block=(3, 5), device="cpu")
        assert got.dtype == dtype and rel_err(got, expected) < tol, (dtype, rel_err(got, expected))


def test_the_stored_kfac_inverses_give_the_same_scores_and_ones_are_added_block_by_block(setup):
    model, loss_fn, (x_test, y_test), (x_train, y_train) = setup
    test = extract([model], loss_fn, x_test, y_test, HEAD_LAYERS, np.float64)[0]
    train = extract([model], loss_fn, x_train, y_train, HEAD_LAYERS, np.float64)[0]
    expected = score_block(*[[side] for side in kfac_sides(test, train, list(HEAD_LAYERS))], [1.0])
    inverses = curvature_inverses("kfac", [train], HEAD_LAYERS)
    assert sorted(inverses[0]) == sorted(f"{layer}/{m}" for layer in HEAD_LAYERS for m in "AS")
    sides_t, sides_r, layers = preconditioned_sides("kfac", [test], [train], inverses, HEAD_LAYERS)
    got = score_block(sides_t, sides_r, [1.0], layers=layers, block=(4, 3), device="cpu")
    assert rel_err(got, expected) < 1e-12
    ones = WithOnes(train.act["fc.4"])
    assert ones.shape == (len(train), train.act["fc.4"].shape[1] + 1)
    assert np.array_equal(ones[2:5], augmented(train, "fc.4")[2:5])
    with pytest.raises(ValueError, match="final layer's alone"):
        curvature_inverses("gauss_newton", [train], HEAD_LAYERS)
