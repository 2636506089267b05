"""Real snakemake runs of training and prediction on a tiny config, and a dry run of animals10."""

import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, make_plain_folder
from test_workflow_data import planned_jobs, run_snakemake, write_config

from tracinflow.model import load_checkpoint

pytestmark = pytest.mark.workflow


def tiny_config() -> dict:
    return {
        "dataset": {"name": "digits", "root": "results/datasets/digits",
                    "demo": {"source": "digits", "images_per_class": 12}, "image_size": 16},
        "model": {"arch": "small_resnet", "width": 4, "head": {"hidden": [16, 8]}},
        "training": {
            "batch_size": 32,
            "stage1": {"epochs": 1},
            "stage2": {"max_epochs": 3, "lr_backbone": 1e-3, "lr_head": 1e-3,
                       "checkpoint_epochs": [2, 3], "patience": 1},
        },
        "versions": {"v1": {}, "v2": {"seed": 1}},
    }  # fmt: skip


def test_training_and_predictions_write_every_contracted_file(tmp_path):
    write_config(tmp_path, tiny_config())
    assert planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "1").stdout)["train_model"] == 2
    run_snakemake(tmp_path, "--cores", "2")
    for version in ("v1", "v2"):
        out = tmp_path / "results" / version
        listed = json.loads((out / "model/checkpoints.json").read_text())
        assert [c["epoch"] for c in listed] == [2, 3]
        model, checkpoint = load_checkpoint(out / "model/epoch_003.pt")
        assert {"lr_head", "lr_backbone", "train_loss", "val_loss", "val_accuracy"} <= set(
            checkpoint
        )
        assert checkpoint["lr_head"] == 1e-3
        assert isinstance(model, torch.nn.Module)
        history = pd.read_csv(out / "model/history.csv")
        assert history["stage"].tolist() == [1, 2, 2, 2]
        assert (out / "model/best.pt").exists() and (out / "model/training_curves.png").exists()
        metrics = json.loads((out / "metrics.json").read_text())
        assert {"train", "val", "test", "per_class", "confusion_matrix"} <= set(metrics)
        test = pd.read_parquet(out / "predictions/test.parquet")
        assert len(test) == 20 and set(test.columns) >= {
            "idx",
            "label",
            "pred",
            "confidence",
            "loss",
            "probs",
        }
        assert metrics["test"]["accuracy"] == pytest.approx((test["pred"] == test["label"]).mean())
        wrong = pd.read_csv(out / "mispredictions/false_predictions.csv")
        assert len(wrong) == (test["pred"] != test["label"]).sum()
        assert list(wrong.columns) == [
            "index", "true_label", "predicted_label", "confidence", "image_path",
        ]  # fmt: skip
        assert "stage 2 epoch 3/3" in (tmp_path / f"logs/train_model/{version}.log").read_text()
    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", "--cores", "1").stdout


def test_animals10_config_dry_runs(tmp_path):
    config = yaml.safe_load((REPO / "config/animals10.yaml").read_text())
    folders = {name: 3 for name in config["dataset"]["class_names"]}
    config["dataset"]["root"] = str(make_plain_folder(tmp_path / "raw-img", folders))
    write_config(tmp_path, config)
    jobs = planned_jobs(run_snakemake(tmp_path, "-n", "--cores", "1").stdout)
    assert jobs["train_model"] == 1 and jobs["predict"] == 1 and jobs["cache_images"] == 3
