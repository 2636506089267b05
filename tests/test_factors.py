"""Factor extraction: closed-form and autograd error signals, layer checks, the on-disk folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracinflow.influence.factors import extract_factors
from tracinflow.io.factor_store import (
    NpyRows,
    extract_to_dir,
    is_complete,
    load_factor_dir,
    write_factor_dir,
)
from tracinflow.train.loss import WeightedSmoothedCrossEntropy, class_weights_from_labels

K = 4
HEAD_LAYERS = ("fc.0", "fc.2", "fc.4")


class TinyNet(nn.Module):
    """A small conv backbone and the project's head shape (Linear, LeakyReLU, Linear, LeakyReLU,
    Linear), with small widths."""

    def __init__(self, num_classes: int = K, feat: int = 6, hidden: tuple[int, int] = (7, 5)):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16, feat),
        )
        self.fc = nn.Sequential(
            nn.Linear(feat, hidden[0]),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden[0], hidden[1]),
            nn.LeakyReLU(0.01),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x):
        return self.fc(self.backbone(x))


def make_data(n: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 6, 6, generator=g, dtype=dtype)
    labels = torch.randint(0, K, (n,), generator=g)
    return images, labels


def make_model(seed: int, dtype=torch.float64) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().to(dtype)


def make_loss(labels) -> WeightedSmoothedCrossEntropy:
    return WeightedSmoothedCrossEntropy(class_weights_from_labels(labels, K), K, 0.1)


def batches(images, labels, size: int = 4):
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def per_sample_dl_dz(model, loss_fn, images, labels, layer: str) -> np.ndarray:
    """Brute force: dl/dz of ``layer`` for each sample alone, by autograd on its own loss."""
    module = dict(model.named_modules())[layer]
    rows = []
    for i in range(len(labels)):
        out = {}
        handle = module.register_forward_hook(lambda _m, _a, z, out=out: out.__setitem__("z", z))
        try:
            loss = loss_fn(model(images[i : i + 1]), labels[i : i + 1], reduction="none").sum()
            (grad,) = torch.autograd.grad(loss, out["z"])
        finally:
            handle.remove()
        rows.append(grad[0].detach().numpy())
    return np.stack(rows)


def test_final_layer_error_is_dl_dz_and_hidden_layers_match_autograd():
    images, labels = make_data(10)
    model, loss_fn = make_model(1), make_loss(labels)
    factors = extract_factors(
        model, batches(images, labels), loss_fn, layers=HEAD_LAYERS, device="cpu", dtype=np.float64
    )
    for layer in HEAD_LAYERS:
        expected = per_sample_dl_dz(model, loss_fn, images, labels, layer)
        np.testing.assert_allclose(factors.err[layer], expected, rtol=1e-12, atol=1e-15)
    # activations are the layers' inputs
    with torch.no_grad():
        feats = model.backbone(images)
        np.testing.assert_allclose(factors.act["fc.0"], feats.numpy(), rtol=1e-13)
        np.testing.assert_allclose(factors.logits, model(images).numpy(), rtol=1e-13)
    assert factors.has_bias == dict.fromkeys(HEAD_LAYERS, True)
    np.testing.assert_array_equal(factors.labels, labels.numpy())
    np.testing.assert_array_equal(factors.idx, np.arange(10))


class NoBackward:
    """Fails any autograd backward, and records whether every module ran under inference mode."""

    def __init__(self, monkeypatch, model):
        self.modes = []

        def refuse(*_args, **_kwargs):
            raise AssertionError("a backward pass was run")

        monkeypatch.setattr(torch.autograd, "grad", refuse)
        monkeypatch.setattr(torch.autograd, "backward", refuse)
        monkeypatch.setattr(torch.Tensor, "backward", refuse)
        for module in model.modules():
            module.register_forward_hook(
                lambda _m, _a, _o: self.modes.append(torch.is_inference_mode_enabled())
            )


def test_final_layer_uses_no_backward_pass(monkeypatch):
    images, labels = make_data(8)
    model, loss_fn = make_model(2), make_loss(labels)
    guard = NoBackward(monkeypatch, model)
    factors = extract_factors(
        model, batches(images, labels), loss_fn, device="cpu", dtype=np.float64
    )
    assert guard.modes and all(guard.modes), "some module ran outside inference mode"
    monkeypatch.undo()
    expected = per_sample_dl_dz(model, loss_fn, images, labels, "fc.4")
    np.testing.assert_allclose(factors.err["fc.4"], expected, rtol=1e-12, atol=1e-15)


def test_the_no_backward_guard_catches_the_hidden_layer_path(monkeypatch):
    # the guard above is not vacuous: hooking a hidden layer does need autograd and trips it
    images, labels = make_data(4)
    model, loss_fn = make_model(2), make_loss(labels)
    NoBackward(monkeypatch, model)
    with pytest.raises(AssertionError, match="backward"):
        extract_factors(model, batches(images, labels), loss_fn, layers=("fc.2",), device="cpu")


def test_prediction_target_uses_argmax():
    images, labels = make_data(9)
    model, loss_fn = make_model(3), make_loss(labels)
    factors = extract_factors(
        model, batches(images, labels), loss_fn, target="prediction", device="cpu", dtype=np.float64
    )
    logits = torch.from_numpy(factors.logits)
    expected = loss_fn.error_signal(logits, logits.argmax(1))
    np.testing.assert_allclose(factors.err["fc.4"], expected.numpy(), rtol=1e-13)
    np.testing.assert_array_equal(factors.labels, labels.numpy())  # true labels are kept
    with pytest.raises(ValueError, match="target"):
        extract_factors(model, batches(images, labels), loss_fn, target="guess", device="cpu")


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (("fc.1",), r"'fc\.1' is a LeakyReLU.*fc\.0.*fc\.2.*fc\.4"),
        (("fc.9",), r"'fc\.9' not found.*fc\.0.*fc\.2.*fc\.4"),
        (("backbone.4",), r"'backbone\.4' is not inside the head"),
        ((), r"no layers"),
    ],
)
def test_bad_layer_names_are_refused(layers, message):
    images, labels = make_data(4)
    model, loss_fn = make_model(0), make_loss(labels)
    with pytest.raises(ValueError, match=message):
        extract_factors(model, batches(images, labels), loss_fn, layers=layers, device="cpu")


def test_model_whose_output_is_not_the_head_output_is_refused():
    class Scaled(TinyNet):
        def forward(self, x):
            return 2.0 * super().forward(x)

    images, labels = make_data(4)
    torch.manual_seed(0)
    model = Scaled().double()
    with pytest.raises(ValueError, match="last Linear"):
        extract_factors(model, batches(images, labels), make_loss(labels), device="cpu")


def test_float32_model_and_bf16_autocast_store_float32():
    images, labels = make_data(6, dtype=torch.float32)
    model, loss_fn = make_model(4, dtype=torch.float32), make_loss(labels)
    exact = extract_factors(
        model, batches(images, labels), loss_fn, layers=HEAD_LAYERS, device="cpu"
    )
    approx = extract_factors(
        model, batches(images, labels), loss_fn, layers=HEAD_LAYERS, device="cpu", autocast=True
    )
    for layer in HEAD_LAYERS:
        assert exact.act[layer].dtype == approx.err[layer].dtype == np.float32
        np.testing.assert_allclose(approx.act[layer], exact.act[layer], rtol=0.1, atol=0.05)
        np.testing.assert_allclose(approx.err[layer], exact.err[layer], rtol=0.1, atol=0.05)


def test_progress_reports_images_rate_and_eta(tmp_path):
    images, labels = make_data(10)
    model, loss_fn = make_model(0), make_loss(labels)
    lines: list[str] = []
    extract_factors(
        model, batches(images, labels), loss_fn, device="cpu", log=lines.append, progress_every=0
    )
    # one line per batch of 4, 4, 2 images, counting images, with a rate and an ETA
    assert [line.split(" images")[0] for line in lines] == [
        "factors: 4/10",
        "factors: 8/10",
        "factors: 10/10",
    ]
    assert all("images/s" in line and "elapsed" in line and "ETA" in line for line in lines)
    # with a long interval only the final line comes, despite the interval
    quiet: list[str] = []
    extract_to_dir(
        model, batches(images, labels), loss_fn, tmp_path / "f", epoch=1, lr=0.1,
        log=quiet.append, label="factors train", progress_every=3600,
    )  # fmt: skip
    assert len(quiet) == 1 and quiet[0].startswith("factors train: 10/10 images (100%)")


def loader(images, labels, idx, batch_size=4):
    return DataLoader(TensorDataset(images, labels, idx), batch_size=batch_size, shuffle=False)


def test_round_trip_through_a_factor_folder(tmp_path):
    images, labels = make_data(11)
    idx = torch.arange(100, 111)[torch.randperm(11, generator=torch.Generator().manual_seed(0))]
    model, loss_fn = make_model(5), make_loss(labels)
    folder = tmp_path / "epoch_003" / "train"
    extract_to_dir(
        model,
        loader(images, labels, idx),
        loss_fn,
        folder,
        epoch=3,
        lr=0.05,
        layers=("fc.2", "fc.4"),
    )
    expected = extract_factors(
        model, loader(images, labels, idx), loss_fn, layers=("fc.2", "fc.4"), device="cpu"
    )
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "fc.2.act.npy",
            "fc.2.err.npy",
            "fc.4.act.npy",
            "fc.4.err.npy",
            "idx.npy",
            "labels.npy",
            "logits.npy",
            "meta.json",
        ]
    )
    meta = json.loads((folder / "meta.json").read_text())
    assert meta == {
        "epoch": 3,
        "lr": 0.05,
        "layers": ["fc.2", "fc.4"],
        "has_bias": {"fc.2": True, "fc.4": True},
        "loss": loss_fn.settings(),
        "target": "label",
        "num_samples": 11,
    }
    full = load_factor_dir(folder)
    assert full.act["fc.4"].dtype == np.float32 and isinstance(full.act["fc.4"], np.memmap)
    np.testing.assert_array_equal(full.idx, idx.numpy())
    for layer in ("fc.2", "fc.4"):
        np.testing.assert_array_equal(full.act[layer], expected.act[layer])
        np.testing.assert_array_equal(full.err[layer], expected.err[layer])
    for mmap in (True, False):
        part = load_factor_dir(folder, rows=(3, 8), mmap=mmap, layers=["fc.4"])
        assert part.layers == ("fc.4",) and part.row_offset == 3 and len(part) == 5
        assert isinstance(part.err["fc.4"], np.memmap) == mmap
        np.testing.assert_array_equal(part.err["fc.4"], expected.err["fc.4"][3:8])
        np.testing.assert_array_equal(part.logits, expected.logits[3:8])
        np.testing.assert_array_equal(part.idx, idx.numpy()[3:8])
    streamed = load_factor_dir(folder, rows=(2, 9), stream=True)
    assert isinstance(streamed.act["fc.4"], NpyRows) and streamed.act["fc.4"].shape == (
        7,
        expected.act["fc.4"].shape[1],
    )
    np.testing.assert_array_equal(np.asarray(streamed.act["fc.4"]), expected.act["fc.4"][2:9])
    # a slice of a slice reads exactly its rows, and an empty one reads nothing
    np.testing.assert_array_equal(np.asarray(streamed.err["fc.2"][1:4]), expected.err["fc.2"][3:6])
    assert np.asarray(streamed.act["fc.2"][5:5]).shape == (0, expected.act["fc.2"].shape[1])
    assert load_factor_dir(folder, rows=slice(9, None)).row_offset == 9
    with pytest.raises(ValueError, match="not stored"):
        load_factor_dir(folder, layers=["fc.0"])


def test_float64_factors_round_trip_exactly(tmp_path):
    images, labels = make_data(7)
    model, loss_fn = make_model(6), make_loss(labels)
    factors = extract_factors(
        model, batches(images, labels), loss_fn, layers=HEAD_LAYERS, device="cpu", dtype=np.float64
    )
    write_factor_dir(tmp_path / "f", factors, epoch=1, lr=0.1, loss=loss_fn.settings())
    loaded = load_factor_dir(tmp_path / "f", mmap=False)
    assert loaded.meta["lr"] == 0.1 and loaded.lr == 0.1
    for layer in HEAD_LAYERS:
        assert loaded.act[layer].dtype == np.float64
        np.testing.assert_array_equal(loaded.act[layer], factors.act[layer])
        np.testing.assert_array_equal(loaded.err[layer], factors.err[layer])


def test_failed_extraction_leaves_no_complete_or_partial_files(tmp_path):
    images, labels = make_data(12)
    model, loss_fn = make_model(0), make_loss(labels)
    folder = tmp_path / "f"
    extract_to_dir(model, batches(images, labels), loss_fn, folder, epoch=1, lr=0.1)
    assert is_complete(folder)

    def broken():
        yield images[:4], labels[:4]
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        extract_to_dir(model, broken(), loss_fn, folder, epoch=1, lr=0.1, num_samples=12)
    assert not is_complete(folder)  # the old meta.json went first
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_factor_dir(folder)
    with pytest.raises(ValueError, match="num_samples"):
        extract_to_dir(model, iter(batches(images, labels)), loss_fn, folder, epoch=1, lr=0.1)
    with pytest.raises(ValueError, match="expected 13"):
        extract_to_dir(
            model, batches(images, labels), loss_fn, folder, epoch=1, lr=0.1, num_samples=13
        )
    assert not is_complete(folder)


def test_a_plain_cross_entropy_loss_is_read_and_anything_else_refused():
    images, labels = make_data(9)
    model = make_model(2)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    plain = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    factors = extract_factors(
        model, batches(images, labels), plain, layers=HEAD_LAYERS, device="cpu"
    )
    assert factors.meta["loss"]["loss"] == "cross_entropy"
    for layer in HEAD_LAYERS:  # e = dl/dz of PyTorch's own per-sample loss
        expected = per_sample_dl_dz(
            model, lambda z, y, reduction: nn.functional.cross_entropy(
                z, y, weight=weight, label_smoothing=0.1, reduction=reduction
            ), images, labels, layer,
        )  # fmt: skip
        np.testing.assert_allclose(factors.err[layer], expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(TypeError, match="not a per-sample loss"):
        extract_factors(model, batches(images, labels), nn.MSELoss(), device="cpu")


def test_efficientnet_checkpoint_factors_equal_per_sample_autograd(tmp_path):
    """A checkpoint file of the demo's backbone (EfficientNet-Lite0 from its ImageNet weights),
    loaded as extraction loads it (eval mode), in float64: every head layer's error signal equals
    per-sample autograd and its activations are the layer inputs."""
    from tracinflow.config import pretrained_weights_file
    from tracinflow.io.checkpoints import (
        load_checkpoint,
        read_backbone_weights,
        save_checkpoint,
    )
    from tracinflow.train.model import checkpoint_dict, create_model, features, make_arch, to_input

    weights = read_backbone_weights(
        pretrained_weights_file("efficientnet_lite0", "imagenet"), "efficientnet_lite0"
    )
    arch = make_arch(
        "efficientnet_lite0", K, hidden=[7, 5], pretrained="imagenet", image_size=(32, 32)
    )
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "epoch_001.pt", checkpoint_dict(create_model(arch, weights), arch))
    model = load_checkpoint(tmp_path / "epoch_001.pt")[0].double()
    rng = np.random.default_rng(1)
    x = to_input(torch.from_numpy(rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)), arch)
    x, labels = x.double(), torch.from_numpy(rng.integers(0, K, 6))
    loss_fn = make_loss(labels)
    factors = extract_factors(
        model, batches(x, labels, size=4), loss_fn, layers=HEAD_LAYERS, device="cpu",
        dtype=np.float64,
    )  # fmt: skip
    for layer in HEAD_LAYERS:
        expected = per_sample_dl_dz(model, loss_fn, x, labels, layer)
        np.testing.assert_allclose(factors.err[layer], expected, rtol=1e-10, atol=1e-14)
    with torch.no_grad():
        np.testing.assert_allclose(factors.act["fc.0"], features(model, x).numpy(), rtol=1e-12)


@pytest.fixture(scope="module")
def lite0_float64_reference(tmp_path_factory):
    """A checkpoint of the demo's backbone (EfficientNet-Lite0 from its ImageNet weights), 8 images
    and, by per-sample autograd of the checkpoint in float64 and the default contiguous format,
    every head layer's inputs and dl/dz and the gradient dot products of test rows 5-7 with train
    rows 0-4 over the head's weights and biases."""
    from tracinflow.config import pretrained_weights_file
    from tracinflow.io.checkpoints import load_checkpoint, read_backbone_weights, save_checkpoint
    from tracinflow.train.model import checkpoint_dict, create_model, make_arch, to_input

    weights = read_backbone_weights(
        pretrained_weights_file("efficientnet_lite0", "imagenet"), "efficientnet_lite0"
    )
    arch = make_arch(
        "efficientnet_lite0", K, hidden=[7, 5], pretrained="imagenet", image_size=(32, 32)
    )
    rng = np.random.default_rng(1)
    x = to_input(torch.from_numpy(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)), arch)
    labels = torch.from_numpy(rng.integers(0, K, 8))
    loss_fn = make_loss(labels)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lite0") / "epoch_001.pt"
    save_checkpoint(
        path, checkpoint_dict(create_model(arch, weights), arch, loss=loss_fn.settings())
    )
    model = load_checkpoint(path)[0].double()
    modules = dict(model.named_modules())
    params = [p for layer in HEAD_LAYERS for p in (modules[layer].weight, modules[layer].bias)]
    act, err, grads = {layer: [] for layer in HEAD_LAYERS}, {layer: [] for layer in HEAD_LAYERS}, []
    for i in range(len(labels)):
        seen = {}
        handles = [
            modules[layer].register_forward_hook(
                lambda _m, args, z, layer=layer, seen=seen: seen.__setitem__(layer, (args[0], z))
            )
            for layer in HEAD_LAYERS
        ]
        loss = loss_fn.double()(model(x[i : i + 1].double()), labels[i : i + 1], reduction="none")
        for handle in handles:
            handle.remove()
        outputs = [seen[layer][1] for layer in HEAD_LAYERS]
        dl_dz = torch.autograd.grad(loss.sum(), outputs + params)  # the z's, then the weights
        for j, layer in enumerate(HEAD_LAYERS):
            act[layer].append(seen[layer][0][0].detach().numpy())
            err[layer].append(dl_dz[j][0].numpy())
        grads.append(torch.cat([g.reshape(-1) for g in dl_dz[len(HEAD_LAYERS) :]]))
    grads = torch.stack(grads)
    dots = (grads[5:] @ grads[:5].T).numpy()
    act = {layer: np.stack(rows) for layer, rows in act.items()}
    err = {layer: np.stack(rows) for layer, rows in err.items()}
    return path, x, labels, loss_fn, act, err, dots


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_float32_factors_in_either_memory_format_equal_the_float64_brute_force(
    lite0_float64_reference, memory_format
):
    """The checkpoint loaded as extraction loads it (load_for_inference, in the configured
    training.memory_format; in channels_last its BatchNorms folded), float32: every head layer's
    activations and error signals, and the TracIn dot products they give (ghost identity, bias
    included), equal the float64 brute force of the same checkpoint in the contiguous format to
    1e-4 relative."""
    from tracinflow.io.checkpoints import load_for_inference

    path, x, labels, loss_fn, act, err, dots = lite0_float64_reference
    model, _, _, _ = load_for_inference(path, 2, "cpu", memory_format=memory_format)
    assert model.memory_format == memory_format
    layout = torch.channels_last if memory_format == "channels_last" else torch.contiguous_format
    assert model.body.conv_stem.weight.is_contiguous(memory_format=layout)
    # the fast form folds every BatchNorm into its convolution; contiguous keeps the model as saved
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert norms == (0 if memory_format == "channels_last" else 49)
    factors = extract_factors(
        model, batches(x, labels, size=4), loss_fn, layers=HEAD_LAYERS, device="cpu"
    )

    def rel(got, want):
        return float(np.abs(got - want).max() / np.abs(want).max())

    for layer in HEAD_LAYERS:
        assert factors.err[layer].dtype == factors.act[layer].dtype == np.float32
        assert rel(factors.err[layer], err[layer]) < 1e-4, layer
        assert rel(factors.act[layer], act[layer]) < 1e-4, layer
    train, test = slice(0, 5), slice(5, 8)
    got = sum(
        (factors.err[layer][test] @ factors.err[layer][train].T)
        * (factors.act[layer][test] @ factors.act[layer][train].T + 1.0)
        for layer in HEAD_LAYERS
    )
    assert rel(got, dots) < 1e-4


def test_factors_extracted_in_the_cpus_pieces_equal_the_float64_brute_force(
    lite0_float64_reference, monkeypatch
):
    """On the CPU a loader's batch is cut into pieces of CPU_FORWARD_PIXELS input pixels, one
    forward each: the pieces' factors, in order, equal the float64 brute force to 1e-4 relative
    and the whole batch's forward to float32 rounding."""
    import tracinflow._util.device as device
    from tracinflow.io.checkpoints import load_for_inference

    path, x, labels, loss_fn, act, err, _ = lite0_float64_reference
    model, _, _, _ = load_for_inference(path, 2, "cpu", memory_format="channels_last")
    sizes = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))

    def factors_in_pieces_of(rows: int):
        monkeypatch.setattr(device, "CPU_FORWARD_PIXELS", rows * 32 * 32)
        sizes.clear()
        one_batch = [(x.float(), labels, torch.arange(len(labels)))]
        return extract_factors(model, one_batch, loss_fn, layers=HEAD_LAYERS, device="cpu")

    whole = factors_in_pieces_of(8)
    assert sizes == [8]
    pieces = factors_in_pieces_of(3)
    assert sizes == [3, 3, 2]
    assert pieces.idx.tolist() == list(range(8))
    for layer in HEAD_LAYERS:
        for got, want, single in (
            (pieces.err[layer], err[layer], whole.err[layer]),
            (pieces.act[layer], act[layer], whole.act[layer]),
        ):
            scale = np.abs(want).max()
            assert np.abs(got - want).max() / scale < 1e-4, layer
            assert np.abs(got - single).max() / scale < 1e-6, layer
