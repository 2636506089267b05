"""The model: head layout, checkpoint round trip, pretrained weights, input transform."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from tracinflow.io.checkpoints import (
    fetch_weights,
    load_checkpoint,
    read_backbone_weights,
    save_checkpoint,
)
from tracinflow.train.model import (
    ARCHS,
    ResidualBlock,
    build_model,
    checkpoint_dict,
    create_model,
    features,
    head_linear_layers,
    make_arch,
    to_input,
    weights_url,
)


def create_pretrained(arch):
    """The model of ``arch`` with its backbone read from the file ``arch["pretrained"]`` names, as
    the train_model stage builds it."""
    return create_model(arch, read_backbone_weights(arch["pretrained"], arch["name"]))


FEATURES = {
    "small_resnet": 64,
    "efficientnet_lite0": 1280,
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
}


@pytest.mark.parametrize("name", ARCHS)
def test_head_layout_and_shapes(name):
    arch = make_arch(name, num_classes=5, hidden=[24, 12], negative_slope=0.2, width=8)
    torch.manual_seed(0)
    model = build_model(arch)
    assert head_linear_layers(model) == ["fc.0", "fc.2", "fc.4"]
    fc = model.fc
    assert isinstance(fc, nn.Sequential) and len(fc) == 5
    assert (fc[0].in_features, fc[0].out_features) == (FEATURES[name], 24)
    assert (fc[2].in_features, fc[2].out_features) == (24, 12)
    assert (fc[4].in_features, fc[4].out_features) == (12, 5)
    for i in (1, 3):
        assert isinstance(fc[i], nn.LeakyReLU) and fc[i].negative_slope == 0.2
    named = dict(model.named_modules())
    assert all(isinstance(named[p], nn.Linear) for p in ("fc.0", "fc.2", "fc.4"))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert features(model, x).shape == (2, FEATURES[name])
        assert model(x).shape == (2, 5)
        assert torch.equal(model(x), model.fc(features(model, x)))


def test_the_small_resnet_is_the_one_torchvisions_basic_blocks_make_to_the_bit(monkeypatch):
    """The small network's own residual block stands in for torchvision's BasicBlock: the same
    initial weights from the same seed, the same state dict keys (older checkpoints load), and the
    same outputs and gradients in training mode, to the bit."""
    arch = make_arch("small_resnet", num_classes=4, hidden=[8], width=4)
    torch.manual_seed(0)
    ours = build_model(arch)
    monkeypatch.setattr("tracinflow.train.model.ResidualBlock", BasicBlock)
    torch.manual_seed(0)
    theirs = build_model(arch)
    assert not any(isinstance(m, ResidualBlock) for m in theirs.modules())
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for model in (ours, theirs):
        model.train()
        model(x).square().sum().backward()
    assert torch.equal(ours(x), theirs(x))
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name


def test_arch_is_plain_json_and_rejects_unknown_names():
    import json

    arch = make_arch("small_resnet", 3, image_size=(32, 32))
    assert json.loads(json.dumps(arch)) == arch
    assert arch["head_hidden"] == [512, 256] and arch["negative_slope"] == 0.01
    with pytest.raises(ValueError, match=r"unknown model\.arch 'vgg'"):
        make_arch("vgg", 3)


def test_checkpoint_round_trip_is_bit_identical(tmp_path):
    arch = make_arch("small_resnet", 4, hidden=[16, 8], width=8, image_size=(16, 16))
    torch.manual_seed(1)
    model = build_model(arch)
    model.train()
    with torch.no_grad():  # move the BatchNorm running statistics off their initial values
        model(torch.randn(8, 3, 16, 16))
    model.eval()
    path = tmp_path / "m.pt"
    save_checkpoint(
        path, checkpoint_dict(model, arch, epoch=3, lr_head=2e-4, loss={"label_smoothing": 0.1})
    )

    raw = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert raw["arch"] == arch and raw["epoch"] == 3 and raw["loss"] == {"label_smoothing": 0.1}
    loaded, checkpoint = load_checkpoint(path)
    assert checkpoint["lr_head"] == 2e-4 and not loaded.training
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2), k1
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*.tmp")), "atomic write left a temp file"


def _fake_weights(tmp_path, name="resnet18"):
    """A torchvision state dict, as the real ImageNet file has (random values, 1000-class fc)."""
    torch.manual_seed(7)
    state = getattr(torchvision.models, name)(weights=None).state_dict()
    path = tmp_path / f"{name}-imagenet1k-v1.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_backbone_is_loaded_and_head_replaced(tmp_path):
    path, state = _fake_weights(tmp_path)
    arch = make_arch("resnet18", 3, pretrained=str(path))
    torch.manual_seed(0)
    model = create_pretrained(arch)
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(own[key], value), key
    assert model.fc[4].out_features == 3


def test_missing_pretrained_file_names_file_and_url(tmp_path):
    path = tmp_path / "weights" / "resnet50-imagenet1k-v1.pth"
    arch = make_arch("resnet50", 3, pretrained=str(path))
    with pytest.raises(FileNotFoundError) as info:
        create_pretrained(arch)
    message = str(info.value)
    assert str(path) in message
    assert torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url in message
    assert "model.pretrained: null" in message


def test_mismatched_pretrained_file_is_a_clear_error(tmp_path):
    path, state = _fake_weights(tmp_path)
    with pytest.raises(
        ValueError, match=r"do not match model.arch 'resnet34'.*missing keys: layer"
    ):
        create_pretrained(make_arch("resnet34", 3, pretrained=str(path)))

    state = dict(state)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"shape keys: conv1.weight: file \(64, 3, 3, 3\)"):
        create_pretrained(make_arch("resnet18", 3, pretrained=str(bad)))

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot read pretrained weights"):
        create_pretrained(make_arch("resnet18", 3, pretrained=str(garbage)))


def test_download_failure_names_url_and_destination(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    dest = tmp_path / "resources" / "weights" / "resnet50-imagenet1k-v1.pth"
    with pytest.raises(RuntimeError) as info:
        fetch_weights("resnet50", dest)
    message = str(info.value)
    assert weights_url("resnet50") in message and str(dest) in message
    assert not dest.exists() and not list(dest.parent.glob("*"))
    with pytest.raises(ValueError, match="no ImageNet weights to download"):
        fetch_weights("small_resnet", dest)
    with pytest.raises(ValueError, match=r"come with the pip package efficientnet-lite0-pytorch"):
        fetch_weights("efficientnet_lite0", dest)


def test_to_input_normalises_uint8_nhwc():
    arch = make_arch("small_resnet", 2)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), np.uint8))
    x = to_input(images, arch)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    expected = (images.numpy() / 255.0 - mean) / std
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_a_pretrained_arch_without_its_weights_is_an_error_not_a_random_start(tmp_path):
    path, _ = _fake_weights(tmp_path)
    with pytest.raises(ValueError, match="pass its state dict"):
        create_model(make_arch("resnet18", 3, pretrained=str(path)))


def _with_running_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as a trained network has."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    ("name", "size", "norms"), [("efficientnet_lite0", 64, 49), ("small_resnet", 32, 12)]
)
def test_folding_the_batchnorms_computes_the_float64_function_and_is_deterministic(
    name, size, norms
):
    from tracinflow._util.device import fold_batchnorm, in_memory_format, inference_form

    model = _with_running_statistics(build_model(make_arch(name, 10, image_size=(size, size))))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms
    fast = in_memory_format(model, "channels_last")
    folded = inference_form(fast)
    assert folded is not fast and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == norms  # a copy
    x = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = build_model(make_arch(name, 10, image_size=(size, size)))
        want.load_state_dict(model.state_dict())
        want = want.double().eval()(x.double())
        got = folded(x).double()
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    again = inference_form(fast)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), folded.state_dict().values(), strict=True)
    )
    with torch.no_grad():
        assert torch.equal(again(x), folded(x))
    # contiguous (the published tables' form) stays as it is; a training model is refused
    assert inference_form(in_memory_format(model, "contiguous")) is model
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fold_batchnorm(model.train(), x[:2])


def test_a_batchnorm_whose_convolution_also_feeds_another_path_is_not_folded():
    """The hooks see the BatchNorm read the convolution's output; the probe's check sees that the
    same output also went around it, and the model is kept as it is."""
    from tracinflow._util.device import fold_batchnorm

    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            z = self.conv(x)
            return self.bn(z) + z

    model = _with_running_statistics(Skip())
    x = torch.randn(2, 3, 8, 8)
    assert fold_batchnorm(model, x) is model
    straight = _with_running_statistics(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    folded = fold_batchnorm(straight, x)
    assert isinstance(folded[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), straight(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kernel", "stride", "size"), [(3, 2, 16), (5, 2, 16), (3, 2, 15), (3, 1, 16), (5, 1, 9)]
)
def test_a_same_convolution_padded_inside_its_kernel_computes_what_timms_does(kernel, stride, size):
    """Symmetric padding and, where "same" pads one more on the far side, a kernel with a zero
    first tap: the same inputs times the same weights, in float64 to rounding; another input size
    is refused."""
    from timm.layers import Conv2dSame

    from tracinflow._util.device import StaticSameConvolution

    torch.manual_seed(0)
    same = Conv2dSame(4, 4, kernel, stride=stride, groups=4, bias=True).double()
    static = StaticSameConvolution(same, (size, size))
    x = torch.randn(2, 4, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(static(x), same(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="made for"):
        static(torch.randn(2, 4, size + 2, size + 2, dtype=torch.float64))


def test_the_pretrained_features_cleanlab_fits_on_come_from_the_inference_form(monkeypatch):
    """cleanlab's logistic regression reads the frozen backbone's features in channels_last from
    its inference form (BatchNorms folded): the float64 features of the backbone to 1e-4."""
    import tracinflow.train.trainer as trainer

    backbone = _with_running_statistics(
        build_model(make_arch("efficientnet_lite0", 10, image_size=(64, 64)))
    )
    forms = []
    real = trainer.inference_form
    monkeypatch.setattr(
        trainer, "inference_form", lambda model: forms.append(real(model)) or forms[-1]
    )
    images = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    settings = {
        "model": {"arch": "efficientnet_lite0", "pretrained": "imagenet"},
        "training": {"memory_format": "channels_last", "batch_size": 4},
    }
    got = trainer.pretrained_features(
        settings, 10, images, backbone.state_dict(), torch.device("cpu"), log=lambda _: None
    )
    assert len(forms) == 1 and not any(isinstance(m, nn.BatchNorm2d) for m in forms[0].modules())
    with torch.no_grad():
        x = to_input(torch.from_numpy(images), backbone.arch, "cpu").double()
        want = features(backbone.double(), x).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape == (6, 1280)
    assert float(np.abs(got - want).max() / np.abs(want).max()) < 1e-4


def test_the_inference_form_of_efficientnet_pads_inside_its_kernels():
    from tracinflow._util.device import StaticSameConvolution, in_memory_format, inference_form

    model = _with_running_statistics(
        build_model(make_arch("efficientnet_lite0", 10, image_size=(64, 64)))
    )
    fast = inference_form(in_memory_format(model, "channels_last"))
    assert sum(isinstance(m, StaticSameConvolution) for m in fast.modules()) == 5
    assert type(fast.body.conv_stem).__name__ == "StaticSameConvolution"
    assert type(model.body.conv_stem).__name__ == "Conv2dSame"  # the model itself is untouched


def test_the_cpu_forwards_pieces_of_a_quarter_million_input_pixels():
    """The rows per forward (the sizes measured fastest: 64 rows of 64 px, 256 of 32 px, 4-8 of
    224 px); all rows off the CPU; in_pieces returns the whole batch's rows in order."""
    from tracinflow._util.device import CPU_FORWARD_PIXELS, forward_rows, in_pieces

    assert CPU_FORWARD_PIXELS == 2**18

    def rows(size: int, device=None) -> int:
        return forward_rows(torch.zeros(300, 3, size, size), device)

    assert (rows(64), rows(32), rows(224), rows(1024)) == (64, 256, 5, 1)
    assert rows(64, "cuda") == 300
    assert forward_rows(torch.zeros(300, 10)) == 300  # not an image batch
    calls = []
    images = torch.randn(150, 3, 64, 64)
    out = in_pieces(lambda x: calls.append(len(x)) or x.mean(dim=(1, 2, 3)), images)
    assert calls == [64, 64, 22]
    torch.testing.assert_close(out, images.mean(dim=(1, 2, 3)), rtol=0, atol=0)
