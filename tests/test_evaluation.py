"""The counterfactual evaluation's arithmetic on cases whose answer is known, and the attribution
methods it scores against a brute-force float64 computation of their definitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_influence import HEAD_LAYERS, LRS, brute_force_scores, checkpoints_and_samples, extract

from tracinflow.analysis.evaluation import (
    bootstrap_lds,
    brittleness_sample,
    brittleness_table,
    ceiling_lds,
    chosen_method,
    hardness_matched,
    highest_loss,
    label_matched_random,
    lds,
    proponents_union,
    random_scores,
    removal_outcome,
    removal_table,
    selection_half,
    spearman_rows,
    subset_masks,
    subset_predictions,
)
from tracinflow.config import ConfigError, parse_method
from tracinflow.data.train_set import subset_train_set, without_images
from tracinflow.influence.methods import (
    available_methods,
    damping_variants,
    default_method,
    ensemble_scores,
    method_scores,
    self_scores,
)

EPOCHS = [2, 5, 9]


def rel_err(got, expected):
    scale = np.maximum(np.abs(expected), 1e-3 * np.abs(expected).max())
    return float(np.max(np.abs(got - expected) / scale))


@pytest.fixture(scope="module")
def factors():
    """Test and train factors of the head (float64 and float32) of three checkpoints of the tiny
    network, each with its epoch and lr in meta, and the brute-force pieces."""
    models, loss_fn, (x_test, y_test), (x_train, y_train) = checkpoints_and_samples()
    out = {"models": models, "loss_fn": loss_fn, "test_xy": (x_test, y_test),
           "train_xy": (x_train, y_train)}  # fmt: skip
    for dtype in (np.float64, np.float32):
        sides = []
        for x, y in ((x_test, y_test), (x_train, y_train)):
            side = extract(models, loss_fn, x, y, HEAD_LAYERS, dtype)
            for f, epoch, lr in zip(side, EPOCHS, LRS, strict=True):
                f.meta.update(epoch=epoch, lr=lr)
            sides.append(side)
        out[np.dtype(dtype).name] = sides
    return out


def brute(factors, layers, checkpoints=(0, 1, 2), bias_only=False):
    """sum over ``checkpoints`` of lr * <grad, grad'> over the weights and biases of ``layers``
    (only the biases: the error signal alone), by per-sample autograd in float64."""
    (x_test, y_test), (x_train, y_train) = factors["test_xy"], factors["train_xy"]
    models = [factors["models"][c] for c in checkpoints]
    lrs = [LRS[c] for c in checkpoints]
    if not bias_only:
        return brute_force_scores(
            models, lrs, factors["loss_fn"], x_test, y_test, x_train, y_train, layers
        )
    total = np.zeros((len(y_test), len(y_train)))
    for model, lr in zip(models, lrs, strict=True):
        modules = dict(model.named_modules())
        params = [modules[layer].bias for layer in layers]

        def grads(x, y, model=model, params=params):
            rows = []
            for i in range(len(y)):
                loss = factors["loss_fn"](model(x[i : i + 1]), y[i : i + 1], reduction="none")
                rows.append(
                    torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss.sum(), params)])
                )
            return torch.stack(rows)

        total += lr * (grads(x_test, y_test) @ grads(x_train, y_train).T).numpy()
    return total


@pytest.mark.parametrize(
    "name, layers, checkpoints, bias_only",
    [("tracin_head", HEAD_LAYERS, (0, 1, 2), False), ("tracin_final", ("fc.4",), (0, 1, 2), False),
     ("tracin_head_epoch_005", HEAD_LAYERS, (1,), False),
     ("tracin_final_epoch_009", ("fc.4",), (2,), False),
     ("tracin_head_error", HEAD_LAYERS, (0, 1, 2), True),
     ("tracin_final_error", ("fc.4",), (0, 1, 2), True)],
)  # fmt: skip
def test_each_method_equals_its_brute_force_definition(
    factors, name, layers, checkpoints, bias_only
):
    expected = brute(factors, layers, checkpoints, bias_only)
    assert np.abs(expected).max() > 1e-3
    for dtype, tol in (("float64", 1e-10), ("float32", 1e-4)):
        test, train = factors[dtype]
        got = method_scores(name, test, train)
        assert got.shape == expected.shape and rel_err(got, expected) < tol, (dtype, name)


def test_the_methods_the_factors_can_form_and_the_default():
    assert available_methods(HEAD_LAYERS, [1, 3]) == [
        "tracin_final", "tracin_final_epoch_001", "tracin_final_epoch_003", "tracin_final_error",
        "kfac_final", "kfac_final_epoch_001", "kfac_final_epoch_003",
        "gn_final", "gn_final_epoch_001", "gn_final_epoch_003",
        "cosine_final", "relatif_tracin_final", "relatif_kfac_final", "relatif_gn_final",
        "tracin_head", "tracin_head_epoch_001", "tracin_head_epoch_003", "tracin_head_error",
        "kfac_head", "kfac_head_epoch_001", "kfac_head_epoch_003",
        "cosine_head", "relatif_tracin_head", "relatif_kfac_head",
    ]  # fmt: skip
    assert available_methods(["fc.4"], [2]) == [
        "tracin_final", "tracin_final_epoch_002", "tracin_final_error", "kfac_final",
        "kfac_final_epoch_002", "gn_final", "gn_final_epoch_002", "cosine_final",
        "relatif_tracin_final", "relatif_kfac_final", "relatif_gn_final",
    ]  # fmt: skip
    assert default_method(["fc.4"]) == "tracin_final"
    assert default_method(["fc.4", "fc.2", "fc.0"]) == "tracin_head"
    assert default_method(["fc.2"]) is None
    for bad in ("tracin", "tracin_all", "tracin_final_epoch_1", "gauss_newton"):
        with pytest.raises(ConfigError, match="unknown attribution method"):
            parse_method(bad)


def test_a_method_for_a_checkpoint_that_is_not_there_is_refused(factors):
    test, train = factors["float64"]
    with pytest.raises(ValueError, match="no checkpoint of epoch 4"):
        method_scores("tracin_final_epoch_004", test, train)


# --- LDS ----------------------------------------------------------------------------------------


def subsets_and_margins(seed=0, n_test=40, n_train=60, n_subsets=24):
    """Random subsets and margins that are exactly linear in some true scores."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n_test, n_train))
    masks = rng.random((n_subsets, n_train)) < 0.5
    return truth, masks, subset_predictions(truth, masks)


def test_a_method_that_predicts_the_retrained_margins_exactly_scores_one_and_reversed_minus_one():
    truth, masks, margins = subsets_and_margins()
    assert lds(subset_predictions(truth, masks), margins) == pytest.approx(1.0)
    assert lds(subset_predictions(-truth, masks), margins) == pytest.approx(-1.0)
    # any increasing transform of the margins: Spearman sees only the order
    assert lds(subset_predictions(truth, masks), np.exp(margins / 10)) == pytest.approx(1.0)


def test_random_scores_score_about_zero_with_a_ci_that_covers_it():
    truth, masks, margins = subsets_and_margins(n_test=400, n_subsets=32)
    predicted = subset_predictions(random_scores(truth.shape, seed=1), masks)
    value, low, high = bootstrap_lds(predicted, margins, draws=300, seed=0)
    assert abs(value) < 0.05 and low < 0 < high and high - low < 0.2


def test_the_bootstrap_ci_brackets_the_lds_and_narrows_with_more_data():
    truth, masks, margins = subsets_and_margins(n_test=60, n_subsets=16)
    noisy = margins + np.random.default_rng(3).standard_normal(margins.shape) * margins.std()
    value, low, high = bootstrap_lds(subset_predictions(truth, masks), noisy, draws=300)
    assert low < value < high and 0.3 < value < 0.9
    truth, masks, margins = subsets_and_margins(n_test=300, n_subsets=64)
    noisy = margins + np.random.default_rng(3).standard_normal(margins.shape) * margins.std()
    _, low2, high2 = bootstrap_lds(subset_predictions(truth, masks), noisy, draws=300)
    assert high2 - low2 < high - low


def test_spearman_ties_and_constant_rows():
    rows = spearman_rows(
        np.array([[1, 2, 2, 3], [1, 1, 1, 1]]), np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    )
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert rows[0] == pytest.approx(expected) and np.isnan(rows[1])
    assert lds(np.array([[1, 2, 2, 3], [1, 1, 1, 1]]), np.array([[1, 2, 3, 4], [1, 2, 3, 4]])) == (
        pytest.approx(expected)
    )  # the constant row is left out


def test_the_ceiling_pairs_every_seed_with_every_other():
    a, b = np.arange(6.0).reshape(2, 3), -np.arange(6.0).reshape(2, 3)
    predicted, actual = ceiling_lds([a, b])
    assert predicted.shape == (4, 3) and np.array_equal(predicted[:2], a)
    assert np.array_equal(actual[:2], b) and np.array_equal(predicted[2:], b)
    assert lds(predicted, actual) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ceiling_lds([a])


def test_the_selection_half_is_seeded_and_the_choice_skips_controls_and_other_dampings():
    half = selection_half(11, seed=3)
    assert half.sum() == 5 and (half == selection_half(11, seed=3)).all()
    assert not (half == selection_half(11, seed=4)).all()
    table = pd.DataFrame({
        "method": ["tracin_final", "kfac_head", "kfac_head@1", "random", "ceiling"],
        "kind": ["method", "method", "method", "random", "ceiling"],
        "lds_selection": [0.10, 0.20, 0.30, 0.40, 0.90],
    })  # fmt: skip
    assert chosen_method(table) == "kfac_head"
    assert chosen_method(table[table["kind"] != "method"]) is None


def test_subset_masks_follow_the_subset_versions_training_sets():
    train_idx = np.array([3, 5, 8, 9])
    frames = {"a": pd.DataFrame({"idx": [3, 5, 8, 9], "dropped": [False, True, False, True]}),
              "b": pd.DataFrame({"idx": [3, 5, 8, 9], "dropped": [True, False, False, False]})}  # fmt: skip
    assert subset_masks(frames, train_idx).tolist() == [[True, False, True, False],
                                                        [False, True, True, True]]  # fmt: skip
    frames["c"] = pd.DataFrame({"idx": [3, 4], "dropped": [False, False]})
    with pytest.raises(ValueError, match="subset version c trains on 1 images"):
        subset_masks(frames, train_idx)


# --- subsets of a training set ---------------------------------------------------------------------


def source_train_set(n=40, dropped=(3, 7)):
    idx = np.arange(100, 100 + n)
    return pd.DataFrame({"idx": idx, "label": idx % 4, "original_label": idx % 4,
                         "noisy": False, "dropped": np.isin(np.arange(n), dropped)})  # fmt: skip


def test_a_subset_keeps_a_seeded_fraction_of_the_images_the_source_trains_on():
    source = source_train_set()
    half = subset_train_set(source, 0.5, seed=3)
    kept = ~half["dropped"]
    assert kept.sum() == 19  # half of 38, the two the source dropped stay dropped
    assert not kept[source["dropped"]].any()
    assert half.equals(subset_train_set(source, 0.5, seed=3))
    assert not half.equals(subset_train_set(source, 0.5, seed=4))
    assert (half[["idx", "label", "original_label", "noisy"]]
            .equals(source[["idx", "label", "original_label", "noisy"]]))  # fmt: skip
    whole = subset_train_set(source, None, seed=0)
    assert whole.equals(source)


def test_removing_images_drops_exactly_them_and_refuses_one_the_source_does_not_train_on():
    source = source_train_set()
    out = without_images(source, [101, 105], "set x")
    assert sorted(out.loc[out["dropped"], "idx"]) == [101, 103, 105, 107]
    with pytest.raises(ValueError, match=r"set x: idx \[103\] is not among the images"):
        without_images(source, [103], "set x")


# --- removal -------------------------------------------------------------------------------------


def test_the_proponents_union_takes_each_rows_top_k_positive_scores_ties_by_lower_idx():
    scores = np.array([[5.0, 1.0, 5.0, -1.0], [-2.0, 0.5, 0.0, 3.0]])
    train_idx = np.array([10, 20, 30, 40])
    assert proponents_union(scores, train_idx, 1).tolist() == [10, 40]
    assert proponents_union(scores, train_idx, 2).tolist() == [10, 20, 30, 40]
    assert proponents_union(scores, train_idx, 3).tolist() == [
        10,
        20,
        30,
        40,
    ]  # 0.0 is no proponent


def test_the_controls_keep_the_label_counts_and_the_hardness_matched_one_the_losses():
    rng = np.random.default_rng(0)
    idx = np.arange(200)
    labels = idx % 5
    losses = rng.gamma(1.0, 1.0, 200)
    removed = np.sort(rng.choice(idx, 30, replace=False))
    counts = np.bincount(labels[removed], minlength=5)
    for seed in range(3):
        random = label_matched_random(removed, idx, labels, seed)
        assert len(random) == 30 and np.array_equal(
            np.bincount(labels[random], minlength=5), counts
        )
        matched = hardness_matched(removed, idx, labels, losses, seed)
        assert np.array_equal(np.bincount(labels[matched], minlength=5), counts)
        assert not np.isin(matched, removed).any() and len(np.unique(matched)) == 30
        # as hard: the matched losses follow the removed ones far closer than random images do
        gap = np.abs(np.sort(losses[matched]) - np.sort(losses[removed])).mean()
        assert gap < 0.2 * np.abs(np.sort(losses[random]) - np.sort(losses[removed])).mean() + 0.05
    top = highest_loss(30, idx, losses)
    assert set(top) == set(idx[np.argsort(-losses)[:30]])
    # more than half of a label removed: no control of as many others exists, and it says so
    with pytest.raises(ValueError, match="takes 21 of the 40 training images of label 3"):
        hardness_matched(idx[labels == 3][:21], idx, labels, losses, 0)


def test_a_removal_outcome_is_the_change_against_the_same_seeds_full_retrain():
    group = np.array([True, True, True, False, False])
    label = np.array([0, 1, 2, 0, 1])
    full = removal_outcome(group, label, [1, 1, 0, 0, 1], [0.1, 0.2, 0.3, 1, 1],
                           [0, 1, 0, 0, 0], [0.4, 0.2, 0.0, 1, 1])  # fmt: skip
    assert full == pytest.approx({"fixed": 1 / 3, "margin": 0.0, "rest_accuracy": -0.5})


def test_the_removal_table_pairs_the_method_with_each_control_by_seed():
    rows = []
    for seed, (m, r) in enumerate([(0.3, 0.1), (0.2, 0.1), (0.4, 0.0)]):
        for selection, fixed in (("method", m), ("random", r)):
            rows.append({"method": "tracin_final", "k": 5, "selection": selection, "seed": seed,
                         "removed": 40, "fixed": fixed, "margin": fixed * 2,
                         "rest_accuracy": 0.0})  # fmt: skip
    table = removal_table(pd.DataFrame(rows)).set_index("selection")
    assert table.loc["method", "fixed"] == pytest.approx(0.3)
    assert table.loc["method", "fixed_se"] == pytest.approx(0.1 / np.sqrt(3))
    assert np.isnan(table.loc["method", "method_minus_this_fixed"])
    differences = np.array([0.2, 0.1, 0.4])
    assert table.loc["random", "method_minus_this_fixed"] == pytest.approx(differences.mean())
    assert table.loc["random", "method_minus_this_fixed_se"] == pytest.approx(
        differences.std(ddof=1) / np.sqrt(3)
    )
    assert table.loc["random", "method_minus_this_margin"] == pytest.approx(2 * differences.mean())


def test_the_brittleness_sample_is_seeded_and_of_correct_predictions_and_the_table_finds_the_least_k():
    reference = pd.DataFrame({"idx": np.arange(10), "label": [0] * 10,
                              "pred": [0, 1, 0, 0, 1, 0, 0, 0, 1, 0]})  # fmt: skip
    sample = brittleness_sample(reference, 3, seed=5)
    assert len(sample) == 3 and not np.isin(sample, [1, 4, 8]).any()
    assert np.array_equal(sample, brittleness_sample(reference, 3, seed=5))
    with pytest.raises(
        ValueError, match="wants 8 correctly predicted test images; the reference has 7"
    ):
        brittleness_sample(reference, 8, seed=0)
    rows = pd.DataFrame(
        [("m", "method", 3, k, k >= 20) for k in (10, 20, 40)]
        + [("m", "random", 3, k, False) for k in (10, 20, 40)],
        columns=["method", "selection", "test_idx", "k", "flipped"],
    )
    table = brittleness_table(rows).set_index("selection")
    assert table.loc["method", "smallest_k"] == 20 and np.isnan(table.loc["random", "smallest_k"])
    assert table.loc["method", "flipped_k40"] and not table.loc["method", "flipped_k10"]


# --- curvature-aware methods, RelatIF and the cosine ------------------------------------------------


def gradients_of(factors, checkpoint, side, layers):
    """Per-sample autograd gradients (weights with the bias as a last column, flattened) of
    ``layers`` at ``checkpoint``, for the test or train samples, float64."""
    from test_curvature import per_sample_gradients

    x, y = factors["test_xy"] if side == "test" else factors["train_xy"]
    model = factors["models"][checkpoint]
    return {layer: per_sample_gradients(model, factors["loss_fn"], x, y, layer) for layer in layers}


def damped(matrix, damping=0.1):
    return matrix + damping * np.trace(matrix) / len(matrix) * np.eye(len(matrix))


def brute_curvature(factors, kind, layers, checkpoints=(0, 1, 2)):
    """sum_c lr_c sum_L g_t^T C_L^-1 g_j by dense algebra on autograd's per-sample gradients, with
    C_L the damped K-FAC product S (x) A (kind kfac) or the final layer's damped autograd Hessian
    (kind gn)."""
    from test_curvature import damped as damp

    (x_train, y_train) = factors["train_xy"]
    total = np.zeros((len(factors["test_xy"][1]), len(y_train)))
    for c in checkpoints:
        g_test = gradients_of(factors, c, "test", layers)
        g_train = gradients_of(factors, c, "train", layers)
        for layer in layers:
            module = dict(factors["models"][c].named_modules())[layer]
            d_out, d_in = module.weight.shape
            if kind == "kfac":
                grads = g_train[layer].reshape(len(y_train), d_out, d_in + 1)
                a = grads[:, 0, :] / grads[:, 0, -1:]
                e = grads[:, :, -1]
                curvature = np.kron(damp(e.T @ e / len(e), 0.1), damp(a.T @ a / len(a), 0.1))
            else:
                model = factors["models"][c]
                features = model.fc[:4](model.backbone(x_train)).detach()
                w = torch.cat([module.weight, module.bias[:, None]], 1).detach().reshape(-1)

                def loss(theta, features=features, shape=(d_out, d_in + 1)):
                    t = theta.reshape(shape)
                    z = features @ t[:, :-1].T + t[:, -1]
                    return factors["loss_fn"](z, y_train, reduction="none").mean()

                hessian = torch.autograd.functional.hessian(loss, w).numpy()
                curvature = damp(hessian, 0.1)
            total += LRS[c] * g_test[layer] @ np.linalg.solve(curvature, g_train[layer].T)
    return total


@pytest.mark.parametrize(
    "name, kind, layers, checkpoints",
    [("kfac_head", "kfac", HEAD_LAYERS, (0, 1, 2)), ("kfac_final_epoch_009", "kfac", ("fc.4",), (2,)),
     ("gn_final", "gn", ("fc.4",), (0, 1, 2)), ("gn_final_epoch_005", "gn", ("fc.4",), (1,))],
)  # fmt: skip
def test_each_curvature_method_equals_its_dense_brute_force(
    factors, name, kind, layers, checkpoints
):
    expected = brute_curvature(factors, kind, layers, checkpoints)
    for dtype, tol in (("float64", 1e-9), ("float32", 1e-4)):
        test, train = factors[dtype]
        if kind == "gn":
            for side in (test, train):
                for f in side:
                    f.meta["loss"] = {"class_weights": factors["loss_fn"].class_weights.tolist()}
        got = method_scores(name, test, train)
        assert rel_err(got, expected) < tol, (dtype, name, rel_err(got, expected))


def test_relatif_and_the_cosine_divide_by_the_self_influences(factors):
    test, train = factors["float64"]
    for f in [*test, *train]:
        f.meta["loss"] = {"class_weights": factors["loss_fn"].class_weights.tolist()}
    for base, kind, layers in (("tracin_head", None, HEAD_LAYERS), ("kfac_final", "kfac", ("fc.4",)),
                               ("gn_final", "gn", ("fc.4",))):  # fmt: skip
        plain = brute(factors, layers) if kind is None else brute_curvature(factors, kind, layers)
        # the self-influence of a training image: its own column of the train x train matrix
        twin = {"test_xy": factors["train_xy"], **{k: v for k, v in factors.items()
                                                   if k != "test_xy"}}  # fmt: skip
        own = brute(twin, layers) if kind is None else brute_curvature(twin, kind, layers)
        expected = plain / np.sqrt(np.diag(own))[None, :]
        assert rel_err(method_scores(f"relatif_{base}", test, train), expected) < 1e-9, base
        assert np.allclose(self_scores(base, train), np.diag(own), rtol=1e-9)
    test_twin = {"train_xy": factors["test_xy"], **{k: v for k, v in factors.items()
                                                    if k != "train_xy"}}  # fmt: skip
    own_test = np.diag(brute(test_twin, HEAD_LAYERS))
    own_train = np.diag(brute({**factors, "test_xy": factors["train_xy"]}, HEAD_LAYERS))
    cosine = brute(factors, HEAD_LAYERS) / np.sqrt(np.outer(own_test, own_train))
    got = method_scores("cosine_head", test, train)
    assert rel_err(got, cosine) < 1e-9 and np.abs(got).max() <= 1 + 1e-12


def test_an_ensemble_is_the_mean_of_its_members_and_one_sum_over_all_their_checkpoints(factors):
    """Two members (the checkpoints 0-1 and 2, as if two models of one training set): the mean of
    their brute-force scores, and the kernel's one sum over both members' checkpoints with each
    learning rate halved (what influence.ensemble's shards compute)."""
    test, train = factors["float64"]
    members = [(test[:2], train[:2]), (test[2:], train[2:])]
    for name, kind, layers in (
        ("tracin_head", None, HEAD_LAYERS),
        ("kfac_head", "kfac", HEAD_LAYERS),
    ):
        parts = [(0, 1), (2,)]
        if kind is None:
            expected = sum(brute(factors, layers, part) for part in parts) / 2
        else:
            expected = sum(brute_curvature(factors, kind, layers, part) for part in parts) / 2
        got = ensemble_scores(name, members)
        assert rel_err(got, expected) < 1e-9, name
    halved = [float(f.meta["lr"]) / 2 for f in train]
    assert rel_err(method_scores("tracin_head", test, train, halved),
                   ensemble_scores("tracin_head", members)) < 1e-12  # fmt: skip
    with pytest.raises(ValueError, match="no models"):
        ensemble_scores("tracin_head", [])


def test_the_curvature_self_influence_rankings_are_the_methods_self_influence(factors):
    """The self_influence rule's curvature columns (rankings kfac_self_influence over the traced
    layers, gn_self_influence of the final layer) equal the methods' self-influence, which
    test_relatif_and_the_cosine_divide_by_the_self_influences checks against the brute force;
    computed in blocks of rows as on a large training set."""
    from tracinflow.influence.curvature import curvature_self_influence
    from tracinflow.stages.influence import curvature_self_influence_frame

    _, train = factors["float64"]
    for f in train:
        f.meta["loss"] = {"class_weights": factors["loss_fn"].class_weights.tolist()}
    frame = curvature_self_influence_frame(train, 0.1)
    assert frame["train_idx"].tolist() == list(train[0].idx)
    np.testing.assert_allclose(frame["kfac_self_influence"], self_scores("kfac_head", train),
                               rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(frame["gn_self_influence"], self_scores("gn_final", train),
                               rtol=1e-12)  # fmt: skip
    lrs = [float(f.meta["lr"]) for f in train]
    blocked = curvature_self_influence(train, "kfac", HEAD_LAYERS, lrs, 0.1, rows=3)
    np.testing.assert_allclose(blocked, frame["kfac_self_influence"], rtol=1e-12)
    without_final = [f.take(np.arange(len(f))) for f in train]
    for f in without_final:
        f.act.pop("fc.4"), f.err.pop("fc.4")
    assert "gn_self_influence" not in curvature_self_influence_frame(without_final, 0.1)


def test_the_method_grammar_refuses_what_is_not_a_method():
    assert parse_method("relatif_kfac_head_epoch_003@0.01") == {
        "kind": "kfac", "layers": HEAD_LAYERS, "epoch": 3, "stage2_only": False,
        "error_only": False, "relative": True, "damping": 0.01,
    }  # fmt: skip
    assert parse_method("gn_final_stage2")["stage2_only"]
    for bad in ("gn_head", "kfac_final_error", "cosine_final_epoch_001", "relatif_cosine_final",
                "tracin_final@0.1", "kfac_final@0", "kfac_final@x", "cosine_head_stage2",
                "kfac_head_stage2_epoch_001", "tracin_final_error_stage2"):  # fmt: skip
        with pytest.raises(ConfigError, match="unknown attribution method"):
            parse_method(bad)


def test_stage1_checkpoints_join_the_sums_and_stage2_rows_leave_them_out(factors):
    # the whole trajectory: a plain method sums every checkpoint traced; _stage2 and _epoch_EEE
    # take stage 2's alone (a stage-1 checkpoint of the same epoch number is not it)
    test, train = factors["float64"]

    def stage1(side):
        copy = side.take(np.arange(len(side)))
        copy.act = {k: 0.5 * v for k, v in copy.act.items()}
        copy.meta = dict(side.meta) | {"stage": 1, "lr": 0.01}
        return copy

    s1_test, s1_train = [stage1(f) for f in test[:1]], [stage1(f) for f in train[:1]]
    epoch = int(test[0].meta["epoch"])
    for name in ("kfac_head", "tracin_final", "gn_final"):
        whole = method_scores(name, s1_test + test, s1_train + train)
        stage2 = method_scores(f"{name}_stage2", s1_test + test, s1_train + train)
        np.testing.assert_allclose(stage2, method_scores(name, test, train), rtol=1e-12)
        np.testing.assert_allclose(
            whole, stage2 + method_scores(name, s1_test, s1_train), rtol=1e-10
        )
        np.testing.assert_allclose(
            method_scores(f"{name}_epoch_{epoch:03d}", s1_test + test, s1_train + train),
            method_scores(f"{name}_epoch_{epoch:03d}", test, train), rtol=1e-12,
        )  # fmt: skip
    epochs = [int(f.meta["epoch"]) for f in train]
    assert "kfac_head_stage2" not in available_methods(HEAD_LAYERS, epochs)
    names = available_methods(HEAD_LAYERS, epochs, trajectory=True)
    assert {"kfac_head_stage2", "gn_final_stage2", "tracin_head_stage2"} <= set(names)
    assert not any(n.endswith("_stage2") for n in damping_variants(names))
