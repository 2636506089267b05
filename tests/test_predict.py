"""Predictions, metrics, mispredictions and the confusion-matrix plot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.special
import torch

from tracinflow._util.files import save_figure, write_parquet
from tracinflow.analysis.metrics import false_predictions, metrics
from tracinflow.plots.training import plot_confusion_matrix
from tracinflow.train.loss import WeightedSmoothedCrossEntropy
from tracinflow.train.model import build_model, make_arch
from tracinflow.train.predict import predict_split, true_label_margins

CLASSES = ["cat", "dog", "horse"]


def test_margins_stay_finite_where_the_probability_rounds_to_one():
    logits = torch.tensor([[80.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    margins = true_label_margins(logits, torch.tensor([0, 2]))
    assert margins[0].item() == pytest.approx(80.0 - np.log(2.0))
    assert margins[1].item() == pytest.approx(np.log(1 / 3) - np.log(2 / 3))


@pytest.mark.parametrize("rows_per_forward", [None, 3])
def test_predictions_match_a_direct_forward_pass(tmp_path, monkeypatch, rows_per_forward):
    """Also when the CPU runs each batch of 4 in forwards of 3 rows and 1 (CPU_FORWARD_PIXELS)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "test.npy", images)
    cache = np.load(tmp_path / "test.npy", mmap_mode="r")
    labels = rng.integers(0, 3, 11)
    idx = np.arange(100, 111)[::-1].copy()
    arch = make_arch("small_resnet", 3, hidden=[16, 8], width=8, image_size=(16, 16))
    torch.manual_seed(0)
    model = build_model(arch)
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 16, 16))  # non-trivial BatchNorm statistics: eval mode must be used
    loss_fn = WeightedSmoothedCrossEntropy(torch.tensor([0.5, 1.0, 1.5]), 3, 0.1)

    if rows_per_forward:
        import tracinflow._util.device as device

        monkeypatch.setattr(device, "CPU_FORWARD_PIXELS", rows_per_forward * 16 * 16)
    sizes = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    frame = predict_split(model, cache, labels, idx, loss_fn, batch_size=4, device="cpu")
    hook.remove()
    assert sizes == ([3, 1, 3, 1, 3] if rows_per_forward else [4, 4, 3])

    assert list(frame.columns) == ["idx", "label", "pred", "confidence", "loss", "margin", "probs"]
    # by hand: normalise in numpy, one forward pass of the whole split in eval mode
    mean, std = np.array(arch["mean"]), np.array(arch["std"])
    x = ((images / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(x, dtype=torch.float32))
    probs = torch.softmax(logits, 1).numpy()
    np.testing.assert_array_equal(frame["idx"], idx)
    np.testing.assert_array_equal(frame["label"], labels)
    np.testing.assert_array_equal(frame["pred"], probs.argmax(1))
    np.testing.assert_allclose(frame["confidence"], probs.max(1), rtol=1e-5)
    np.testing.assert_allclose(np.stack(frame["probs"]), probs, rtol=1e-5, atol=1e-7)
    # the true label's log-odds, from the float32 logits in float64
    p_true = scipy.special.softmax(logits.double().numpy(), axis=1)[np.arange(11), labels]
    np.testing.assert_allclose(frame["margin"], np.log(p_true) - np.log1p(-p_true), rtol=1e-5)
    expected_loss = loss_fn(logits, torch.tensor(labels), reduction="none").numpy()
    np.testing.assert_allclose(frame["loss"], expected_loss, rtol=1e-5)

    write_parquet(tmp_path / "p.parquet", frame)
    back = pd.read_parquet(tmp_path / "p.parquet")
    assert len(back["probs"].iloc[0]) == 3
    np.testing.assert_allclose(np.stack(back["probs"]), np.stack(frame["probs"]))


def _frame(labels, preds, losses, idx=None):
    n = len(labels)
    return pd.DataFrame(
        {
            "idx": np.arange(n) if idx is None else idx,
            "label": labels,
            "pred": preds,
            "confidence": np.linspace(0.5, 0.9, n),
            "loss": losses,
            "probs": [[0.0] * 3] * n,
        }
    )


def test_metrics_by_hand():
    test = _frame([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2], [1, 2, 3, 4, 5, 6])
    out = metrics(
        {
            "train": _frame([0, 1], [0, 1], [0.5, 1.5]),
            "val": _frame([0, 1, 2], [2, 1, 2], [1, 1, 4]),
            "test": test,
        },
        CLASSES,
    )
    assert out["train"]["accuracy"] == 1.0 and out["train"]["loss"] == 1.0
    assert out["val"]["accuracy"] == pytest.approx(2 / 3) and out["val"]["loss"] == 2.0
    assert out["test"]["accuracy"] == pytest.approx(4 / 6) and out["test"]["loss"] == 3.5
    assert out["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    cat = out["per_class"]["cat"]
    assert cat["precision"] == 0.5 and cat["recall"] == 0.5 and cat["support"] == 2
    dog = out["per_class"]["dog"]
    assert dog["precision"] == pytest.approx(2 / 3) and dog["recall"] == 1.0
    assert dog["f1"] == pytest.approx(2 * (2 / 3) / (2 / 3 + 1))
    assert out["per_class"]["horse"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}


def test_false_predictions_use_names_and_manifest_paths():
    frame = _frame([0, 1, 2, 1], [0, 2, 0, 0], [1, 1, 1, 1], idx=np.array([10, 11, 12, 13]))
    frame["confidence"] = [0.9, 0.6, 0.8, 0.6]
    manifest = pd.DataFrame(
        {"idx": [13, 12, 11, 10, 99], "path": ["d/13.jpg", "h/12.jpg", "d/11.jpg", "c/10.jpg", "x"]}
    )
    out = false_predictions(frame, manifest, CLASSES)
    assert list(out.columns) == [
        "index",
        "true_label",
        "predicted_label",
        "confidence",
        "image_path",
    ]
    assert out.to_dict("records") == [
        {"index": 12, "true_label": "horse", "predicted_label": "cat", "confidence": 0.8,
         "image_path": "h/12.jpg"},
        {"index": 11, "true_label": "dog", "predicted_label": "horse", "confidence": 0.6,
         "image_path": "d/11.jpg"},
        {"index": 13, "true_label": "dog", "predicted_label": "cat", "confidence": 0.6,
         "image_path": "d/13.jpg"},
    ]  # fmt: skip
    with pytest.raises(KeyError, match="not in the manifest"):
        false_predictions(frame, manifest[manifest["idx"] != 12], CLASSES)


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = tmp_path / "plots" / "confusion.png"
    save_figure(plot_confusion_matrix(np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]]), CLASSES), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert not list(path.parent.glob(".*.tmp"))
