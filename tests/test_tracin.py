"""The public API, ``from tracinflow import TracIn``: exact against per-sample autograd with the
project's loss and with a plain ``nn.CrossEntropyLoss``, checkpoints as state dicts or files, factors
of the training set extracted once, clear errors; and README's "From Python" snippet, run as written."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from test_influence import LRS, K, TinyNet, brute_force_scores, checkpoints_and_samples, rel_err
from torch import nn

from tracinflow import TracIn
from tracinflow.influence.kernel import COLUMNS
from tracinflow.io.checkpoints import save_checkpoint
from tracinflow.train.loss import (
    TorchCrossEntropy,
    WeightedSmoothedCrossEntropy,
    class_weights_from_labels,
)
from tracinflow.train.model import checkpoint_dict

HEAD = ["fc.0", "fc.2", "fc.4"]


class Counting:
    """A list of batches that counts how often it is iterated."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def batches_of(x, y, idx, size=5):
    return [(x[i : i + size], y[i : i + size], idx[i : i + size]) for i in range(0, len(y), size)]


@pytest.fixture(scope="module")
def data():
    """test_influence's checkpoints (as state dicts), test and training samples."""
    models, _, test, train = checkpoints_and_samples()
    return [model.state_dict() for model in models], test, train


def models_of(states):
    out = []
    for state in states:
        model = TinyNet().double()
        model.load_state_dict(state)
        out.append(model)
    return out


def dense_from_topk(top: pd.DataFrame, test_idx, train_idx) -> np.ndarray:
    """Top-k with k = all training rows, back into the (test, train) matrix."""
    dense = np.full((len(test_idx), len(train_idx)), np.nan)
    rows = {t: i for i, t in enumerate(test_idx)}
    cols = {r: j for j, r in enumerate(train_idx)}
    for row in top.itertuples():  # positive scores are proponents, negative ones opponents
        dense[rows[row.test_idx], cols[row.train_idx]] = row.influence
    return dense


@pytest.mark.parametrize("layers", [["fc.4"], HEAD], ids=["final", "all_head"])
@pytest.mark.parametrize("loss_kind", ["project", "cross_entropy"])
def test_tracin_equals_brute_force_autograd_in_float64(data, layers, loss_kind):
    states, (x_test, y_test), (x_train, y_train) = data
    weights = class_weights_from_labels(y_train, K)
    if loss_kind == "project":
        loss = WeightedSmoothedCrossEntropy(weights, K, 0.1)
        brute_loss = loss
    else:
        loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=0.1)

        def brute_loss(logits, y, reduction="none"):
            return F.cross_entropy(logits, y, weight=weights, label_smoothing=0.1, reduction="none")

    train_idx, test_idx = torch.arange(100, 113), torch.arange(7, 14)
    tracin = TracIn(
        TinyNet().double(), batches_of(x_train, y_train, train_idx), layers=layers, loss=loss,
        checkpoints=states, lrs=LRS, device="cpu", factor_dtype=np.float64,
    )  # fmt: skip
    expected = brute_force_scores(
        models_of(states), LRS, brute_loss, x_test, y_test, x_train, y_train, layers
    )
    dense = tracin.scores(batches_of(x_test, y_test, test_idx))
    assert rel_err(dense, expected) < 1e-10
    top = tracin.topk(batches_of(x_test, y_test, test_idx), k=13)
    # k = all 13 train rows: every positive score is listed as a proponent, every negative one
    # as an opponent
    assert list(top.columns) == COLUMNS and len(top) == np.count_nonzero(expected) == 7 * 13
    assert (top["influence"].gt(0) == top["kind"].eq("proponent")).all()
    assert rel_err(dense_from_topk(top, test_idx.tolist(), train_idx.tolist()), expected) < 1e-10
    first = top[(top["test_idx"] == 7) & (top["rank"] == 1)].set_index("kind")["train_idx"]
    assert first["proponent"] == 100 + int(np.argmax(expected[0]))
    assert first["opponent"] == 100 + int(np.argmin(expected[0]))
    self_inf = tracin.self_influence().set_index("train_idx")["self_influence"]
    train_expected = brute_force_scores(
        models_of(states), LRS, brute_loss, x_train, y_train, x_train, y_train, layers
    )
    assert rel_err(self_inf.loc[train_idx.tolist()].to_numpy(), np.diag(train_expected)) < 1e-10


def test_torch_cross_entropy_is_read_with_its_weight_and_smoothing():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(7, K, generator=rng, dtype=torch.float64)
    labels = torch.randint(0, K, (7,), generator=rng)
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    ce = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.2)  # reduction "mean" is not used
    wrapped = TorchCrossEntropy(ce, K)
    per_sample = F.cross_entropy(
        logits, labels, weight=weight, label_smoothing=0.2, reduction="none"
    )
    torch.testing.assert_close(
        wrapped(logits, labels, reduction="none"), per_sample, rtol=1e-14, atol=0
    )
    z = logits.clone().requires_grad_(True)
    F.cross_entropy(
        z, labels, weight=weight, label_smoothing=0.2, reduction="none"
    ).sum().backward()
    torch.testing.assert_close(wrapped.error_signal(logits, labels), z.grad, rtol=1e-12, atol=1e-14)
    assert wrapped.settings()["class_weights"] == weight.tolist()
    with pytest.raises(ValueError, match="ignore_index"):
        wrapped(logits, torch.full((7,), -100), reduction="none")


def test_checkpoint_files_give_their_learning_rates_and_loss_and_train_factors_come_once(
    data, tmp_path
):
    states, (x_test, y_test), (x_train, y_train) = data
    loss = WeightedSmoothedCrossEntropy(class_weights_from_labels(y_train, K), K, 0.1)
    paths = []
    for c, (state, lr) in enumerate(zip(states, LRS, strict=True)):
        model = TinyNet().double()
        model.load_state_dict(state)
        paths.append(tmp_path / f"epoch_{c:03d}.pt")
        save_checkpoint(paths[-1], checkpoint_dict(model, {}, lr_head=lr, loss=loss.settings()))
    train = Counting(batches_of(x_train, y_train, torch.arange(13)))
    from_files = TracIn(
        TinyNet().double(), train, layers=HEAD, checkpoints=paths, device="cpu",
        factor_dtype=np.float64,
    )  # fmt: skip
    assert from_files.lrs == LRS and from_files.loss.settings() == loss.settings()
    given = TracIn(
        TinyNet().double(), batches_of(x_train, y_train, torch.arange(13)), layers=HEAD,
        loss=loss, checkpoints=states, lrs=LRS, device="cpu", factor_dtype=np.float64,
    )  # fmt: skip
    test = batches_of(x_test, y_test, torch.arange(7))
    pd.testing.assert_frame_equal(from_files.topk(test, k=4), given.topk(test, k=4))
    from_files.topk(test, k=2, kind="opponent")
    from_files.self_influence()
    assert train.passes == len(LRS)  # one pass per checkpoint, reused by every query


def test_a_torchvision_style_head_of_one_linear_layer(data):
    _, (x_test, y_test), (x_train, y_train) = data

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(108, 9), nn.Tanh())
            self.fc = nn.Linear(9, K)

        def forward(self, x):
            return self.fc(self.body(x))

    torch.manual_seed(5)
    checkpoints = [Flat().double().state_dict() for _ in range(2)]
    loss = nn.CrossEntropyLoss()
    tracin = TracIn(
        Flat().double(), batches_of(x_train, y_train, torch.arange(13)), layers=["fc"], loss=loss,
        checkpoints=checkpoints, lrs=[0.1, 0.2], device="cpu", factor_dtype=np.float64,
    )  # fmt: skip
    models = []
    for state in checkpoints:
        model = Flat().double()
        model.load_state_dict(state)
        models.append(model)

    def brute_loss(logits, y, reduction="none"):
        return F.cross_entropy(logits, y, reduction="none")

    expected = brute_force_scores(
        models, [0.1, 0.2], brute_loss, x_test, y_test, x_train, y_train, ["fc"]
    )
    dense = tracin.scores(batches_of(x_test, y_test, torch.arange(7)))
    assert rel_err(dense, expected) < 1e-10


def test_bad_arguments_are_refused_naming_the_fix(data):
    states, _, (x_train, y_train) = data
    train = batches_of(x_train, y_train, torch.arange(13))
    loss = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match="pass lrs="):
        TracIn(TinyNet().double(), train, loss=loss, checkpoints=states)
    with pytest.raises(ValueError, match="3 learning rates for 2 checkpoints"):
        TracIn(TinyNet().double(), train, loss=loss, checkpoints=states[:2], lrs=LRS)
    with pytest.raises(ValueError, match="pass loss="):
        TracIn(TinyNet().double(), train, checkpoints=states, lrs=LRS)
    with pytest.raises(TypeError, match="not a per-sample loss"):
        TracIn(TinyNet().double(), train, loss=nn.MSELoss(), checkpoints=states, lrs=LRS)
    with pytest.raises(ValueError, match=r"layer 'fc\.9' not found"):
        TracIn(TinyNet().double(), train, ["fc.9"], loss, checkpoints=states, lrs=LRS)
    with pytest.raises(ValueError, match=r"not nn\.Linear"):
        TracIn(TinyNet().double(), train, ["fc.1"], loss, checkpoints=states, lrs=LRS)
    with pytest.raises(ValueError, match="no checkpoints"):
        TracIn(TinyNet().double(), train, loss=loss, checkpoints=[], lrs=[])
    tracin = TracIn(TinyNet().double(), train, loss=loss, checkpoints=states, lrs=LRS)
    with pytest.raises(ValueError, match="kind must be one of"):
        tracin.topk(train, k=2, kind="proponents")


def readme_python_snippet() -> str:
    """The first ```python block under README's "From Python" heading."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## From Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_the_readme_snippet_runs_as_written_and_is_exact():
    namespace: dict = {}
    exec(compile(readme_python_snippet(), "README.md", "exec"), namespace)
    top, suspects = namespace["top"], namespace["suspects"]
    n_test, n_train, k = 16, 80, 5
    assert list(top.columns) == COLUMNS and len(top) == n_test * 2 * k
    assert set(top["kind"]) == {"proponent", "opponent"}
    assert len(namespace["proponents"]) == n_test * k
    assert len(suspects) == n_train and suspects["rank"].tolist() == list(range(1, n_train + 1))
    # the printed numbers are exact: per-sample autograd in float64 on the snippet's checkpoints
    images, labels = namespace["images"], namespace["labels"]
    models = []
    for state in namespace["checkpoints"]:
        model = namespace["Net"]().double()
        model.load_state_dict(state)
        models.append(model)
    layers = namespace["tracin"].layers

    def loss(logits, y, reduction="none"):
        return F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none")

    expected = brute_force_scores(
        models, namespace["lrs"], loss, images[80:].double(), labels[80:], images[:80].double(),
        labels[:80], layers,
    )  # fmt: skip
    best = top[(top["kind"] == "proponent") & (top["rank"] == 1)].sort_values("test_idx")
    got = best["influence"].to_numpy(np.float64)
    want = expected[np.arange(n_test), best["train_idx"].to_numpy()]
    assert rel_err(got, want) < 1e-4  # float32 model and factors
    np.testing.assert_array_equal(best["train_idx"].to_numpy(), expected.argmax(axis=1))


def test_tracin_on_efficientnet_checkpoints_equals_brute_force_autograd(tmp_path):
    """The demo's backbone: EfficientNet-Lite0 from its ImageNet weights, two checkpoint files
    (heads of different seeds, one with a moved backbone), float64: TracIn over the final layer and
    over the whole head equals per-sample autograd, with the model in eval mode (frozen BatchNorm
    statistics, as training leaves them)."""
    from tracinflow.config import pretrained_weights_file
    from tracinflow.io.checkpoints import load_checkpoint, read_backbone_weights
    from tracinflow.train.model import create_model, make_arch, to_input

    weights = read_backbone_weights(
        pretrained_weights_file("efficientnet_lite0", "imagenet"), "efficientnet_lite0"
    )
    arch = make_arch("efficientnet_lite0", 3, hidden=[16, 8], pretrained="imagenet")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8))
    x = to_input(images, arch).double()
    y = torch.from_numpy(rng.integers(0, 3, 10))
    loss = WeightedSmoothedCrossEntropy(class_weights_from_labels(y[:6], 3), 3, 0.1)
    paths, lrs = [], [3e-4, 1e-4]
    for seed, lr in enumerate(lrs):
        torch.manual_seed(seed)
        model = create_model(arch, weights)
        if seed:
            with torch.no_grad():
                model.body.conv_head.weight.mul_(1.1)
        paths.append(tmp_path / f"epoch_{seed}.pt")
        save_checkpoint(paths[-1], checkpoint_dict(model, arch, lr_head=lr, loss=loss.settings()))
    models = [load_checkpoint(path)[0].double() for path in paths]
    assert not any(m.training for model in models for m in model.modules())
    train_idx, test_idx = torch.arange(6), torch.arange(6, 10)
    for layers in (["fc.4"], HEAD):
        tracin = TracIn(
            models[0], batches_of(x[:6], y[:6], train_idx, size=4), layers=layers,
            checkpoints=[str(p) for p in paths], device="cpu", factor_dtype=np.float64,
        )  # fmt: skip
        dense = tracin.scores(batches_of(x[6:], y[6:], test_idx, size=4))
        expected = brute_force_scores(models, lrs, loss, x[6:], y[6:], x[:6], y[:6], layers)
        assert rel_err(dense, expected) < 1e-10, layers
