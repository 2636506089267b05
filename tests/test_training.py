"""Two-stage training: the loss, freezing, resume, early stopping, outputs, the resnet50 path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from tracinflow._util.device import (
    has_strided_pointwise_convolution,
    in_memory_format,
    resolve_memory_format,
)
from tracinflow.config import pretrained_weights_file
from tracinflow.io.checkpoints import load_checkpoint, read_backbone_weights
from tracinflow.io.training import fit
from tracinflow.train.augment import augment
from tracinflow.train.loss import (
    WeightedSmoothedCrossEntropy,
    class_weights_from_labels,
    loss_from_checkpoint,
)
from tracinflow.train.model import (
    backbone_parameters,
    build_model,
    cpu_state,
    create_model,
    head_parameters,
    make_arch,
    to_input,
)
from tracinflow.train.trainer import (
    TRAJECTORY_COLUMNS,
    Trainer,
    evaluate,
    lr_scale,
    resolve_settings,
    train_epoch,
)

CHECKPOINT_FIELDS = {
    "model",
    "arch",
    "epoch",
    "lr_head",
    "lr_backbone",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "loss",
}


def color_images(n, size=16, classes=3, seed=0):
    """Learnable images: class k has colour channel k bright (flip- and crop-invariant)."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(classes), n)
    rng.shuffle(labels)
    images = rng.integers(0, 90, (n, size, size, 3)).astype(np.uint8)
    for k in range(min(classes, 3)):
        images[labels == k, :, :, k] += 120
    return images, labels.astype(np.int64)


def settings(**training):
    base = {
        "seed": 3,
        "model": {
            "arch": "small_resnet",
            "pretrained": None,
            "width": 8,
            "head": {"hidden": [32, 16]},
        },
        "training": {
            "batch_size": 16,
            "stage1": {"epochs": 2, "lr": 3e-3},
            "stage2": {
                "max_epochs": 4,
                "lr_backbone": 1e-3,
                "lr_head": 2e-3,
                "patience": 10,
                "checkpoint_epochs": [2, 4],
                "train_batchnorm": True,
            },
            "device": "cpu",
        },
    }
    for key, value in training.items():
        if isinstance(value, dict):
            base["training"].setdefault(key, {}).update(value)
        else:
            base["training"][key] = value
    return base


def quiet(_line):
    pass


def train_model(train_images, train_labels, val_images, val_labels, num_classes, settings, out_dir,
                **kwargs):  # fmt: skip
    """The train_model stage's training on arrays, its files in ``out_dir`` under the names the
    workflow's rule gives them (epoch_EEE.pt, best.pt, ...)."""
    out_dir = Path(out_dir)
    epochs = sorted(set(settings["training"]["stage2"]["checkpoint_epochs"]))
    stage1 = sorted(set(settings["training"]["stage1"].get("checkpoint_epochs", [])))
    files = {
        "epochs": [out_dir / f"epoch_{epoch:03d}.pt" for epoch in epochs],
        "stage1_epochs": [out_dir / f"stage1_epoch_{epoch:03d}.pt" for epoch in stage1],
        "checkpoints": out_dir / "checkpoints.json",
        "best": out_dir / "best.pt",
        "history": out_dir / "history.csv",
        "curves": out_dir / "training_curves.png",
        "trajectory": out_dir / "trajectory.parquet",
    }
    return fit(
        train_images, train_labels, val_images, val_labels, num_classes, settings, files,
        out_dir / ".training", **kwargs,
    )  # fmt: skip


# --- the loss -----------------------------------------------------------------------------------


def test_loss_equals_hand_written_formula():
    rng = np.random.default_rng(0)
    k, eps = 4, 0.1
    train_labels = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    counts = np.bincount(train_labels, minlength=k)
    w = (1 / counts) * k / (1 / counts).sum()
    np.testing.assert_allclose(class_weights_from_labels(train_labels, k).numpy(), w)
    assert np.isclose(w.sum(), k)

    logits = rng.normal(size=(6, k))
    labels = np.array([0, 1, 2, 3, 1, 0])
    expected = []
    for z, y in zip(logits, labels, strict=True):
        log_p = z - np.log(np.exp(z).sum())
        target = np.full(k, eps / k)
        target[y] += 1 - eps
        expected.append(w[y] * -(target * log_p).sum())
    expected = np.array(expected)

    loss_fn = WeightedSmoothedCrossEntropy(torch.tensor(w), k, eps)
    z, y = torch.tensor(logits), torch.tensor(labels)
    np.testing.assert_allclose(loss_fn(z, y, reduction="none").numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(loss_fn(z, y).item(), expected.mean(), rtol=1e-12)
    # the closed-form error signal is the gradient of the per-sample loss
    z.requires_grad_(True)
    loss_fn(z, y, reduction="none").sum().backward()
    np.testing.assert_allclose(
        loss_fn.error_signal(z.detach(), y).numpy(), z.grad.numpy(), atol=1e-12
    )


# --- augmentation -------------------------------------------------------------------------------


def test_augment_is_seeded_and_identity_without_crop_or_flip():
    images = torch.from_numpy(color_images(6, size=12)[0])
    a = augment(images, torch.Generator().manual_seed(1), (0.5, 1.0), True)
    b = augment(images, torch.Generator().manual_seed(1), (0.5, 1.0), True)
    c = augment(images, torch.Generator().manual_seed(2), (0.5, 1.0), True)
    assert a.shape == (6, 3, 12, 12) and torch.equal(a, b) and not torch.equal(a, c)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    same = augment(images, torch.Generator().manual_seed(1), (1.0, 1.0), False, ratio=(1.0, 1.0))
    torch.testing.assert_close(same, images.permute(0, 3, 1, 2).float() / 255, atol=1e-5, rtol=0)
    flipped = augment(images, torch.Generator(), (1.0, 1.0), True, ratio=(1.0, 1.0))
    for i in range(6):
        plain = images[i].permute(2, 0, 1).float() / 255
        assert torch.allclose(flipped[i], plain, atol=1e-5) or torch.allclose(
            flipped[i], plain.flip(-1), atol=1e-5
        )


# --- stage 1 freezing ---------------------------------------------------------------------------


class Kill(Exception):
    pass


def kill_at(stage, epoch):
    def callback(s, e):
        if (s, e) == (stage, epoch):
            raise Kill(f"killed after stage {s} epoch {e}")

    return callback


def test_stage1_leaves_backbone_weights_and_buffers_bit_identical(tmp_path):
    images, labels = color_images(40)
    s = settings()
    with pytest.raises(Kill):
        train_model(
            images,
            labels,
            images[:8],
            labels[:8],
            3,
            s,
            tmp_path,
            log=quiet,
            epoch_callback=kill_at(1, 2),
        )
    after = torch.load(tmp_path / ".training/train_state.pt", weights_only=True)
    assert after["progress"]["stage"] == 2 and after["progress"]["epoch"] == 0

    arch = make_arch("small_resnet", 3, hidden=[32, 16], width=8, image_size=(16, 16))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        initial = create_model(arch).state_dict()
    backbone_keys = [k for k in initial if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone_keys)
    for key in backbone_keys:
        assert torch.equal(after["model"][key], initial[key]), key
    assert not torch.equal(after["model"]["fc.0.weight"], initial["fc.0.weight"])


def test_head_only_epoch_direct():
    """train_epoch(head_only=True): gradients reach only the head; BN statistics do not move."""
    images, labels = color_images(32)
    arch = make_arch("small_resnet", 3, hidden=[32, 16], width=8, image_size=(16, 16))
    torch.manual_seed(0)
    model = create_model(arch)
    for p in backbone_parameters(model):
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = WeightedSmoothedCrossEntropy(None, 3, 0.1)
    optimizer = torch.optim.AdamW(head_parameters(model), lr=1e-2)
    aug = {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True}
    gen = torch.Generator().manual_seed(0)
    train_epoch(model, loss_fn, optimizer, images, labels, 8, gen, aug, torch.device("cpu"), True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]) != key.startswith("fc."), key


# --- the pretrained backbone: cached stage-1 features, frozen BatchNorm ----------------------------


@pytest.fixture(scope="module")
def lite0_weights():
    path = pretrained_weights_file("efficientnet_lite0", "imagenet")
    return read_backbone_weights(path, "efficientnet_lite0")


def lite0_settings(**stage1):
    s = settings(augment={"enabled": False})
    s["model"] = {
        "arch": "efficientnet_lite0",
        "pretrained": "imagenet",
        "head": {"hidden": [32, 16]},
    }
    s["training"]["stage1"].update(stage1)
    return s


def stage1_model(s, images, labels, weights) -> torch.nn.Module:
    """The model after stage 1 of a Trainer run with settings ``s``."""
    trainer = Trainer(
        s, 3, images, labels, images[:8], labels[:8], device=torch.device("cpu"),
        pretrained_state=weights, log=quiet,
    )  # fmt: skip
    for done in trainer.epochs():
        if trainer.progress.stage == 2 and done.stage == 1:
            return trainer.model
    raise AssertionError("stage 1 did not end")


def test_cached_stage1_features_give_the_head_of_training_through_the_frozen_backbone(
    lite0_weights,
):
    """Same seed, no augmentation: the head trained on stored features equals the head trained by
    running the frozen backbone every epoch, to float32's 1e-4 of each tensor's largest entry (the
    features are computed in other batches, so they round differently, differently again with
    the thread count, and training carries that into the head); the backbone, BatchNorm
    statistics included, is bit-identical to the ImageNet weights after either."""
    images, labels = color_images(40, size=32)
    cached = stage1_model(lite0_settings(cache_features=True), images, labels, lite0_weights)
    direct = stage1_model(lite0_settings(cache_features=False), images, labels, lite0_weights)
    initial = create_model(
        make_arch("efficientnet_lite0", 3, hidden=[32, 16], pretrained="imagenet"), lite0_weights
    ).state_dict()
    for model in (cached, direct):
        state = model.state_dict()
        backbone = [k for k in state if not k.startswith("fc.")]
        assert any(k.endswith("running_var") for k in backbone)
        for key in backbone:
            assert torch.equal(state[key], initial[key]), key
    heads = [
        {k: v for k, v in m.state_dict().items() if k.startswith("fc.")} for m in (cached, direct)
    ]
    assert not torch.equal(heads[0]["fc.4.weight"], initial["fc.4.weight"])  # it trained
    for key, weights in heads[0].items():
        scale = weights.abs().max().item()
        assert (heads[1][key] - weights).abs().max().item() <= 1e-4 * scale, key


def test_recording_the_trajectory_adds_no_forward_pass(lite0_weights):
    """Stage 1 on cached features runs the head once per batch and once on the val features per
    epoch, and stage 2 the network once per batch and per val batch, as before the trajectory was
    recorded: the margins and losses come from the forward the optimizer step runs anyway."""
    images, labels = color_images(40, size=32)
    s = lite0_settings(epochs=3)
    s["training"]["stage2"].update(max_epochs=2, checkpoint_epochs=[2])
    trainer = Trainer(
        s, 3, images, labels, images[:8], labels[:8], device=torch.device("cpu"),
        pretrained_state=lite0_weights, log=quiet,
    )  # fmt: skip
    calls = {"fc": 0, "network": 0}
    trainer.model.fc.register_forward_hook(lambda *_: calls.__setitem__("fc", calls["fc"] + 1))
    trainer.model.register_forward_hook(
        lambda *_: calls.__setitem__("network", calls["network"] + 1)
    )
    counts = []
    for done in trainer.epochs():
        counts.append((done.stage, calls["network"], calls["fc"]))
        calls.update(fc=0, network=0)
    # batch 16: 3 training batches of 40 images, 1 val batch of 8; stage 1's first epoch also
    # computes the frozen features (the backbone alone, not the network or the head)
    assert counts == [(1, 0, 3 + 1)] * 3 + [(2, 3 + 1, 3 + 1)] * 2
    assert [(t["stage"], t["epoch"]) for t in trainer.progress.trajectory] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2),
    ]  # fmt: skip


def lite0_two_epoch_run(memory_format, images, labels, weights) -> tuple[dict, list[float]]:
    """The weights and the per-epoch training losses of a short Trainer run of the demo's backbone
    (augmentation on, as the demo trains) in ``memory_format``."""
    s = lite0_settings(epochs=1)
    s["training"]["augment"] = {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True}
    s["training"]["stage2"].update(max_epochs=1, checkpoint_epochs=[1])
    s["training"]["memory_format"] = memory_format
    trainer = Trainer(
        s, 3, images, labels, images[:8], labels[:8], device=torch.device("cpu"),
        pretrained_state=weights, log=quiet,
    )  # fmt: skip
    assert trainer.model.memory_format == memory_format
    losses = [done.row["train_loss"] for done in trainer.epochs()]
    state = {k: v.clone() for k, v in cpu_state(trainer.model).items()}
    return state, losses


def test_channels_last_training_is_deterministic_and_computes_what_contiguous_does(lite0_weights):
    """The demo's backbone trained in channels_last twice from the same seed: the same weights to
    the bit (checkpoints are stored contiguous). The format changes only how float32 sums are
    rounded: one training step's loss and gradients equal the contiguous format's to 1e-4 relative
    (a whole run does not: AdamW's normalised steps amplify rounding where a gradient is near 0)."""
    images, labels = color_images(32, size=32)
    first, _ = lite0_two_epoch_run("channels_last", images, labels, lite0_weights)
    second, _ = lite0_two_epoch_run("channels_last", images, labels, lite0_weights)
    assert _tensors_equal(first, second)
    assert all(v.is_contiguous() for v in first.values())
    arch = make_arch("efficientnet_lite0", 3, hidden=[32, 16], pretrained="imagenet")
    loss_fn = WeightedSmoothedCrossEntropy(None, 3, 0.1)
    x = to_input(torch.from_numpy(images[:16]), arch)
    steps = {}
    for memory_format in ("contiguous", "channels_last"):
        torch.manual_seed(0)  # the same head
        # BatchNorm on its ImageNet statistics, as stage 2 trains it (train_batchnorm: false)
        model = in_memory_format(create_model(arch, lite0_weights), memory_format).eval()
        loss = loss_fn(model(x), torch.from_numpy(labels[:16]))
        loss.backward()
        steps[memory_format] = loss.item(), {n: p.grad for n, p in model.named_parameters()}
    (loss_c, grads_c), (loss_cl, grads_cl) = steps["contiguous"], steps["channels_last"]
    assert loss_cl == pytest.approx(loss_c, rel=1e-5)
    for name, grad in grads_c.items():
        scale = grad.abs().max().item()
        assert (grads_cl[name] - grad).abs().max().item() <= 1e-4 * scale + 1e-12, name


def test_contiguous_is_pytorchs_default_to_the_bit(lite0_weights):
    """contiguous leaves the image batches as they come (to_input's permute of (B, H, W, 3)
    pixels is NHWC in memory) and so computes, to the bit, what a model that never met
    in_memory_format computes: the training forward and backward of every version trained before
    the setting existed, which the study's and the evaluation's tables pin. Converting the
    batches to NCHW rounds differently (it did, and their tables moved within the seeds' spread)."""
    images, labels = color_images(16, size=32)
    arch = make_arch("efficientnet_lite0", 3, hidden=[32, 16], pretrained="imagenet")
    loss_fn = WeightedSmoothedCrossEntropy(None, 3, 0.1)
    x = to_input(torch.from_numpy(images), arch)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    results = {}
    for setting in (None, "contiguous", "channels_last then contiguous"):
        torch.manual_seed(0)  # the same head
        model = create_model(arch, lite0_weights)
        if setting == "channels_last then contiguous":
            model = in_memory_format(model, "channels_last")
        if setting is not None:
            model = in_memory_format(model, "contiguous")
            assert model.memory_format == "contiguous"
        logits = model(x)
        loss_fn(logits, torch.from_numpy(labels)).backward()
        results[setting] = logits, {n: p.grad for n, p in model.named_parameters()}
    plain_logits, plain_grads = results[None]
    for setting in ("contiguous", "channels_last then contiguous"):
        logits, grads = results[setting]
        assert torch.equal(logits, plain_logits), setting
        assert all(torch.equal(grads[name], grad) for name, grad in plain_grads.items()), setting


def test_an_unknown_memory_format_is_refused():
    with pytest.raises(ValueError, match=r"training\.memory_format must be one of"):
        resolve_settings(settings(memory_format="nhwc"))
    with pytest.raises(ValueError, match="choose one of auto, channels_last, contiguous"):
        in_memory_format(torch.nn.Conv2d(3, 4, 3), "nhwc")


def test_auto_memory_format_keeps_the_resnets_contiguous_on_the_cpu():
    """auto: channels_last for EfficientNet on the CPU, contiguous for the ResNets there (their
    strided 1x1 downsampling convolution crashes in channels_last's backward on the CPU with
    torch 2.14.1), and what it resolved to is what the model and its images use."""
    lite0 = build_model(make_arch("efficientnet_lite0", 3, hidden=[8, 4]))
    small = build_model(make_arch("small_resnet", 3, hidden=[8, 4], width=4))
    resnet = build_model(make_arch("resnet50", 3, hidden=[8, 4]))
    assert not has_strided_pointwise_convolution(lite0)
    assert has_strided_pointwise_convolution(small) and has_strided_pointwise_convolution(resnet)
    assert in_memory_format(lite0).memory_format == "channels_last"
    assert lite0.body.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert in_memory_format(small).memory_format == "contiguous"
    assert in_memory_format(small, "channels_last").memory_format == "channels_last"
    cuda = torch.device("cuda")
    assert resolve_memory_format("auto", resnet, cuda) == "channels_last"
    assert resolve_memory_format("contiguous", lite0, cuda) == "contiguous"


@pytest.mark.parametrize("train_batchnorm", [False, True])
def test_stage2_batchnorm_statistics_stay_frozen_unless_asked(lite0_weights, train_batchnorm):
    images, labels = color_images(16, size=32)
    arch = make_arch("efficientnet_lite0", 3, hidden=[32, 16], pretrained="imagenet")
    model = create_model(arch, lite0_weights)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    aug = {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True}
    train_epoch(
        model, WeightedSmoothedCrossEntropy(None, 3, 0.1), optimizer, images, labels, 8,
        torch.Generator().manual_seed(0), aug, torch.device("cpu"), head_only=False,
        train_batchnorm=train_batchnorm,
    )  # fmt: skip
    after = model.state_dict()
    statistics = [k for k in after if k.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 49  # every BatchNorm layer of EfficientNet-Lite0
    moved = [k for k in statistics if not torch.equal(after[k], before[k])]
    assert (moved == statistics) if train_batchnorm else not moved
    assert not torch.equal(after["body.conv_stem.weight"], before["body.conv_stem.weight"])
    assert not torch.equal(after["body.bn1.weight"], before["body.bn1.weight"])  # BN weights train


# --- resume -------------------------------------------------------------------------------------


def _tensors_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    images, labels = color_images(40)
    val_images, val_labels = color_images(12, seed=1)
    s = settings()
    args = (images, labels, val_images, val_labels, 3, s)
    full = train_model(*args, tmp_path / "full", log=quiet)

    resumed_dir = tmp_path / "resumed"
    lines = []
    for stage, epoch in ((1, 1), (1, 2), (2, 1), (2, 3)):
        with pytest.raises(Kill):
            train_model(*args, resumed_dir, log=quiet, epoch_callback=kill_at(stage, epoch))
        assert (resumed_dir / ".training/train_state.pt").exists()
        # a killed run leaves no model file in place that looks complete, only its scratch
        assert sorted(p.name for p in resumed_dir.iterdir()) == [".training"]
    resumed = train_model(*args, resumed_dir, log=lines.append)
    assert any("resuming from train_state.pt: stage 2, epoch 3 done" in line for line in lines)
    assert not (resumed_dir / ".training").exists()
    assert resumed == full

    for name in ("epoch_002.pt", "epoch_004.pt", "best.pt"):
        a = torch.load(tmp_path / "full" / name, weights_only=True)
        b = torch.load(resumed_dir / name, weights_only=True)
        assert _tensors_equal(a.pop("model"), b.pop("model")), name
        assert a == b, name
    h_full = pd.read_csv(tmp_path / "full" / "history.csv").drop(columns="seconds")
    h_resumed = pd.read_csv(resumed_dir / "history.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(h_full, h_resumed)
    assert (tmp_path / "full" / "checkpoints.json").read_text() == (
        resumed_dir / "checkpoints.json"
    ).read_text()
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "full" / "trajectory.parquet"),
        pd.read_parquet(resumed_dir / "trajectory.parquet"),
    )


def test_same_seed_same_checkpoints_and_stale_state_ignored(tmp_path):
    images, labels = color_images(24)
    s = settings(stage1={"epochs": 1}, stage2={"max_epochs": 1, "checkpoint_epochs": [1]})
    train_model(images, labels, images[:8], labels[:8], 3, s, tmp_path / "a", log=quiet)
    # a state file written under other settings must not be resumed
    other = settings(
        stage1={"epochs": 1, "lr": 0.5}, stage2={"max_epochs": 1, "checkpoint_epochs": [1]}
    )
    with pytest.raises(Kill):
        train_model(
            images, labels, images[:8], labels[:8], 3, other, tmp_path / "b", log=quiet,
            epoch_callback=kill_at(1, 1),
        )  # fmt: skip
    lines = []
    train_model(images, labels, images[:8], labels[:8], 3, s, tmp_path / "b", log=lines.append)
    assert any("ignoring train_state.pt" in line for line in lines)
    a = torch.load(tmp_path / "a" / "epoch_001.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "epoch_001.pt", weights_only=True)
    assert _tensors_equal(a["model"], b["model"])


# --- learning-rate schedule ---------------------------------------------------------------------


def test_cosine_schedule_sets_one_rate_per_epoch_and_checkpoints_record_it(tmp_path):
    images, labels = color_images(24)
    s = settings(stage2={"lr_schedule": "cosine"})
    train_model(images, labels, images[:6], labels[:6], 3, s, tmp_path, log=quiet)
    history = pd.read_csv(tmp_path / "history.csv")
    stage2 = history[history["stage"] == 2]
    base = s["training"]["stage2"]
    expected = [0.5 * (1 + np.cos(np.pi * (e - 1) / 4)) for e in (1, 2, 3, 4)]
    np.testing.assert_allclose(stage2["lr_head"], np.multiply(expected, base["lr_head"]))
    np.testing.assert_allclose(stage2["lr_backbone"], np.multiply(expected, base["lr_backbone"]))
    assert history.loc[history["stage"] == 1, "lr_head"].eq(s["training"]["stage1"]["lr"]).all()
    for epoch in (2, 4):
        _, checkpoint = load_checkpoint(tmp_path / f"epoch_{epoch:03d}.pt")
        assert checkpoint["lr_head"] == pytest.approx(expected[epoch - 1] * base["lr_head"])
    assert lr_scale("constant", 3, 4) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_scale("step", 1, 4)


def test_stage1_checkpoints_hold_the_head_after_their_epoch_with_stage_1s_rate(tmp_path):
    # the whole trajectory: a stage-1 checkpoint is the model after that head-only epoch (the
    # backbone untouched), listed with stage 1's learning rate; stage 2 trains exactly as without
    images, labels = color_images(24)
    plain = settings(stage1={"epochs": 2, "lr": 3e-3})
    traced = settings(stage1={"epochs": 2, "lr": 3e-3, "checkpoint_epochs": [1, 2]})
    train_model(images, labels, images[:6], labels[:6], 3, plain, tmp_path / "plain", log=quiet)
    train_model(images, labels, images[:6], labels[:6], 3, traced, tmp_path / "traced", log=quiet)
    listed = json.loads((tmp_path / "traced/checkpoints.json").read_text())
    assert [(c["stage"], c["epoch"], c["file"]) for c in listed] == [
        (1, 1, "stage1_epoch_001.pt"), (1, 2, "stage1_epoch_002.pt"),
        (2, 2, "epoch_002.pt"), (2, 4, "epoch_004.pt"),
    ]  # fmt: skip
    assert [c["lr_head"] for c in listed[:2]] == [3e-3, 3e-3]
    assert [c["lr_backbone"] for c in listed[:2]] == [0.0, 0.0]
    for name in ("epoch_002.pt", "epoch_004.pt", "best.pt"):
        a = torch.load(tmp_path / "plain" / name, weights_only=True)
        b = torch.load(tmp_path / "traced" / name, weights_only=True)
        assert _tensors_equal(a.pop("model"), b.pop("model")), name
    first, _ = load_checkpoint(tmp_path / "traced/stage1_epoch_001.pt")
    last, checkpoint = load_checkpoint(tmp_path / "traced/stage1_epoch_002.pt")
    assert checkpoint["stage"] == 1 and checkpoint["epoch"] == 2
    head = [n for n, _ in last.named_parameters() if n.startswith("fc.")]
    backbone = [n for n, _ in last.named_parameters() if not n.startswith("fc.")]
    state_a, state_b = first.state_dict(), last.state_dict()
    assert all(torch.equal(state_a[n], state_b[n]) for n in backbone)
    assert not all(torch.equal(state_a[n], state_b[n]) for n in head)
    history = pd.read_csv(tmp_path / "traced/history.csv")
    assert history.loc[history["stage"] == 1, "val_loss"].iloc[-1] == pytest.approx(
        checkpoint["val_loss"]
    )


def test_stage1_checkpoint_epochs_beyond_stage1_rejected(tmp_path):
    images, labels = color_images(12)
    s = settings(stage1={"epochs": 1, "checkpoint_epochs": [2]})
    with pytest.raises(ValueError, match=r"stage1\.checkpoint_epochs"):
        train_model(images, labels, images[:6], labels[:6], 3, s, tmp_path, log=quiet)


# --- early stopping -----------------------------------------------------------------------------


def test_early_stopping_never_ends_before_last_checkpoint_epoch(tmp_path):
    images, labels = color_images(48)
    val_images, val_labels = color_images(24, seed=5)
    val_labels = (val_labels + 1) % 3  # the better the model learns, the worse the val loss
    s = settings(
        stage1={"epochs": 1},
        stage2={"max_epochs": 12, "patience": 1, "checkpoint_epochs": [2, 6]},
    )
    summary = train_model(images, labels, val_images, val_labels, 3, s, tmp_path, log=quiet)
    history = pd.read_csv(tmp_path / "history.csv")
    stage2 = history[history["stage"] == 2]
    assert stage2["val_loss"].iloc[1] > stage2["val_loss"].iloc[0]  # val loss rises early
    assert summary["stopped_early"] and summary["epochs_stage2"] == 6
    assert stage2["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    listed = json.loads((tmp_path / "checkpoints.json").read_text())
    assert [c["epoch"] for c in listed] == [2, 6]
    assert (tmp_path / "epoch_002.pt").exists() and (tmp_path / "epoch_006.pt").exists()
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == summary["best_epoch"] == stage2.set_index("epoch")["val_loss"].idxmin()


def test_checkpoint_epochs_beyond_max_epochs_rejected(tmp_path):
    images, labels = color_images(8)
    s = settings(stage2={"max_epochs": 3, "checkpoint_epochs": [2, 5]})
    with pytest.raises(ValueError, match="checkpoint_epochs"):
        train_model(images, labels, images, labels, 3, s, tmp_path, log=quiet)


# --- a real run ---------------------------------------------------------------------------------


def test_tiny_training_learns_and_writes_every_output(tmp_path):
    images, labels = color_images(96, classes=3)
    val_images, val_labels = color_images(30, classes=3, seed=9)
    s = settings(stage1={"epochs": 2}, stage2={"max_epochs": 4, "checkpoint_epochs": [2, 4]})
    lines = []
    summary = train_model(images, labels, val_images, val_labels, 3, s, tmp_path, log=lines.append)

    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == [
        "stage",
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "lr_head",
        "lr_backbone",
        "seconds",
    ]
    assert history["stage"].tolist() == [1, 1, 2, 2, 2, 2]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_accuracy"].iloc[-1] >= 0.8
    assert history.loc[history["stage"] == 1, "lr_backbone"].eq(0).all()
    assert history.loc[history["stage"] == 2, "lr_backbone"].eq(1e-3).all()

    listed = json.loads((tmp_path / "checkpoints.json").read_text())
    assert [(c["epoch"], c["file"]) for c in listed] == [(2, "epoch_002.pt"), (4, "epoch_004.pt")]
    for entry in listed:
        assert entry["lr_head"] == 2e-3 and entry["lr_backbone"] == 1e-3
        checkpoint = torch.load(tmp_path / entry["file"], weights_only=True)
        assert CHECKPOINT_FIELDS <= set(checkpoint)
        assert checkpoint["epoch"] == entry["epoch"] and checkpoint["val_loss"] == entry["val_loss"]
        assert checkpoint["arch"]["image_size"] == [16, 16]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert CHECKPOINT_FIELDS <= set(best)
    assert best["val_loss"] == history.loc[history["stage"] == 2, "val_loss"].min()

    # the loss is rebuilt from the checkpoint alone and reproduces the logged val loss
    model, checkpoint = load_checkpoint(tmp_path / "epoch_004.pt")
    loss_fn = loss_from_checkpoint(checkpoint)
    expected_w = class_weights_from_labels(labels, 3).tolist()
    assert checkpoint["loss"]["class_weights"] == expected_w == summary["loss"]["class_weights"]
    assert checkpoint["loss"]["label_smoothing"] == 0.1
    val_loss, val_acc = evaluate(model, loss_fn, val_images, val_labels, 7, torch.device("cpu"))
    assert val_loss == pytest.approx(checkpoint["val_loss"], rel=1e-5)
    assert val_acc == checkpoint["val_accuracy"]

    # the trajectory: every image once per epoch of both stages, in training order, and its
    # per-epoch means are the history's training loss and accuracy
    trajectory = pd.read_parquet(tmp_path / "trajectory.parquet")
    assert list(trajectory.columns) == TRAJECTORY_COLUMNS
    assert len(trajectory) == 96 * 6
    epochs = trajectory[["stage", "epoch"]].drop_duplicates()
    assert list(epochs.itertuples(index=False, name=None)) == list(
        history[["stage", "epoch"]].itertuples(index=False, name=None)
    )
    per_epoch = trajectory.groupby(["stage", "epoch"], sort=False)
    assert (per_epoch["train_idx"].apply(sorted) == [list(range(96))] * 6).all()
    np.testing.assert_allclose(per_epoch["loss"].mean(), history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(per_epoch["correct"].mean(), history["train_accuracy"])
    # a positive margin is a correct prediction
    assert (trajectory["correct"] == (trajectory["margin"] > 0)).all()

    png = (tmp_path / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not (tmp_path / ".training").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert any(line.startswith("stage 2 epoch 4/4: train loss") and "ETA" in line for line in lines)
    assert any("device cpu, precision float32" in line for line in lines)


# --- the animals10 configuration: resnet50 from a pretrained file -------------------------------


def test_resnet50_with_pretrained_file_runs_a_training_step(tmp_path):
    """The model of config/animals10.yaml, with a stand-in for its ImageNet weights file."""
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "config/animals10.yaml").read_text())
    model_cfg, stage2 = config["model"], config["training"]["stage2"]
    assert model_cfg["arch"] == "resnet50" and config["dataset"]["image_size"] == 224
    torch.manual_seed(11)
    weights = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / Path(model_cfg["pretrained"]).name
    torch.save(weights, path)
    arch = make_arch(
        model_cfg["arch"], len(config["dataset"]["class_names"]),
        hidden=model_cfg["head"]["hidden"], negative_slope=model_cfg["head"]["negative_slope"],
        image_size=(224, 224), pretrained=str(path),
    )  # fmt: skip
    model = create_model(arch, read_backbone_weights(path, "resnet50"))
    assert torch.equal(
        model.state_dict()["layer4.2.bn3.running_var"], weights["layer4.2.bn3.running_var"]
    )

    images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    labels = np.array([3, 7])
    loss_fn = WeightedSmoothedCrossEntropy(class_weights_from_labels(labels, 10), 10, 0.1)
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone_parameters(model), "lr": stage2["lr_backbone"], "name": "backbone"},
            {"params": head_parameters(model), "lr": stage2["lr_head"], "name": "head"},
        ],
        weight_decay=0.01,
    )
    before = model.conv1.weight.detach().clone()
    aug = {"enabled": True, "crop_scale": [0.8, 1.0], "horizontal_flip": True}
    loss, _ = train_epoch(
        model, loss_fn, optimizer, images, labels, 2, torch.Generator().manual_seed(0), aug,
        torch.device("cpu"), head_only=False,
    )  # fmt: skip
    assert np.isfinite(loss)
    assert not torch.equal(model.conv1.weight, before)
    val_loss, _ = evaluate(model, loss_fn, images, labels, 2, torch.device("cpu"))
    assert np.isfinite(val_loss)


def test_a_long_epoch_reports_its_images_as_it_goes():
    """train_epoch's progress counts images per batch; the epoch's own summary line ends it, so the
    progress reporter adds none at the end (``final=False``)."""
    from tracinflow._util.progress import Progress

    images, labels = color_images(20)
    arch = make_arch("small_resnet", 3, hidden=[8, 4], width=4, image_size=(16, 16))
    torch.manual_seed(0)
    model = create_model(arch)
    lines = []
    progress = Progress(20, "stage 2 epoch 1", "images", lines.append, every=0, final=False)
    train_epoch(
        model, WeightedSmoothedCrossEntropy(None, 3, 0.1), torch.optim.AdamW(model.parameters()),
        images, labels, 8, torch.Generator().manual_seed(0),
        {"enabled": False, "crop_scale": [1.0, 1.0], "horizontal_flip": False},
        torch.device("cpu"), head_only=False, progress=progress,
    )  # fmt: skip
    assert [line.split(",")[0] for line in lines] == [
        "stage 2 epoch 1: 8/20 images (40%)",
        "stage 2 epoch 1: 16/20 images (80%)",
    ]


def test_stage1_on_cached_features_takes_read_only_labels_without_a_warning():
    """The workflow's labels are read-only views of a table; stage 1 copies them (PyTorch warns on
    a tensor over a read-only array, and the warning used to land in every training log)."""
    import warnings

    from tracinflow.train.trainer import evaluate_head, train_head_epoch

    labels = np.array([0, 1, 2, 1, 0, 2])
    labels.setflags(write=False)
    head = torch.nn.Linear(4, 3)
    feats = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    loss_fn = WeightedSmoothedCrossEntropy(None, 3, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train_head_epoch(head, loss_fn, torch.optim.AdamW(head.parameters()), feats, labels, 4,
                         torch.Generator().manual_seed(0))  # fmt: skip
        evaluate_head(head, loss_fn, feats, labels)
