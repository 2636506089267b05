"""Damaged checkpoints and a diverging run: refused or stopped with a message naming the file or the
batch, never used or saved as if nothing happened."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tracinflow.io.checkpoints import (
    CheckpointError,
    file_sha256,
    load_checkpoint,
    read_checkpoint,
)
from tracinflow.io.training import fit
from tracinflow.train.trainer import NonFiniteLoss

EPOCHS = [1, 2]


def images_and_labels(n=24, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(3), n)
    images = rng.integers(0, 90, (n, 16, 16, 3)).astype(np.uint8)
    for k in range(3):
        images[labels == k, :, :, k] += 120
    return images, labels.astype(np.int64)


def settings(stage1_lr=3e-3, stage2_lr=1e-3):
    return {
        "seed": 0,
        "model": {"arch": "small_resnet", "pretrained": None, "width": 4,
                  "head": {"hidden": [8, 4]}},
        "training": {
            "batch_size": 8,
            "stage1": {"epochs": 1, "lr": stage1_lr},
            "stage2": {"max_epochs": 2, "lr_backbone": stage2_lr, "lr_head": stage2_lr,
                       "patience": None, "checkpoint_epochs": EPOCHS, "train_batchnorm": True},
            "device": "cpu",
        },
    }  # fmt: skip


def files(out: Path) -> dict:
    return {
        "epochs": [out / f"epoch_{e:03d}.pt" for e in EPOCHS],
        "checkpoints": out / "checkpoints.json",
        "best": out / "best.pt",
        "history": out / "history.csv",
        "curves": out / "training_curves.png",
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    images, labels = images_and_labels()
    fit(images, labels, images[:6], labels[:6], 3, settings(), files(out), out / ".training",
        log=lambda _line: None)  # fmt: skip
    return out


def test_checkpoints_json_records_each_files_sha256_and_a_clean_file_loads(trained):
    listed = json.loads((trained / "checkpoints.json").read_text())
    assert [entry["file"] for entry in listed] == ["epoch_001.pt", "epoch_002.pt"]
    for entry in listed:
        assert entry["sha256"] == file_sha256(trained / entry["file"])
    model, checkpoint = load_checkpoint(trained / "epoch_002.pt", listed=listed)
    assert checkpoint["epoch"] == 2 and not model.training


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "replace"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(trained, tmp_path, damage):
    listed = json.loads((trained / "checkpoints.json").read_text())
    path = tmp_path / "epoch_001.pt"
    data = (trained / "epoch_001.pt").read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip a byte":
        data = data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:]
    else:  # a valid checkpoint, but another one
        data = (trained / "epoch_002.pt").read_bytes()
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, listed=listed)
    message = str(info.value)
    assert str(path) in message and "sha256" in message and "train_model" in message


def test_a_truncated_file_read_without_a_listing_is_a_clear_error(trained, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes((trained / "epoch_001.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)


class Payload:
    """Unpickling it would run code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_carrying_pickled_code_is_refused_without_running_it(trained, tmp_path):
    marker = tmp_path / "code_ran"
    checkpoint = read_checkpoint(trained / "epoch_001.pt")
    checkpoint["extra"] = Payload(marker)
    path = tmp_path / "evil.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "weights_only=True" in message and "none ran" in message
    assert not marker.exists()


@pytest.mark.parametrize(("stage", "lrs"), [(1, (1e30, 1e-3)), (2, (3e-3, 1e30))])
def test_a_diverging_loss_stops_training_naming_stage_epoch_and_batch(tmp_path, stage, lrs):
    """A learning rate of 1e30 sends the loss to NaN or infinity within a few batches: the job
    stops there, before that step, and the resume state of the last completed epoch is kept."""
    images, labels = images_and_labels()
    out = tmp_path / "model"
    with pytest.raises(NonFiniteLoss) as info:
        fit(images, labels, images[:6], labels[:6], 3, settings(*lrs), files(out),
            out / ".training", log=lambda _line: None)  # fmt: skip
    message = str(info.value)
    assert f"training stopped in stage {stage}, epoch 1: the loss of batch " in message
    assert " of 3 is " in message and "Lower the learning rate" in message
    assert not (out / "checkpoints.json").exists() and not (out / "best.pt").exists()
    state = out / ".training/train_state.pt"
    if stage == 2:  # stage 1 finished: its state is there to resume from
        progress = torch.load(state, weights_only=True)["progress"]
        assert (progress["stage"], progress["epoch"]) == (2, 0)
    else:
        assert not state.exists()
